//! `wqflush scan` of Debian's module trees (5.10, 6.1, 6.12, 7.x) and of the test module built
//! for each kernel, checked against an independent oracle built on objdump
//! (`wqflush_vmtest::scan_oracle`): the same sites, sections, call counts, summary and exit code;
//! the issue's 5.10 sites found, the look-alikes not sites; the test module also against what
//! its source says. The host's binary (`WQFLUSH_HOST_BIN`) scans the module files of the
//! architecture `WQFLUSH_ARCH` names.

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use wqflush_vmtest::scan_oracle::{self, Scan, SiteKey};
use wqflush_vmtest::{Arch, Series, build_module, cache_dir, debian, module, prepare_kernel};

/// One `#[test]` per kernel series and check, in modules named like `per_kernel_tests!`'s
/// (`cargo xtask test` skips `debian_5_10::` on arm64, and `--kernel` picks one).
macro_rules! per_series {
    ($($name:ident => $check:ident),* $(,)?) => {
        per_series!(@series debian_5_10, V5_10; $($name => $check),*);
        per_series!(@series debian_6_1, V6_1; $($name => $check),*);
        per_series!(@series debian_6_12, V6_12; $($name => $check),*);
        per_series!(@series debian_7, V7; $($name => $check),*);
    };
    (@series $module:ident, $series:ident; $($name:ident => $check:ident),*) => {
        mod $module {
            $(
                #[test]
                #[ignore = "downloads Debian kernels and module trees; run through cargo xtask test"]
                fn $name() -> anyhow::Result<()> {
                    super::$check(wqflush_vmtest::Series::$series)
                }
            )*
        }
    };
}

per_series! {
    tree_matches_oracle => tree_matches_oracle,
    test_module_matches_oracle_and_source => test_module_matches_oracle_and_source,
}

/// The host's wqflush, which `cargo xtask test` names in `WQFLUSH_HOST_BIN`.
fn host_bin() -> Result<PathBuf> {
    std::env::var_os("WQFLUSH_HOST_BIN")
        .map(PathBuf::from)
        .context("WQFLUSH_HOST_BIN is not set: run the scan tests through `cargo xtask test`")
}

/// A site as `wqflush scan --json` reports it.
#[derive(Debug)]
struct ReportedSite {
    key: SiteKey,
    section: String,
    calls: u64,
    file: String,
    source: Option<String>,
}

/// What one `wqflush scan --json` printed and how it exited.
struct ScanRun {
    sites: Vec<ReportedSite>,
    summary: Value,
    code: Option<i32>,
    elapsed: Duration,
}

fn run_scan(paths: &[&Path]) -> Result<ScanRun> {
    let t = Instant::now();
    let out = Command::new(host_bin()?)
        .args(["scan", "--json"])
        .args(paths)
        .output()
        .context("running wqflush scan")?;
    let elapsed = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut sites = Vec::new();
    let mut summary = Value::Null;
    for line in stdout.lines() {
        let v: Value = serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
        match v["type"].as_str() {
            Some("static_site") => sites.push(reported_site(&v)?),
            Some("scan_summary") => summary = v,
            _ => anyhow::bail!("unexpected record: {line}"),
        }
    }
    ensure!(
        summary.is_object(),
        "no scan_summary line; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(ScanRun {
        sites,
        summary,
        code: out.status.code(),
        elapsed,
    })
}

fn reported_site(v: &Value) -> Result<ReportedSite> {
    let text = |field: &str| {
        v[field]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("{field} missing in {v}"))
    };
    Ok(ReportedSite {
        key: SiteKey {
            module: text("module")?,
            function: text("caller")?,
            wq: text("wq")?,
            via: v["via"].as_str().map(str::to_owned),
        },
        section: text("section")?,
        calls: v["calls"].as_u64().context("calls missing")?,
        file: text("file")?,
        source: v["source"].as_str().map(str::to_owned),
    })
}

/// A site as one line: `module function wq [via var]`.
fn show(key: &SiteKey) -> String {
    let via = key
        .via
        .as_ref()
        .map_or(String::new(), |v| format!(" via {v}"));
    format!("{} {} {}{via}", key.module, key.function, key.wq)
}

