//! The fuzz targets in monitor/fuzz (cargo fuzz, libFuzzer): a short smoke run of each for the
//! test suite, on the pinned nightly (monitor-ebpf/rust-toolchain.toml). Longer runs:
//! `cd monitor && cargo +nightly fuzz run -O <target> -- -runs=10000000`.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::Tally;

pub const TARGETS: &[&str] = &["kallsyms", "event", "ignore", "scan"];

/// cargo fuzz has no `--locked`: the fuzz workspace's lock is checked on its own first, so a
/// stale one fails instead of being rewritten by the run.
fn lock_is_current(toolchain: &str, monitor: &std::path::Path) -> Result<()> {
    let manifest = monitor.join("fuzz/Cargo.toml");
    let status = Command::new("cargo")
        .args([toolchain, "metadata", "--locked", "--format-version", "1"])
        .arg("--manifest-path")
        .arg(&manifest)
        .stdout(std::process::Stdio::null())
        .status()
        .context("running cargo metadata on monitor/fuzz")?;
    if !status.success() {
        bail!(
            "monitor/fuzz/Cargo.lock is out of date: run `cargo {toolchain} metadata \
             --format-version 1 >/dev/null` in monitor/fuzz and commit the lock"
        );
    }
    Ok(())
}

/// Executions per target in the smoke run: seconds each, enough to catch a crash on the
/// shapes of input the targets start from.
const SMOKE_RUNS: &str = "-runs=50000";

pub fn smoke(total: &mut Tally) -> Result<()> {
    let dir = wqflush_vmtest::workspace_root().join("monitor");
    let toolchain = format!("+{}", crate::setup::nightly()?);
    lock_is_current(&toolchain, &dir)?;
    for target in TARGETS {
        let status = Command::new("cargo")
            .args([
                toolchain.as_str(),
                "fuzz",
                "run",
                "-O",
                target,
                "--",
                SMOKE_RUNS,
                "-max_len=4096",
            ])
            // The fuzz targets use the wqflush library only; its eBPF object is not needed.
            .env("AYA_BUILD_SKIP", "1")
            .current_dir(&dir)
            .status()
            .with_context(|| format!("running cargo fuzz for {target}"))?;
        println!(
            "test fuzz::{target} ({SMOKE_RUNS}) ... {}",
            if status.success() { "ok" } else { "FAILED" }
        );
        if !status.success() {
            total.failed += 1;
            bail!(
                "fuzz target {target} failed ({status}); the crash input is in monitor/fuzz/artifacts/{target}/"
            );
        }
        total.passed += 1;
    }
    Ok(())
}
