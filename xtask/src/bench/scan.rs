//! The scan phase of `cargo xtask bench`: the host's `wqflush scan --json` over a whole Debian
//! module tree beside `objdump -dr` over the same files, in the same run on this machine (no
//! guest, no root). Wall time, CPU time and peak RSS of each come from `wait4`; the goals
//! (issue 23) are wqflush's time ≤ 0.2× objdump's and its peak RSS ≤ 64 MB.
//!
//! The tree is Debian 6.1's by default: its modules are plain `.ko`, so both tools read the same
//! bytes. From 6.12 on Debian ships `.ko.xz`, which objdump cannot read: for such a tree objdump
//! reads copies decompressed beforehand, untimed, and wqflush's time includes its own
//! decompression.

use std::{
    fmt::Write as _,
    fs,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde::Deserialize;
use wqflush_vmtest::{cache_dir, debian::module_tree, prepare_kernel};

use super::{
    Options,
    results::Results,
    table::{Stat, Table, ratio_cells, stat_cells},
};

/// The two tools, in the table's order.
const TOOLS: [&str; 2] = ["wqflush", "objdump"];
/// Files per objdump process, as xargs would batch them: process start-up stays a small share,
/// and no command line comes near the kernel's limit.
const BATCH: usize = 500;
/// wqflush's wall time against objdump's, at most.
const TIME_GOAL: f64 = 0.2;
/// wqflush's peak RSS, at most.
const RSS_GOAL_MB: f64 = 64.0;
/// The module files `wqflush scan` takes in a directory, with what decompresses each for objdump.
const SUFFIXES: [(&str, Option<&str>); 4] = [
    (".ko", None),
    (".ko.xz", Some("xz")),
    (".ko.zst", Some("zstd")),
    (".ko.gz", Some("gzip")),
];

/// A module tree and what each tool reads of it.
struct Tree {
    /// `uname -r` of its kernel (`6.1.0-57-amd64`).
    release: String,
    /// The directory wqflush scans.
    dir: PathBuf,
    /// Its module files, as shipped.
    files: Vec<PathBuf>,
    /// What objdump reads: the same files, or their decompressed copies in `scratch`.
    plain: Vec<PathBuf>,
    /// The bytes of `files`.
    bytes: u64,
    /// The suffix of the compressed files (`.ko.xz`), `None` for plain `.ko`.
    compressed: Option<&'static str>,
    /// Where the decompressed copies are; removed with the tree.
    scratch: Option<PathBuf>,
}

impl Drop for Tree {
    fn drop(&mut self) {
        if let Some(dir) = &self.scratch {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// What one tool cost in one round.
#[derive(Default)]
struct Cost {
    wall: Duration,
    /// User plus system time.
    cpu: Duration,
    /// The peak RSS of the process (of objdump's largest).
    rss_kb: i64,
    /// The first run that did not exit as expected, and what it said.
    failed: Option<String>,
}

/// `wqflush scan --json`'s last line.
#[derive(Deserialize)]
struct Summary {
    files: u64,
    sites: u64,
    modules: u64,
    errors: u64,
}

/// Measures the scan phase, `opts.rounds` rounds, and prints its table and goals.
pub fn run(opts: &Options, wqflush: &Path) -> Result<()> {
    let started = Instant::now();
    let tree = tree(opts)?;
    let objdump = opts.arch.binutil("objdump");
    eprintln!(
        "xtask: bench scan: {} {} files of {} ({} MB) in {} rounds: wqflush scan and {objdump} -dr",
        tree.files.len(),
        tree.compressed.unwrap_or(".ko"),
        tree.release,
        tree.bytes >> 20,
        opts.rounds
    );
    // Both tools then find every file in the page cache: neither pays for the disk.
    warm(&tree.files)?;
    warm(&tree.plain)?;
    let mut lines = String::new();
    for round in 1..=opts.rounds {
        // Alternating which goes first keeps whatever else runs on the machine from favouring one.
        let mut order = TOOLS;
        if round % 2 == 0 {
            order.reverse();
        }
        for tool in order {
            let (cost, summary) = match tool {
                "wqflush" => run_wqflush(wqflush, &tree)?,
                _ => (run_objdump(&objdump, &tree.plain)?, None),
            };
            record(&mut lines, round, tool, &cost, summary.as_deref());
        }
    }
    let results = Results::parse(&lines)?;
    print!(
        "{}",
        table(&results, &tree, opts, &objdump, started.elapsed())
    );
    Ok(())
}

/// Appends one tool's figures of one round as `<metric> <round> <tool> <value>` lines.
fn record(lines: &mut String, round: u32, tool: &str, cost: &Cost, summary: Option<&str>) {
    let mut put = |metric: &str, value: &str| {
        let _ = writeln!(lines, "{metric} {round} {tool} {value}");
    };
    match &cost.failed {
        Some(why) => put("scan_failed", &why.replace('\n', " ")),
        None => {
            put("scan_wall_ns", &cost.wall.as_nanos().to_string());
            put("scan_cpu_ns", &cost.cpu.as_nanos().to_string());
            put("scan_rss_kb", &cost.rss_kb.to_string());
        }
    }
    if let Some(s) = summary {
        put("scan_summary", s);
    }
}

/// The module tree of `opts.scan_series` for `opts.arch` from the VM cache (downloaded there if
/// missing), with copies decompressed for objdump when its modules are compressed.
fn tree(opts: &Options) -> Result<Tree> {
    // prepare_kernel follows WQFLUSH_ARCH, which the bench has set to opts.arch.
    let kernel = prepare_kernel(opts.scan_series, &cache_dir())?;
    ensure!(
        kernel.arch == opts.arch,
        "the harness prepared {}'s kernel, the bench asked for {}",
        kernel.arch,
        opts.arch
    );
    // The image's own tree, or 7.x's linux-modules package (downloaded once).
    let dir = module_tree(opts.scan_series, &cache_dir())?;
    let files = module_files(&dir)?;
    let Some(first) = files.first() else {
        bail!("{} holds no module files", dir.display());
    };
    let (suffix, decompressor) = kind(first).context("a module file of no known suffix")?;
    ensure!(
        files
            .iter()
            .all(|f| kind(f) == Some((suffix, decompressor))),
        "{} mixes compressed and plain modules; the scan bench compares one kind",
        dir.display()
    );
    let bytes = files
        .iter()
        .map(|f| f.metadata().map_or(0, |m| m.len()))
        .sum();
    let mut tree = Tree {
        release: kernel.release.clone(),
        dir,
        plain: files.clone(),
        files,
        bytes,
        compressed: decompressor.map(|_| suffix),
        scratch: None,
    };
    if let Some(program) = decompressor {
        let scratch = cache_dir().join(format!("bench/scan-{}.tmp", kernel.release));
        tree.scratch = Some(scratch.clone());
        tree.plain = decompress(&tree, program, &scratch)?;
    }
    Ok(tree)
}

/// The suffix of a module file and the program that decompresses it (`None` for `.ko`).
fn kind(file: &Path) -> Option<(&'static str, Option<&'static str>)> {
    let name = file.file_name()?.to_str()?;
    SUFFIXES.into_iter().find(|(s, _)| name.ends_with(s))
}

/// Every module file under `dir`, recursively, sorted: what `wqflush scan DIR` reads.
fn module_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let entry = entry?;
            let path = entry.path();
            let kind_of = entry.file_type()?;
            if kind_of.is_dir() {
                todo.push(path);
            } else if kind_of.is_file() && kind(&path).is_some() {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Copies the tree's files into `scratch` and decompresses them there with `program -d`, a batch
/// of files a process; returns the decompressed files, in the tree's order.
fn decompress(tree: &Tree, program: &str, scratch: &Path) -> Result<Vec<PathBuf>> {
    let _ = fs::remove_dir_all(scratch);
    let suffix = tree.compressed.unwrap_or(".ko");
    let mut copies = Vec::with_capacity(tree.files.len());
    for file in &tree.files {
        let copy = scratch.join(file.strip_prefix(&tree.dir)?);
        if let Some(parent) = copy.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::copy(file, &copy).with_context(|| format!("copying {}", file.display()))?;
        copies.push(copy);
    }
    for batch in copies.chunks(BATCH) {
        let status = Command::new(program)
            .args(["-d", "-q"])
            .args(batch)
            .status()
            .with_context(|| format!("running {program}"))?;
        ensure!(status.success(), "{program} -d failed ({status})");
    }
    // What remains after the compressor's suffix (`.xz`) comes off: the plain `.ko`.
    let strip = suffix.len() - ".ko".len();
    Ok(copies
        .iter()
        .map(|c| {
            let s = c.as_os_str().to_string_lossy();
            PathBuf::from(&s[..s.len() - strip])
        })
        .collect())
}

/// Reads every file once, untimed.
fn warm(files: &[PathBuf]) -> Result<()> {
    for f in files {
        fs::read(f).with_context(|| format!("reading {}", f.display()))?;
    }
    Ok(())
}

/// `wqflush scan --json DIR`: its cost, and its summary line. Exit 0 (no site) and 3 (sites) are
/// a whole scan; 1 (a file it could not read) still is, its summary counting the errors.
fn run_wqflush(wqflush: &Path, tree: &Tree) -> Result<(Cost, Option<String>)> {
    let out = scratch_file("wqflush-scan.out")?;
    let err = scratch_file("wqflush-scan.err")?;
    let mut cmd = Command::new(wqflush);
    cmd.arg("scan")
        .arg("--json")
        .arg(&tree.dir)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out)?)
        .stderr(fs::File::create(&err)?);
    let (mut cost, status) = measure(&mut cmd)?;
    let stdout = fs::read_to_string(&out).unwrap_or_default();
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.contains("\"scan_summary\""))
        .map(str::to_owned);
    if !matches!(status.code(), Some(0 | 1 | 3)) || summary.is_none() {
        cost.failed = Some(failure(status, &err, summary.is_none()));
    }
    Ok((cost, summary))
}

/// `objdump -dr` over `files`, a batch of files a process, one process after another, its
/// output thrown away; the cost of all of them (peak RSS: the largest).
fn run_objdump(objdump: &str, files: &[PathBuf]) -> Result<Cost> {
    let err = scratch_file("objdump.err")?;
    let start = Instant::now();
    let mut total = Cost::default();
    for batch in files.chunks(BATCH) {
        let mut cmd = Command::new(objdump);
        cmd.arg("-dr")
            .args(batch)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&err)?);
        let (cost, status) = measure(&mut cmd)?;
        total.cpu += cost.cpu;
        total.rss_kb = total.rss_kb.max(cost.rss_kb);
        if !status.success() && total.failed.is_none() {
            total.failed = Some(failure(status, &err, false));
        }
    }
    total.wall = start.elapsed();
    Ok(total)
}