/// Prints both lists side by side and checks that the scanner and the oracle agree on every
/// site, its section and call count, the summary and the exit code.
fn compare(label: &str, run: &ScanRun, oracle: &Scan, oracle_time: Duration) -> Result<()> {
    let reported: BTreeMap<&SiteKey, &ReportedSite> =
        run.sites.iter().map(|s| (&s.key, s)).collect();
    eprintln!(
        "{label}: wqflush scan: {} sites in {} modules ({:.1?}); oracle: {} sites in {} modules \
         ({} of {} files disassembled, {:.1?})",
        reported.len(),
        run.summary["modules"],
        run.elapsed,
        oracle.sites.len(),
        oracle.modules().len(),
        oracle.candidates,
        oracle.files,
        oracle_time
    );
    let mut wrong = Vec::new();
    for (key, facts) in &oracle.sites {
        let mark = match reported.get(key) {
            None => "ORACLE ONLY",
            Some(site) if !facts.sections.contains(&site.section) => "SECTION DIFFERS",
            Some(site) if site.calls != facts.calls as u64 => "CALLS DIFFER",
            Some(_) => "both",
        };
        eprintln!(
            "  {mark:<15} {} {:?} calls={}",
            show(key),
            facts.sections,
            facts.calls
        );
        if mark != "both" {
            wrong.push(format!(
                "{mark}: {} (scan: {:?})",
                show(key),
                reported.get(key)
            ));
        }
    }
    for site in reported
        .values()
        .filter(|s| !oracle.sites.contains_key(&s.key))
    {
        eprintln!(
            "  {:<15} {} {} calls={}",
            "SCAN ONLY",
            show(&site.key),
            site.section,
            site.calls
        );
        wrong.push(format!("SCAN ONLY: {site:?}"));
    }
    for site in &run.sites {
        let named = scan_oracle::module_name(Path::new(&site.file));
        if named.as_deref() != Some(site.key.module.as_str()) {
            wrong.push(format!(
                "module {} from file {}",
                site.key.module, site.file
            ));
        }
    }
    ensure!(
        wrong.is_empty(),
        "{label}: scanner and oracle disagree:\n{}",
        wrong.join("\n")
    );
    check_summary(label, run, oracle)
}

/// The summary counts what was listed, and the exit code says whether anything was.
fn check_summary(label: &str, run: &ScanRun, oracle: &Scan) -> Result<()> {
    let modules: BTreeSet<&str> = run.sites.iter().map(|s| s.key.module.as_str()).collect();
    let s = &run.summary;
    ensure!(
        s["files"] == oracle.files
            && s["sites"] == run.sites.len()
            && s["modules"] == modules.len()
            && s["errors"] == 0,
        "{label}: summary {s} for {} files, {} sites in {} modules",
        oracle.files,
        run.sites.len(),
        modules.len()
    );
    let want = if run.sites.is_empty() { 0 } else { 3 };
    ensure!(
        run.code == Some(want),
        "{label}: exit {:?}, want {want}",
        run.code
    );
    Ok(())
}

/// A Debian kernel's whole module tree: the scanner's sites are the oracle's.
fn tree_matches_oracle(series: Series) -> Result<()> {
    let arch = Arch::current()?;
    let tree = debian::module_tree(series, &cache_dir())?;
    let run = run_scan(&[&tree])?;
    let t = Instant::now();
    let oracle = scan_oracle::scan_tree(arch, &tree)?;
    let label = format!("{series} {arch} {}", tree.display());
    compare(&label, &run, &oracle, t.elapsed())?;
    lookalikes_are_not_sites(arch, &tree, &run, &oracle)?;
    if series == Series::V5_10 {
        issue_sites_found(&oracle)?;
    }
    Ok(())
}

/// Functions that load a system queue and call a flush function, but pass the queue to
/// `queue_work_on()` and flush another (issue 23).
const LOOKALIKES: [(&str, &str); 3] = [
    ("kvm", "kvm_irqfd"),
    ("bcache", "bch_writeback_thread"),
    ("habanalabs", "hl_device_reset"),
];

fn lookalikes_are_not_sites(arch: Arch, tree: &Path, run: &ScanRun, oracle: &Scan) -> Result<()> {
    let mut files = Vec::new();
    scan_oracle::collect_module_files(tree, &mut files)?;
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| scan_oracle::module_name(f))
        .collect();
    for (module, function) in LOOKALIKES {
        if !modules.contains(module) {
            continue;
        }
        let is = |k: &SiteKey| k.module == module && k.function == function;
        ensure!(
            !run.sites.iter().any(|s| is(&s.key)) && !oracle.sites.keys().any(is),
            "look-alike {module} {function} is reported as a site"
        );
        let co_occurs = oracle
            .lookalikes
            .contains(&(module.to_string(), function.to_string()));
        eprintln!(
            "look-alike {module} {function}: not a site (a system queue load and a flush call \
             in it: {co_occurs})"
        );
    }
    // kvm is a module in every amd64 tree, and there its kvm_irqfd does both: the check above
    // is not vacuous.
    let kvm = ("kvm".to_string(), "kvm_irqfd".to_string());
    ensure!(
        arch != Arch::Amd64 || oracle.lookalikes.contains(&kvm),
        "the oracle no longer sees kvm_irqfd load a system queue and call a flush"
    );
    Ok(())
}

