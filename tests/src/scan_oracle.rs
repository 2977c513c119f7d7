//! An independent scanner for system-queue flush sites in module files, built on binutils' text
//! output (`nm -u`, `objdump -dr`, `objdump -t`, `readelf -r`), to check `wqflush scan` against.
//!
//! It shares no code with wqflush: files are decompressed by the `xz`/`zstd`/`gzip` commands,
//! candidates are the modules whose undefined symbols name a flush function and a `system_*wq`
//! variable, and in each candidate's listing every call or tail jump whose relocation names the
//! flush function is followed backwards, instruction by instruction (along jumps into the block
//! when there is no fall-through, or at a join), to what put a value in the first-argument
//! register: a load whose relocation names a `system_*wq` variable makes a site. Unlike a full
//! data-flow analysis it knows only register copies, the registers a call preserves, and a
//! module's own pointer variables (see [`via`] for those).

mod isa;
mod listing;
mod tables;
mod via;

use crate::arch::Arch;
use anyhow::{Context, Result, bail};
use listing::Function;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The name suffixes of module files, as `wqflush scan` takes them from a directory.
pub const MODULE_SUFFIXES: [&str; 4] = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"];

/// One site: a function that passes a system queue to the flush function.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SiteKey {
    /// The module's name: its file name without the suffix, `-` as `_` (as the kernel names it).
    pub module: String,
    /// The function, its `.cold`/`.part.N`/`.isra.N`/`.constprop.N` pieces folded into it.
    pub function: String,
    /// The `system_*wq` variable.
    pub wq: String,
    /// The module's own variable the queue went through, if any.
    pub via: Option<String>,
}

/// What the oracle found for one site.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteFacts {
    /// `init`, `exit` or `text`: the sections the site's flush calls are in.
    pub sections: BTreeSet<String>,
    /// How many flush calls in the function pass that queue.
    pub calls: usize,
}

/// The result of scanning a set of files.
#[derive(Debug, Default)]
pub struct Scan {
    /// Module files looked at.
    pub files: usize,
    /// Files whose undefined symbols name a flush function and a system queue (disassembled).
    pub candidates: usize,
    pub sites: BTreeMap<SiteKey, SiteFacts>,
    /// (module, function) of the functions that load a `system_*wq` variable and call a flush
    /// function but pass it no system queue: the look-alikes co-occurrence alone would report.
    pub lookalikes: BTreeSet<(String, String)>,
}

impl Scan {
    /// The sites without `via`, as (module, function, wq).
    pub fn direct(&self) -> BTreeSet<(String, String, String)> {
        self.sites
            .keys()
            .filter(|k| k.via.is_none())
            .map(|k| (k.module.clone(), k.function.clone(), k.wq.clone()))
            .collect()
    }

    /// The modules with at least one site.
    pub fn modules(&self) -> BTreeSet<&str> {
        self.sites.keys().map(|k| k.module.as_str()).collect()
    }
}

/// Scans every module file under `dir` (recursively) for `arch`.
pub fn scan_tree(arch: Arch, dir: &Path) -> Result<Scan> {
    let mut files = Vec::new();
    collect_module_files(dir, &mut files)?;
    files.sort();
    if files.is_empty() {
        bail!("no module files under {}", dir.display());
    }
    scan_files(arch, &files)
}

/// Every file under `dir` whose name ends in one of [`MODULE_SUFFIXES`].
pub fn collect_module_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_module_files(&path, out)?;
        } else if kind.is_file() && module_name(&path).is_some() {
            out.push(path);
        }
    }
    Ok(())
}

/// The kernel's name for a module file (`nvmet-rdma.ko.xz` -> `nvmet_rdma`).
pub fn module_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let stem = MODULE_SUFFIXES
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))?;
    Some(stem.replace('-', "_"))
}

/// Scans `files` (module files, compressed or not).
pub fn scan_files(arch: Arch, files: &[PathBuf]) -> Result<Scan> {
    let tmp = crate::util::unique_dir(&std::env::temp_dir(), "wqflush-scan-oracle")?;
    let result = scan_in(arch, files, &tmp);
    let _ = fs::remove_dir_all(&tmp);
    result
}

fn scan_in(arch: Arch, files: &[PathBuf], tmp: &Path) -> Result<Scan> {
    let plain = uncompressed(files, tmp)?;
    let candidates = import_candidates(arch, &plain)?;
    let found = parallel(&candidates, |(module, path)| {
        scan_module(arch, module, path)
    })?;
    let mut scan = Scan {
        files: files.len(),
        candidates: candidates.len(),
        ..Scan::default()
    };
    for (sites, lookalikes) in found {
        for (key, section) in sites {
            let facts = scan.sites.entry(key).or_default();
            facts.sections.insert(section);
            facts.calls += 1;
        }
        scan.lookalikes.extend(lookalikes);
    }
    Ok(scan)
}

