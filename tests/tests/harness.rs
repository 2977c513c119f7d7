//! Proves the harness end to end: a Debian kernel boots with the test module and the oracle
//! sees exactly the flushes each trigger fires.

use anyhow::{Result, ensure};
use std::collections::BTreeMap;
use std::time::Duration;
use wqflush_vmtest::{
    Guest, Oracle, Series, VmRun, boot_scenario, cache_dir, prepare_kernel, records, run_scenario,
};

wqflush_vmtest::per_kernel_tests! {
    module_and_oracle => check,
    guest_helpers_background_job => background_job,
}

const SCENARIO: &str = include_str!("../guest/harness.sh");

/// Boots `series` with the module and the oracle and returns what the guest reported.
fn boot_with_module(series: Series) -> Result<VmRun> {
    let guest = Guest {
        wqflush: None,
        timeout: Duration::from_secs(120),
        expected_warning: None,
        append: "",
        files: Vec::new(),
        memory_mb: wqflush_vmtest::qemu::DEFAULT_MEMORY_MB,
    };
    Ok(boot_scenario(series, SCENARIO, &guest)?.0)
}

fn check(series: Series) -> Result<()> {
    let scheduled_wq = series.scheduled_work_queue();
    let run = boot_with_module(series)?;
    let counts = records::module_counts(run.section("counts")?)?;
    let want: BTreeMap<String, u64> = [("scheduled", 3), ("long", 2), ("pointer", 4), ("own", 5)]
        .map(|(k, v)| (k.to_string(), v))
        .into();
    ensure!(counts == want, "module counts {counts:?}, want {want:?}");

    let oracle = Oracle::from_run(&run)?;
    eprintln!("{series}: oracle {}", oracle.summary_json());
    for e in &oracle.events {
        // The trigger function itself must be the caller: proves no tail call hid its frame
        // (and on arm64 that the link register's frame was put first), with the return
        // address inside it.
        if e.stack.iter().any(|f| f.starts_with("wqflush_test_flush_")) {
            ensure!(
                e.stack[0].starts_with("wqflush_test_flush_"),
                "stack {:?}",
                e.stack
            );
            ensure!(
                e.offset_in(&e.stack[0]).is_some_and(|o| o > 0),
                "no return address offset in {:?}",
                e.frames
            );
        }
    }
    let got = [
        oracle.count(scheduled_wq, "wqflush_test_flush_scheduled"),
        oracle.count("system_long_wq", "wqflush_test_flush_long"),
        oracle.count("system_unbound_wq", "wqflush_test_flush_pointer"),
    ];
    ensure!(
        got == [3, 2, 4],
        "oracle counts {got:?}, want [3, 2, 4]; events: {:#?}",
        oracle.events
    );
    let own: Vec<_> = oracle.from_function("wqflush_test_flush_own").collect();
    ensure!(
        own.len() == 5,
        "oracle saw {} own-queue flushes, want 5",
        own.len()
    );
    ensure!(
        own.iter().all(|e| e.system.is_empty() && e.wq == own[0].wq),
        "own flushes: {own:#?}"
    );
    Ok(())
}

/// The background-job pattern scenarios use for the monitor: start, wait for a ready file,
/// stop with SIGTERM (busybox sh ignores SIGINT in `&` jobs).
fn background_job(series: Series) -> Result<()> {
    let kernel = prepare_kernel(series, &cache_dir())?;
    let script = include_str!("../guest/harness_background_job.sh");
    let run = run_scenario(&kernel, &[], script, Duration::from_secs(60))?;
    run.ensure_success()?;
    ensure!(run.section("ready")? == "ok\n");
    // 143 = killed by SIGTERM.
    ensure!(
        run.section("stopped")? == "143\n",
        "stop_bg status {:?}",
        run.section("stopped")
    );
    Ok(())
}
