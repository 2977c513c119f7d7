//! Hostile kernels, bad environments and faults, in real Debian kernels: each must end in one
//! clear message and a non-zero exit (or, for faults, a complete report), never a panic, and a
//! killed wqflush must leave no probe behind. One boot per kernel.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use wqflush_vmtest::{PerKernel, Series, VmRun, records};

const SCENARIO: &str = include_str!("../guest/hostile.sh");

fn run(series: Series) -> Result<&'static VmRun> {
    static RUNS: PerKernel = PerKernel::new();
    RUNS.with_wqflush(series, SCENARIO, Duration::from_secs(400), None)
}

/// `section` exited 1 with one "wqflush: error:" message that says `want`.
fn clear_error(series: Series, section: &str, want: &str) -> Result<()> {
    let run = run(series)?;
    let text = run.section(section)?;
    let status = run.section_status(section)?;
    ensure!(status == 1, "{section}: exit {status}\n{text}");
    ensure!(!text.contains("panicked"), "{section}: {text}");
    let errors = text.matches("wqflush: error:").count();
    ensure!(
        errors == 1 && text.contains(want),
        "{section}: want {want:?} in\n{text}"
    );
    Ok(())
}

/// The summary's count for `caller`, after checking wqflush exited 0 with a summary last.
fn summary_count(series: Series, name: &str, caller: &str) -> Result<u64> {
    let run = run(series)?;
    ensure!(
        run.section_status(&format!("{name}.status"))? == 0,
        "{name}: non-zero exit"
    );
    let recs = records::records(run, &format!("{name}.json"))?;
    Ok(records::count(records::summary(&recs)?, caller))
}

fn environments(series: Series) -> Result<()> {
    clear_error(series, "unprivileged", "run wqflush as root")?;
    let run = run(series)?;
    let doctor = run.section("unprivileged_doctor")?;
    let lacks = "privileges:       lacks CAP_BPF, CAP_PERFMON, CAP_SYSLOG: run as root";
    ensure!(
        doctor.contains(lacks) && run.section_status("unprivileged_doctor")? == 1,
        "{doctor}"
    );
    let doctor = run.section("root_doctor")?;
    ensure!(
        doctor.contains("privileges:       has CAP_BPF, CAP_PERFMON, CAP_SYSLOG"),
        "{doctor}"
    );
    clear_error(series, "kptr_restrict", "kernel.kptr_restrict=2")?;
    clear_error(series, "no_kallsyms", "/proc/kallsyms lists no functions")?;
    clear_error(series, "no_btf_fentry", "fentry needs kernel BTF")?;
    // A kernel without fentry (Debian's arm64 6.1) says why when it is asked for.
    if series.has_fentry() {
        ensure!(run.section_status("fentry_attempt")? == 0, "fentry_attempt");
    } else {
        clear_error(series, "fentry_attempt", "cannot attach BPF trampolines")?;
    }
    clear_error(series, "no_btf_name", "needs kernel BTF")?;
    Ok(())
}

fn without_btf_kprobe_still_works(series: Series) -> Result<()> {
    ensure!(
        summary_count(series, "no_btf", "wqflush_test_flush_long")? == 1,
        "count"
    );
    let run = run(series)?;
    ensure!(
        run.section("no_btf.err")?.contains("attached (kprobe"),
        "fell back to kprobe"
    );
    let recs = records::records(run, "no_btf.json")?;
    let first = recs
        .iter()
        .find(|r| r["caller"] == "wqflush_test_flush_long")
        .context("flush")?;
    ensure!(
        first["worker"].is_null(),
        "no BTF, so whether it is a worker is unknown: {first}"
    );
    Ok(())
}

fn sigkill_leaves_no_probe(series: Series) -> Result<()> {
    let run = run(series)?;
    let count = |s: &str| -> Result<u64> {
        let text = run.section(s)?;
        Ok(text
            .lines()
            .filter_map(|l| l.rsplit(':').next()?.trim().parse::<u64>().ok())
            .sum())
    };
    let before = count("probes_before")?;
    let mut methods = vec!["kprobe"];
    if series.has_fentry() {
        methods.insert(0, "fentry");
    }
    if series.has_fprobe() {
        methods.push("kprobe-multi");
    }
    ensure!(
        run.section("methods")?
            .split_whitespace()
            .eq(methods.iter().copied()),
        "methods tried: {}",
        run.section("methods")?
    );
    for m in methods {
        let live = count(&format!("probes_live_{m}"))?;
        let after = count(&format!("probes_after_{m}"))?;
        ensure!(
            live > before,
            "{m}: the kernel never showed the probe ({before} -> {live})"
        );
        ensure!(
            after == before,
            "{m}: {after} probe(s) left after SIGKILL, {before} before"
        );
    }
    Ok(())
}

