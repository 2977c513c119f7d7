//! What a fleet installs, on a real Debian 12 userland with systemd as PID 1: the package from
//! `cargo xtask dist` (`WQFLUSH_DEB`) installs, its unit starts and attaches under its own
//! hardening, the flushes the test module fires reach the journal and the metrics endpoint,
//! stopping writes the summary and exits 0, and neither stopping nor removing the package
//! leaves a probe in the kernel.
//!
//! amd64 on 6.1 and 7.x: bookworm's own kernel and the newest (the unit's capability set differs
//! in what it allows on each: no fprobe on 6.1). arm64 on 6.12 and 7.x: Debian's arm64 6.1
//! builds the virtio drivers the guest needs as modules, which the systemd root does not load.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, ensure};
use wqflush_vmtest::{
    Arch, PerKernel, Series, VmRun, boot_systemd_scenario, guest::scenario, records,
};

/// Where the package lands in the guest.
const DEB_GUEST_PATH: &str = "/root/wqflush.deb";

const SCENARIO: &str = include_str!("../guest/systemd.sh");

fn run(series: Series) -> Result<&'static VmRun> {
    static RUNS: PerKernel = PerKernel::new();
    RUNS.get(series, || {
        let deb = std::env::var_os("WQFLUSH_DEB")
            .map(PathBuf::from)
            .context("WQFLUSH_DEB is not set: run the VM tests through `cargo xtask test`")?;
        let script = scenario(&[("DEB", DEB_GUEST_PATH)], SCENARIO);
        let files = [(deb, DEB_GUEST_PATH.to_owned())];
        boot_systemd_scenario(series, &script, &files, Duration::from_secs(900))
    })
}

/// Whether this file's checks run on `series` for `WQFLUSH_ARCH`; says why not when they don't.
fn runs_on(series: Series) -> Result<bool> {
    let arch = Arch::current()?;
    let kernels = match arch {
        Arch::Amd64 => [Series::V6_1, Series::V7],
        Arch::Arm64 => [Series::V6_12, Series::V7],
    };
    if kernels.contains(&series) {
        return Ok(true);
    }
    let [a, b] = kernels;
    eprintln!("{series} on {arch}: the systemd guest runs on {a} and {b} only, not here");
    Ok(false)
}

/// `systemctl show -p ...` output as (property, value) lookups.
fn property<'a>(show: &'a str, key: &str) -> Option<&'a str> {
    show.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// The numbers `bpf_state` printed: `programs`, `pinned`, `ftrace`, `kprobes`.
fn bpf_counts(text: &str) -> Result<[u64; 4]> {
    let get = |key: &str| -> Result<u64> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .with_context(|| format!("no {key} in:\n{text}"))?;
        Ok(line.trim().parse()?)
    };
    Ok([
        get("programs")?,
        get("pinned")?,
        get("ftrace")?,
        get("kprobes")?,
    ])
}

/// Nothing of wqflush's left in the kernel, per `bpf_state` in section `name`.
fn nothing_attached(run: &VmRun, name: &str) -> Result<()> {
    let text = run.section(name)?;
    let [progs, pinned, ftrace, kprobes] = bpf_counts(text)?;
    ensure!(
        progs == 0 && pinned == 0 && ftrace == 0 && kprobes == 0,
        "{name}: still in the kernel:\n{text}"
    );
    Ok(())
}

/// Installs, enables and attaches under the unit; while it runs the probe is in the kernel (the
/// check the stop and removal tests rely on sees it).
fn installs_and_attaches(series: Series) -> Result<()> {
    let run = run(series)?;
    ensure!(
        run.section_status("install")? == 0,
        "{}",
        run.section("install")?
    );
    ensure!(
        run.section_status("enable")? == 0,
        "{}",
        run.section("enable")?
    );
    let show = run.section("show.running")?;
    ensure!(
        property(show, "ActiveState") == Some("active")
            && property(show, "SubState") == Some("running"),
        "{show}"
    );
    let status = run.section("status")?;
    ensure!(
        status.contains("wqflush.service; enabled") && status.contains("active (running)"),
        "{status}"
    );
    let journal = run.section("journal.running")?;
    let attached = journal
        .lines()
        .find(|l| l.starts_with("wqflush: attached ("))
        .with_context(|| format!("no attach line:\n{journal}"))?;
    eprintln!("{series}: under the unit: {attached}");
    let [progs, _, ftrace, _] = bpf_counts(run.section("bpf.running")?)?;
    ensure!(
        progs >= 1 && ftrace >= 1,
        "the running probe is not visible:\n{}",
        run.section("bpf.running")?
    );
    Ok(())
}

