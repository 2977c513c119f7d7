//! `cargo xtask`: everything besides `cargo build` — installing the eBPF toolchain and the VM
//! tools, building the static binary the VMs run, the QEMU demo and the full test suite.

mod bench;
mod build;
mod demo;
mod dist;
mod fuzz;
mod setup;

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::{Parser, Subcommand};
use wqflush_vmtest::{Arch, Series};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (idempotent): apt packages, the pinned nightly
    /// with rust-src, bpf-linker built against its LLVM
    Setup,
    /// Build the wqflush binary (static, so it also runs in the test VMs)
    Build {
        #[arg(long, value_parser = parse_arch, default_value = "amd64")]
        arch: Arch,
    },
    /// Build the Debian package and a tarball of the same files into target/dist/
    Dist {
        #[arg(long, value_parser = parse_arch, default_value = "amd64")]
        arch: Arch,
    },
    /// Boot a Debian kernel under QEMU and show wqflush catching the test module's flushes
    Demo {
        /// Which Debian kernel series to boot
        #[arg(long, value_parser = parse_series, default_value = "6.1")]
        kernel: Series,
        #[arg(long, value_parser = parse_arch, default_value = "amd64")]
        arch: Arch,
    },
    /// Unit tests, the host's clear-error path, and the QEMU tests on Debian's amd64 kernels
    /// 5.10, 6.1, 6.12 and 7.x and arm64 kernels 6.1, 6.12 and 7.x
    Test {
        /// Run the QEMU tests on this kernel series only (a quick loop)
        #[arg(long, value_parser = parse_series)]
        kernel: Option<Series>,
        /// Run the QEMU tests on this architecture only (default: both)
        #[arg(long, value_parser = parse_arch)]
        arch: Option<Arch>,
    },
    /// Benchmark in QEMU: wqflush (fentry, kprobe) against no probe and bpftrace; one table
    Bench {
        /// Which Debian kernel series to boot (default: 6.1 on amd64, 6.12 on arm64, whose 6.1
        /// lists no data symbols for bpftrace's kaddr())
        #[arg(long, value_parser = parse_series)]
        kernel: Option<Series>,
        /// Interleaved rounds (each runs every configuration once)
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Flushes of the test module's own queue per non-offending run
        #[arg(long, default_value_t = 200_000)]
        iterations: u64,
        /// Offending flushes of system_wq per run, split over 2 CPUs
        #[arg(long, default_value_t = 1_000_000)]
        flushes: u64,
        /// Distinct call sites for the memory figure (at most 10000)
        #[arg(long, default_value_t = 10_000)]
        sites: u32,
        /// Print the table of a boot kept with WQFLUSH_VM_KEEP=1 (its directory) instead of
        /// booting; pass the same options as that run
        #[arg(long, value_name = "DIR")]
        replay: Option<PathBuf>,
        /// Run only what `--waits` adds (no probe, the default, the default with --waits): a
        /// quick loop; the other phases and bpftrace are skipped
        #[arg(long)]
        waits_only: bool,
        /// Run only the scan phase: the host's `wqflush scan` of a Debian module tree beside
        /// `objdump -dr` over the same files, on this machine (no guest, no root)
        #[arg(long, conflicts_with_all = ["waits_only", "replay"])]
        scan_only: bool,
        /// The Debian series whose module tree the scan phase reads (6.1: plain .ko files, which
        /// objdump reads as they are; 6.12's .ko.xz are decompressed for objdump, untimed)
        #[arg(long, value_parser = parse_series, default_value = "6.1")]
        scan_kernel: Series,
        /// The guest's architecture: arm64 boots Debian's arm64 kernel with its arm64 bpftrace,
        /// and the scan phase reads arm64's module tree (with aarch64-linux-gnu-objdump)
        #[arg(long, value_parser = parse_arch, default_value = "amd64")]
        arch: Arch,
    },
}

/// `5.10`, `6.1`, `6.12` or `7` (the newest 7.x Debian has).
fn parse_series(name: &str) -> Result<Series, String> {
    Series::from_name(name).ok_or_else(|| {
        let names: Vec<String> = Series::ALL.iter().map(ToString::to_string).collect();
        format!("no such kernel series; use one of {}", names.join(", "))
    })
}

