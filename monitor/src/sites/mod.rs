//! Call sites: flushes grouped by (system queue, calling frame), with the kernel's exact counts.

pub mod events;

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
};

use hashbrown::HashTable;

use monitor_ebpf::{CountKey, WaitStats, WaitedKey};

use crate::{
    sites::events::{Flush, Sighting},
    symbols::{self, Frame},
};

/// One place in the kernel that flushes one system queue. Kept small: a daemon on a busy
/// kernel holds thousands.
#[derive(Clone, Debug)]
pub struct Site {
    /// Index in the system queue table (`queue()`); u32 beside `stuck`: a daemon keeps a site
    /// per call site, thousands of them.
    queue: u32,
    /// `--waits`: its flushes reported as stuck (`--stuck-after`).
    pub stuck: u32,
    /// The frame that asked for the flush, if the stack had one.
    caller: Option<Frame>,
    /// The task of the first flush seen here, if its event arrived (the ring buffer can be full).
    pub first: Option<Box<Sighting>>,
    pub count: u64,
    /// `--waits`: how long its flushes waited and for which work items; None until one returned.
    pub waits: Option<Box<SiteWaits>>,
}

/// `--waits`: the kernel's wait figures for a site (summed over its counter keys).
#[derive(Clone, Debug, Default)]
pub struct SiteWaits {
    pub stats: WaitStats,
    /// Work functions that ran on the flushed queue while a flush from here waited, with how
    /// often; highest count first.
    pub waited_for: Vec<(Frame, u64)>,
}

impl Site {
    pub fn queue(&self) -> usize {
        self.queue as usize
    }

    pub fn caller(&self) -> Option<&Frame> {
        self.caller.as_ref()
    }
}

/// What identifies a call site: the queue and the caller's function, offset and module (or its
/// address when no symbol covers it). Names, not addresses, so a module reloaded elsewhere
/// keeps its sites.
#[derive(PartialEq, Eq, Hash)]
struct Identity<'a> {
    queue: usize,
    func: Option<&'a str>,
    offset_or_addr: u64,
    module: Option<&'a str>,
}

fn identity(queue: usize, caller: Option<&Frame>) -> Identity<'_> {
    let (func, offset_or_addr, module) = match caller {
        Some(c) if c.func.is_some() => (c.func.as_deref(), c.offset, c.module.as_deref()),
        Some(c) => (None, c.addr, None),
        None => (None, 0, None),
    };
    Identity {
        queue,
        func,
        offset_or_addr,
        module,
    }
}

fn identity_of(site: &Site) -> Identity<'_> {
    identity(site.queue(), site.caller())
}

#[derive(Default)]
pub struct Sites {
    /// Positions in `list`, hashed by the site's identity, which is read from the site itself:
    /// a map keyed by a copy of it cost about 90 bytes per site.
    index: HashTable<u32>,
    hasher: RandomState,
    /// The kernel's counter keys -> position in `list`.
    by_key: HashMap<CountKey, u32>,
    list: Vec<Site>,
    /// The symbolized stack of the last first sighting, until `forget_stacks`: a stack is printed
    /// once, and 10,000 sites of full stacks would be most of the daemon's memory.
    stack: Vec<Frame>,
}

impl Sites {
    pub fn is_new(&self, queue: usize, frames: &[Frame]) -> bool {
        self.find(&identity(queue, symbols::caller(frames)))
            .is_none()
    }

    fn find(&self, id: &Identity) -> Option<usize> {
        let hash = self.hasher.hash_one(id);
        let list = &self.list;
        self.index
            .find(hash, |&i| identity_of(&list[i as usize]) == *id)
            .map(|&i| i as usize)
    }

    /// Takes a first sighting from the kernel; returns the site and its stack when it is new to
    /// the report.
    pub fn record(&mut self, flush: Flush, frames: Vec<Frame>) -> Option<(&Site, &[Frame])> {
        let key = count_key(flush.queue, flush.caller);
        let caller = symbols::caller(&frames).cloned();
        let queue = flush.queue;
        let first = Some(Box::new(flush.seen));
        let i = match self.find(&identity(queue, caller.as_ref())) {
            Some(i) => {
                self.by_key.insert(key, i as u32);
                let site = &mut self.list[i];
                if site.first.is_some() {
                    site.count += 1;
                    return None;
                }
                // Known only from the counters so far (they can be read before the ring
                // buffer): this is its first sighting after all.
                site.caller = caller;
                site.first = first;
                i
            }
            None => {
                let i = self.add(Site {
                    queue: queue as u32,
                    caller,
                    first,
                    count: 1,
                    waits: None,
                    stuck: 0,
                });
                self.by_key.insert(key, i as u32);
                i
            }
        };
        self.stack = frames;
        Some((&self.list[i], &self.stack))
    }

    fn add(&mut self, site: Site) -> usize {
        let i = self.list.len();
        let hash = self.hasher.hash_one(identity_of(&site));
        self.list.push(site);
        let (list, hasher) = (&self.list, &self.hasher);
        self.index.insert_unique(hash, i as u32, |&j| {
            hasher.hash_one(identity_of(&list[j as usize]))
        });
        i
    }

