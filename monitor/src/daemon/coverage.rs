//! `--scan`: the static sites of the loaded modules (scanned on a thread of their own once the
//! probe is live, so going live waits for nothing), and at the end which of them flushed during
//! the run.

use std::{collections::BTreeSet, path::PathBuf, thread::JoinHandle};

use crate::{
    kernel::queues::SystemQueue,
    scan::{self, Reached, Scan, StaticSite},
    sites::Sites,
};

/// What the scan thread hands back: the modules it looked for, and what it found.
type Found = (BTreeSet<String>, Scan);

pub(super) struct Coverage {
    tree: Option<PathBuf>,
    pending: Option<JoinHandle<Found>>,
    scanned: BTreeSet<String>,
    sites: Vec<StaticSite>,
}

impl Coverage {
    /// Starts scanning the modules loaded now.
    pub(super) fn start() -> Coverage {
        let tree = match scan::files::running_tree() {
            Ok(tree) => Some(tree),
            Err(e) => {
                eprintln!("wqflush: --scan: {e:#}; no module is scanned");
                None
            }
        };
        let pending = tree.clone().map(|tree| {
            std::thread::spawn(move || {
                let modules = scan::loaded::loaded().unwrap_or_default();
                let found = scan::loaded::scan_named(&tree, &modules);
                (modules, found)
            })
        });
        Coverage {
            tree,
            pending,
            scanned: BTreeSet::new(),
            sites: Vec::new(),
        }
    }

    /// The static sites found so far; takes the thread's result once it is done.
    pub(super) fn sites(&mut self) -> &[StaticSite] {
        if self.pending.as_ref().is_some_and(JoinHandle::is_finished) {
            self.join();
        }
        &self.sites
    }

    fn join(&mut self) {
        let Some(handle) = self.pending.take() else {
            return;
        };
        match handle.join() {
            Ok((modules, found)) => self.add(modules, found),
            Err(_) => eprintln!("wqflush: --scan: the scan of the loaded modules failed"),
        }
    }

    fn add(&mut self, modules: BTreeSet<String>, found: Scan) {
        for e in &found.errors {
            eprintln!("wqflush: --scan: {e}");
        }
        self.scanned.extend(modules);
        self.sites.extend(found.sites);
    }

    /// Every static site of the modules loaded at the start, loaded now, or seen flushing, each
    /// marked with whether a run-time call site matches it (same module, function and queue).
    pub(super) fn finish(&mut self, sites: &Sites, queues: &[SystemQueue]) -> Vec<Reached> {
        self.join();
        let mut later: BTreeSet<String> = scan::loaded::loaded().unwrap_or_default();
        later.extend(seen(sites, queues).into_iter().filter_map(|(m, _, _)| m));
        later.retain(|m| !self.scanned.contains(m));
        if let (Some(tree), false) = (&self.tree, later.is_empty()) {
            let found = scan::loaded::scan_named(tree, &later);
            self.add(later, found);
        }
        let seen = seen(sites, queues);
        let mut out: Vec<Reached> = self
            .sites
            .iter()
            .map(|s| Reached {
                seen: seen.contains(&(Some(s.module.clone()), s.caller.clone(), s.wq.clone())),
                site: s.clone(),
            })
            .collect();
        out.sort_by(|a, b| {
            (a.seen, &a.site.module, &a.site.caller).cmp(&(b.seen, &b.site.module, &b.site.caller))
        });
        out
    }
}

/// The run-time call sites as (module, function without gcc's suffixes, queue variable).
fn seen(sites: &Sites, queues: &[SystemQueue]) -> BTreeSet<(Option<String>, String, String)> {
    sites
        .by_count()
        .into_iter()
        .filter_map(|s| {
            let caller = s.caller()?;
            let func = caller.func.as_deref()?;
            let base = func.split('.').next().unwrap_or(func).to_owned();
            let module = caller.module.as_deref().map(|m| m.replace('-', "_"));
            Some((module, base, queues[s.queue()].var.clone()?))
        })
        .collect()
}