/// Why a run failed: its exit status and the first line of its standard error.
fn failure(status: ExitStatus, err: &Path, no_summary: bool) -> String {
    let text = fs::read_to_string(err).unwrap_or_default();
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let missing = if no_summary { ", no scan_summary" } else { "" };
    format!("{status}{missing}: {first}")
}

/// A file of the bench's own under the VM cache, for one run's output.
fn scratch_file(name: &str) -> Result<PathBuf> {
    let dir = cache_dir().join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.join(name))
}

/// Runs `cmd` to its end: wall time, and the CPU time and peak RSS of that process alone
/// (`wait4`; `RUSAGE_CHILDREN` would also count the cargo builds before it).
fn measure(cmd: &mut Command) -> Result<(Cost, ExitStatus)> {
    let start = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    let mut status = 0;
    // SAFETY: rusage is plain integers; all zeros is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is this process's child, not reaped yet (its `Child` is never waited
        // on); both pointers are to live locals of the right types.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("wait4");
        }
    }
    let wall = start.elapsed();
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.try_into().unwrap_or(0))
            + Duration::from_micros(t.tv_usec.try_into().unwrap_or(0))
    };
    let cost = Cost {
        wall,
        cpu: time(usage.ru_utime) + time(usage.ru_stime),
        // Linux counts ru_maxrss in KiB.
        rss_kb: usage.ru_maxrss,
        failed: None,
    };
    Ok((cost, ExitStatus::from_raw(status)))
}