    /// Replaces every count with the kernel's. A counter whose first sighting never arrived (the
    /// ring buffer was full) becomes a site of its own, named by its caller address alone.
    pub fn apply_counts(&mut self, counts: &[(CountKey, u64)], frame: impl Fn(u64) -> Frame) {
        for site in &mut self.list {
            site.count = 0;
        }
        for (key, n) in counts {
            let i = match self.by_key.get(key) {
                Some(&i) => i as usize,
                None => self.add_unseen(*key, frame(key.caller)),
            };
            self.list[i].count += n;
        }
    }

    fn add_unseen(&mut self, key: CountKey, caller: Frame) -> usize {
        let queue = key.queue as usize;
        let i = match self.find(&identity(queue, Some(&caller))) {
            Some(i) => i,
            None => self.add(Site {
                queue: key.queue,
                caller: Some(caller),
                first: None,
                count: 0,
                waits: None,
                stuck: 0,
            }),
        };
        self.by_key.insert(key, i as u32);
        i
    }

    /// `--waits`: replaces every site's wait figures with the kernel's. Keys not counted yet
    /// (read before COUNTS) wait for the next refresh.
    pub fn apply_waits(
        &mut self,
        stats: &[(CountKey, WaitStats)],
        waited: &[(WaitedKey, u64)],
        frame: impl Fn(u64) -> Frame,
    ) {
        for site in &mut self.list {
            site.waits = None;
        }
        for (key, s) in stats {
            let Some(&i) = self.by_key.get(key) else {
                continue;
            };
            let w = self.list[i as usize]
                .waits
                .get_or_insert_with(Default::default);
            w.stats.waits += s.waits;
            w.stats.total_ns += s.total_ns;
            w.stats.max_ns = w.stats.max_ns.max(s.max_ns);
            for (b, n) in w.stats.buckets.iter_mut().zip(s.buckets) {
                *b += n;
            }
        }
        for (key, n) in waited {
            let Some(&i) = self.by_key.get(&key.site) else {
                continue;
            };
            let w = self.list[i as usize]
                .waits
                .get_or_insert_with(Default::default);
            let f = frame(key.function);
            match w
                .waited_for
                .iter_mut()
                .find(|(g, _)| g.func == f.func && g.module == f.module && g.func.is_some())
            {
                Some((_, m)) => *m += n,
                None => w.waited_for.push((f, *n)),
            }
        }
        for site in &mut self.list {
            if let Some(w) = &mut site.waits {
                w.waited_for.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
            }
        }
    }

    /// The site the kernel counts under `key`, once known.
    pub fn by_key(&self, key: &CountKey) -> Option<&Site> {
        self.by_key.get(key).map(|&i| &self.list[i as usize])
    }

    /// `--waits`: counts a stuck flush of the site the kernel counts under `key`; false when
    /// that site is not known yet.
    pub fn add_stuck(&mut self, key: &CountKey) -> bool {
        match self.by_key.get(key) {
            Some(&i) => {
                self.list[i as usize].stuck += 1;
                true
            }
            None => false,
        }
    }

    /// Drops the stack of the last first sighting, once it has been reported.
    pub fn forget_stacks(&mut self) {
        self.stack = Vec::new();
    }

