//! wqflush itself in real Debian kernels: one boot per kernel runs every scenario below, then
//! each test checks one thing a user would check in the JSON output (contract in docs/json.md).
//!
//! Triggers (tests/module): scheduled = flush_scheduled_work(), long =
//! flush_workqueue(system_long_wq), pointer = flush_workqueue(h->wq) with h->wq ==
//! system_unbound_wq chosen at run time, own = the module's own alloc_workqueue() queue,
//! deprecated = flush_workqueue(system_wq) (unchecked by the kernel since 6.18), dfl_long =
//! system_dfl_long_wq through a pointer (7.1+).

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use wqflush_vmtest::{Oracle, PerKernel, Series, VmRun, guest, records};

/// The scenario around the three watch windows; [`scenario`] says what each fires.
const SCENARIO: &str = include_str!("../guest/wqflush.sh");

/// The test module's `MODULE_VERSION()`.
const MODULE_VERSION: &str = "1.0-test";

/// Which triggers a watch window fires on `series`, and how often.
fn fired(series: Series, window: &str) -> Vec<(&'static str, u64)> {
    let (mut list, seven): (Vec<_>, &[_]) = match window {
        "fentry" => (
            vec![
                ("scheduled", 3),
                ("long", 2),
                ("pointer", 4),
                ("own", 5),
                ("deprecated", 2),
            ],
            &[("dfl_long", 3)],
        ),
        "kprobe" => (
            vec![
                ("scheduled", 2),
                ("long", 5),
                ("pointer", 1),
                ("own", 3),
                ("deprecated", 1),
            ],
            &[("dfl_long", 2)],
        ),
        _ => (
            vec![("long", 2), ("pointer", 3), ("own", 1)],
            &[("dfl_long", 1)],
        ),
    };
    // system_dfl_long_wq exists from 7.1 on.
    if series == Series::V7 {
        list.extend_from_slice(seven);
    }
    list
}

/// The scenario with what each window fires, as `TRIGGER:COUNT ...`.
fn scenario(series: Series) -> String {
    let fires = |window| {
        let words: Vec<String> = fired(series, window)
            .iter()
            .map(|(t, n)| format!("{t}:{n}"))
            .collect();
        words.join(" ")
    };
    let (fentry, kprobe, name) = (fires("fentry"), fires("kprobe"), fires("name"));
    let vars = [
        ("FENTRY", series.fentry_or_kprobe()),
        ("FIRE_FENTRY", fentry.as_str()),
        ("FIRE_KPROBE", kprobe.as_str()),
        ("FIRE_NAME", name.as_str()),
    ];
    guest::scenario(&vars, SCENARIO)
}

/// One boot per kernel, shared by that kernel's tests.
fn run(series: Series) -> Result<&'static VmRun> {
    static RUNS: PerKernel = PerKernel::new();
    RUNS.with_wqflush(series, &scenario(series), Duration::from_secs(400), None)
}

/// The queue `trigger` flushes on this kernel.
fn expected_wq(series: Series, trigger: &str) -> &'static str {
    match trigger {
        // 6.18 (and Debian's 6.12, which backported it): flush_scheduled_work() flushes
        // system_percpu_wq, a different queue from system_wq.
        "scheduled" => series.scheduled_work_queue(),
        "long" => "system_long_wq",
        "pointer" => "system_unbound_wq",
        "deprecated" => "system_wq",
        "dfl_long" => "system_dfl_long_wq",
        _ => "none",
    }
}

/// One window: each offending trigger reported once with the right queue, caller, module and
/// stack; counts exact; the own-queue trigger never reported.
fn check_window(series: Series, window: &str, by_name: bool) -> Result<()> {
    let run = run(series)?;
    ensure!(
        run.section_status(&format!("{window}.status"))? == 0,
        "wqflush exited non-zero"
    );
    let recs = records::records(run, &format!("{window}.json"))?;
    let summary = records::summary(&recs)?;
    let fired = fired(series, window);
    for &(trigger, count) in &fired {
        let caller = format!("wqflush_test_flush_{trigger}");
        let first = records::flushes(&recs, &caller);
        let summed = records::sites(summary, &caller);
        if trigger == "own" {
            ensure!(
                first.is_empty() && summed.is_empty(),
                "own queue reported: {first:?}"
            );
            continue;
        }
        ensure!(
            first.len() == 1,
            "{trigger}: want one first-sighting record, got {first:?}"
        );
        check_record(series, trigger, first[0], by_name)?;
        ensure!(
            summed.len() == 1 && summed[0]["count"] == count,
            "{trigger}: fired {count}, summary {summed:?}"
        );
    }
    let ours = recs
        .iter()
        .filter(|r| r["type"] == "flush" && r["module"] == "wqflush_test");
    let offending = fired.iter().filter(|(t, _)| *t != "own").count();
    ensure!(ours.count() == offending, "extra sites: {recs:?}");
    Ok(())
}

