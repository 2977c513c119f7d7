//! The wqflush binary the VMs run: statically linked, so the initramfs needs no libraries; for
//! the host's architecture or cross-built for arm64.

use std::path::PathBuf;

use anyhow::{Result, ensure};

/// The architectures wqflush is built, packaged and tested for (`--arch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// x86-64 (the host's)
    Amd64,
    /// 64-bit Arm, cross-built with Debian's aarch64-linux-gnu toolchain
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    /// Rust's target; the eBPF object follows it (aya-build sets `bpf_target_arch` from it).
    pub fn triple(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// Debian's name, as in package file names and `WQFLUSH_ARCH` for the VM tests.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The machine name in the tarball's name (`wqflush-V-aarch64-linux.tar.gz`).
    pub fn machine(self) -> &'static str {
        self.triple().split('-').next().unwrap_or_default()
    }

    /// binutils' strip for the architecture (the host's cannot read aarch64 files).
    pub fn strip(self) -> &'static str {
        match self {
            Arch::Amd64 => "strip",
            Arch::Arm64 => "aarch64-linux-gnu-strip",
        }
    }
}

/// Builds `wqflush` for `arch` (the `dist` profile: release with fat LTO; static glibc) and
/// returns its path.
pub fn wqflush(arch: Arch) -> Result<PathBuf> {
    // An explicit --target keeps RUSTFLAGS off build scripts and proc macros. The linker for
    // arm64 is set in .cargo/config.toml.
    let target = arch.triple();
    crate::cargo(
        &[
            "build",
            "--locked",
            "--profile",
            "dist",
            "-p",
            "wqflush",
            "--target",
            target,
        ],
        &[("RUSTFLAGS", "-C target-feature=+crt-static")],
    )?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| wqflush_vmtest::workspace_root().join("target"));
    let bin = target_dir.join(format!("{target}/dist/wqflush"));
    ensure!(bin.exists(), "{} missing after the build", bin.display());
    Ok(bin)
}
