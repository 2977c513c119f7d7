//! Installs what the build and the VM tests need, skipping whatever is already there, so every
//! `cargo xtask` command can start with it on a fresh machine.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Debian packages: QEMU and the guest's userland, plus what building the test module against
/// Debian's kernel headers needs (6.12's kbuild runs pahole for module BTF; 7.x's modules are
/// built in a trixie chroot that debootstrap makes).
const APT_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "debootstrap",
    "dwarves",
    "xz-utils",
    "gcc",
    "make",
    // `cargo xtask dist` (strip) and the package test (lintian, readelf, man).
    "binutils",
    "lintian",
    "man-db",
    // `cargo xtask test` checks the guest's shell (tests/guest/*.sh, the bench's scenario.sh).
    "shellcheck",
    // arm64 guests (WQFLUSH_ARCH=arm64): QEMU, bookworm's cross compiler for the 6.1 and 6.12
    // test modules, and binutils that read aarch64 modules (7.x's gcc-14 cross compiler goes
    // into the trixie build chroot, tests/src/module.rs).
    "qemu-system-arm",
    "gcc-12-aarch64-linux-gnu",
    "binutils-aarch64-linux-gnu",
    // `cargo xtask build --arch arm64`: the cross linker and the arm64 glibc the static
    // binary links (.cargo/config.toml names the linker).
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    // The scan tests compress fixtures the way modules are installed (.ko.zst; xz and gzip
    // come with the base system and xz-utils), and the scan oracle decompresses them.
    "zstd",
];

/// The bpf-linker release known to build here with `--features llvm-22`.
const BPF_LINKER: &str = "bpf-linker@0.13.0";

pub fn all() -> Result<()> {
    apt_lists()?;
    apt_packages()?;
    lint_tools()?;
    rust_arm64_target()?;
    nightly_rust_src()?;
    bpf_linker()?;
    cargo_fuzz()
}

/// The cargo-fuzz release known to work here (the fuzz smoke in `cargo xtask test`).
const CARGO_FUZZ: &str = "cargo-fuzz@0.13.1";

fn cargo_fuzz() -> Result<()> {
    if quiet(Command::new("cargo").args(["fuzz", "--version"])) {
        return Ok(());
    }
    eprintln!("xtask: installing {CARGO_FUZZ}");
    run(Command::new("cargo").args(["+stable", "install", CARGO_FUZZ]))
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// The VM tests pick the newest Debian kernel from apt's lists; lists older than the archive
/// name kernels the mirror no longer has, so stale lists are refreshed first.
fn apt_lists() -> Result<()> {
    if !wqflush_vmtest::debian::lists_stale(Path::new("/var/lib/apt/lists")) {
        return Ok(());
    }
    eprintln!("xtask: refreshing apt's package lists");
    run(Command::new("apt-get").args(["update", "-q"]))
        .context("apt-get update (run `cargo xtask` as root, or run it yourself)")
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get")
        .args(["install", "-y", "-q"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// The nightly pinned in monitor-ebpf/rust-toolchain.toml, e.g. `nightly-2026-05-20`.
pub fn nightly() -> Result<String> {
    let pin = wqflush_vmtest::workspace_root().join("monitor-ebpf/rust-toolchain.toml");
    std::fs::read_to_string(&pin)
        .with_context(|| format!("reading {}", pin.display()))?
        .lines()
        .find_map(|l| Some(l.strip_prefix("channel = ")?.trim_matches('"').to_owned()))
        .with_context(|| format!("no `channel = \"...\"` in {}", pin.display()))
}

/// clippy and rustfmt for the stable toolchain: CI runs both before the tests.
fn lint_tools() -> Result<()> {
    if quiet(Command::new("cargo").args(["clippy", "--version"]))
        && quiet(Command::new("cargo").args(["fmt", "--version"]))
    {
        return Ok(());
    }
    eprintln!("xtask: installing clippy and rustfmt");
    run(Command::new("rustup").args(["component", "add", "clippy", "rustfmt"]))
}

/// The standard library for `--arch arm64` builds, for the toolchain cargo uses here.
fn rust_arm64_target() -> Result<()> {
    const TARGET: &str = "aarch64-unknown-linux-gnu";
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == TARGET)
        });
    if installed {
        return Ok(());
    }
    eprintln!(
        "xtask: installing Rust's {TARGET} standard library (cargo xtask build --arch arm64)"
    );
    run(Command::new("rustup").args(["target", "add", TARGET]))
}

fn nightly_rust_src() -> Result<()> {
    let nightly = nightly()?;
    let has_src = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", &nightly])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("rust-src"))
        });
    if has_src {
        return Ok(());
    }
    eprintln!(
        "xtask: installing {nightly} with rust-src (the eBPF programs build core from source)"
    );
    run(Command::new("rustup").args([
        "toolchain",
        "install",
        &nightly,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

/// bpf-linker links against nightly's own libLLVM, found through a prefix folder of symlinks
/// that stays in place (the linker's RUNPATH points into it).
fn bpf_linker() -> Result<()> {
    if quiet(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    let libllvm = nightly_libllvm()?;
    let major = llvm_major(&libllvm)?;
    let prefix = llvm_prefix()?;
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let file_name = libllvm.file_name().context("libLLVM path")?;
    for link in [lib.join("libLLVM.so"), lib.join(file_name)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!(
        "xtask: building {BPF_LINKER} against {} (about 90 s)",
        libllvm.display()
    );
    run(Command::new("cargo")
        .args([
            "+stable",
            "install",
            BPF_LINKER,
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix))
}

fn nightly_libllvm() -> Result<PathBuf> {
    let toolchain = format!("+{}", nightly()?);
    let out = Command::new("rustc")
        .args([toolchain.as_str(), "--print", "sysroot"])
        .output()
        .with_context(|| format!("rustc {toolchain} --print sysroot"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let lib = sysroot.join("lib");
    std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}; is the nightly toolchain complete?",
                lib.display()
            )
        })
}

/// `libLLVM.so.22.1-rust-1.97.0-nightly` -> 22
fn llvm_major(libllvm: &Path) -> Result<u32> {
    let name = libllvm
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    name.trim_start_matches("libLLVM.so.")
        .split(['.', '-'])
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot read the LLVM version from {name}"))
}

fn llvm_prefix() -> Result<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    Ok(cargo_home.join("wqflush-llvm"))
}