/// Issue 23's Debian 5.10 figures: 21 functions in these 15 modules.
const ISSUE_5_10_MODULES: [&str; 15] = [
    "aoe",
    "ath6kl_usb",
    "i915",
    "ib_core",
    "ib_isert",
    "mlx4_ib",
    "mpt3sas",
    "mptscsih",
    "nvmet",
    "nvmet_rdma",
    "nvmet_tcp",
    "psmouse",
    "qla2xxx",
    "snd_intel_sst_core",
    "tsl2563",
];

/// The sites issue 23 names for 5.10: (module, function, queue, section where it says).
const ISSUE_5_10_SITES: [(&str, &str, &str, Option<&str>); 10] = [
    ("aoe", "aoedev_exit", "system_wq", None),
    ("aoe", "flush", "system_wq", None),
    (
        "i915",
        "intel_modeset_driver_remove_noirq",
        "system_wq",
        None,
    ),
    (
        "ib_core",
        "ib_core_cleanup",
        "system_unbound_wq",
        Some("exit"),
    ),
    ("ib_isert", "isert_exit", "system_wq", None),
    ("mpt3sas", "scsih_suspend", "system_wq", None),
    ("mptscsih", "mptscsih_suspend", "system_wq", None),
    ("psmouse", "psmouse_smbus_module_exit", "system_wq", None),
    ("qla2xxx", "qlt_stop_phase1", "system_wq", None),
    ("tsl2563", "tsl2563_remove", "system_wq", None),
];

fn issue_sites_found(oracle: &Scan) -> Result<()> {
    eprintln!(
        "issue 23 counted 21 functions in 15 modules on 5.10.0-46; the oracle: {} in {}",
        oracle.sites.len(),
        oracle.modules().len()
    );
    let modules: Vec<&str> = oracle.modules().into_iter().collect();
    ensure!(
        modules == ISSUE_5_10_MODULES,
        "modules with sites: {modules:?}, issue 23: {ISSUE_5_10_MODULES:?}"
    );
    for (module, function, wq, section) in ISSUE_5_10_SITES {
        let key = SiteKey {
            module: module.into(),
            function: function.into(),
            wq: wq.into(),
            via: None,
        };
        let facts = oracle
            .sites
            .get(&key)
            .with_context(|| format!("the oracle lacks issue 23's {}", show(&key)))?;
        if let Some(section) = section {
            ensure!(
                facts.sections.contains(section),
                "{}: {:?}",
                show(&key),
                facts.sections
            );
        }
    }
    Ok(())
}

/// The test module built for `series`: the scanner's sites are the oracle's and the source's.
fn test_module_matches_oracle_and_source(series: Series) -> Result<()> {
    let arch = Arch::current()?;
    let cache = cache_dir();
    let kernel = prepare_kernel(series, &cache)?;
    let ko = build_module(&kernel, &cache.join("module"))?;
    let run = run_scan(&[&ko])?;
    let t = Instant::now();
    let oracle = scan_oracle::scan_files(arch, std::slice::from_ref(&ko))?;
    let label = format!("{series} {arch} {}", ko.display());
    compare(&label, &run, &oracle, t.elapsed())?;
    let source = std::fs::read_to_string(module::module_source_dir().join("wqflush_test.c"))?;
    let expected = expected_sites(series, arch, &source)?;
    let reported: BTreeSet<SiteKey> = run.sites.iter().map(|s| s.key.clone()).collect();
    let show_all = |set: &BTreeSet<SiteKey>| set.iter().map(show).collect::<Vec<_>>();
    ensure!(
        reported == expected,
        "{label}: reported {:#?}\nthe source says {:#?}",
        show_all(&reported),
        show_all(&expected)
    );
    check_sources(&label, &run, &source)
}