/// The fired flushes reach the metrics endpoint while the service runs.
fn metrics_count_the_flushes(series: Series) -> Result<()> {
    let run = run(series)?;
    let text = run.section("metrics")?;
    for want in [
        "# TYPE wqflush_flushes_total counter",
        r#"wqflush_flushes_total{wq="system_unbound_wq",caller="wqflush_test_flush_pointer",module="wqflush_test"} 3"#,
        r#"wqflush_flushes_total{wq="system_long_wq",caller="wqflush_test_flush_long",module="wqflush_test"} 2"#,
    ] {
        ensure!(
            text.contains(want),
            "{series}: missing {want:?} in:\n{text}"
        );
    }
    Ok(())
}

/// `systemctl stop` sends SIGTERM: wqflush writes its summary to the journal and exits 0.
fn stop_writes_the_summary(series: Series) -> Result<()> {
    let run = run(series)?;
    ensure!(run.section_status("stop")? == 0, "{}", run.section("stop")?);
    let show = run.section("show.stopped")?;
    ensure!(
        property(show, "ActiveState") == Some("inactive")
            && property(show, "ExecMainStatus") == Some("0"),
        "{show}"
    );
    let recs = records::json_lines(run.section("journal.stopped")?);
    let summary = records::summary(&recs)?;
    let pointer = records::count(summary, "wqflush_test_flush_pointer");
    let long = records::count(summary, "wqflush_test_flush_long");
    // 3 + 4 pointer flushes (the second batch for Prometheus), 2 long ones.
    ensure!(pointer == 7 && long == 2, "{series}: summary {summary}");
    // What a fleet's log pipeline groups by: the kernel, and the module's build.
    for rec in recs.iter().filter(|r| r["type"] == "flush") {
        ensure!(
            rec["kernel"].as_str().is_some_and(|k| !k.is_empty()),
            "{rec}"
        );
        if rec["module"] == "wqflush_test" {
            ensure!(rec["module_version"] == "1.0-test", "{rec}");
        }
    }
    let first = records::flushes(&recs, "wqflush_test_flush_pointer");
    ensure!(
        first
            .first()
            .is_some_and(|f| f["wq"] == "system_unbound_wq"),
        "{series}: first sightings {first:?}"
    );
    nothing_attached(run, "bpf.stopped")
}

/// `dpkg -r` of a running service stops it (prerm) and removes the unit; no probe stays.
fn removal_detaches(series: Series) -> Result<()> {
    let run = run(series)?;
    let [progs, ..] = bpf_counts(run.section("bpf.restarted")?)?;
    ensure!(
        progs >= 1,
        "not running again: {}",
        run.section("bpf.restarted")?
    );
    ensure!(
        run.section_status("remove")? == 0,
        "{}",
        run.section("remove")?
    );
    nothing_attached(run, "bpf.removed")?;
    let show = run.section("show.removed")?;
    ensure!(property(show, "LoadState") == Some("not-found"), "{show}");
    let failed = run.section("failed")?;
    ensure!(!failed.contains("wqflush"), "failed units:\n{failed}");
    if !failed.trim().is_empty() {
        eprintln!("{series}: failed units in the guest:\n{failed}");
    }
    Ok(())
}

