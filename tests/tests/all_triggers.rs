//! Every trigger of the test module in one boot, per kernel and attach method, in three phases:
//! without `--waits`, with it, and with it but without the oracle. One-scenario tests never let
//! a call site follow another on the same queue within one run; this one does, so a site that
//! takes another site's name (or count, or STUCK report) shows up here.
//!
//! Each phase runs, in order: every trigger that returns, several call sites on one queue
//! (`long`, `slow` and `worker_self` all flush system_long_wq), flushes from process context
//! and from workers, one inside an inlined helper, four writers at once, the module's exit
//! flush, and flushes from the module loaded again. The last phase ends with the reported case
//! (two flushes that wait for slow items, then a work item that flushes its own queue) and the
//! two deadlocks (`worker_self`, `abba`), each of which must be reported STUCK under its own site.
//!
//! The oracle is the tracefs kprobe on the flush function, independent of wqflush, marked per
//! phase. The triggers do the same in every phase, so what it saw in the first is each phase's
//! reference: every wqflush_test site's name, queue and count must equal it, and no site
//! wqflush reports may be absent from the oracle's record. Its kprobe shares the function's
//! entry with wqflush's probe, which changes the stack contents below the entry: the last phase
//! runs without it, as on a user's machine.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use wqflush_vmtest::{Oracle, PerKernel, Series, VmRun, guest::scenario, records};

const SCENARIO: &str = include_str!("../guest/all_triggers.sh");

/// The methods `series` offers: kprobe-multi needs fprobe, fentry direct calls (not on
/// Debian's arm64 6.1).
fn methods(series: Series) -> Vec<&'static str> {
    let mut methods = vec!["kprobe"];
    if series.has_fentry() {
        methods.insert(0, "fentry");
    }
    if series.has_fprobe() {
        methods.push("kprobe-multi");
    }
    methods
}

fn run(series: Series, method: &str) -> Result<&'static VmRun> {
    static FENTRY: PerKernel = PerKernel::new();
    static KPROBE: PerKernel = PerKernel::new();
    static MULTI: PerKernel = PerKernel::new();
    let runs = match method {
        "fentry" => &FENTRY,
        "kprobe" => &KPROBE,
        _ => &MULTI,
    };
    let script = scenario(&[("METHOD", method)], SCENARIO);
    runs.with_wqflush(series, &script, Duration::from_secs(600), None)
}

/// `func+0xoff`: a call site as both sides print it (the oracle adds `/0xsize`, both
/// ` [module]`).
fn site_key(frame: &str) -> String {
    let sym = frame.split_whitespace().next().unwrap_or_default();
    sym.split('/').next().unwrap_or(sym).to_string()
}

/// Per call site, the flushes the oracle saw in `phase`, and of which system queues (names
/// alias where two variables hold one queue). Frames of the flush function's wrappers are
/// passed over, as wqflush does.
fn oracle_sites(oracle: &Oracle, phase: Option<&str>) -> BTreeMap<String, (Vec<String>, u64)> {
    let mut sites: BTreeMap<String, (Vec<String>, u64)> = BTreeMap::new();
    let events = oracle.events.iter().filter(|e| !e.system.is_empty());
    for e in events.filter(|e| phase.is_none_or(|p| e.mark == p)) {
        let Some(frame) = e
            .frames
            .iter()
            .zip(&e.stack)
            .find(|(_, f)| !WRAPPERS.contains(&f.as_str()))
        else {
            continue;
        };
        let site = sites.entry(site_key(frame.0)).or_default();
        site.0.clone_from(&e.system);
        site.1 += 1;
    }
    sites
}

/// What wqflush passes over to reach a flush's caller (monitor's `FLUSH_FUNCTIONS`).
const WRAPPERS: &[&str] = &["flush_scheduled_work", "drain_workqueue"];

/// Per call site, the queue and count of wqflush's summary.
fn wqflush_sites(summary: &Value) -> Result<BTreeMap<String, (String, u64)>> {
    let mut sites: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for s in summary["sites"]
        .as_array()
        .context("summary without sites")?
    {
        let call_site = s["call_site"].as_str().context("site without call_site")?;
        let wq = s["wq"].as_str().context("site without wq")?;
        let site = sites.entry(site_key(call_site)).or_default();
        // The same site before and after the module was reloaded: two addresses, one name.
        ensure!(
            site.0.is_empty() || site.0 == wq,
            "{call_site}: queues {} and {wq}",
            site.0
        );
        site.0 = wq.to_string();
        site.1 += s["count"].as_u64().context("site without count")?;
    }
    Ok(sites)
}