/// The source's flushes of a system queue, function by function: (function, queue, the module
/// variable it goes through).
fn expected_sites(series: Series, arch: Arch, source: &str) -> Result<BTreeSet<SiteKey>> {
    let mut sites = vec![
        // flush_scheduled_work(): the queue it flushes on this series.
        (
            "wqflush_test_flush_scheduled",
            series.scheduled_work_queue(),
            None,
        ),
        ("wqflush_test_flush_long", "system_long_wq", None),
        ("wqflush_test_flush_deprecated", "system_wq", None),
        // WQFLUSH_TEST_FLUSH_FN(system_wq) at each of WQFLUSH_TEST_SITES call sites.
        ("wqflush_test_flush_sites", "system_wq", None),
        ("wqflush_test_work_flush_other", "system_unbound_wq", None),
        ("wqflush_test_work_flush_self", "system_long_wq", None),
        // storm_wq and abba_wq: init assigns them system_highpri_wq and nothing else does.
        (
            "wqflush_test_flush_storm",
            "system_highpri_wq",
            Some("storm_wq"),
        ),
        (
            "wqflush_test_flush_abba",
            "system_highpri_wq",
            Some("abba_wq"),
        ),
    ];
    if series == Series::V7 {
        // 7.1+ (WQFLUSH_TEST_HAVE_DFL_LONG): init assigns holder.dfl_long system_dfl_long_wq
        // and nothing else does; before, nothing assigns it.
        sites.push((
            "wqflush_test_flush_dfl_long",
            "system_dfl_long_wq",
            Some("holder+0x8"),
        ));
    }
    if arch == Arch::Amd64 {
        // x86 only: an asm call with READ_ONCE(system_long_wq) in rdi.
        sites.push(("wqflush_test_flush_stale", "system_long_wq", None));
    }
    // Not sites: holder.wq, which init sets from a module parameter (pointer, inline, the exit
    // function), slow_wq, likewise (slow), own_wq (own, bench), a parameter (pac_inner); before
    // 7.1, holder.dfl_long, which nothing sets (dfl_long).
    let not_sites = [
        "wqflush_test_flush_pointer",
        "wqflush_test_flush_inline",
        "wqflush_test_flush_dfl_long",
        "wqflush_test_exit",
        "wqflush_test_flush_slow",
        "wqflush_test_flush_own",
        "wqflush_test_flush_bench",
        "wqflush_test_flush_pac_inner",
    ];
    for function in sites.iter().map(|s| s.0).chain(not_sites) {
        ensure!(
            source.contains(&format!(" {function}(")),
            "tests/module/wqflush_test.c has no {function}: update this test's list"
        );
    }
    Ok(sites
        .into_iter()
        .map(|(function, wq, via)| SiteKey {
            module: module::MODULE_NAME.into(),
            function: function.into(),
            wq: wq.into(),
            via: via.map(str::to_owned),
        })
        .collect())
}

/// Each site's `source` line lies in its function in wqflush_test.c (the 5.10 headers' inline
/// `flush_scheduled_work()` aside), and 'sites' has the source's WQFLUSH_TEST_SITES calls.
fn check_sources(label: &str, run: &ScanRun, source: &str) -> Result<()> {
    let lines: Vec<&str> = source.lines().collect();
    for site in &run.sites {
        let text = site.source.as_deref().unwrap_or("");
        let Some(line) = text.strip_prefix("wqflush_test.c:") else {
            ensure!(
                site.key.function == "wqflush_test_flush_scheduled" && text.contains(".h:"),
                "{label}: {} has source {:?}",
                show(&site.key),
                site.source
            );
            continue;
        };
        let line: usize = line.parse()?;
        let start = lines
            .iter()
            .position(|l| {
                l.starts_with("static ") && l.contains(&format!(" {}(", site.key.function))
            })
            .context("function not in the source")?;
        let end = start + lines[start..].iter().position(|l| *l == "}").unwrap_or(0);
        ensure!(
            (start + 1..=end + 1).contains(&line),
            "{label}: {} at line {line}, outside its function (lines {}-{})",
            show(&site.key),
            start + 1,
            end + 1
        );
    }
    let count: u64 = source
        .lines()
        .find_map(|l| l.strip_prefix("#define WQFLUSH_TEST_SITES "))
        .context("no WQFLUSH_TEST_SITES in the source")?
        .trim()
        .parse()?;
    let sites = run
        .sites
        .iter()
        .find(|s| s.key.function == "wqflush_test_flush_sites")
        .context("no wqflush_test_flush_sites site")?;
    ensure!(
        sites.calls == count,
        "{label}: 'sites' has {} calls, the source {count}",
        sites.calls
    );
    Ok(())
}
