//! The wqflush binary the VMs run: statically linked, so the initramfs needs no libraries.

use std::path::PathBuf;

use anyhow::{Result, ensure};

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds `wqflush` (the `dist` profile: release with fat LTO; static glibc) and returns its
/// path.
pub fn wqflush() -> Result<PathBuf> {
    // An explicit --target keeps RUSTFLAGS off build scripts and proc macros.
    crate::cargo(
        &[
            "build",
            "--locked",
            "--profile",
            "dist",
            "-p",
            "wqflush",
            "--target",
            TARGET,
        ],
        &[("RUSTFLAGS", "-C target-feature=+crt-static")],
    )?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| wqflush_vmtest::workspace_root().join("target"));
    let bin = target_dir.join(format!("{TARGET}/dist/wqflush"));
    ensure!(bin.exists(), "{} missing after the build", bin.display());
    Ok(bin)
}
