//! Hostile kernels, bad environments and faults, in real Debian kernels: each must end in one
//! clear message and a non-zero exit (or, for faults, a complete report), never a panic, and a
//! killed wqflush must leave no probe behind. One boot per kernel.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use wqflush_vmtest::{PerKernel, Series, VmRun, records};

const SCENARIO: &str = r#"
load_test_module || exit 1
probes() { grep -cw "$(flush_fn)" /sys/kernel/debug/kprobes/list /sys/kernel/tracing/enabled_functions; true; }

# Not root: an unprivileged user.
echo 'nobody:x:65534:65534:nobody:/:/bin/sh' >> /etc/passwd
emit unprivileged su nobody -s /bin/sh -c 'wqflush --duration 1'
emit unprivileged_doctor su nobody -s /bin/sh -c 'wqflush doctor'
emit root_doctor wqflush doctor

# kernel.kptr_restrict=2: kallsyms addresses are 0 even for root.
echo 2 > /proc/sys/kernel/kptr_restrict
emit kptr_restrict wqflush --duration 1
echo 0 > /proc/sys/kernel/kptr_restrict

# /proc/kallsyms unreadable (here: empty).
mount --bind /dev/null /proc/kallsyms
emit no_kallsyms wqflush --duration 1
umount /proc/kallsyms

# No kernel BTF: fentry and name matching impossible, kprobe still works.
mount --bind /dev/null /sys/kernel/btf/vmlinux
emit no_btf_fentry wqflush --attach fentry --duration 1
emit no_btf_name wqflush --match name --duration 1
wqflush_start no_btf wqflush || exit 1
fire long 1
wqflush_stop no_btf
umount /sys/kernel/btf/vmlinux

# SIGKILL leaves no probe attached, for every method the kernel offers.
emit probes_before probes
methods="fentry kprobe"
wqflush doctor | grep -q "kprobe-multi: available" && methods="$methods kprobe-multi"
emit methods echo $methods
for m in $methods; do
	wqflush_start kill_$m wqflush --attach $m || exit 1
	emit probes_live_$m probes
	kill -KILL $(cat /tmp/kill_$m.pid); sleep 1
	emit probes_after_$m probes
done

# Two instances at once both report.
wqflush_start twin_a wqflush || exit 1
wqflush_start twin_b wqflush --attach kprobe || exit 1
fire long 2
wqflush_stop twin_a
wqflush_stop twin_b

# Beside another tracer's return probe on the flush function (here a second wqflush's kretprobe,
# attached first): the fentry instance names the caller, or says why it cannot.
wqflush_start kret_a wqflush --attach kprobe --waits || exit 1
wqflush_start kret_b wqflush --attach fentry || exit 1
fire long 1
wqflush_stop kret_b
wqflush_stop kret_a

# SIGINT prints the summary too (wqflush handles it even where a shell ignored it).
wqflush_start sigint wqflush || exit 1
fire pointer 3
kill -INT $(cat /tmp/sigint.pid)
wqflush_stop sigint

# A full disk on the JSON sink: an error message and exit 1.
wqflush --json --ready-file /tmp/full.ready >/dev/full 2>/tmp/full.err &
full=$!
wait_for_file /tmp/full.ready 60 || exit 1
fire long 1
emit full.status stop_bg $full 20
emit full.err cat /tmp/full.err

# Before 5.11 BPF maps are charged to RLIMIT_MEMLOCK (64 KiB by default there): wqflush must
# still attach and report under that limit.
emit memlock sh -c 'ulimit -l 64 && echo "memlock: $(ulimit -l)" &&
	exec wqflush check --json -- sh -c "echo long 1 > /proc/wqflush_test"'

# A module loaded after wqflush started (it re-reads kallsyms on the module_load tracepoint),
# that flushes and is unloaded right away, is still named: its symbols were read at its load
# and are kept after it went. Its exit function flushes too ('exit'): it must be named as the
# kernel names it, not by its alias cleanup_module. The re-read must have reached the module's
# lines first: they come last in /proc/kallsyms, which takes 1.5 s to read on 7.x under TCG.
rmmod wqflush_test || exit 1
wqflush_start unload wqflush || exit 1
insmod /lib/wqflush_test.ko || exit 1
sleep 4
fire long 1 && fire exit 1 && rmmod wqflush_test
wqflush_stop unload
true
"#;

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
    let mut methods = vec!["fentry", "kprobe"];
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
