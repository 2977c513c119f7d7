//! The wqflush binary the VMs run: statically linked, so the initramfs needs no libraries.

use std::path::PathBuf;

use anyhow::{Result, ensure};

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds `wqflush` (release, static glibc) and returns its path.
pub fn wqflush() -> Result<PathBuf> {
    // An explicit --target keeps RUSTFLAGS off build scripts and proc macros.
    crate::cargo(
        &["build", "--release", "-p", "wqflush", "--target", TARGET],
        &[("RUSTFLAGS", "-C target-feature=+crt-static")],
    )?;
    let bin = wqflush_vmtest::workspace_root().join(format!("target/{TARGET}/release/wqflush"));
    ensure!(bin.exists(), "{} missing after the build", bin.display());
    Ok(bin)
}