/// The heading, the table and the goals.
fn table(r: &Results, tree: &Tree, opts: &Options, objdump: &str, took: Duration) -> String {
    let mut out = String::new();
    let kind = tree.compressed.unwrap_or(".ko");
    let _ = writeln!(
        out,
        "\nwqflush scan beside objdump: Debian {}'s module tree on this machine ({} {kind} files, \
         {} MB as shipped), {} rounds; median [min-max]; took {} s",
        tree.release,
        tree.files.len(),
        tree.bytes >> 20,
        opts.rounds,
        took.as_secs()
    );
    let _ = writeln!(
        out,
        "wqflush: the host's `wqflush scan --json <tree>`; objdump: `{objdump} -dr` over the same \
         files, {BATCH} a process ({} processes, one after another), output to /dev/null. \
         Every file was read once before the first round (both find them in the page cache).",
        tree.plain.len().div_ceil(BATCH)
    );
    if tree.compressed.is_some() {
        let _ = writeln!(
            out,
            "wqflush reads the {kind} files: its time includes decompressing them. objdump \
             cannot: it reads copies decompressed before the rounds, untimed."
        );
    }
    out.push('\n');
    out.push_str(&figures(r, tree).render());
    out.push_str("\ngoals:\n");
    out.push_str(&goals(r, tree.files.len() as u64));
    out
}

