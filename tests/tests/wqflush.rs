//! wqflush itself in real Debian kernels: one boot per kernel runs every scenario below, then
//! each test checks one thing a user would check in the JSON output (contract in README.md).
//!
//! Triggers (tests/module): scheduled = flush_scheduled_work(), long =
//! flush_workqueue(system_long_wq), pointer = flush_workqueue(h->wq) with h->wq ==
//! system_unbound_wq chosen at run time, own = the module's own alloc_workqueue() queue.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use wqflush_vmtest::{Oracle, PerKernel, Series, VmRun};

const SCENARIO: &str = r#"
load_test_module || exit 1
oracle_start || exit 1
fire() { echo "$1 $2" > /proc/wqflush_test; }
# watch_start NAME ARGS...: wqflush --json in the background, back once its probe is live.
watch_start() {
	_n=$1; shift
	wqflush --json --ready-file /tmp/$_n.ready "$@" >/tmp/$_n.json 2>/tmp/$_n.err &
	echo $! > /tmp/$_n.pid
	wait_for_file /tmp/$_n.ready 60 || { cat /tmp/$_n.err; return 1; }
}
watch_stop() {
	emit $1.status stop_bg $(cat /tmp/$1.pid) 20
	emit $1.json cat /tmp/$1.json
	emit $1.err cat /tmp/$1.err
}

watch_start fentry --attach fentry || exit 1
fire scheduled 3; fire long 2; fire pointer 4; fire own 5
watch_stop fentry

watch_start kprobe --attach kprobe || exit 1
fire scheduled 2; fire long 5; fire pointer 1; fire own 3
watch_stop kprobe

watch_start name --attach fentry --match name || exit 1
fire long 2; fire pointer 3; fire own 1
watch_stop name

emit check_flush wqflush check --json -- sh -c 'echo "long 1" > /proc/wqflush_test'
emit check_clean wqflush check -- sh -c 'echo "own 2" > /proc/wqflush_test'
emit check_failed wqflush check -- false
emit check_missing wqflush check -- /no/such/command

oracle_stop
emit counts cat /proc/wqflush_test
oracle_dump
"#;

/// What each watch window fired: (trigger, count).
const FENTRY: &[(&str, u64)] = &[("scheduled", 3), ("long", 2), ("pointer", 4), ("own", 5)];
const KPROBE: &[(&str, u64)] = &[("scheduled", 2), ("long", 5), ("pointer", 1), ("own", 3)];
const NAME: &[(&str, u64)] = &[("long", 2), ("pointer", 3), ("own", 1)];

/// One boot per kernel, shared by that kernel's tests.
fn run(series: Series) -> Result<&'static VmRun> {
    static RUNS: PerKernel = PerKernel::new();
    RUNS.with_wqflush(series, SCENARIO, Duration::from_secs(400), None)
}

fn json_lines(run: &VmRun, section: &str) -> Result<Vec<Value>> {
    run.section(section)?
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l:?}")))
        .collect()
}

/// The queue `trigger` flushes on this kernel.
fn expected_wq(series: Series, trigger: &str) -> &'static str {
    match (trigger, series) {
        // 6.12 (Debian's backport of the 6.17 change): flush_scheduled_work() flushes
        // system_percpu_wq, a different queue from system_wq.
        ("scheduled", Series::V6_12) => "system_percpu_wq",
        ("scheduled", Series::V6_1) => "system_wq",
        ("long", _) => "system_long_wq",
        ("pointer", _) => "system_unbound_wq",
        _ => "none",
    }
}

fn ours<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["type"] == kind && r["module"] == "wqflush_test")
        .collect()
}

fn summary_sites(records: &[Value]) -> Result<Vec<Value>> {
    let summary = records
        .iter()
        .find(|r| r["type"] == "summary")
        .context("no summary record")?;
    ensure!(
        records.last() == Some(summary),
        "summary is not the last line"
    );
    let sites = summary["sites"].as_array().context("summary.sites")?;
    Ok(sites
        .iter()
        .filter(|s| s["module"] == "wqflush_test")
        .cloned()
        .collect())
}