/// A first sighting: queue, the stack from the flush function through the trigger, the task.
fn check_record(series: Series, trigger: &str, rec: &Value, by_name: bool) -> Result<()> {
    check_queue(series, trigger, rec, by_name)?;
    let caller = format!("wqflush_test_flush_{trigger}");
    let flush_fn = format!("{}+", series.flush_function());
    ensure!(
        rec["stack"][0]
            .as_str()
            .is_some_and(|f| f.starts_with(&flush_fn)),
        "{rec}"
    );
    ensure!(
        rec["stack"][1]
            .as_str()
            .is_some_and(|f| f.starts_with(&caller) && f.ends_with(" [wqflush_test]")),
        "{rec}"
    );
    ensure!(
        // The scenario shell (PID 1's child, comm "init") writes the trigger itself.
        rec["comm"] == "init" && rec["pid"].as_u64().is_some_and(|p| p > 1),
        "{rec}"
    );
    Ok(())
}

fn check_queue(series: Series, trigger: &str, rec: &Value, by_name: bool) -> Result<()> {
    // The probe reads wq->name from the kernel in both modes.
    let name = match trigger {
        "scheduled" | "deprecated" => "events",
        "long" => "events_long",
        "dfl_long" => "events_dfl_long",
        _ => "events_unbound",
    };
    ensure!(rec["wq_name"] == name, "{rec}");
    if by_name {
        ensure!(rec["wq"].is_null() && rec["matched_by"] == "name", "{rec}");
    } else {
        let wq = expected_wq(series, trigger);
        ensure!(rec["wq"] == wq && rec["matched_by"] == "address", "{rec}");
    }
    Ok(())
}

fn attached_line(series: Series, window: &str, want: &str) -> Result<()> {
    let err = run(series)?.section(&format!("{window}.err"))?;
    ensure!(err.contains(want), "stderr of {window}: {err}");
    Ok(())
}

fn check_codes(series: Series) -> Result<()> {
    let run = run(series)?;
    let codes: Vec<i32> = [
        "check_flush",
        "check_clean",
        "check_failed",
        "check_missing",
    ]
    .iter()
    .map(|s| run.section_status(s))
    .collect::<Result<_>>()?;
    ensure!(
        codes == [3, 0, 4, 4],
        "check exit codes {codes:?}, want [3, 0, 4, 4]"
    );
    let recs = records::json_lines(run.section("check_flush")?);
    let summary = records::summary(&recs)?;
    let ours: Vec<_> = summary["sites"]
        .as_array()
        .context("sites")?
        .iter()
        .filter(|s| s["module"] == "wqflush_test")
        .collect();
    ensure!(
        ours.len() == 1 && ours[0]["caller"] == "wqflush_test_flush_long" && ours[0]["count"] == 1,
        "{ours:?}"
    );
    ensure!(
        run.section("check_missing")?.contains("/no/such/command"),
        "names the missing command"
    );
    Ok(())
}

/// `check --scan`: the loaded test module's static sites, from its source
/// (tests/module/wqflush_test.c), each marked with whether it flushed while the command ran;
/// only `long` fired. Without a flush, the text summary lists them all as not reached.
fn check_scan_marks_what_was_reached(series: Series) -> Result<()> {
    let run = run(series)?;
    let recs = records::json_lines(run.section("check_flush")?);
    let summary = records::summary(&recs)?;
    let statics = summary["static_sites"].as_array().context("static_sites")?;
    let ours: Vec<&Value> = statics
        .iter()
        .filter(|s| s["module"] == "wqflush_test")
        .collect();
    for (trigger, seen) in [("long", true), ("deprecated", false), ("scheduled", false)] {
        let caller = format!("wqflush_test_flush_{trigger}");
        let site = ours
            .iter()
            .find(|s| s["caller"] == caller.as_str())
            .with_context(|| format!("{caller} not among the static sites {ours:?}"))?;
        // The flush call's line: in 5.10 flush_scheduled_work() is an inline function of
        // include/linux/workqueue.h, and the line is the helper's, as at run time.
        let source = site["source"].as_str().unwrap_or_default();
        let file = if trigger == "scheduled" && series == Series::V5_10 {
            "include/linux/workqueue.h:"
        } else {
            "wqflush_test.c:"
        };
        ensure!(
            site["wq"] == expected_wq(series, trigger)
                && site["seen"] == seen
                && source.starts_with(file),
            "{site}"
        );
    }
    let seen: Vec<_> = ours.iter().filter(|s| s["seen"] == true).collect();
    ensure!(seen.len() == 1, "only flush_long flushed: {seen:?}");
    ensure!(run.section_status("check_scan_text")? == 0, "check -- true");
    let text = run.section("check_scan_text")?;
    ensure!(
        text.contains("not reached:")
            && text
                .lines()
                .any(|l| l.contains("wqflush_test_flush_long [wqflush_test]")),
        "{text}"
    );
    Ok(())
}

