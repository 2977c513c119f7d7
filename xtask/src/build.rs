//! The wqflush binary the VMs run: statically linked, so the initramfs needs no libraries; for
//! the host's architecture or cross-built for arm64 (the linker is set in .cargo/config.toml).

use std::path::PathBuf;

use anyhow::{Result, ensure};
use wqflush_vmtest::Arch;

/// Builds `wqflush` for `arch` (the `dist` profile: release with fat LTO; static glibc) and
/// returns its path.
pub fn wqflush(arch: Arch) -> Result<PathBuf> {
    // An explicit --target keeps RUSTFLAGS off build scripts and proc macros.
    let target = arch.rust_target();
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