/// The oracle, read in one part per load of the module.
fn oracle(run: &VmRun) -> Result<Oracle> {
    Oracle::from_parts(
        run,
        &[("plain", "modsyms_plain"), ("waits", "modsyms_waits")],
    )
}

/// A phase's records, once wqflush exited 0 with a summary last.
fn phase_records(run: &VmRun, phase: &str) -> Result<Vec<Value>> {
    ensure!(
        run.section_status(&format!("{phase}.status"))? == 0,
        "{phase}: wqflush exited non-zero:\n{}",
        run.section(&format!("{phase}.err"))?
    );
    let recs = records::records(run, &format!("{phase}.json"))?;
    records::summary(&recs)?;
    check_first_sightings(&recs, phase)?;
    Ok(recs)
}

type Sites = BTreeMap<String, (Vec<String>, u64)>;

/// Each test module site of `want` has its queue and count in wqflush's summary, short only by
/// what the kernel says it skipped; no other test module site is there but `extra`'s.
fn compare(summary: &Value, want: &Sites, extra: &[(&str, &str)], phase: &str) -> Result<()> {
    let got = wqflush_sites(summary)?;
    let missed = summary["missed"].as_u64().unwrap_or(0);
    let mut short = 0;
    for (site, (queues, n)) in want {
        let (wq, count) = got.get(site).cloned().unwrap_or_default();
        ensure!(
            count == 0 || queues.contains(&wq),
            "{phase}: {site} flushed {queues:?}, wqflush says {wq}"
        );
        ensure!(count <= *n, "{phase}: {site} counted {count}, want {n}");
        short += n - count;
    }
    ensure!(
        short <= missed,
        "{phase}: {short} flushes uncounted, the kernel skipped {missed}\n\
         wqflush: {got:?}\nwant: {want:?}"
    );
    for (site, (wq, count)) in got.iter().filter(|(s, _)| is_module(s)) {
        let function = site.split('+').next().unwrap_or_default();
        ensure!(
            want.contains_key(site) || extra.contains(&(function, wq.as_str())) && *count == 1,
            "{phase}: wqflush invented {site} ({wq} x{count})"
        );
    }
    Ok(())
}

fn is_module(site: &str) -> bool {
    site.starts_with("wqflush_test_")
}

/// The sites of the test module in `sites`.
fn module_sites(sites: Sites) -> Sites {
    sites.into_iter().filter(|(s, _)| is_module(s)).collect()
}

/// Every site wqflush names outside the test module is one the oracle saw flush that queue.
fn kernel_sites_seen(summary: &Value, oracle: &Oracle, phase: &str) -> Result<()> {
    let anywhere = oracle_sites(oracle, None);
    for (site, (wq, count)) in wqflush_sites(summary)? {
        let seen = anywhere.get(&site);
        ensure!(
            is_module(&site) || seen.is_some_and(|(queues, _)| queues.contains(&wq)),
            "{phase}: wqflush invented {site} ({wq} x{count}); the oracle saw {seen:?}"
        );
    }
    Ok(())
}

/// A phase that ran the triggers of the `plain` phase: each site of the test module as the
/// oracle saw it there, plus `more` flushes from some sites and the `deadlocks`' sites once.
/// The oracle of the phase itself is not the reference: before 5.16 (and on 6.1 under load) a
/// kretprobe (the kprobe method's `--waits`) can hide or misplace the caller in its stacks.
fn check_phase(
    run: &VmRun,
    oracle: &Oracle,
    phase: &str,
    more: &[(&str, u64)],
    deadlocks: &[(&str, &str)],
) -> Result<Vec<Value>> {
    let recs = phase_records(run, phase)?;
    let summary = records::summary(&recs)?;
    let mut want = module_sites(oracle_sites(oracle, Some("plain")));
    for (function, n) in more {
        let site = want
            .iter_mut()
            .find(|(s, _)| s.starts_with(&format!("{function}+")))
            .with_context(|| format!("no flush of {function} under the oracle"))?;
        site.1.1 += n;
    }
    compare(summary, &want, deadlocks, phase)?;
    kernel_sites_seen(summary, oracle, phase)?;
    Ok(recs)
}