/// The compressed forms of module files and the program that decompresses each.
const COMPRESSORS: [(&str, &str); 3] = [(".xz", "xz"), (".zst", "zstd"), (".gz", "gzip")];

/// Each file's module name and the file itself, or an uncompressed copy of it in `tmp`.
fn uncompressed(files: &[PathBuf], tmp: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut batches = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let module =
            module_name(file).with_context(|| format!("{} is no module", file.display()))?;
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        let Some((suffix, program)) = COMPRESSORS.into_iter().find(|(s, _)| name.ends_with(s))
        else {
            out.push((module, file.clone()));
            continue;
        };
        // The program writes `<link>` less the suffix beside a link to the file.
        let link = tmp.join(format!("{i}-{name}"));
        std::os::unix::fs::symlink(file, &link)
            .with_context(|| format!("linking {}", link.display()))?;
        let plain = tmp.join(format!(
            "{i}-{}",
            name.strip_suffix(suffix).unwrap_or(&name)
        ));
        out.push((module, plain));
        batches.push((program, link));
    }
    // One process per few hundred files: spawning one per file took twice as long.
    batches.sort();
    let chunks: Vec<&[(&str, PathBuf)]> = batches
        .chunk_by(|a, b| a.0 == b.0)
        .flat_map(|same| same.chunks(250))
        .collect();
    parallel(&chunks, |chunk| {
        let program = chunk[0].0;
        crate::util::run(
            Command::new(program)
                .args(["-d", "-k", "-f", "-q"])
                .args(chunk.iter().map(|(_, link)| link)),
        )
        .with_context(|| format!("decompressing with {program}; is it installed?"))
    })?;
    Ok(out)
}

/// The files among `plain` whose undefined symbols (`nm -u`) include a flush function and a
/// `system_*wq` variable.
fn import_candidates(arch: Arch, plain: &[(String, PathBuf)]) -> Result<Vec<(String, PathBuf)>> {
    // A few hundred files per nm keeps the command line short and both cores busy.
    let chunks: Vec<&[(String, PathBuf)]> = plain.chunks(400).collect();
    let outputs = parallel(&chunks, |chunk| {
        let mut cmd = Command::new(arch.binutil("nm"));
        cmd.args(["-u", "-A"]).args(chunk.iter().map(|(_, p)| p));
        crate::util::run_stdout(&mut cmd)
    })?;
    let mut undefined: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for line in outputs.iter().flat_map(|out| out.lines()) {
        if let Some((file, symbol)) = nm_line(line) {
            undefined.entry(file).or_default().push(symbol);
        }
    }
    Ok(plain
        .iter()
        .filter(|(_, path)| {
            let syms = path
                .to_str()
                .and_then(|p| undefined.get(p))
                .map_or(&[][..], |v| v.as_slice());
            syms.iter().any(|s| is_flush_function(s)) && syms.iter().any(|s| is_system_wq(s))
        })
        .cloned()
        .collect())
}

/// `path:                 U symbol` -> (path, symbol).
fn nm_line(line: &str) -> Option<(&str, &str)> {
    let (head, symbol) = line.rsplit_once(' ')?;
    let file = head
        .trim_end()
        .strip_suffix('U')?
        .trim_end()
        .strip_suffix(':')?;
    Some((file, symbol))
}

/// `__flush_workqueue` (5.19+) or `flush_workqueue` (before).
pub fn is_flush_function(symbol: &str) -> bool {
    symbol == "__flush_workqueue" || symbol == "flush_workqueue"
}

/// A kernel-global queue variable: `system_wq`, `system_unbound_wq`, `system_percpu_wq`, ...
pub fn is_system_wq(symbol: &str) -> bool {
    symbol.starts_with("system_") && symbol.ends_with("wq")
}

/// Runs `work` on every item over two threads (the machine's cores), keeping the order.
fn parallel<T: Sync, R: Send>(
    items: &[T],
    work: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<R>>>> =
        Mutex::new((0..items.len()).map(|_| None).collect());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = work(item);
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.unwrap_or_else(|| bail!("a worker thread died")))
        .collect()
}

/// What one module holds: its sites (with the section label of each call) and its look-alikes.
type ModuleSites = (Vec<(SiteKey, String)>, BTreeSet<(String, String)>);