/// `amd64` or `arm64`.
fn parse_arch(name: &str) -> Result<Arch, String> {
    Arch::from_name(name).ok_or_else(|| "no such architecture; use amd64 or arm64".to_owned())
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
        Cmd::Build { arch } => build::wqflush(arch).map(|p| println!("{}", p.display())),
        Cmd::Dist { arch } => package(arch).map(drop),
        Cmd::Demo { kernel, arch } => {
            set_vm_arch(arch);
            demo::run(kernel, &build::wqflush(arch)?)
        }
        Cmd::Test { kernel, arch } => test(kernel, arch),
        Cmd::Bench {
            kernel,
            rounds,
            iterations,
            flushes,
            sites,
            replay,
            waits_only,
            scan_only,
            scan_kernel,
            arch,
        } => {
            let default = match arch {
                Arch::Amd64 => Series::V6_1,
                Arch::Arm64 => Series::V6_12,
            };
            let opts = bench::Options {
                series: kernel.unwrap_or(default),
                rounds,
                iterations,
                flushes,
                sites,
                waits_only,
                scan_only,
                scan_series: scan_kernel,
                arch,
            };
            run_bench(&opts, replay)
        }
    }
}

/// The scan phase on this machine (the host's binary, whatever the guest's architecture), then
/// the guest's part; a replay prints the guest's table of a kept boot only.
fn run_bench(opts: &bench::Options, replay: Option<PathBuf>) -> Result<()> {
    if let Some(dir) = replay {
        return bench::replay(opts, &dir);
    }
    set_vm_arch(opts.arch);
    bench::check(opts)?;
    if !opts.waits_only {
        bench::scan::run(opts, &build::wqflush(Arch::Amd64)?)?;
    }
    if !opts.scan_only {
        bench::run(opts, &build::wqflush(opts.arch)?)?;
    }
    Ok(())
}

/// Builds the binary for `arch` and packages it (the host's build writes the man page).
fn package(arch: Arch) -> Result<(PathBuf, PathBuf, dist::Dist)> {
    let host = build::wqflush(Arch::Amd64)?;
    let bin = match arch {
        Arch::Amd64 => host.clone(),
        Arch::Arm64 => build::wqflush(arch)?,
    };
    let dist = dist::run(&dist::Binaries {
        arch,
        bin: &bin,
        host: &host,
    })?;
    Ok((bin, host, dist))
}

/// The VM harness boots kernels of the architecture `WQFLUSH_ARCH` names.
fn set_vm_arch(arch: Arch) {
    // SAFETY: xtask is single-threaded here; no thread reads the environment concurrently.
    unsafe { std::env::set_var(wqflush_vmtest::arch::ARCH_VAR, arch.debian()) };
}

fn test(kernel: Option<Series>, arch: Option<Arch>) -> Result<()> {
    let mut total = Tally::default();
    let result = test_all(kernel, arch, &mut total);
    println!(
        "tests: {} passed, {} failed, {} skipped",
        total.passed, total.failed, total.ignored
    );
    result
}

/// What the tests test: the static binary and the package built from it, for one
/// architecture.
struct Artifacts {
    arch: Arch,
    bin: String,
    /// The host's (amd64) binary: `wqflush scan` of the architecture's module files runs here,
    /// without a guest.
    host_bin: String,
    deb: String,
    tarball: String,
}

impl Artifacts {
    fn build(arch: Arch) -> Result<Artifacts> {
        let (bin, host_bin, dist) = package(arch)?;
        let text = |p: &std::path::Path| p.to_str().map(str::to_owned).context("non-UTF-8 path");
        Ok(Artifacts {
            arch,
            bin: text(&bin)?,
            host_bin: text(&host_bin)?,
            deb: text(&dist.deb)?,
            tarball: text(&dist.tarball)?,
        })
    }

    fn env(&self) -> [(&str, &str); 5] {
        [
            (wqflush_vmtest::arch::ARCH_VAR, self.arch.debian()),
            ("WQFLUSH_BIN", &self.bin),
            ("WQFLUSH_HOST_BIN", &self.host_bin),
            ("WQFLUSH_DEB", &self.deb),
            ("WQFLUSH_TARBALL", &self.tarball),
        ]
    }
}