/// The value of each `wqflush_flushes_total` series (by caller) in a Prometheus query answer.
fn prom_values(answer: &str) -> Result<Vec<(String, f64)>> {
    let v: serde_json::Value = serde_json::from_str(answer.trim())
        .with_context(|| format!("not a Prometheus answer: {answer}"))?;
    ensure!(v["status"] == "success", "{answer}");
    let result = v["data"]["result"].as_array().context("no result")?;
    result
        .iter()
        .map(|r| {
            let caller = r["metric"]["caller"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let value = r["value"][1].as_str().context("no value")?.parse()?;
            Ok((caller, value))
        })
        .collect()
}

/// Prometheus, with the shipped scrape configuration and rules (promtool passes both as
/// shipped), scrapes the service: the counts are exact, `increase()` sees the flushes made after
/// it first scraped a counter, and the example alert fires for the call site.
fn prometheus_scrapes_and_alerts(series: Series) -> Result<()> {
    let run = run(series)?;
    for check in ["promtool.config", "promtool.rules"] {
        ensure!(
            run.section_status(check)? == 0,
            "{check}: {}",
            run.section(check)?
        );
    }
    let total = prom_values(run.section("promql.total")?)?;
    let of =
        |v: &[(String, f64)], caller: &str| v.iter().find(|(c, _)| c == caller).map(|(_, n)| *n);
    ensure!(
        of(&total, "wqflush_test_flush_pointer") == Some(7.0)
            && of(&total, "wqflush_test_flush_long") == Some(2.0),
        "{total:?}"
    );
    // increase() sees the 4 flushes made after the first scrape, and none of the long ones, all
    // made before it. It extrapolates past its first and last samples, which only ever adds: by
    // at most 1.6 scrape intervals over the samples' span (half an interval before, 1.1 after).
    // A CI run saw 4.53 (13 %: scrapes stretch under TCG), so the bound is the next whole flush.
    let inc = prom_values(run.section("promql.increase")?)?;
    let pointer = of(&inc, "wqflush_test_flush_pointer").context("no pointer series")?;
    let long = of(&inc, "wqflush_test_flush_long").context("no long series")?;
    ensure!(
        (4.0..5.0).contains(&pointer) && long == 0.0,
        "increase: {inc:?}"
    );
    let alerts = run.section("alerts")?;
    ensure!(
        alerts.contains(r#""alertname":"SystemWorkqueueFlushed""#)
            && alerts.contains(r#""caller":"wqflush_test_flush_pointer""#)
            && alerts.contains(r#""state":"firing""#),
        "{alerts}"
    );
    Ok(())
}

/// `systemctl kill -s SIGKILL`: systemd starts it again (Restart=on-failure), and every program
/// left in the kernel is the new instance's: the killed one's went with its descriptors.
fn a_killed_instance_restarts_clean(series: Series) -> Result<()> {
    let run = run(series)?;
    ensure!(run.section_status("kill")? == 0, "{}", run.section("kill")?);
    let show = run.section("show.killed")?;
    ensure!(
        property(show, "ActiveState") == Some("active") && property(show, "NRestarts") == Some("1"),
        "{show}"
    );
    let (before, after) = (
        run.section("pid.before")?.trim(),
        run.section("pid.after")?.trim(),
    );
    ensure!(
        before != after && after != "0",
        "MainPID {before} -> {after}"
    );
    let [was, ..] = bpf_counts(run.section("bpf.restarted")?)?;
    let killed = run.section("bpf.killed")?;
    let [now, ..] = bpf_counts(killed)?;
    ensure!(
        now == was,
        "programs {was} before the kill, {now} after:\n{killed}"
    );
    let holders: Vec<&str> = killed
        .lines()
        .filter_map(|l| l.strip_prefix("held: /proc/")?.split('/').next())
        .collect();
    ensure!(
        !holders.is_empty() && holders.iter().all(|p| *p == after),
        "held by {holders:?}, the new instance is {after}:\n{killed}"
    );
    Ok(())
}

/// `systemd-analyze security`: the unit's exposure stays where docs/fleets.md says.
fn the_unit_is_rated_ok(series: Series) -> Result<()> {
    let text = run(series)?.section("security")?;
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level for wqflush.service"))
        .with_context(|| format!("no rating:\n{text}"))?;
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .context("no score")?
        .parse()?;
    eprintln!("{series}: {}", line.trim());
    ensure!(score <= 5.0, "{line}");
    Ok(())
}

/// One ignored test per kernel of either architecture ([`runs_on`] picks), in modules named as `per_kernel_tests!` names
/// them (`cargo xtask test --kernel 7` selects `debian_7::`).
macro_rules! systemd_tests {
    ($($name:ident => $check:ident),* $(,)?) => {
        systemd_tests!(@series debian_6_1, V6_1; $($name => $check),*);
        systemd_tests!(@series debian_6_12, V6_12; $($name => $check),*);
        systemd_tests!(@series debian_7, V7; $($name => $check),*);
    };
    (@series $module:ident, $series:ident; $($name:ident => $check:ident),*) => {
        mod $module {
            $(
                #[test]
                #[ignore = "boots QEMU; run through cargo xtask test"]
                fn $name() -> anyhow::Result<()> {
                    let series = wqflush_vmtest::Series::$series;
                    if !super::runs_on(series)? {
                        return Ok(());
                    }
                    super::$check(series)
                }
            )*
        }
    };
}

systemd_tests! {
    package_installs_and_the_unit_attaches => installs_and_attaches,
    metrics_count_the_fired_flushes => metrics_count_the_flushes,
    stop_writes_the_summary_and_exits_0 => stop_writes_the_summary,
    removing_the_package_detaches_the_probe => removal_detaches,
    prometheus_scrapes_with_the_shipped_config_and_alerts => prometheus_scrapes_and_alerts,
    a_killed_instance_restarts_and_leaves_no_probe => a_killed_instance_restarts_clean,
    systemd_rates_the_unit_ok => the_unit_is_rated_ok,
}