/// Disassembles the functions of one candidate that call a flush function (found from its
/// relocations) and follows the argument of each call.
fn scan_module(arch: Arch, module: &str, path: &Path) -> Result<ModuleSites> {
    let tables = tables::Tables::read(arch, path)?;
    let flush_relocs = tables.relocs_naming(&["__flush_workqueue", "flush_workqueue"]);
    let flush_at: Vec<(&str, i64)> = flush_relocs
        .iter()
        .filter(|r| tables.code.contains(&r.section))
        .map(|r| (r.section.as_str(), r.at))
        .collect();
    let functions = listing::disassemble(arch, path, &tables.functions_containing(&flush_at))?;
    let mut vars = via::Variables::new(arch, path, &tables);
    let mut sites = Vec::new();
    let mut co_occurring = BTreeSet::new();
    for function in &functions {
        let calls = flush_calls(arch, function);
        let name = fold_function_name(&function.name);
        let loads_wq = function
            .insns
            .iter()
            .flat_map(|i| &i.relocs)
            .any(|r| is_system_wq(&r.symbol));
        if loads_wq && !calls.is_empty() {
            co_occurring.insert((module.to_string(), name.to_string()));
        }
        let walker = isa::Walker::new(arch, function);
        for call in calls {
            for (wq, via) in call_queues(&walker, call, &mut vars)? {
                let key = SiteKey {
                    module: module.to_string(),
                    function: name.to_string(),
                    wq,
                    via,
                };
                sites.push((key, section_label(&function.section).to_string()));
            }
        }
    }
    let with_site: BTreeSet<(String, String)> = sites
        .iter()
        .map(|(k, _)| (k.module.clone(), k.function.clone()))
        .collect();
    Ok((sites, &co_occurring - &with_site))
}

/// The system queues (and the module variable each went through, if any) the first argument of
/// the flush call at `call` can hold.
fn call_queues(
    walker: &isa::Walker<'_>,
    call: usize,
    vars: &mut via::Variables<'_>,
) -> Result<BTreeSet<(String, Option<String>)>> {
    let mut queues = BTreeSet::new();
    for source in walker.first_argument_sources(call) {
        match source {
            isa::Source::Wq(wq) => {
                queues.insert((wq, None));
            }
            isa::Source::Memory(target) => {
                if let Some((var, wq)) = vars.queue_of(&target)? {
                    queues.insert((wq, Some(var)));
                }
            }
            isa::Source::Unknown => {}
        }
    }
    Ok(queues)
}

/// Indices of the calls and tail jumps in `function` whose relocation names a flush function.
fn flush_calls(arch: Arch, function: &Function) -> Vec<usize> {
    (0..function.insns.len())
        .filter(|&i| {
            let insn = &function.insns[i];
            isa::is_call_or_jump(arch, insn)
                && insn.relocs.iter().any(|r| is_flush_function(&r.symbol))
        })
        .collect()
}

/// `init`, `exit` or `text`, as `wqflush scan` labels a section.
pub fn section_label(section: &str) -> &'static str {
    match section {
        ".init.text" => "init",
        ".exit.text" => "exit",
        _ => "text",
    }
}

/// `foo.cold`, `foo.part.0`, `foo.isra.0`, `foo.constprop.0.isra.0`, `foo.part.0.cold` -> `foo`:
/// the pieces gcc splits or clones a function into are reported as the function.
pub fn fold_function_name(name: &str) -> &str {
    let mut name = name;
    loop {
        let stripped = strip_number(name)
            .and_then(|n| {
                [".part", ".isra", ".constprop", ".cold"]
                    .into_iter()
                    .find_map(|s| n.strip_suffix(s))
            })
            .or_else(|| name.strip_suffix(".cold"));
        match stripped {
            Some(shorter) if !shorter.is_empty() => name = shorter,
            _ => return name,
        }
    }
}

/// `foo.part.12` -> `foo.part`; `None` when the name does not end in `.` and digits.
fn strip_number(name: &str) -> Option<&str> {
    let (head, digits) = name.rsplit_once('.')?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_gcc_pieces() {
        for (piece, function) in [
            ("aoedev_exit", "aoedev_exit"),
            ("foo.cold", "foo"),
            ("foo.part.0", "foo"),
            ("foo.isra.12", "foo"),
            ("foo.constprop.0.isra.0", "foo"),
            ("foo.part.0.cold", "foo"),
            ("foo.cold.3", "foo"),
            ("foo.lto_priv.0", "foo.lto_priv.0"),
        ] {
            assert_eq!(fold_function_name(piece), function, "{piece}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(
            module_name(Path::new("/m/nvmet-rdma.ko.xz")).as_deref(),
            Some("nvmet_rdma")
        );
        assert_eq!(module_name(Path::new("/m/aoe.ko")).as_deref(), Some("aoe"));
        assert_eq!(module_name(Path::new("/m/aoe.o")), None);
        assert_eq!(
            nm_line("/t/a b.ko:                 U system_wq"),
            Some(("/t/a b.ko", "system_wq"))
        );
        assert!(is_system_wq("system_power_efficient_wq"));
        assert!(!is_system_wq("system_state"));
        assert_eq!(section_label(".exit.text"), "exit");
        assert_eq!(section_label(".text.unlikely"), "text");
    }
}
