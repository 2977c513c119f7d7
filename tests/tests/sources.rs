//! Source lines: with the test module's own build (kbuild compiles it with the kernel's `-g`)
//! installed under `/lib/modules/V/extra/`, every report names the flush's file:line, with the
//! inline chain where the flush sits in an inlined helper; with a stale build there (rebuilt
//! after a one-line change, so another build-id), no line at all and a `doctor` warning.
//!
//! The oracle is the module's source file in this repository: the line of each trigger's flush
//! call, found by reading `tests/module/wqflush_test.c`, not by asking any symbolizer.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use wqflush_vmtest::{
    Guest, MODULE_GUEST_PATH, PerKernel, Series, VmRun, boot_scenario, build_module_variant,
    cache_dir, guest::scenario, module::module_source_dir, prepare_kernel, qemu::DEFAULT_MEMORY_MB,
    records, wqflush_bin,
};

/// Installs the .ko `KO` where a distribution's module would be, loads the module (the real
/// build), and records every trigger's flush; with `BUILD=matching` also the text and `--kmsg`
/// output.
const SCENARIO: &str = include_str!("../guest/sources.sh");

/// Where the stale build lands in the guest.
const STALE_KO: &str = "/lib/wqflush_test_stale.ko";

const TIMEOUT: Duration = Duration::from_secs(300);

fn matching(series: Series) -> Result<&'static VmRun> {
    static RUNS: PerKernel = PerKernel::new();
    let script = scenario(
        &[("KO", MODULE_GUEST_PATH), ("BUILD", "matching")],
        SCENARIO,
    );
    RUNS.with_wqflush(series, &script, TIMEOUT, Some(" at wqflush_test_"))
}

/// A build of the module with one line more at the top: every line number moves, and so does
/// the build-id.
fn stale(series: Series) -> Result<&'static VmRun> {
    static RUNS: PerKernel = PerKernel::new();
    RUNS.get(series, || {
        let cache = cache_dir();
        let kernel = prepare_kernel(series, &cache)?;
        let ko = build_module_variant(&kernel, &cache.join("module"), "stale", |text| {
            format!("/* rebuilt after a one-line change */\n{text}")
        })?;
        let guest = Guest {
            wqflush: Some(wqflush_bin()?),
            timeout: TIMEOUT,
            expected_warning: None,
            append: "",
            files: vec![(ko, STALE_KO.to_owned())],
            memory_mb: DEFAULT_MEMORY_MB,
        };
        let script = scenario(&[("KO", STALE_KO), ("BUILD", "stale")], SCENARIO);
        Ok(boot_scenario(series, &script, &guest)?.0)
    })
}

/// The module's source, as the oracle reads it.
struct Source(String);

impl Source {
    fn read() -> Result<Self> {
        let path = module_source_dir().join("wqflush_test.c");
        Ok(Source(
            std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?,
        ))
    }

    /// The 1-based line of the first line holding `what` in the body of function `func`.
    fn line_in(&self, func: &str, what: &str) -> Result<u32> {
        let lines: Vec<&str> = self.0.lines().collect();
        let start = lines
            .iter()
            .position(|l| l.starts_with("static ") && l.contains(&format!(" {func}(")))
            .with_context(|| format!("no definition of {func}"))?;
        let at = lines[start + 1..]
            .iter()
            .position(|l| l.contains(what))
            .with_context(|| format!("no {what} in {func}"))?;
        Ok((start + 1 + at + 1) as u32)
    }
}

