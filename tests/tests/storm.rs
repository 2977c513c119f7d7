//! Exact on every preemption model: kthreads bound to one CPU beside a busy one flush
//! system_highpri_wq (the module's `storm` trigger), so flushers are preempted wherever the kernel
//! can preempt them. With `--attach auto` every flush is counted and the kernel reports no miss;
//! with `--attach fentry` what it did not count is exactly what the kernel says it skipped.
//!
//! The oracle is the kernel's own statistics of each loaded program, read from
//! `/proc/PID/fdinfo` of wqflush's program fds (`run_cnt` with `kernel.bpf_stats_enabled=1`,
//! `recursion_misses`), beside the module's own count of the flushes it made.
//!
//! 7.x runs with Debian's default preemption (lazy); the other dynamic kernels with
//! `preempt=full`; 5.10 is built voluntary, and so are arm64's 6.1 and 6.12 (without dynamic
//! preemption: `preempt=full` would change nothing).

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use wqflush_vmtest::{
    Arch, Guest, PerKernel, Series, VmRun, boot_scenario, guest::scenario, host_program, records,
    wqflush_bin,
};

/// Flushes per storm, over 4 kthreads (25,000 each, as in the measurement the issue reports).
const STORM: u64 = 100_000;

const SCENARIO: &str = include_str!("../guest/storm.sh");

/// Where util-linux's setpriv (of the guest's architecture) goes in the guest, apart from
/// busybox's applet of that name.
const SETPRIV: &str = "/opt/util-linux/setpriv";

fn run(series: Series) -> Result<&'static VmRun> {
    static RUNS: PerKernel = PerKernel::new();
    RUNS.get(series, || {
        let guest = Guest {
            wqflush: Some(wqflush_bin()?),
            files: host_program::for_guest("setpriv", "util-linux", SETPRIV)?,
            timeout: Duration::from_secs(600),
            expected_warning: None,
            memory_mb: wqflush_vmtest::qemu::DEFAULT_MEMORY_MB,
            append: match (series, Arch::current()?) {
                // Debian builds amd64's 6.x dynamic with voluntary preemption by default; 7.x's
                // own default is lazy, which is what this test is about there.
                (Series::V6_1 | Series::V6_12, Arch::Amd64) => "preempt=full",
                _ => "",
            },
        };
        let storm = STORM.to_string();
        let script = scenario(&[("STORM", &storm), ("SETPRIV", SETPRIV)], SCENARIO);
        Ok(boot_scenario(series, &script, &guest)?.0)
    })
}

/// What one window saw: wqflush's summary, and the kernel's counters of its flush program.
struct Window {
    fired: u64,
    counted: u64,
    missed: Option<u64>,
    /// The flush program's fdinfo: (run_cnt, recursion_misses).
    kernel: (u64, u64),
    attach_line: String,
    stderr: String,
}

fn window(series: Series, name: &str) -> Result<Window> {
    let run = run(series)?;
    ensure!(
        run.section_status(&format!("{name}.status"))? == 0,
        "{name}: wqflush failed"
    );
    let fired: u64 = run.section(&format!("{name}.fired"))?.trim().parse()?;
    ensure!(
        fired == STORM,
        "{name}: the module fired {fired} of {STORM}"
    );
    let recs = records::records(run, &format!("{name}.json"))?;
    let summary = records::summary(&recs)?;
    let counted = records::count(summary, "wqflush_test_flush_storm");
    let stderr = run.section(&format!("{name}.err"))?.to_owned();
    let attach_line = stderr
        .lines()
        .find(|l| l.starts_with("wqflush: attached ("))
        .context("no attach line")?
        .to_owned();
    Ok(Window {
        fired,
        counted,
        missed: summary["missed"].as_u64(),
        kernel: flush_program(run.section(&format!("{name}.progs"))?)?,
        attach_line,
        stderr,
    })
}

/// run_cnt and recursion_misses of the flush program: the kprobe or tracing program that ran
/// most (the other one, module_load, is a raw tracepoint).
fn flush_program(fdinfo: &str) -> Result<(u64, u64)> {
    let mut progs: Vec<(String, u64, u64)> = Vec::new();
    for line in fdinfo.lines() {
        if line.starts_with("fd ") {
            progs.push((String::new(), 0, 0));
        } else if let (Some(p), Some((key, value))) = (progs.last_mut(), line.split_once(':')) {
            let value = value.trim();
            match key {
                "prog_type" => p.0 = value.to_owned(),
                "run_cnt" => p.1 = value.parse()?,
                "recursion_misses" => p.2 = value.parse()?,
                _ => {}
            }
        }
    }
    progs
        .into_iter()
        .filter(|(ty, ..)| ty != "17")
        .map(|(_, runs, misses)| (runs, misses))
        .max()
        .context("wqflush holds no flush program")
}

