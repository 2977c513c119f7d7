//! `wqflush scan`: the system-queue flushes in module files, found in their machine code before
//! any of them runs. A site is a function whose call (or tail-call jump) of the flush function
//! receives a `system_*wq` value as the queue: loaded from the variable, or from a module
//! variable that only ever holds one.
//!
//! `files` picks the files, `object` parses one, `x86_64` and `aarch64` decode its code, `flow`
//! follows values through registers, `calls` finds the flush calls, `variables` the module
//! variables that stand for a system queue. Source lines come from the module's own DWARF
//! (`sources`).

mod aarch64;
mod calls;
pub mod files;
mod flow;
pub mod loaded;
mod object;
mod variables;
mod x86_64;

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
    fmt,
    io::Read as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    scan::{
        calls::{Code, FlushCall},
        flow::{Ref, Val},
        object::Module,
    },
    sources::{
        self,
        debug_file::{Contents, DebugFile},
    },
};

/// Where a site's code is: what runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Section {
    /// `.init.text`: module load.
    Init,
    /// `.exit.text`: module unload.
    Exit,
    /// Any other code.
    Text,
}

impl Section {
    fn of(name: &str) -> Section {
        if name.starts_with(".init") {
            Section::Init
        } else if name.starts_with(".exit") {
            Section::Exit
        } else {
            Section::Text
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Section::Init => "init",
            Section::Exit => "exit",
            Section::Text => "text",
        })
    }
}

/// A function that flushes a system queue, found in a module file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StaticSite {
    pub module: String,
    /// The function, without gcc's `.cold`/`.part`/`.isra`/`.constprop` suffixes.
    pub caller: String,
    /// The `system_*wq` variable.
    pub wq: String,
    pub section: Section,
    /// The module variable the queue is flushed through, when it is not the `system_*wq` itself.
    pub via: Option<String>,
    /// `file:line` of the first such flush call, from the module's own debug info.
    pub source: Option<String>,
    pub file: PathBuf,
    /// Flush calls in the function that pass this queue.
    pub calls: u32,
}

/// A static site and whether the run flushed a system queue from it (`--scan`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reached {
    #[serde(flatten)]
    pub site: StaticSite,
    pub seen: bool,
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Scan {
    pub sites: Vec<StaticSite>,
    /// Module files read (those that could not be read are in `errors`).
    pub files: usize,
    /// One line per file or directory that could not be read.
    pub errors: Vec<String>,
}

impl Scan {
    /// Module files with at least one site.
    pub fn modules(&self) -> usize {
        self.sites
            .iter()
            .map(|s| &s.file)
            .collect::<BTreeSet<_>>()
            .len()
    }
}

/// Scans `paths` (files and directories), or the running kernel's module tree when empty.
pub fn scan(paths: &[PathBuf]) -> Scan {
    let mut out = Scan::default();
    let roots = if paths.is_empty() {
        match files::running_tree() {
            Ok(tree) => vec![tree],
            Err(e) => {
                out.errors.push(format!("{e:#}"));
                return out;
            }
        }
    } else {
        paths.to_vec()
    };
    let (list, errors) = files::expand(&roots);
    out.errors = errors;
    out.add(&list, scan_files(&list));
    out
}

impl Scan {
    /// Adds the results of `files`, in their order.
    pub(crate) fn add(&mut self, files: &[PathBuf], results: Vec<Result<Vec<StaticSite>>>) {
        for (file, result) in files.iter().zip(results) {
            match result {
                Ok(sites) => {
                    self.sites.extend(sites);
                    self.files += 1;
                }
                Err(e) => self.errors.push(format!("{}: {e:#}", file.display())),
            }
        }
    }
}

/// Most threads a scan reads files on: each holds one decompressed module.
const MAX_THREADS: usize = 4;

/// A module larger than this, decompressed, is read while no other is (amdgpu's is 29 MB in
/// 6.12); the peak is then about the largest module, or `MAX_THREADS` smaller ones.
const LARGE: u64 = 8 << 20;