fn figures(r: &Results, tree: &Tree) -> Table {
    let mut t = Table::default();
    t.head("", &["wqflush scan", "objdump -dr"]);
    t.row(
        "wall s",
        stat_cells(r, &TOOLS, "scan_wall_ns", |ns| ns / 1e9, 2),
    );
    t.row(
        "  ratio to objdump",
        ratio_cells(r, &TOOLS, "scan_wall_ns", "objdump"),
    );
    t.row(
        "user+sys CPU s",
        stat_cells(r, &TOOLS, "scan_cpu_ns", |ns| ns / 1e9, 2),
    );
    t.row(
        "  ratio to objdump",
        ratio_cells(r, &TOOLS, "scan_cpu_ns", "objdump"),
    );
    t.row(
        "peak RSS MB (objdump: its largest process)",
        stat_cells(r, &TOOLS, "scan_rss_kb", |kb| kb / 1024.0, 1),
    );
    let summary = summaries(r).into_iter().next();
    t.row(
        "files read / not read (wqflush: its summary)",
        vec![
            summary
                .as_ref()
                .map_or("?".into(), |s| format!("{} / {}", s.files, s.errors)),
            tree.plain.len().to_string(),
        ],
    );
    t.row(
        "sites found (modules with a site)",
        vec![
            summary
                .as_ref()
                .map_or("?".into(), |s| format!("{} ({})", s.sites, s.modules)),
            "-".into(),
        ],
    );
    let failed: Vec<String> = TOOLS
        .iter()
        .map(|tool| match r.words("scan_failed", tool) {
            w if w.is_empty() => "-".to_owned(),
            w => w.join("; "),
        })
        .collect();
    if failed.iter().any(|f| f != "-") {
        t.row("failed runs", failed);
    }
    t
}

/// wqflush's summaries, round by round (the rounds that printed one).
fn summaries(r: &Results) -> Vec<Summary> {
    r.words("scan_summary", "wqflush")
        .into_iter()
        .filter_map(|s| serde_json::from_str(s).ok())
        .collect()
}

/// Each goal met or missed, from the medians of the per-round figures; `n` files in the tree.
fn goals(r: &Results, n: u64) -> String {
    let mut out = String::new();
    let mut line = |ok: bool, what: String| {
        let verdict = if ok { "met" } else { "MISSED" };
        let _ = writeln!(out, "  [{verdict}] scan: {what}");
    };
    let median = |v: Vec<f64>| Stat::of(&v).median;
    match median(r.ratios("scan_wall_ns", "wqflush", "objdump")) {
        Some(x) => line(
            x <= TIME_GOAL,
            format!("wall time {x:.3}x objdump's (goal <= {TIME_GOAL}x)"),
        ),
        None => line(false, "wall time against objdump's: not measured".into()),
    }
    let rss = r.nums("scan_rss_kb", "wqflush");
    match median(rss.values().map(|kb| kb / 1024.0).collect()) {
        Some(mb) => line(
            mb <= RSS_GOAL_MB,
            format!("peak RSS {mb:.1} MB (goal <= {RSS_GOAL_MB} MB)"),
        ),
        None => line(false, "peak RSS: not measured".into()),
    }
    let all = summaries(r);
    line(
        !all.is_empty() && all.iter().all(|s| s.files == n && s.errors == 0),
        format!("read all {n} files, in every round, none failed"),
    );
    if let Some(x) = median(r.ratios("scan_cpu_ns", "wqflush", "objdump")) {
        let _ = writeln!(out, "  [info] scan: CPU time {x:.3}x objdump's");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_follow_the_measured_figures() {
        let summary = r#"{"type":"scan_summary","files":10,"sites":2,"modules":1,"errors":0}"#;
        let r = Results::parse(&format!(
            "scan_wall_ns 1 wqflush 3000000000\nscan_wall_ns 1 objdump 20000000000\n\
             scan_cpu_ns 1 wqflush 2000000000\nscan_cpu_ns 1 objdump 10000000000\n\
             scan_rss_kb 1 wqflush 70000\nscan_rss_kb 1 objdump 20000\n\
             scan_summary 1 wqflush {summary}\n"
        ))
        .unwrap();
        let g = goals(&r, 10);
        assert!(g.contains("[met] scan: wall time 0.150x objdump's"), "{g}");
        assert!(g.contains("[MISSED] scan: peak RSS 68.4 MB"), "{g}");
        assert!(g.contains("[met] scan: read all 10 files"), "{g}");
        assert!(g.contains("[info] scan: CPU time 0.200x"), "{g}");
        let g = goals(&r, 11);
        assert!(g.contains("[MISSED] scan: read all 11 files"), "{g}");
    }

    #[test]
    fn measures_one_process_alone() {
        // dd's buffer of 64 MiB, filled, is in its RSS; the next child's figure is its own.
        let (dd, status) = measure(Command::new("dd").args([
            "if=/dev/zero",
            "of=/dev/null",
            "bs=64M",
            "count=1",
            "status=none",
        ]))
        .unwrap();
        assert!(status.success());
        assert!(dd.rss_kb >= 64 * 1024, "dd's peak RSS {} KiB", dd.rss_kb);
        let (sh, status) = measure(Command::new("sh").args(["-c", "exit 3"])).unwrap();
        assert_eq!(status.code(), Some(3));
        assert!(sh.rss_kb < 64 * 1024, "sh's peak RSS {} KiB", sh.rss_kb);
        assert!(sh.cpu <= sh.wall + Duration::from_millis(10));
    }
}
