//! `cargo xtask bench`: what wqflush costs, next to no probe and next to bpftrace, measured in
//! one QEMU boot of a Debian kernel with interleaved runs (none, kprobe-multi, fentry, kprobe,
//! bpftrace, none, ...). Under TCG absolute times mean little; the ratios between runs of the
//! same boot do.
//!
//! The guest side is `scenario.sh` (with the timer `benchrun.c`); `results` reads what it
//! recorded, `rows` makes the table and the goals of it, `waits` those of what `--waits` adds,
//! `table` lays them out. `scan` is a phase of its own on this machine, no guest: `wqflush scan`
//! of a Debian module tree beside `objdump -dr`.

mod results;
mod rows;
pub mod scan;
mod table;
mod waits;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use wqflush_vmtest::{Arch, Guest, Series, VmRun, boot_scenario, cache_dir, host_program};

use results::Results;

/// The monitors compared, in the order each round runs them.
const CONFIGS: [&str; 5] = ["none", "kprobe-multi", "fentry", "kprobe", "bpftrace"];
/// wqflush's own configurations (its attach methods), the default first.
const METHODS: [&str; 3] = ["kprobe-multi", "fentry", "kprobe"];
/// Empty bpftrace programs on the same hook (fentry, kprobe), run in the own-queue rounds only:
/// what entering a probe costs before any program runs, the floor for any tool.
const FLOORS: [&str; 2] = ["empty-fentry", "empty-kprobe"];
/// Flushes in each storm: 4 kthreads bound to CPU 0 beside a busy one (the `storm` trigger).
const STORM: u64 = 100_000;
/// What `--waits` is measured against, in the order each round runs them: no probe, then
/// wqflush's default (`--attach auto`) without and with `--waits`.
const WAITS_CONFIGS: [&str; 3] = ["none", "default", "default-waits"];
/// Work items per run of the `workitems` trigger (one writer; the throughput run has one such
/// writer on each CPU).
const WORK_ITEMS: u64 = 50_000;
/// Runs of each `--waits` measurement a round, the configs interleaved; the fastest counts (its
/// goals are a few percent, and other guests on the machine only ever add time).
const WAITS_REPEATS: u32 = 5;
/// Where bpftrace goes in the guest (its libraries go where the guest's loader looks for them).
const BPFTRACE_GUEST: &str = "/usr/bin/bpftrace";
/// bpftrace, its libraries and the monitors' run time need more than the default 1 GiB.
const GUEST_MEMORY_MB: u32 = 3072;

/// The guest's side, and its timer, compiled on the host.
const SCENARIO: &str = include_str!("scenario.sh");
const BENCHRUN_C: &str = include_str!("benchrun.c");

pub struct Options {
    pub series: Series,
    /// Rounds of the interleaved runs.
    pub rounds: u32,
    /// `bench <n>`: flushes of the module's own queue per run (non-offending path).
    pub iterations: u64,
    /// Offending flushes of system_wq per run, split over the two CPUs.
    pub flushes: u64,
    /// Distinct call sites for the memory figure (at most 10000).
    pub sites: u32,
    /// Only the `--waits` phase (no bpftrace): a quick loop.
    pub waits_only: bool,
    /// Only the scan phase, on this machine (no guest).
    pub scan_only: bool,
    /// The Debian series whose module tree the scan phase reads.
    pub scan_series: Series,
    /// The guest's architecture (`WQFLUSH_ARCH` must name the same for the harness).
    pub arch: Arch,
}

/// What the guest's part cannot run with, checked before the scan phase spends its minutes.
pub fn check(opts: &Options) -> Result<()> {
    if opts.scan_only {
        return Ok(());
    }
    ensure!(
        (1..=10000).contains(&opts.sites),
        "--sites must be 1..=10000"
    );
    // bpftrace's program names each system queue with kaddr(), which needs data symbols in
    // kallsyms: Debian's arm64 6.1 has none (no CONFIG_KALLSYMS_ALL).
    ensure!(
        opts.waits_only || !(opts.arch == Arch::Arm64 && opts.series == Series::V6_1),
        "bench --arch arm64 --kernel 6.1: that kernel's kallsyms has no system_*wq symbols for \
         bpftrace's kaddr(); use 6.12 or 7, or --waits-only"
    );
    Ok(())
}

/// The guest's part: one boot, every round of the interleaved runs.
pub fn run(opts: &Options, wqflush: &Path) -> Result<()> {
    check(opts)?;
    let started = Instant::now();
    // The --waits phase runs no bpftrace: without the rest, the guest needs none.
    let mut files = match opts.waits_only {
        true => Vec::new(),
        false => guest_bpftrace(opts.arch)?,
    };
    let benchrun = build_benchrun(opts.arch, &cache_dir().join("bench"))?;
    files.push((benchrun, "/bin/benchrun".to_owned()));
    let guest = Guest {
        wqflush: Some(wqflush.to_path_buf()),
        // Every run boots its monitor, and bpftrace compiles its program with LLVM under TCG. A
        // quiet machine needs about half of this; a busy one (other guests) can need all of it.
        timeout: Duration::from_secs(
            1800 + u64::from(opts.rounds)
                * (1500 + opts.flushes / 5_000 + opts.iterations / 2_500 + WORK_ITEMS / 100),
        ),
        expected_warning: None,
        append: preemption(opts.series, opts.arch),
        files,
        memory_mb: GUEST_MEMORY_MB,
    };
    eprintln!(
        "xtask: bench on Debian {} {} ({}), {} rounds of {}, guest timeout {:?}",
        opts.series,
        opts.arch.debian(),
        if guest.append.is_empty() {
            "its own preemption"
        } else {
            guest.append
        },
        opts.rounds,
        match opts.waits_only {
            true => WAITS_CONFIGS.join(" "),
            false => format!("{} and {}", CONFIGS.join(" "), WAITS_CONFIGS.join(" ")),
        },
        guest.timeout
    );
    let (run, _) = boot_scenario(opts.series, &scenario(opts), &guest)?;
    report(opts, &run, Some(started.elapsed()))
}

