//! `--waits`: how long an offending flush waited, and for which work items.
//!
//! The module's `slow 3` queues three work items on system_wq that sleep 200 ms each
//! (`wqflush_test_slow_work`), then flushes system_wq once from `wqflush_test_flush_slow`. The
//! oracle is tracefs, independent of wqflush: `workqueue_execute_start` events name the work
//! items that ran, and a kprobe/kretprobe pair on `wqflush_test_flush_slow` times the flush
//! from outside (the flush function's wait is inside that interval).

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use wqflush_vmtest::{PerKernel, Series, VmRun, guest::scenario, records};

const SLOW_NS: u64 = 200_000_000;

const SCENARIO: &str = include_str!("../guest/waits.sh");

fn run(series: Series) -> Result<&'static VmRun> {
    static RUNS: PerKernel = PerKernel::new();
    let multi = if series.has_fprobe() { "yes" } else { "no" };
    let fentry = series.fentry_or_kprobe();
    let script = scenario(&[("KPROBE_MULTI", multi), ("FENTRY", fentry)], SCENARIO);
    RUNS.with_wqflush(series, &script, Duration::from_secs(600), None)
}

/// What tracefs saw of one `slow 3`.
struct Traced {
    /// `workqueue_execute_start` events of the slow work function.
    started: u64,
    /// Its `workqueue_execute_end` events between the flush's kprobe and kretprobe.
    ended_during: u64,
    /// kprobe to kretprobe of `wqflush_test_flush_slow`, ns.
    flush_ns: u64,
    /// kprobe to the last `workqueue_execute_end` of the slow work function, ns.
    to_last_end_ns: u64,
}

/// Seconds on a tracefs line, before ` EVENT:`.
fn stamp(line: &str, event: &str) -> Option<f64> {
    let before = line.split(&format!(" {event}:")).next()?;
    before
        .split_whitespace()
        .last()?
        .trim_end_matches(':')
        .parse()
        .ok()
}

fn oracle(trace: &str, function: &str) -> Result<Traced> {
    let first = |event: &str| -> Result<f64> {
        trace
            .lines()
            .find_map(|l| stamp(l, event))
            .with_context(|| format!("no {event} event in:\n{trace}"))
    };
    let (t_in, t_out) = (first("slow_in")?, first("slow_out")?);
    let of_function = |event: &'static str| {
        trace
            .lines()
            .filter(move |l| l.contains(function))
            .filter_map(move |l| stamp(l, event))
    };
    let ends: Vec<f64> = of_function("workqueue_execute_end").collect();
    let last_end = ends.iter().copied().fold(t_in, f64::max);
    Ok(Traced {
        started: of_function("workqueue_execute_start").count() as u64,
        ended_during: ends.iter().filter(|&&t| t_in < t && t < t_out).count() as u64,
        flush_ns: ((t_out - t_in) * 1e9) as u64,
        to_last_end_ns: ((last_end - t_in) * 1e9) as u64,
    })
}

fn slow_site(summary: &Value) -> Result<&Value> {
    let sites = records::sites(summary, "wqflush_test_flush_slow");
    ensure!(sites.len() == 1, "slow sites: {sites:?}\n{summary}");
    Ok(sites[0])
}

fn waited_count(waited_for: &Value, function: &str) -> u64 {
    waited_for
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["function"] == function && w["module"] == "wqflush_test")
        .filter_map(|w| w["count"].as_u64())
        .sum()
}

fn check_method(series: Series, name: &str) -> Result<()> {
    let run = run(series)?;
    let err = run.section(&format!("{name}.err"))?;
    ensure!(
        run.section_status(&format!("{name}.status"))? == 0,
        "{name}: wqflush failed:\n{err}"
    );
    let recs = records::records(run, &format!("{name}.json"))?;
    let summary = records::summary(&recs)?;
    let site = slow_site(summary).with_context(|| {
        let all: Vec<String> = recs.iter().map(ToString::to_string).collect();
        format!("records:\n{}\nstderr:\n{err}", all.join("\n"))
    })?;
    let t = oracle(
        run.section(&format!("{name}.trace"))?,
        "wqflush_test_slow_work",
    )?;
    let max = site["wait_ns_max"].as_u64().context("wait_ns_max")?;
    let waited = waited_count(&site["waited_for"], "wqflush_test_slow_work");
    eprintln!(
        "{series} {name}: waits {} wait_ns_max {max} total {} waited_for {}; tracefs: {} started, \
         {} ended during the flush, flush {} ns, its start to the last end {} ns",
        site["waits"],
        site["wait_ns_total"],
        site["waited_for"],
        t.started,
        t.ended_during,
        t.flush_ns,
        t.to_last_end_ns
    );
    // A work item the kernel skipped the work_end program for is counted in waits_lost.
    let lost = summary["waits_lost"].as_u64().context("waits_lost")?;
    site_agrees(site, &t, max, waited, lost)?;
    returned_once(&recs, max, waited)
}