/// Fastest first: shellcheck of the guest shell, unit and host tests, the fuzz smoke, then the VM
/// tests per architecture, which boot kernels two at a time (this project's machines have 2
/// cores). With `kernel`, the VM tests of that series only (`per_kernel_tests!` puts them in a
/// module named after it).
fn test_all(kernel: Option<Series>, arch: Option<Arch>, total: &mut Tally) -> Result<()> {
    let arches = arch.map_or(Arch::ALL.to_vec(), |a| vec![a]);
    if kernel == Some(Series::V5_10) && arches == [Arch::Arm64] {
        bail!("Debian has no arm64 5.10 kernel this project tests; use 6.1, 6.12 or 7");
    }
    shellcheck()?;
    let host = Artifacts::build(Arch::Amd64)?;
    let unit = [
        "test",
        "--locked",
        "--workspace",
        "--exclude",
        "wqflush-vmtest",
        "--lib",
        "--bins",
        "--tests",
    ];
    cargo_test(&unit, &host.env(), total)?;
    fuzz::smoke(total)?;
    let mut failed = Vec::new();
    for arch in arches {
        let artifacts = match arch {
            Arch::Amd64 => &host,
            Arch::Arm64 => &Artifacts::build(arch)?,
        };
        if let Err(e) = vm_tests(artifacts, kernel, total) {
            eprintln!("xtask: {} VM tests: {e:#}", arch.debian());
            failed.push(arch.debian());
        }
    }
    ensure!(
        failed.is_empty(),
        "VM tests failed on {}",
        failed.join(", ")
    );
    Ok(())
}

/// The QEMU tests for one architecture; arm64 has no 5.10 kernel.
fn vm_tests(artifacts: &Artifacts, kernel: Option<Series>, total: &mut Tally) -> Result<()> {
    if kernel == Some(Series::V5_10) && artifacts.arch == Arch::Arm64 {
        return Ok(());
    }
    let filter = kernel.map(|s| format!("debian_{}::", s.to_string().replace('.', "_")));
    let mut vm = vec![
        "test",
        "--locked",
        "-p",
        "wqflush-vmtest",
        "--tests",
        // Every test binary runs even when one fails: the tally shows all that fail.
        "--no-fail-fast",
        "--",
        "--include-ignored",
        "--test-threads=2",
    ];
    vm.extend(filter.as_deref());
    if artifacts.arch == Arch::Arm64 {
        vm.extend(["--skip", "debian_5_10::"]);
    }
    cargo_test(&vm, &artifacts.env(), total)
}

/// The shell that runs in the guests, `tests/guest/*.sh` and the bench's `scenario.sh`, passes
/// shellcheck: each file names its shell (`# shellcheck shell=sh`, or its shebang), `-x` follows
/// what it sources (`# shellcheck source=...`).
fn shellcheck() -> Result<()> {
    let root = wqflush_vmtest::workspace_root();
    let guest = root.join("tests/guest");
    let mut files = std::fs::read_dir(&guest)
        .with_context(|| format!("reading {}", guest.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?;
    files.retain(|f| f.extension().is_some_and(|e| e == "sh"));
    files.sort();
    files.push(root.join("xtask/src/bench/scenario.sh"));
    let relative: Vec<_> = files
        .iter()
        .map(|f| f.strip_prefix(&root).unwrap_or(f))
        .collect();
    let status = Command::new("shellcheck")
        .arg("-x")
        .args(&relative)
        .current_dir(&root)
        .status()
        .context("running shellcheck (apt-get install shellcheck, or cargo xtask setup)")?;
    if !status.success() {
        bail!(
            "shellcheck found problems in the guest shell (above): fix them, or disable a check \
             on its line with `# shellcheck disable=SCnnnn # why`"
        );
    }
    println!("shellcheck: {} files clean", files.len());
    Ok(())
}

#[derive(Default)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

/// Runs `cargo test`, passing its output through and adding up its `test result:` lines.
fn cargo_test(args: &[&str], env: &[(&str, &str)], total: &mut Tally) -> Result<()> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |what: &str| {
                rest.split(';').find_map(|part| {
                    part.trim()
                        .strip_suffix(what)?
                        .trim()
                        .rsplit(' ')
                        .next()?
                        .parse()
                        .ok()
                })
            };
            total.passed += count(" passed").unwrap_or(0);
            total.failed += count(" failed").unwrap_or(0);
            total.ignored += count(" ignored").unwrap_or(0);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
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