/// The method `--attach auto` must pick in this test's boot, and whether the kernel counts its
/// misses.
fn expected_auto(series: Series) -> Result<(&'static str, bool)> {
    if Arch::current()? == Arch::Arm64 {
        // Debian's arm64 kernels: fprobe on 7.x only; 6.12 voluntary with direct calls (fentry
        // cannot lose there); 6.1 without direct calls, so no fentry at all.
        return Ok(match series {
            Series::V7 => ("kprobe-multi", true),
            Series::V6_12 => ("fentry", true),
            _ => ("kprobe", series.counts_kprobe_misses()),
        });
    }
    Ok(if series.has_fprobe() {
        ("kprobe-multi", series.counts_kprobe_misses())
    } else if series == Series::V5_10 {
        // Before 5.12 a trampoline never skips a run, so fentry cannot lose.
        ("fentry", true)
    } else {
        // 6.1 under preempt=full, without fprobe: fentry could lose, so the kprobe.
        ("kprobe", series.counts_kprobe_misses())
    })
}

fn auto_is_exact(series: Series) -> Result<()> {
    let w = window(series, "auto")?;
    let (method, counted_misses) = expected_auto(series)?;
    ensure!(
        w.attach_line.contains(&format!("({method} on ")),
        "auto chose: {}",
        w.attach_line
    );
    ensure!(
        w.counted == w.fired,
        "auto counted {} of {} flushes",
        w.counted,
        w.fired
    );
    let want = counted_misses.then_some(0);
    ensure!(w.missed == want, "missed {:?}, want {want:?}", w.missed);
    let (runs, misses) = w.kernel;
    ensure!(
        runs >= w.fired && misses == 0,
        "kernel: the program ran {runs} times and was skipped {misses} times for {} flushes",
        w.fired
    );
    Ok(())
}

fn fentry_misses_are_counted(series: Series) -> Result<()> {
    if !series.has_fentry() {
        eprintln!("{series}: no fentry on this kernel");
        return Ok(());
    }
    let w = window(series, "fentry")?;
    let missed = w
        .missed
        .context("fentry's misses are counted on every tested kernel")?;
    ensure!(
        w.counted + missed == w.fired,
        "fentry counted {} and missed {missed} of {} flushes",
        w.counted,
        w.fired
    );
    let (runs, misses) = w.kernel;
    ensure!(
        misses == missed && runs + misses >= w.fired,
        "kernel: {runs} runs, {misses} skipped; wqflush says {missed} missed"
    );
    let warned = w.stderr.contains("the kernel skipped the probe");
    ensure!(
        warned == (missed > 0),
        "warning {warned} for {missed} misses:\n{}",
        w.stderr
    );
    eprintln!(
        "{series}: fentry storm: {} counted, {missed} missed of {}",
        w.counted, w.fired
    );
    Ok(())
}

/// Under the unit's capabilities (no CAP_SYS_ADMIN) and `perf_event_paranoid=3` the default
/// still attaches and counts the storm exactly, except where no method that cannot lose is
/// left (6.1 under `preempt=full`: no fprobe, fentry preemptible, kprobe refused), which must
/// say so and point at `--attach fentry`. A forced kprobe says the paranoid level is why.
fn under_the_unit(series: Series) -> Result<()> {
    let run = run(series)?;
    if series == Series::V6_1 {
        let err = run.section("unit.err")?;
        ensure!(run.section_status("unit.status")? == 1, "{err}");
        // amd64: fentry is there but can lose under preempt=full; arm64: it is not there.
        let fentry = if series.has_fentry() {
            "--attach fentry"
        } else {
            "cannot attach BPF trampolines"
        };
        ensure!(
            err.contains("perf_event_paranoid is 3") && err.contains(fentry),
            "{err}"
        );
    } else {
        let caps = run.section("unit.caps")?;
        // CAP_SYSLOG (34), CAP_PERFMON (38), CAP_BPF (39) only.
        ensure!(caps.contains("000000c400000000"), "capabilities: {caps}");
        let w = window(series, "unit")?;
        ensure!(
            w.counted == w.fired,
            "unit: counted {} of {}",
            w.counted,
            w.fired
        );
        let (method, _) = expected_auto(series)?;
        ensure!(
            w.attach_line.contains(&format!("({method} on ")),
            "{}",
            w.attach_line
        );
    }
    let kprobe = run.section("unit_kprobe")?;
    ensure!(
        run.section_status("unit_kprobe")? == 1 && kprobe.contains("perf_event_paranoid is 3"),
        "a forced kprobe under the unit: {kprobe}"
    );
    Ok(())
}

wqflush_vmtest::per_kernel_tests! {
    auto_counts_a_same_cpu_storm_exactly => auto_is_exact,
    fentry_misses_in_a_storm_are_counted => fentry_misses_are_counted,
    the_default_works_under_the_units_capabilities => under_the_unit,
}
