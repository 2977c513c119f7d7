//! `cargo xtask`: everything besides `cargo build` — installing the eBPF toolchain and the VM
//! tools, building the static binary the VMs run, the QEMU demo and the full test suite.

mod build;
mod demo;
mod setup;

use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use wqflush_vmtest::Series;

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (idempotent): apt packages, nightly rust-src,
    /// bpf-linker built against nightly's LLVM
    Setup,
    /// Build the wqflush binary (static, so it also runs in the test VMs)
    Build,
    /// Boot a Debian kernel under QEMU and show wqflush catching the test module's flushes
    Demo {
        /// Which Debian kernel to boot
        #[arg(long, value_parser = ["6.1", "6.12"], default_value = "6.1")]
        kernel: String,
    },
    /// Unit tests, the host's clear-error path, and the QEMU tests on Debian 6.1 and 6.12
    Test,
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<()> {
    setup::all()?;
    match cmd {
        Cmd::Setup => Ok(()),
        Cmd::Build => build::wqflush().map(|p| println!("{}", p.display())),
        Cmd::Demo { kernel } => {
            let series = if kernel == "6.12" {
                Series::V6_12
            } else {
                Series::V6_1
            };
            demo::run(series, &build::wqflush()?)
        }
        Cmd::Test => test(),
    }
}

fn test() -> Result<()> {
    let bin = build::wqflush()?;
    // Unit tests and the host run first: they fail fast, before any VM boots.
    cargo(&["test", "--workspace"], &[])?;
    // The VM tests each boot a kernel; two at a time fits this project's 2-core machines.
    let bin = bin.to_str().context("non-UTF-8 path")?;
    cargo(
        &[
            "test",
            "-p",
            "wqflush-vmtest",
            "--",
            "--include-ignored",
            "--test-threads=2",
        ],
        &[("WQFLUSH_BIN", bin)],
    )
}

pub fn cargo(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args).envs(env.iter().copied());
    let status = cmd
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