    /// Sites by count, highest first; ties in order of first sighting.
    pub fn by_count(&self) -> Vec<&Site> {
        let mut v: Vec<&Site> = self.list.iter().collect();
        v.sort_by_key(|s| std::cmp::Reverse(s.count));
        v
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn total(&self) -> u64 {
        self.list.iter().map(|s| s.count).sum()
    }
}

pub fn count_key(queue: usize, caller: u64) -> CountKey {
    CountKey {
        queue: queue as u32,
        _pad: 0,
        caller,
    }
}

/// What the kernel side could not deliver or count, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lost {
    /// First sightings the ring buffer had no room for; their flushes are still counted.
    pub events: u64,
    /// Flushes not counted because the per-call-site counter map was full.
    pub uncounted: u64,
    /// Flushes the kernel did not run the probe for (`Probe::missed`).
    pub missed: Option<u64>,
    /// `--waits`: offending flushes whose wait was not tracked, and work items not counted.
    pub waits: u64,
    /// `--waits`: flushes in flight past `--stuck-after` whose task had left the flush (gone,
    /// not in D, or it slept again): the kernel did not run the exit probe for them. Counted in
    /// user space, never reported as stuck.
    pub exits_missed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        kernel::kallsyms::Kallsyms,
        sites::events::{decode, encode, sample_event},
    };

    const KALLSYMS: &str = "\
ffffffff810b5e20 T __flush_workqueue
ffffffff810b6300 t other
ffffffffc0a01000 t wqflush_test_flush_long\t[wqflush_test]
ffffffffc0a01040 t wqflush_test_write\t[wqflush_test]
";

    fn ks() -> Kallsyms {
        Kallsyms::parse(KALLSYMS, |_| false).unwrap()
    }

    fn flush(queue: u32, stack: &[u64]) -> (Flush, Vec<Frame>) {
        let mut ev = sample_event(queue, stack);
        ev.caller = stack.get(1).copied().unwrap_or(0);
        let f = decode(&encode(&ev), 4).unwrap();
        let frames = symbols::symbolize(&ks(), &f.stack);
        (f, frames)
    }

    #[test]
    fn dedups_by_queue_and_call_site_and_takes_the_kernels_counts() {
        let mut sites = Sites::default();
        let a = [0xffffffff810b5e25, 0xffffffffc0a0101e, 0xffffffffc0a01050];
        let b = [0xffffffff810b5e25, 0xffffffffc0a01022];
        let (f, fr) = flush(1, &a);
        assert!(sites.is_new(1, &fr));
        let (site, _) = sites.record(f, fr).unwrap();
        assert_eq!(
            site.caller().unwrap().to_string(),
            "wqflush_test_flush_long+0x1e [wqflush_test]"
        );
        let (f, fr) = flush(1, &b);
        assert!(
            sites.record(f, fr).is_some(),
            "another call site in the same function"
        );
        let (f, fr) = flush(2, &a);
        assert!(sites.record(f, fr).is_some(), "same site, other queue");
        let counts = [
            (count_key(1, 0xffffffffc0a0101e), 5),
            (count_key(1, 0xffffffffc0a01022), 1),
            (count_key(2, 0xffffffffc0a0101e), 7),
        ];
        sites.apply_counts(&counts, |_| unreachable!("every key was sighted"));
        assert_eq!((sites.len(), sites.total()), (3, 13));
        let counts: Vec<u64> = sites.by_count().iter().map(|s| s.count).collect();
        assert_eq!(counts, [7, 5, 1]);
    }

    #[test]
    fn counters_without_a_sighting_become_sites_named_by_their_caller() {
        let mut sites = Sites::default();
        let ks = ks();
        let frame = |a| symbols::symbolize(&ks, &[a]).remove(0);
        let counts = [
            (count_key(0, 0xffffffffc0a0101e), 200_000),
            (count_key(0, 0xffffffffc0a01024), 3),
        ];
        sites.apply_counts(&counts, frame);
        sites.apply_counts(&counts, frame);
        assert_eq!(
            (sites.len(), sites.total()),
            (2, 200_003),
            "applying twice does not double"
        );
        let top = sites.by_count()[0];
        assert!(top.first.is_none());
        assert_eq!(
            top.caller().unwrap().func.as_deref(),
            Some("wqflush_test_flush_long")
        );
    }

    #[test]
    fn a_sighting_after_its_counter_is_still_reported() {
        let mut sites = Sites::default();
        let ks = ks();
        let frame = |a| symbols::symbolize(&ks, &[a]).remove(0);
        sites.apply_counts(&[(count_key(1, 0xffffffffc0a0101e), 4)], frame);
        let (mut f, fr) = flush(
            1,
            &[0xffffffff810b5e25, 0xffffffffc0a0101e, 0xffffffffc0a01050],
        );
        f.caller = 0xffffffffc0a0101e;
        let (site, frames) = sites.record(f, fr).expect("first sighting reported");
        assert_eq!(
            frames.len(),
            3,
            "the full stack replaces the caller-only one"
        );
        assert!(site.first.is_some());
        assert_eq!(sites.len(), 1);
    }

    #[test]
    fn forgetting_stacks_keeps_the_caller() {
        let mut sites = Sites::default();
        let (f, fr) = flush(
            1,
            &[0xffffffff810b5e25, 0xffffffffc0a0101e, 0xffffffffc0a01050],
        );
        sites.record(f, fr);
        sites.forget_stacks();
        let site = sites.by_count()[0];
        assert!(sites.stack.is_empty(), "the reported stack is dropped");
        assert!(site.first.is_some());
        let caller = site.caller().unwrap().to_string();
        assert_eq!(caller, "wqflush_test_flush_long+0x1e [wqflush_test]");
        let (f, fr) = flush(1, &[0xffffffff810b5e25, 0xffffffffc0a0101e]);
        assert!(sites.record(f, fr).is_none(), "still the same site");
    }

    #[test]
    fn a_reloaded_module_keeps_its_site() {
        let mut sites = Sites::default();
        let (f, fr) = flush(1, &[0xffffffff810b5e25, 0xffffffffc0a0101e]);
        sites.record(f, fr);
        // Same text after a reload at another address: one site, two kernel keys.
        let (mut f, fr) = flush(1, &[0xffffffff810b5e25, 0xffffffffc0a0101e]);
        f.caller = 0xffffffffc0b0101e;
        assert!(sites.record(f, fr).is_none());
        let counts = [
            (count_key(1, 0xffffffffc0a0101e), 2),
            (count_key(1, 0xffffffffc0b0101e), 3),
        ];
        sites.apply_counts(&counts, |_| unreachable!());
        assert_eq!((sites.len(), sites.total()), (1, 5));
    }
}
