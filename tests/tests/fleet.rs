//! The fleet and CI features in real Debian kernels: exact in-kernel counts under a flood and
//! with the ring buffer overrun, Prometheus metrics, the kernel-log warning, the ignore list,
//! the fix hint and the deadlock hint. One boot per kernel.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use wqflush_vmtest::{PerKernel, Series, VmRun, records};

const SCENARIO: &str = include_str!("../guest/fleet.sh");

/// One boot per kernel, shared by that kernel's tests.
fn run(series: Series) -> Result<&'static VmRun> {
    static RUNS: PerKernel = PerKernel::new();
    // wqflush --kmsg writes kernel-style warnings on purpose, all at the module's call sites.
    RUNS.with_wqflush(
        series,
        SCENARIO,
        Duration::from_secs(600),
        Some(" at wqflush_test_"),
    )
}

struct Report {
    records: Vec<Value>,
    summary: Value,
}

fn report(series: Series) -> Result<Report> {
    let run = run(series)?;
    ensure!(
        run.section_status("fleet.status")? == 0,
        "wqflush exited non-zero"
    );
    let records = records::records(run, "fleet.json")?;
    let summary = records::summary(&records)?.clone();
    Ok(Report { records, summary })
}

impl Report {
    fn flushes(&self) -> impl Iterator<Item = &Value> {
        self.records.iter().filter(|r| r["type"] == "flush")
    }

    /// The one first sighting from `caller`.
    fn flush(&self, caller: &str) -> Result<&Value> {
        let found = records::flushes(&self.records, caller);
        ensure!(
            found.len() == 1,
            "want one flush record from {caller}, got {found:?}"
        );
        Ok(found[0])
    }
}

/// 200,002 flushes from one site and one flush from each of 10,000 sites: the kernel's counts
/// are exact, and every first sighting either arrived or is counted as lost.
fn exact_counts(series: Series) -> Result<()> {
    let r = report(series)?;
    let counts = run(series)?.section("counts")?;
    ensure!(
        counts.contains("pointer 200002\n") && counts.contains("sites 10000\n"),
        "{counts}"
    );
    let pointer = records::sites(&r.summary, "wqflush_test_flush_pointer");
    ensure!(
        pointer.len() == 1 && pointer[0]["count"] == 200_002,
        "{pointer:?}"
    );
    let many = records::sites(&r.summary, "wqflush_test_flush_sites");
    let total: u64 = many.iter().filter_map(|s| s["count"].as_u64()).sum();
    ensure!(
        many.len() == 10_000 && total == 10_000,
        "{} sites, {total} flushes",
        many.len()
    );
    let all = r.summary["sites"].as_array().context("sites")?;
    let ignored = all.iter().filter(|s| s["ignored"] == true).count();
    let lost = r.summary["lost"].as_u64().context("lost")?;
    ensure!(r.summary["uncounted"] == 0, "{}", r.summary["uncounted"]);
    ensure!(
        r.flushes().count() as u64 + lost + ignored as u64 == all.len() as u64,
        "{} first sightings + {lost} lost + {ignored} ignored != {} sites",
        r.flushes().count(),
        all.len()
    );
    eprintln!(
        "{series}: {} of 10,000+ first sightings arrived, {lost} counted as lost",
        r.flushes().count()
    );
    Ok(())
}

fn ignore_list(series: Series) -> Result<()> {
    let r = report(series)?;
    ensure!(
        records::flushes(&r.records, "wqflush_test_flush_long").is_empty(),
        "ignored site warned"
    );
    let long = records::sites(&r.summary, "wqflush_test_flush_long");
    ensure!(
        long.len() == 1 && long[0]["ignored"] == true && long[0]["count"] == 3,
        "{long:?}"
    );
    let run = run(series)?;
    ensure!(
        run.section_status("check_ignored")? == 0,
        "check fails on ignored flushes only"
    );
    let bad = run.section("bad_ignore")?;
    ensure!(
        run.section_status("bad_ignore")? == 1 && bad.contains("/tmp/bad-ignore:2:"),
        "{bad}"
    );
    Ok(())
}