fn faults(series: Series) -> Result<()> {
    ensure!(
        summary_count(series, "twin_a", "wqflush_test_flush_long")? == 2,
        "twin a"
    );
    ensure!(
        summary_count(series, "twin_b", "wqflush_test_flush_long")? == 2,
        "twin b"
    );
    ensure!(
        summary_count(series, "sigint", "wqflush_test_flush_pointer")? == 3,
        "SIGINT summary"
    );
    let run = run(series)?;
    let full = run.section("full.err")?;
    ensure!(
        run.section_status("full.status")? == 1,
        "full disk: exit status"
    );
    ensure!(
        full.contains("wqflush: error:") && full.contains("No space left"),
        "{full}"
    );
    ensure!(!full.contains("panicked"), "{full}");
    Ok(())
}

/// Another tracer's kretprobe on the flush function: either the caller is right, or it reads as
/// the trampoline and wqflush says the caller is hidden (5.10) — never a silent wrong site.
fn beside_a_kretprobe(series: Series) -> Result<()> {
    if !series.has_fentry() {
        eprintln!("{series}: no fentry on this kernel");
        return Ok(());
    }
    let run = run(series)?;
    let recs = records::records(run, "kret_b.json")?;
    let first = recs
        .iter()
        .find(|r| r["type"] == "flush")
        .context("no flush record beside the kretprobe")?;
    let err = run.section("kret_b.err")?;
    let named = first["caller"] == "wqflush_test_flush_long";
    let hidden = first["caller"]
        .as_str()
        .is_some_and(|c| c.contains("trampoline"))
        && err.contains("hides the caller while it is attached");
    eprintln!("{series}: beside a kretprobe: {} ({err})", first["caller"]);
    ensure!(named || hidden, "{first}\nstderr: {err}");
    ensure!(
        summary_count(series, "kret_a", "wqflush_test_flush_long")? == 1,
        "the kprobe instance"
    );
    Ok(())
}

fn unloaded_module_is_named(series: Series) -> Result<()> {
    let recs = records::records(run(series)?, "unload.json")?;
    for caller in ["wqflush_test_flush_long", "wqflush_test_exit"] {
        ensure!(
            summary_count(series, "unload", caller)? == 1,
            "want one flush from {caller} in the summary: {:?}",
            recs.last()
        );
        let first = recs
            .iter()
            .find(|r| r["type"] == "flush" && r["caller"] == caller);
        let first = first.with_context(|| format!("no first sighting named {caller}"))?;
        ensure!(first["module"] == "wqflush_test", "{first}");
        ensure!(
            first["call_site"]
                .as_str()
                .is_some_and(|c| c.starts_with(&format!("{caller}+0x"))),
            "{first}"
        );
    }
    // The alias of the exit function is never the name: an alias module_exit() adds is never
    // chosen over a real name.
    ensure!(
        !recs
            .iter()
            .any(|r| r.to_string().contains("cleanup_module")),
        "cleanup_module named: {recs:?}"
    );
    Ok(())
}

/// Under `ulimit -l 64` (the default before 5.16; maps count against it before 5.11) wqflush
/// attaches and reports.
fn reports_under_a_small_memlock_limit(series: Series) -> Result<()> {
    let run = run(series)?;
    let text = run.section("memlock")?;
    ensure!(
        text.contains("memlock: 64\n"),
        "the limit was not set:\n{text}"
    );
    ensure!(
        run.section_status("memlock")? == 3,
        "check under ulimit -l 64 did not report the flush:\n{text}"
    );
    let recs = records::json_lines(text);
    let reported = records::flushes(&recs, "wqflush_test_flush_long");
    ensure!(!reported.is_empty(), "no flush record:\n{text}");
    Ok(())
}

wqflush_vmtest::per_kernel_tests! {
    bad_environments_get_one_clear_error => environments,
    without_btf_kprobe_still_reports => without_btf_kprobe_still_works,
    sigkill_leaves_no_probe_attached => sigkill_leaves_no_probe,
    twins_signals_and_a_full_disk => faults,
    beside_a_kretprobe_the_caller_is_right_or_said_hidden => beside_a_kretprobe,
    a_module_unloaded_right_after_it_flushed_is_named => unloaded_module_is_named,
    reports_under_ulimit_l_64 => reports_under_a_small_memlock_limit,
}
