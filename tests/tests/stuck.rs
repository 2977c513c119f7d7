//! `--waits --stuck-after`: a flush that never returns is reported while it waits, naming the
//! work items it waits for.
//!
//! Two real deadlocks, each once per boot:
//! - `worker_self`: a system_long_wq work item flushes system_long_wq, so it waits for itself;
//! - `abba`: the writing task holds a mutex and flushes system_highpri_wq while a work item of
//!   that queue, started before the flush, waits for the mutex.
//!
//! Each kernel boots twice, once with wqflush attached by fentry and once by kprobe. The guest
//! notes (by /proc/uptime) when the output first holds each stuck record. The oracle is /proc,
//! independent of wqflush: which tasks are in D, their comm (a kworker's names the queue of the
//! item it runs) and the module's functions on their stacks.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use wqflush_vmtest::{PerKernel, Series, VmRun, guest::scenario, records};

const STUCK_AFTER_S: f64 = 3.0;
/// The budget past --stuck-after: user space polls once a second.
const SLACK_S: f64 = 2.0;

/// One boot per method: a kretprobe (the kprobe method's exit probe) replaces the return address
/// into the flush's caller on the stack, and before 5.16 nothing unwinds through it, so a
/// second instance's fentry program would read the kretprobe's trampoline as the call site.
const SCENARIO: &str = include_str!("../guest/stuck.sh");

fn run(series: Series, method: &str) -> Result<&'static VmRun> {
    static FENTRY: PerKernel = PerKernel::new();
    static KPROBE: PerKernel = PerKernel::new();
    static MULTI: PerKernel = PerKernel::new();
    let runs = match method {
        "fentry" => &FENTRY,
        "kprobe-multi" => &MULTI,
        _ => &KPROBE,
    };
    let script = scenario(&[("METHOD", method)], SCENARIO);
    runs.with_wqflush(series, &script, Duration::from_secs(300), None)
}

/// A blocked task as the scenario's `blocked` section lists it.
struct Blocked<'a> {
    pid: &'a str,
    comm: &'a str,
    functions: Vec<&'a str>,
}

fn blocked(section: &str) -> Vec<Blocked<'_>> {
    section
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some(Blocked {
                pid: words.next()?,
                comm: words.next()?,
                functions: words.collect(),
            })
        })
        .collect()
}

/// One deadlock as a trigger makes it, and what the report must say of it.
struct Deadlock {
    caller: &'static str,
    wq: &'static str,
    wq_name: &'static str,
    /// The work function the flush waits for.
    waits_for: &'static str,
    /// Columns of `times`: when the trigger was written, and when the stuck record was first seen.
    started: usize,
    column: usize,
    /// The flusher is the work item itself (else the background writer).
    by_worker: bool,
}

const SELF: Deadlock = Deadlock {
    caller: "wqflush_test_work_flush_self",
    wq: "system_long_wq",
    wq_name: "events_long",
    waits_for: "wqflush_test_work_flush_self",
    started: 0,
    column: 1,
    by_worker: true,
};

const ABBA: Deadlock = Deadlock {
    caller: "wqflush_test_flush_abba",
    wq: "system_highpri_wq",
    wq_name: "events_highpri",
    waits_for: "wqflush_test_abba_work",
    started: 2,
    column: 3,
    by_worker: false,
};

/// The oracle, from /proc alone: the blocked flusher (the kworker running an item of the queue
/// for `worker_self`, the background writer for `abba`), and the blocked kworker of that queue
/// running the awaited function (the flusher itself for `worker_self`). A kretprobe hides the
/// flush's caller from /proc/PID/stack before 5.16, so the flusher is found by comm or pid.
fn oracle<'a>(
    run: &VmRun,
    tasks: &'a [Blocked<'a>],
    d: &Deadlock,
) -> Result<(&'a Blocked<'a>, &'a str)> {
    let suffix = format!("+{}", d.wq_name);
    let worker = |t: &&Blocked| t.comm.ends_with(&suffix);
    if d.by_worker {
        let workers: Vec<_> = tasks.iter().filter(worker).collect();
        ensure!(
            workers.len() == 1,
            "blocked workers of {}: {}",
            d.wq_name,
            workers.len()
        );
        return Ok((workers[0], workers[0].pid));
    }
    let pid = run.section("abba_pid")?.trim().to_owned();
    let flusher = tasks
        .iter()
        .find(|t| t.pid == pid)
        .context("the abba writer is not blocked")?;
    let awaited = tasks
        .iter()
        .filter(worker)
        .find(|t| t.functions.contains(&d.waits_for))
        .with_context(|| format!("no blocked worker of {} inside {}", d.wq_name, d.waits_for))?;
    Ok((flusher, awaited.pid))
}