/// Each site's first-sighting record names the caller the summary does, once.
fn check_first_sightings(recs: &[Value], phase: &str) -> Result<()> {
    let summary = records::summary(recs)?;
    for s in summary["sites"].as_array().into_iter().flatten() {
        let (caller, call_site) = (&s["caller"], &s["call_site"]);
        let first = recs
            .iter()
            .filter(|r| r["type"] == "flush" && r["call_site"] == *call_site)
            .filter(|r| r["wq_addr"] == s["wq_addr"] && r["time_ns"] == s["time_ns"])
            .count();
        ensure!(first == 1, "{phase}: {call_site} has {first} flush records");
        let function = site_key(call_site.as_str().unwrap_or_default());
        ensure!(
            function.split('+').next() == caller.as_str(),
            "{phase}: caller {caller} at {call_site}"
        );
    }
    Ok(())
}

/// The `pac` trigger: past its call site the stack holds return addresses its functions saved
/// (signed on arm64); the frame after the call site is the outer function at the offset the
/// oracle (the kernel's own unwinder) names.
fn check_pac(recs: &[Value], oracle: &Oracle) -> Result<()> {
    let inner = "wqflush_test_flush_pac_inner";
    let first = records::flushes(recs, inner)
        .into_iter()
        .next()
        .context("no flush record of the pac trigger")?;
    let stack: Vec<&str> = first["stack"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let at = stack
        .iter()
        .position(|f| *f == first["call_site"])
        .with_context(|| format!("call site not in its stack: {first}"))?;
    let traced = oracle
        .from_function(inner)
        .next()
        .context("the oracle saw no pac flush")?;
    let want = traced.frames.get(1).map(|f| site_key(f));
    let got = stack.get(at + 1).map(|f| site_key(f));
    ensure!(
        got.is_some()
            && got == want
            && got
                .as_deref()
                .is_some_and(|f| f.starts_with("wqflush_test_flush_pac+")),
        "pac: after {} wqflush has {got:?}, the oracle {want:?}",
        first["call_site"]
    );
    Ok(())
}

/// The STUCK reports of the last phase: exactly the two deadlocks, each under its own site
/// and queue; the flushes that returned are never reported.
fn check_stuck(recs: &[Value]) -> Result<()> {
    let mut stuck: Vec<(String, String)> = recs
        .iter()
        .filter(|r| r["type"] == "stuck")
        .map(|r| (r["caller"].to_string(), r["wq"].to_string()))
        .collect();
    stuck.sort();
    stuck.dedup();
    let want = [
        ("wqflush_test_flush_abba", "system_highpri_wq"),
        ("wqflush_test_work_flush_self", "system_long_wq"),
    ]
    .map(|(c, w)| (format!("\"{c}\""), format!("\"{w}\"")));
    ensure!(stuck == want, "stuck records: {stuck:?}");
    Ok(())
}

fn check(series: Series, method: &str) -> Result<()> {
    if !methods(series).contains(&method) {
        eprintln!("{series}: no {method} on this kernel");
        return Ok(());
    }
    let run = run(series, method)?;
    let oracle = oracle(run)?;
    for phase in ["plain", "waits"] {
        let recs = check_phase(run, &oracle, phase, &[], &[])?;
        check_pac(&recs, &oracle)?;
        ensure!(
            !recs.iter().any(|r| r["type"] == "stuck"),
            "{phase}: a stuck record without --stuck-after"
        );
    }
    let deadlocks = [
        ("wqflush_test_work_flush_self", "system_long_wq"),
        ("wqflush_test_flush_abba", "system_highpri_wq"),
    ];
    let more = [("wqflush_test_flush_slow", 2)];
    check_stuck(&check_phase(run, &oracle, "bare", &more, &deadlocks)?)
}

fn fentry(series: Series) -> Result<()> {
    check(series, "fentry")
}

fn kprobe(series: Series) -> Result<()> {
    check(series, "kprobe")
}

fn kprobe_multi(series: Series) -> Result<()> {
    if !methods(series).contains(&"kprobe-multi") {
        eprintln!("{series}: no fprobe, no kprobe-multi");
        return Ok(());
    }
    check(series, "kprobe-multi")
}

wqflush_vmtest::per_kernel_tests! {
    all_triggers_fentry => fentry,
    all_triggers_kprobe => kprobe,
    all_triggers_kprobe_multi => kprobe_multi,
}
