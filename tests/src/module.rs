//! Builds the `wqflush_test` kernel module (tests/module/) against a prepared kernel.

use crate::debian::Kernel;
use crate::util::{copy_if_changed, lock, run};
use anyhow::{Context, Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The module's name as `insmod`/`lsmod` show it.
pub const MODULE_NAME: &str = "wqflush_test";
/// Where scenarios expect the module in the guest (the `load_test_module` helper insmods it).
pub const MODULE_GUEST_PATH: &str = "/lib/wqflush_test.ko";

/// Files of tests/module/ that make up the module build.
const SOURCES: &[&str] = &["wqflush_test.c", "Kbuild", "Makefile"];

/// The module sources in this repository.
pub fn module_source_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("module")
}

/// Builds `wqflush_test.ko` for `kernel` in `out/<release>/` and returns its path.
///
/// Sources are copied (only when changed, so make stays incremental) because kbuild writes its
/// objects next to them and the source tree must stay clean.
pub fn build_module(kernel: &Kernel, out: &Path) -> Result<PathBuf> {
    let dir = out.join(&kernel.release);
    let _guard = lock(&out.join(format!("{}.lock", kernel.release)))?;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let src = module_source_dir();
    for name in SOURCES {
        copy_if_changed(&src.join(name), &dir.join(name))?;
    }
    run(&mut make_command(kernel, &dir))
        .with_context(|| format!("building {MODULE_NAME}.ko for {}", kernel.release))?;
    let ko = dir.join(format!("{MODULE_NAME}.ko"));
    if !ko.exists() {
        bail!("make succeeded but {} is missing", ko.display());
    }
    Ok(ko)
}

/// `make -C <headers> M=<dir> modules`, without BTF when pahole is missing (6.12 needs it).
fn make_command(kernel: &Kernel, dir: &Path) -> Command {
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(&kernel.headers)
        .arg(format!("M={}", dir.display()))
        .arg(format!("-j{}", jobs()));
    if !have_pahole() {
        cmd.arg("CONFIG_DEBUG_INFO_BTF_MODULES=");
    }
    cmd.arg("modules");
    cmd
}

fn have_pahole() -> bool {
    Command::new("pahole")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
