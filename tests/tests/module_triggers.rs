//! The test module's extra triggers (tests/README.md): `sites` (10000 distinct call sites of a
//! system_wq flush), `worker_other` / `worker_self` (flushes from a system_long_wq work item)
//! and `bench` (timed own-queue flushes). One boot per kernel checks all of them against the
//! oracle; `worker_self` deadlocks its kworker on purpose, so it comes last.

use anyhow::{Context, Result, ensure};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use wqflush_vmtest::{Arch, FlushEvent, Guest, Oracle, Series, VmRun, boot_scenario, records};

/// Call sites of the flush in `wqflush_test_flush_sites` (WQFLUSH_TEST_SITES in the module).
const SITES: usize = 10000;

const SCENARIO: &str = include_str!("../guest/module_triggers.sh");

/// Boots `series` with the module and the oracle; also returns the module's path.
fn boot(series: Series) -> Result<(VmRun, std::path::PathBuf)> {
    let guest = Guest {
        wqflush: None,
        timeout: Duration::from_secs(180),
        expected_warning: None,
        append: "",
        files: Vec::new(),
        memory_mb: wqflush_vmtest::qemu::DEFAULT_MEMORY_MB,
    };
    boot_scenario(series, SCENARIO, &guest)
}

/// Return address offsets of the `__flush_workqueue` calls in `function`, from objdump's
/// relocations: proves gcc kept one call instruction per site. The guest architecture's objdump
/// (`aarch64-linux-gnu-objdump` for arm64: the host's cannot read its modules).
fn call_sites(ko: &Path, function: &str, flush_fn: &str) -> Result<BTreeSet<u64>> {
    let objdump = Arch::current()?.binutil("objdump");
    let out = Command::new(&objdump)
        .arg("-dr")
        .arg(ko)
        .output()
        .with_context(|| format!("running {objdump} (binutils)"))?;
    ensure!(out.status.success(), "objdump failed on {}", ko.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let header = format!("<{function}>:");
    let mut start = None;
    let mut sites = BTreeSet::new();
    for line in text.lines() {
        if line.ends_with(&header) {
            let addr = line.split_whitespace().next().context("symbol line")?;
            start = Some(u64::from_str_radix(addr, 16)?);
            continue;
        }
        let Some(base) = start else { continue };
        if line.trim().is_empty() {
            break;
        }
        // `   d6: R_X86_64_PLT32	__flush_workqueue-0x4`: the 4-byte operand at d6, so the
        // call returns to d6 + 4. arm64: `   d4: R_AARCH64_CALL26	__flush_workqueue` on the
        // 4-byte `bl` at d4, which returns to d4 + 4 as well.
        let target = line.split_whitespace().last().unwrap_or_default();
        let x86 = line.contains("R_X86_64_PLT32") && target == format!("{flush_fn}-0x4");
        let arm64 = line.contains("R_AARCH64_CALL26") && target == flush_fn;
        if x86 || arm64 {
            let at = line.trim_start().split(':').next().context("reloc line")?;
            sites.insert(u64::from_str_radix(at, 16)? + 4 - base);
        }
    }
    ensure!(start.is_some(), "{function} not in {}", ko.display());
    Ok(sites)
}

fn bench_ns(run: &VmRun, section: &str) -> Result<u64> {
    let text = run.section(section)?;
    text.trim()
        .parse()
        .with_context(|| format!("{section}: {text:?} is not a number"))
}

/// The innermost caller is `function` itself: no tail call or .cold part hid its frame.
fn innermost<'a>(oracle: &'a Oracle, function: &'a str) -> Result<Vec<&'a FlushEvent>> {
    let events: Vec<_> = oracle.from_function(function).collect();
    for e in &events {
        ensure!(e.stack[0] == function, "stack {:?}", e.stack);
    }
    Ok(events)
}

fn check(series: Series) -> Result<()> {
    let (run, ko) = boot(series)?;
    let flush_fn = series.flush_function();
    let sites = call_sites(&ko, "wqflush_test_flush_sites", flush_fn)?;
    ensure!(
        sites.len() == SITES,
        "objdump: {} calls of {flush_fn} in wqflush_test_flush_sites, want {SITES}",
        sites.len()
    );
    guest_interface(series, &run)?;
    bench(series, &run)?;
    let oracle = Oracle::from_run(&run)?;
    eprintln!("{series}: oracle {}", oracle.summary_json());
    sites_are_distinct(series, &oracle, &sites)?;
    worker_flushes(series, &oracle)
}

/// The module's own view: totals, write errors, the worker stuck for good.
fn guest_interface(series: Series, run: &VmRun) -> Result<()> {
    let want_before: BTreeMap<String, u64> = [
        ("scheduled", 0),
        ("long", 0),
        ("pointer", 0),
        ("own", 0),
        ("sites", 300),
        ("worker_other", 2),
        ("bench", 1100),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .into();
    let got = records::module_counts(run.section("counts_before")?)?;
    ensure!(got == want_before, "counts before worker_self {got:?}");
    let mut want = want_before;
    want.insert("worker_self".into(), 1);
    let got = records::module_counts(run.section("counts")?)?;
    ensure!(got == want, "final counts {got:?}, want {want:?}");
    for (section, errno) in [
        ("sites_0", "Invalid argument"),
        ("sites_10001", "Invalid argument"),
        ("worker_self_2", "Invalid argument"),
        ("worker_self_again", "busy"),
    ] {
        let text = run.section(section)?;
        ensure!(
            run.section_status(section)? != 0 && text.contains(errno),
            "{section}: want a write error {errno:?}, got {text:?}"
        );
    }
    ensure!(
        run.section_status("rmmod")? != 0 && run.section("still_loaded")?.trim() == "1",
        "rmmod after worker_self: {:?}",
        run.section("rmmod")
    );
    let stuck = run.section("stuck")?;
    eprintln!("{series}: stuck worker: {}", stuck.trim());
    ensure!(
        stuck.contains("State:\tD"),
        "no kworker blocked in the self flush: {stuck:?}"
    );
    Ok(())
}

/// `bench`: plausible times for own-queue flushes, unprobed and under the oracle.
fn bench(series: Series, run: &VmRun) -> Result<()> {
    let (plain, probed) = (
        bench_ns(run, "bench_plain")?,
        bench_ns(run, "bench_oracle")?,
    );
    eprintln!(
        "{series}: bench: 1000 own-queue flushes unprobed {plain} ns ({} ns each), 100 under \
         the oracle {probed} ns ({} ns each)",
        plain / 1000,
        probed / 100
    );
    // 100 ns .. 10 ms per flush: anything else is a broken clock or a broken loop.
    for (ns, n) in [(plain, 1000), (probed, 100)] {
        ensure!(
            (100 * n..=10_000_000 * n).contains(&ns),
            "bench {n} took {ns} ns"
        );
    }
    Ok(())
}

/// `sites 300`: 300 flushes of system_wq, each from another call site, the first 300 objdump
/// found, in order.
fn sites_are_distinct(series: Series, oracle: &Oracle, sites: &BTreeSet<u64>) -> Result<()> {
    let ev = innermost(oracle, "wqflush_test_flush_sites")?;
    ensure!(ev.len() == 300, "oracle saw {} sites flushes", ev.len());
    ensure!(
        ev.iter().all(|e| e.flushes("system_wq")),
        "sites flushed {:?}",
        ev.iter().map(|e| &e.system).collect::<BTreeSet<_>>()
    );
    let offsets: BTreeSet<u64> = ev
        .iter()
        .map(|e| e.offset_in("wqflush_test_flush_sites"))
        .collect::<Option<_>>()
        .context("a sites frame without offset")?;
    ensure!(
        offsets.len() == 300,
        "{} distinct return addresses",
        offsets.len()
    );
    let first: BTreeSet<u64> = sites.iter().copied().take(300).collect();
    ensure!(
        offsets == first,
        "return addresses are not the first 300 call sites"
    );
    if series.scheduled_work_queue() == "system_percpu_wq" {
        let percpu = oracle.symbols.contains_key("system_percpu_wq");
        let aliased = ev.iter().any(|e| e.flushes("system_percpu_wq"));
        eprintln!(
            "{series}: system_percpu_wq exists: {percpu}; same queue as system_wq: {aliased}"
        );
    }
    Ok(())
}

/// `worker_other`, `worker_self` and `bench` as the oracle saw them: by kworkers inside work
/// functions, and the module's own queue no system queue.
fn worker_flushes(series: Series, oracle: &Oracle) -> Result<()> {
    // worker_other 2: system_unbound_wq flushed by a kworker inside the work function.
    let ev = innermost(oracle, "wqflush_test_work_flush_other")?;
    ensure!(
        ev.len() == 2
            && ev.iter().all(|e| e.flushes("system_unbound_wq")
                && e.by_kworker()
                && e.called_from("process_one_work")),
        "worker_other flushes: {ev:#?}"
    );
    // bench under the oracle: 100 flushes of the module's own (non-system) queue.
    let ev = innermost(oracle, "wqflush_test_flush_bench")?;
    ensure!(
        ev.len() == 100 && ev.iter().all(|e| e.system.is_empty()),
        "oracle saw {} bench flushes",
        ev.len()
    );
    // worker_self: one flush of system_long_wq by the kworker running on system_long_wq.
    let ev = innermost(oracle, "wqflush_test_work_flush_self")?;
    ensure!(
        ev.len() == 1
            && ev[0].flushes("system_long_wq")
            && ev[0].by_kworker()
            && ev[0].called_from("process_one_work"),
        "worker_self flushes: {ev:#?}"
    );
    eprintln!("{series}: worker_self flush by {}", ev[0].task);
    Ok(())
}

wqflush_vmtest::per_kernel_tests! {
    module_triggers => check,
}