fn check(series: Series, method: &str, d: &Deadlock) -> Result<()> {
    if method == "fentry" && !series.has_fentry() {
        eprintln!("{series}: no fentry on this kernel");
        return Ok(());
    }
    let run = run(series, method)?;
    let err = run.section("w.err")?;
    ensure!(
        run.section_status("w.status")? == 0,
        "{method}: wqflush failed:\n{err}"
    );
    let section = run.section("blocked")?;
    let tasks = blocked(section);
    let (flusher, awaited) =
        oracle(run, &tasks, d).with_context(|| format!("blocked:\n{section}"))?;
    let recs = records::records(run, "w.json")?;
    let all = || {
        let all: Vec<String> = recs.iter().map(ToString::to_string).collect();
        format!(
            "records:\n{}\nstderr:\n{err}\nblocked:\n{section}",
            all.join("\n")
        )
    };
    let stuck: Vec<&Value> = recs
        .iter()
        .filter(|r| r["type"] == "stuck" && r["caller"] == d.caller)
        .collect();
    ensure!(
        stuck.len() == 1,
        "{method}: stuck records of {}: {}",
        d.caller,
        all()
    );
    reported_in_time(series, method, run, d, stuck[0], &all)?;
    names_flusher_and_item(stuck[0], d, flusher, awaited)?;
    let summary = records::summary(&recs)?;
    let sites = records::sites(summary, d.caller);
    ensure!(
        sites.len() == 1 && sites[0]["stuck"] == 1 && sites[0]["waits"] == 0,
        "{summary}"
    );
    ensure!(summary["exits_missed"] == 0, "{summary}");
    Ok(())
}

/// The stuck record came within `--stuck-after` + the slack of the trigger, by the guest's
/// clock, and says it waited about that long.
fn reported_in_time(
    series: Series,
    method: &str,
    run: &VmRun,
    d: &Deadlock,
    rec: &Value,
    all: &dyn Fn() -> String,
) -> Result<()> {
    let times: Vec<&str> = run.section("times")?.split_whitespace().collect();
    ensure!(times.len() == 4, "times: {times:?}");
    let t0: f64 = times[d.started].parse().context("trigger time")?;
    let at: f64 = times[d.column]
        .parse()
        .with_context(|| format!("{method}: no stuck record within 15 s\n{}", all()))?;
    eprintln!(
        "{series} {method}: stuck record {:.2} s after the trigger: {rec}",
        at - t0
    );
    ensure!(
        at - t0 <= STUCK_AFTER_S + SLACK_S,
        "{method}: stuck record {:.2} s after the trigger",
        at - t0
    );
    let waiting = rec["waiting_ns"].as_u64().context("waiting_ns")?;
    ensure!(
        waiting >= 3_000_000_000 && (waiting as f64) < (STUCK_AFTER_S + SLACK_S + 1.0) * 1e9,
        "{rec}"
    );
    Ok(())
}

/// The record names the module, the queue, the flushing task and the awaited work item with
/// its worker, as /proc does.
fn names_flusher_and_item(
    rec: &Value,
    d: &Deadlock,
    flusher: &Blocked<'_>,
    awaited: &str,
) -> Result<()> {
    ensure!(
        rec["module"] == "wqflush_test" && rec["wq"] == d.wq && rec["wq_name"] == d.wq_name,
        "{rec}"
    );
    ensure!(
        rec["pid"].as_u64().map(|p| p.to_string()).as_deref() == Some(flusher.pid)
            && rec["comm"].as_str() == flusher.comm.split('+').next(),
        "{rec}\nthe flusher per /proc: {} {}",
        flusher.pid,
        flusher.comm
    );
    let running = rec["running"].as_array().context("running")?;
    ensure!(
        running.iter().any(|r| r["function"] == d.waits_for
            && r["module"] == "wqflush_test"
            && r["pid"].as_u64().map(|p| p.to_string()).as_deref() == Some(awaited)),
        "{rec}"
    );
    Ok(())
}

fn self_with_fentry(series: Series) -> Result<()> {
    check(series, "fentry", &SELF)
}

fn self_with_kprobe(series: Series) -> Result<()> {
    check(series, "kprobe", &SELF)
}

fn abba_with_fentry(series: Series) -> Result<()> {
    check(series, "fentry", &ABBA)
}

fn abba_with_kprobe(series: Series) -> Result<()> {
    check(series, "kprobe", &ABBA)
}

/// With kprobe-multi on 6.12 and 7.x, waits go through a kprobe session: a flush that never
/// returns is tracked by its entry run alone.
fn self_with_kprobe_multi(series: Series) -> Result<()> {
    if !series.has_fprobe() {
        eprintln!("{series}: no fprobe, no kprobe-multi");
        return Ok(());
    }
    check(series, "kprobe-multi", &SELF)
}

wqflush_vmtest::per_kernel_tests! {
    self_flush_is_stuck_with_fentry => self_with_fentry,
    self_flush_is_stuck_with_kprobe => self_with_kprobe,
    abba_flush_is_stuck_with_fentry => abba_with_fentry,
    abba_flush_is_stuck_with_kprobe => abba_with_kprobe,
    self_flush_is_stuck_with_kprobe_multi => self_with_kprobe_multi,
}