/// The module's own counters and an independent tracefs kprobe agree with what was fired.
fn check_oracle(series: Series) -> Result<()> {
    let run = run(series)?;
    // Every window, plus check_flush's `long 1` and check_clean's `own 2`.
    let mut totals = std::collections::BTreeMap::new();
    let windows = ["fentry", "kprobe", "name"];
    for (trigger, n) in windows.iter().flat_map(|w| fired(series, w)) {
        *totals.entry(trigger).or_insert(0) += n;
    }
    *totals.entry("long").or_insert(0) += 1;
    *totals.entry("own").or_insert(0) += 2;
    let counts = run.section("counts")?;
    for (trigger, n) in &totals {
        ensure!(
            counts.lines().any(|l| l == format!("{trigger} {n}")),
            "module counts, want {trigger} {n}:\n{counts}"
        );
    }
    let oracle = Oracle::from_run(run)?;
    for (trigger, n) in totals.iter().filter(|(t, _)| **t != "own") {
        let function = format!("wqflush_test_flush_{trigger}");
        let got = oracle.count(expected_wq(series, trigger), &function);
        ensure!(
            got as u64 == *n,
            "oracle: {got} flushes from {function}, fired {n}"
        );
    }
    Ok(())
}

/// What the kernel itself reports: since 6.6 a run-time warning with a stack for the flushes the
/// compiler saw (`long`), never for one through a pointer, and since 6.18 not for
/// `flush_workqueue(system_wq)` nor for `system_dfl_long_wq` through a pointer. wqflush reports
/// every one of them (the window checks).
fn kernel_checks_miss_what_wqflush_reports(series: Series) -> Result<()> {
    let console = &run(series)?.console;
    let warned = |trigger: &str| console.contains(&format!("wqflush_test_flush_{trigger}+0x"));
    let runtime_check = matches!(series, Series::V6_12 | Series::V7);
    ensure!(
        warned("long") == runtime_check,
        "the kernel's run-time warning for flush_workqueue(system_long_wq): want {runtime_check}"
    );
    let mut unseen = vec!["pointer"];
    if series == Series::V7 {
        unseen.extend(["deprecated", "dfl_long"]);
    }
    for trigger in unseen {
        ensure!(!warned(trigger), "the kernel warned about {trigger}");
    }
    Ok(())
}

/// The window of a forced `method`: attached with it, on the kernel's flush function.
fn method_window(series: Series, method: &str) -> Result<()> {
    let want = format!("wqflush: attached ({method} on {}", series.flush_function());
    attached_line(series, method, &want)?;
    check_window(series, method, false)
}

fn fentry_window(series: Series) -> Result<()> {
    if !series.has_fentry() {
        // The window ran kprobe; the clear error of `--attach fentry` is hostile.rs's.
        eprintln!("{series}: no fentry on this kernel");
        return Ok(());
    }
    method_window(series, "fentry")
}

fn kprobe_window(series: Series) -> Result<()> {
    method_window(series, "kprobe")
}

fn name_window(series: Series) -> Result<()> {
    attached_line(series, "name", "matched by name")?;
    check_window(series, "name", true)
}

/// For a fleet's log pipeline: every record says which kernel it came from, and a module's
/// records which build of the module (its version and modpost's srcversion, as sysfs has them).
fn records_name_the_kernel_and_module_build(series: Series) -> Result<()> {
    let run = run(series)?;
    let release = run.section("release")?.trim();
    let srcversion = run.section("srcversion")?.trim();
    ensure!(
        !release.is_empty() && srcversion.len() > 8,
        "sysfs: {release:?} {srcversion:?}"
    );
    let recs = records::records(run, "fentry.json")?;
    let summary = records::summary(&recs)?;
    ensure!(summary["kernel"] == release, "{summary}");
    let flushes: Vec<&Value> = recs.iter().filter(|r| r["type"] == "flush").collect();
    ensure!(!flushes.is_empty(), "no flush records");
    let sites = summary["sites"].as_array().context("summary sites")?;
    for rec in &flushes {
        ensure!(rec["kernel"] == release, "{rec}");
    }
    for rec in flushes.iter().copied().chain(sites) {
        let (version, src) = (&rec["module_version"], &rec["module_srcversion"]);
        if rec["module"] == "wqflush_test" {
            ensure!(version == MODULE_VERSION && src == srcversion, "{rec}");
        } else if rec["module"].is_null() {
            ensure!(version.is_null() && src.is_null(), "built in: {rec}");
        }
    }
    Ok(())
}

wqflush_vmtest::per_kernel_tests! {
    records_name_the_kernel_and_module_build => records_name_the_kernel_and_module_build,
    fentry_reports_each_call_site_once_with_exact_counts => fentry_window,
    kprobe_reports_each_call_site_once_with_exact_counts => kprobe_window,
    name_mode_matches_by_name_and_says_so => name_window,
    check_returns_its_documented_exit_codes => check_codes,
    check_scan_marks_which_static_sites_flushed => check_scan_marks_what_was_reached,
    module_and_oracle_agree_with_what_was_fired => check_oracle,
    kernel_checks_miss_what_wqflush_reports => kernel_checks_miss_what_wqflush_reports,
}