/// What the oracle expects of one trigger: the call's line in the caller, and where the flush
/// sits when it is in an inlined function (its name, and its file:line suffix).
struct Expected {
    caller: &'static str,
    call_line: u32,
    inlined: Option<(&'static str, String)>,
}

fn expected(series: Series, src: &Source) -> Result<Vec<Expected>> {
    let flush = |f| src.line_in(f, "flush_workqueue(");
    // Before 5.19 flush_scheduled_work() is a static inline function of the kernel's header.
    let scheduled = (series == Series::V5_10).then(|| {
        (
            "flush_scheduled_work",
            "include/linux/workqueue.h:".to_owned(),
        )
    });
    Ok(vec![
        Expected {
            caller: "wqflush_test_flush_scheduled",
            call_line: src.line_in("wqflush_test_flush_scheduled", "flush_scheduled_work(")?,
            inlined: scheduled,
        },
        Expected {
            caller: "wqflush_test_flush_long",
            call_line: flush("wqflush_test_flush_long")?,
            inlined: None,
        },
        Expected {
            caller: "wqflush_test_flush_pointer",
            call_line: flush("wqflush_test_flush_pointer")?,
            inlined: None,
        },
        Expected {
            caller: "wqflush_test_flush_inline",
            call_line: src.line_in("wqflush_test_flush_inline", "wqflush_test_inline_helper(")?,
            inlined: Some((
                "wqflush_test_inline_helper",
                format!("wqflush_test.c:{}", flush("wqflush_test_inline_helper")?),
            )),
        },
    ])
}

fn flush_record<'a>(recs: &'a [Value], caller: &str) -> Result<&'a Value> {
    recs.iter()
        .find(|r| r["type"] == "flush" && r["caller"] == caller)
        .with_context(|| format!("no flush record of {caller}"))
}

/// `source`, and the caller's entries in `stack_source`: the inlined level first (when the flush
/// sits in one), then the caller at the call's line.
fn check_record(rec: &Value, e: &Expected) -> Result<()> {
    let source = rec["source"].as_str().context("no source")?;
    let call = format!("wqflush_test.c:{}", e.call_line);
    match &e.inlined {
        Some((_, at)) if at.ends_with(':') => ensure!(source.contains(at.as_str()), "{rec}"),
        Some((_, at)) => ensure!(source.ends_with(at.as_str()), "{rec}"),
        None => ensure!(source.ends_with(&call), "{rec}"),
    }
    let entries = rec["stack_source"].as_array().context("stack_source")?;
    let at = entries
        .iter()
        .position(|s| {
            s["frame"]
                .as_str()
                .is_some_and(|f| f.starts_with(&format!("{}+", e.caller)))
        })
        .context("no entry of the caller")?;
    let here = &entries[at];
    let file_line = format!("{}:{}", here["file"].as_str().unwrap_or(""), here["line"]);
    ensure!(
        here["inlined"] == false && file_line.ends_with(&call),
        "{here}\n{rec}"
    );
    if let Some((name, _)) = &e.inlined {
        ensure!(
            at > 0 && entries[at - 1]["frame"] == *name && entries[at - 1]["inlined"] == true,
            "no inlined {name} before the caller: {rec}"
        );
    }
    Ok(())
}

fn every_trigger_names_its_line(series: Series) -> Result<()> {
    let run = matching(series)?;
    let recs = records::records(run, "w.json")?;
    eprintln!("{series}: wqflush {}", run.section("rss")?.trim());
    for e in expected(series, &Source::read()?)? {
        let rec = flush_record(&recs, e.caller)?;
        check_record(rec, &e).with_context(|| e.caller)?;
    }
    let summary = records::summary(&recs)?;
    let inline = records::sites(summary, "wqflush_test_flush_inline");
    ensure!(
        inline.len() == 1
            && inline[0]["source"] == flush_record(&recs, "wqflush_test_flush_inline")?["source"],
        "{summary}"
    );
    Ok(())
}