/// One window: each offending trigger reported once with the right queue, caller, module and
/// stack; counts exact; the own-queue trigger never reported.
fn check_window(series: Series, window: &str, fired: &[(&str, u64)], by_name: bool) -> Result<()> {
    let run = run(series)?;
    ensure!(
        run.section_status(&format!("{window}.status"))? == 0,
        "wqflush exited non-zero"
    );
    let records = json_lines(run, &format!("{window}.json"))?;
    let flushes = ours(&records, "flush");
    let sites = summary_sites(&records)?;
    for &(trigger, count) in fired {
        let caller = format!("wqflush_test_flush_{trigger}");
        let first: Vec<_> = flushes
            .iter()
            .filter(|r| r["caller"] == caller.as_str())
            .collect();
        let summed: Vec<_> = sites
            .iter()
            .filter(|s| s["caller"] == caller.as_str())
            .collect();
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
        let rec = first[0];
        check_queue(series, trigger, rec, by_name)?;
        ensure!(
            rec["stack"][0]
                .as_str()
                .is_some_and(|f| f.starts_with("__flush_workqueue+")),
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
        ensure!(
            summed.len() == 1 && summed[0]["count"] == count,
            "{trigger}: fired {count}, summary {summed:?}"
        );
    }
    ensure!(
        flushes.len() == fired.iter().filter(|(t, _)| *t != "own").count(),
        "extra sites: {flushes:?}"
    );
    Ok(())
}

fn check_queue(series: Series, trigger: &str, rec: &Value, by_name: bool) -> Result<()> {
    // The probe reads wq->name from the kernel in both modes.
    let name = match trigger {
        "scheduled" => "events",
        "long" => "events_long",
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
    let records: Vec<Value> = run
        .section("check_flush")?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let sites = summary_sites(&records)?;
    ensure!(
        sites.len() == 1
            && sites[0]["caller"] == "wqflush_test_flush_long"
            && sites[0]["count"] == 1,
        "{sites:?}"
    );
    ensure!(
        run.section("check_missing")?.contains("/no/such/command"),
        "names the missing command"
    );
    Ok(())
}

/// The module's own counters and an independent tracefs kprobe agree with what was fired.
fn check_oracle(series: Series) -> Result<()> {
    let run = run(series)?;
    let counts = run.section("counts")?;
    ensure!(
        counts.contains("scheduled 5\nlong 10\npointer 8\nown 11"),
        "module counts:\n{counts}"
    );
    let oracle = Oracle::from_run(run)?;
    let got = [
        oracle.count(
            expected_wq(series, "scheduled"),
            "wqflush_test_flush_scheduled",
        ),
        oracle.count("system_long_wq", "wqflush_test_flush_long"),
        oracle.count("system_unbound_wq", "wqflush_test_flush_pointer"),
    ];
    ensure!(got == [5, 10, 8], "oracle counts {got:?}");
    Ok(())
}

fn fentry_window(series: Series) -> Result<()> {
    attached_line(
        series,
        "fentry",
        "wqflush: attached (fentry on __flush_workqueue",
    )?;
    check_window(series, "fentry", FENTRY, false)
}

fn kprobe_window(series: Series) -> Result<()> {
    attached_line(
        series,
        "kprobe",
        "wqflush: attached (kprobe on __flush_workqueue",
    )?;
    check_window(series, "kprobe", KPROBE, false)
}

fn name_window(series: Series) -> Result<()> {
    attached_line(series, "name", "matched by name")?;
    check_window(series, "name", NAME, true)
}

wqflush_vmtest::per_kernel_tests! {
    fentry_reports_each_call_site_once_with_exact_counts => fentry_window,
    kprobe_reports_each_call_site_once_with_exact_counts => kprobe_window,
    name_mode_matches_by_name_and_says_so => name_window,
    check_returns_its_documented_exit_codes => check_codes,
    module_and_oracle_agree_with_what_was_fired => check_oracle,
}