fn hints(series: Series) -> Result<()> {
    let r = report(series)?;
    let pointer = r.flush("wqflush_test_flush_pointer")?;
    let hint = pointer["hint"].as_str().unwrap_or_default();
    ensure!(
        hint.contains("flush_work()") && hint.contains("alloc_workqueue()"),
        "{pointer}"
    );
    ensure!(
        pointer["worker"] == false && pointer["deadlock"].is_null(),
        "{pointer}"
    );
    let other = r.flush("wqflush_test_work_flush_other")?;
    ensure!(
        other["worker"] == true && other["wq"] == "system_unbound_wq",
        "{other}"
    );
    ensure!(
        other["worker_wq"] == "system_long_wq" && other["deadlock"] == false,
        "{other}"
    );
    let selfish = r.flush("wqflush_test_work_flush_self")?;
    ensure!(
        selfish["wq"] == "system_long_wq" && selfish["worker_wq"] == "system_long_wq",
        "{selfish}"
    );
    ensure!(
        selfish["deadlock"] == true && selfish["worker_wq_name"] == "events_long",
        "{selfish}"
    );
    Ok(())
}

fn metrics(series: Series) -> Result<()> {
    let run = run(series)?;
    let text = run.section("metrics")?;
    for want in [
        "wqflush_flushes_total{wq=\"system_unbound_wq\",caller=\"wqflush_test_flush_pointer\",module=\"wqflush_test\"} 200002",
        "wqflush_flushes_total{wq=\"system_long_wq\",caller=\"wqflush_test_flush_long\",module=\"wqflush_test\"} 3",
        "# TYPE wqflush_call_sites gauge",
        "# TYPE wqflush_events_lost_total counter",
    ] {
        ensure!(
            text.contains(want),
            "missing {want:?} in:\n{}",
            &text[..text.len().min(3000)]
        );
    }
    // What --attach auto picks: kprobe-multi where the kernel has fprobe, else fentry, which
    // cannot lose flushes on these kernels' default (voluntary) preemption.
    let method = if series.has_fprobe() {
        "kprobe-multi"
    } else {
        series.fentry_or_kprobe()
    };
    let attach = format!("wqflush_info{{attach=\"{method}\",kernel=\"");
    ensure!(
        text.contains(&attach) && text.contains("kallsyms_mode=\"address\"} 1"),
        "info"
    );
    ensure!(
        run.section_status("metrics_404")? != 0,
        "other paths are not served"
    );
    Ok(())
}

/// The first sightings in dmesg, laid out like the kernel's WARN(); the ignored site not.
fn kmsg(series: Series) -> Result<()> {
    let dmesg = run(series)?.section("dmesg")?;
    let at = dmesg
        .find("WARNING: CPU: ")
        .context("no WARNING in dmesg")?;
    let block = &dmesg[dmesg[..at].rfind("cut here").context("no cut here")?..];
    let block = &block[..block.find("---[ end trace").context("no end trace")?];
    ensure!(
        block.contains(" PID: ") && block.contains(" at wqflush_test_flush_pointer+0x"),
        "{block}"
    );
    let flush_fn = format!(" {}+0x", series.flush_function());
    ensure!(
        block.contains("Call Trace:") && block.contains(&flush_fn),
        "{block}"
    );
    ensure!(
        !dmesg.contains("at wqflush_test_flush_long+"),
        "ignored site in dmesg"
    );
    let warnings = dmesg.matches("WARNING: CPU: ").count();
    ensure!(
        warnings <= 10,
        "{warnings} warnings: the rate limit did not hold"
    );
    Ok(())
}

wqflush_vmtest::per_kernel_tests! {
    counts_stay_exact_through_a_flood_and_a_full_ring => exact_counts,
    ignore_list_silences_but_counts => ignore_list,
    warnings_carry_the_fix_and_flag_the_self_deadlock => hints,
    prometheus_scrape_shows_exact_counts => metrics,
    kmsg_warning_is_what_dmesg_scrapers_expect => kmsg,
}