/// The text Call Trace prints the inlined helper on its own line, then the caller with the
/// call's line; `--kmsg` appends the flush's line to the kernel-style WARNING line.
fn text_and_kmsg_show_the_chain(series: Series) -> Result<()> {
    let run = matching(series)?;
    let src = Source::read()?;
    let helper = src.line_in("wqflush_test_inline_helper", "flush_workqueue(")?;
    let call = src.line_in("wqflush_test_flush_inline", "wqflush_test_inline_helper(")?;
    let text = run.section("text")?;
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with(" wqflush_test_inline_helper (") && l.ends_with(" (inlined)"))
        .with_context(|| format!("no inlined line:\n{text}"))?;
    ensure!(
        lines[at].ends_with(&format!("wqflush_test.c:{helper}) (inlined)")),
        "{text}"
    );
    let next = lines.get(at + 1).copied().unwrap_or_default();
    ensure!(
        next.starts_with(" wqflush_test_flush_inline+")
            && next.ends_with(&format!("wqflush_test.c:{call})")),
        "{text}"
    );
    let dmesg = run.section("dmesg")?;
    ensure!(
        dmesg
            .lines()
            .any(|l| l.ends_with(&format!("wqflush_test.c:{helper})"))),
        "{dmesg}"
    );
    Ok(())
}

fn doctor_names_the_file(series: Series) -> Result<()> {
    let run = matching(series)?;
    let doctor = run.section("doctor")?;
    let line = doctor
        .lines()
        .find(|l| l.trim_start().starts_with("wqflush_test "))
        .with_context(|| format!("no debug info line for the module:\n{doctor}"))?;
    ensure!(
        line.contains("/lib/modules/") && line.ends_with("/extra/wqflush_test.ko"),
        "{line}"
    );
    Ok(())
}

/// A stale .ko never gives a line, and doctor says why.
fn a_stale_build_gives_no_line(series: Series) -> Result<()> {
    let run = stale(series)?;
    let doctor = run.section("doctor")?;
    ensure!(
        doctor
            .lines()
            .any(|l| l.trim_start().starts_with("wqflush_test ") && l.contains("build-id differs")),
        "{doctor}"
    );
    let recs = records::records(run, "w.json")?;
    eprintln!("{series} (stale): wqflush {}", run.section("rss")?.trim());
    let flushes: Vec<&Value> = recs.iter().filter(|r| r["type"] == "flush").collect();
    ensure!(flushes.len() == 4, "{recs:?}");
    for rec in flushes {
        ensure!(
            rec["source"].is_null() && rec["stack_source"].is_null(),
            "{rec}"
        );
    }
    Ok(())
}

/// While the first source-line lookup waits for a vmlinux debug file (a FIFO standing in for a
/// slow, huge one), 2,000 new call sites flush: every one is reported, none lost, because the
/// reports wait on their own thread while the event loop drains the ring buffer (256 KiB, far
/// fewer records).
fn a_slow_debug_file_loses_no_first_sighting(series: Series) -> Result<()> {
    let run = matching(series)?;
    let recs = records::json_lines(run.section("stall.json")?);
    let summary = records::summary(&recs)?;
    let reported = recs
        .iter()
        .filter(|r| r["type"] == "flush" && r["caller"] == "wqflush_test_flush_sites")
        .count();
    let counted: u64 = summary["sites"]
        .as_array()
        .context("sites")?
        .iter()
        .filter(|s| s["caller"] == "wqflush_test_flush_sites")
        .map(|s| s["count"].as_u64().unwrap_or(0))
        .sum();
    ensure!(
        reported == 2000 && counted == 2000 && summary["lost"] == 0,
        "{reported} first sightings reported, {counted} flushes counted, lost {}; stderr: {}",
        summary["lost"],
        run.section("stall.err").unwrap_or_default()
    );
    Ok(())
}

wqflush_vmtest::per_kernel_tests! {
    a_slow_debug_file_loses_no_first_sighting => a_slow_debug_file_loses_no_first_sighting,
    every_trigger_names_its_source_line => every_trigger_names_its_line,
    text_and_kmsg_show_the_inline_chain => text_and_kmsg_show_the_chain,
    doctor_names_the_debug_file => doctor_names_the_file,
    a_stale_build_gives_no_line_and_a_doctor_warning => a_stale_build_gives_no_line,
}