/// The kernel command line of the bench: amd64's 6.x, built with dynamic preemption and
/// voluntary by default, boots with full preemption so the storm shows what preemption does to
/// a probe (7.x's own default is lazy; 5.10 is built voluntary). Debian builds arm64's 6.x
/// voluntary without dynamic preemption, so `preempt=full` would change nothing there.
fn preemption(series: Series, arch: Arch) -> &'static str {
    match (series, arch) {
        (Series::V6_1 | Series::V6_12, Arch::Amd64) => "preempt=full",
        _ => "",
    }
}

/// Prints the table again from a boot kept with `WQFLUSH_VM_KEEP=1` (its console.log and
/// data.log); `opts` must be the options of that run.
pub fn replay(opts: &Options, dir: &Path) -> Result<()> {
    report(opts, &VmRun::load(dir)?, None)
}

fn report(opts: &Options, run: &VmRun, took: Option<Duration>) -> Result<()> {
    if let Ok(log) = run.section("log") {
        eprint!("{log}");
    }
    run.ensure_success()?;
    let results = Results::parse(run.section("results")?)?;
    let release = run.kernel_release().unwrap_or("?");
    print!("{}", rows::table(&results, opts, release, took));
    Ok(())
}

/// The guest script: the parameters, then `scenario.sh`.
fn scenario(opts: &Options) -> String {
    let half = opts.flushes / 2;
    format!(
        "ROUNDS={}\nITER={}\nHALF1={}\nHALF2={}\nSITES={}\nSTORM={STORM}\nCONFIGS=\"{}\"\n\
         FLOORS=\"{}\"\nBPFTRACE={BPFTRACE_GUEST}\nWAITS_CONFIGS=\"{}\"\nITEMS={WORK_ITEMS}\n\
         REPEATS={WAITS_REPEATS}\nWAITS_ONLY={}\n{SCENARIO}",
        opts.rounds,
        opts.iterations,
        half,
        opts.flushes - half,
        opts.sites,
        CONFIGS.join(" "),
        FLOORS.join(" "),
        WAITS_CONFIGS.join(" "),
        u8::from(opts.waits_only)
    )
}

/// Debian's bpftrace and its libraries for the guest: this machine's on amd64 (installed if
/// missing), bookworm's arm64 build on arm64 (downloaded into the VM cache).
fn guest_bpftrace(arch: Arch) -> Result<Vec<(PathBuf, String)>> {
    if arch == Arch::Amd64 {
        host_bpftrace()?;
    }
    host_program::for_guest("bpftrace", "bpftrace", BPFTRACE_GUEST)
}

/// Debian's bpftrace on the host (installed if missing), to copy into the guest.
fn host_bpftrace() -> Result<PathBuf> {
    let path = PathBuf::from("/usr/bin/bpftrace");
    if !path.exists() {
        eprintln!("xtask: installing bpftrace (only the bench uses it)");
        let status = Command::new("apt-get")
            .args(["install", "-y", "-q", "bpftrace"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("apt-get install bpftrace")?;
        ensure!(
            status.success(),
            "apt-get install bpftrace failed ({status})"
        );
    }
    ensure!(
        path.exists(),
        "{} missing after installing bpftrace",
        path.display()
    );
    Ok(path)
}

/// Compiles the guest's timer (static, for the guest's architecture) into `dir` (amd64's) or
/// `dir/<arch>`, again only when its source changed.
fn build_benchrun(arch: Arch, dir: &Path) -> Result<PathBuf> {
    let (dir, gcc) = match arch {
        Arch::Amd64 => (dir.to_path_buf(), "gcc"),
        // Debian's cross compiler (gcc-aarch64-linux-gnu), which the arm64 build also uses.
        Arch::Arm64 => (dir.join(arch.debian()), "aarch64-linux-gnu-gcc"),
    };
    let dir = dir.as_path();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (src, bin) = (dir.join("benchrun.c"), dir.join("benchrun"));
    if bin.exists() && std::fs::read_to_string(&src).is_ok_and(|s| s == BENCHRUN_C) {
        return Ok(bin);
    }
    std::fs::write(&src, BENCHRUN_C).with_context(|| format!("writing {}", src.display()))?;
    let status = Command::new(gcc)
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .with_context(|| format!("running {gcc}"))?;
    ensure!(
        status.success(),
        "{gcc} -static benchrun.c failed ({status})"
    );
    Ok(bin)
}