/// Each file's sites, scanned on a thread per CPU (decompressing xz is most of the time a
/// compressed tree takes), in the files' order.
pub(crate) fn scan_files(list: &[PathBuf]) -> Vec<Result<Vec<StaticSite>>> {
    use std::sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, MAX_THREADS);
    let next = AtomicUsize::new(0);
    let big = std::sync::RwLock::new(());
    let results: Mutex<Vec<Option<Result<Vec<StaticSite>>>>> =
        Mutex::new((0..list.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(file) = list.get(i) else { break };
                    let result = {
                        // A large module is read alone: two amdgpu-sized ones at once would
                        // double the peak memory.
                        let large = files::decompressed_size(file) > LARGE;
                        let _alone = large.then(|| big.write().unwrap_or_else(|e| e.into_inner()));
                        let _shared =
                            (!large).then(|| big.read().unwrap_or_else(|e| e.into_inner()));
                        module_file(file)
                    };
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(result);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("not scanned"))))
        .collect()
}

/// The sites of one module file (compressed or not).
pub fn module_file(path: &Path) -> Result<Vec<StaticSite>> {
    let file = DebugFile::open(path)?;
    let data: Cow<'_, [u8]> = match file.contents() {
        Contents::Memory(data) => Cow::Borrowed(data),
        Contents::Disk(f) => {
            let mut data = Vec::new();
            (&*f)
                .read_to_end(&mut data)
                .with_context(|| format!("reading {}", path.display()))?;
            Cow::Owned(data)
        }
    };
    let Some(module) = Module::parse(&data)? else {
        return Ok(Vec::new());
    };
    let found = sites_of(&module, path)?;
    Ok(with_sources(&file, &module, found))
}

/// The sites of a module file's bytes (decompressed), without source lines: what the fuzz
/// target drives.
pub fn sites_in(data: &[u8], path: &Path) -> Result<Vec<StaticSite>> {
    let Some(module) = Module::parse(data)? else {
        return Ok(Vec::new());
    };
    Ok(sites_of(&module, path)?
        .into_iter()
        .map(|f| f.site)
        .collect())
}

/// Each site with the source line of its first call, from the module's own DWARF.
fn with_sources(file: &DebugFile, module: &Module<'_>, found: Vec<Found>) -> Vec<StaticSite> {
    if found.is_empty() {
        return Vec::new();
    }
    let places: Vec<(&str, u64)> = found
        .iter()
        .map(|f| {
            let piece = &module.functions[f.first.0];
            (piece.name.as_str(), f.first.1 - piece.start)
        })
        .collect();
    let lines = sources::places_in_file(file, &places);
    found
        .into_iter()
        .zip(lines)
        .map(|(f, source)| StaticSite { source, ..f.site })
        .collect()
}

/// A site before its source line is looked up: the piece and offset of its first call.
struct Found {
    site: StaticSite,
    first: (usize, u64),
}

fn sites_of(module: &Module<'_>, path: &Path) -> Result<Vec<Found>> {
    let mut code = Code::new(module);
    let calls = calls::flush_calls(&mut code)?;
    let vars: BTreeSet<(usize, u64)> = calls
        .iter()
        .filter_map(|c| match c.queue {
            Val::Loaded(Ref::Local { section, offset }) => Some((section, offset)),
            _ => None,
        })
        .collect();
    let held = variables::system_queues_in(&mut code, &vars)?;
    let name = module
        .modinfo_name()
        .unwrap_or_else(|| files::module_name_of(path));
    let mut sites: BTreeMap<(String, String, Option<String>), Found> = BTreeMap::new();
    for call in &calls {
        for (wq, via) in queues_of(module, call, &held) {
            let f = &module.functions[call.function];
            let key = (f.base_name().to_owned(), wq.clone(), via.clone());
            let found = sites.entry(key).or_insert_with(|| Found {
                site: StaticSite {
                    module: name.clone(),
                    caller: f.base_name().to_owned(),
                    wq,
                    section: Section::of(module.section_name(f.section)),
                    via,
                    source: None,
                    file: path.to_owned(),
                    calls: 0,
                },
                first: (call.function, call.offset),
            });
            found.site.calls += 1;
        }
    }
    Ok(sites.into_values().collect())
}

/// The system queues a call passes, each with the module variable it goes through.
fn queues_of(
    module: &Module<'_>,
    call: &FlushCall,
    held: &std::collections::HashMap<(usize, u64), BTreeSet<String>>,
) -> Vec<(String, Option<String>)> {
    match call.queue {
        Val::Loaded(Ref::Extern(q)) => module
            .queues
            .get(&q)
            .map(|wq| vec![(wq.clone(), None)])
            .unwrap_or_default(),
        Val::Loaded(Ref::Local { section, offset }) => held
            .get(&(section, offset))
            .map(|queues| {
                let via = module.data_name(section, offset);
                queues
                    .iter()
                    .map(|q| (q.clone(), Some(via.clone())))
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}