/// The slow flush's site: one flush, one wait, as long as tracefs timed it, waiting for the work
/// items tracefs saw end while it waited (or counted as lost).
fn site_agrees(site: &Value, t: &Traced, max: u64, waited: u64, lost: u64) -> Result<()> {
    ensure!(site["count"] == 1 && site["waits"] == 1, "{site}");
    ensure!(
        site["wait_ns_total"].as_u64() == Some(max),
        "one flush: total = max: {site}"
    );
    ensure!(t.started == 3, "tracefs saw {} slow work items", t.started);
    // The items sleep from when they are queued, before the flush: under TCG the flush can
    // start tens of ms later, so its wait may be under one item's 200 ms. It lies within the
    // caller's kprobe/kretprobe interval and ends after the last item's end; it starts later
    // than that kprobe by the kprobe's and trampoline's time under TCG (6-15 ms seen on 7.3).
    ensure!(max >= SLOW_NS / 2, "waited {max} ns");
    ensure!(
        max <= t.flush_ns + 1_000_000 && max + 50_000_000 >= t.to_last_end_ns,
        "wqflush {max} ns; tracefs: flush {} ns, to the last end {} ns",
        t.flush_ns,
        t.to_last_end_ns
    );
    ensure!(
        waited + lost == t.ended_during && waited >= 1,
        "waited_for {waited} (+{lost} lost), tracefs {} ended during the flush: {site}",
        t.ended_during
    );
    Ok(())
}

/// One `waited` record for the slow flush, saying what its summary site says.
fn returned_once(recs: &[Value], max: u64, waited: u64) -> Result<()> {
    let returned: Vec<&Value> = recs
        .iter()
        .filter(|r| r["type"] == "waited" && r["caller"] == "wqflush_test_flush_slow")
        .collect();
    ensure!(returned.len() == 1, "waited records: {returned:?}");
    ensure!(
        returned[0]["wait_ns"].as_u64() == Some(max)
            && waited_count(&returned[0]["waited_for"], "wqflush_test_slow_work") == waited,
        "{}",
        returned[0]
    );
    Ok(())
}

fn with_fentry(series: Series) -> Result<()> {
    if !series.has_fentry() {
        eprintln!("{series}: no fentry on this kernel");
        return Ok(());
    }
    check_method(series, "fentry")
}

fn with_kprobe(series: Series) -> Result<()> {
    check_method(series, "kprobe")
}

fn with_kprobe_multi(series: Series) -> Result<()> {
    if !series.has_fprobe() {
        eprintln!("{series}: no fprobe, no kprobe-multi");
        return Ok(());
    }
    check_method(series, "multi")
}

/// Waits stay opt-in where the kernel has kprobe sessions (every kernel here with fprobe: 6.12
/// and 7.x): without the flag, no waits.
fn opt_in_with_a_session(series: Series) -> Result<()> {
    if !series.has_fprobe() {
        eprintln!("{series}: no fprobe, no kprobe session");
        return Ok(());
    }
    absent_in(series, "default")
}

/// `--no-waits` where waits would be the default.
fn opted_out(series: Series) -> Result<()> {
    if !series.has_fprobe() {
        eprintln!("{series}: no fprobe, no kprobe session");
        return Ok(());
    }
    absent_in(series, "nowaits")
}

/// Without `--waits`, with fentry or a kprobe, the fields are absent and no "waited" record
/// is written.
fn absent_without_the_flag(series: Series) -> Result<()> {
    absent_in(series, "plain")
}

fn absent_in(series: Series, phase: &str) -> Result<()> {
    let run = run(series)?;
    ensure!(
        run.section_status(&format!("{phase}.status"))? == 0,
        "{}",
        run.section(&format!("{phase}.err"))?
    );
    let recs = records::records(run, &format!("{phase}.json"))?;
    let site = slow_site(records::summary(&recs)?)?;
    for field in ["waits", "wait_ns_total", "wait_ns_max", "waited_for"] {
        ensure!(
            site.get(field).is_none(),
            "{phase}: {field} without waits: {site}"
        );
    }
    ensure!(!recs.iter().any(|r| r["type"] == "waited"));
    ensure!(records::summary(&recs)?.get("waits_lost").is_none());
    Ok(())
}

fn text_output(series: Series) -> Result<()> {
    let run = run(series)?;
    let text = run.section("text")?;
    ensure!(run.section_status("text.status")? == 0, "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("wqflush_test_flush_slow") && l.contains(" waited "))
        .with_context(|| format!("no waited line:\n{text}"))?;
    // Other work items of system_wq (vmstat_shepherd, psi_avgs_work, ...) may run meanwhile.
    ensure!(
        line.contains(" work items: ") && line.contains("wqflush_test_slow_work [wqflush_test] ×2"),
        "{line}"
    );
    ensure!(text.contains("waited: 1 returned"), "{text}");
    eprintln!("{series} text: {line}");
    Ok(())
}

wqflush_vmtest::per_kernel_tests! {
    waits_with_fentry => with_fentry,
    waits_with_kprobe => with_kprobe,
    waits_with_kprobe_multi => with_kprobe_multi,
    waits_absent_without_the_flag => absent_without_the_flag,
    waits_opt_in_with_a_session => opt_in_with_a_session,
    waits_opted_out => opted_out,
    waits_in_text => text_output,
}
