//! Builds the `wqflush_test` kernel module (tests/module/) against a prepared kernel.

use crate::arch::Arch;
use crate::debian::{Kernel, Toolchain};
use crate::util::{lock, run, write_if_changed};
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
    build_in(kernel, out, &kernel.release, |text| text.to_owned())
}

/// Builds a variant of the module in `out/<release>-<variant>/`, its `wqflush_test.c` being
/// `edit` of the original: e.g. a stale build, one line longer, with another build-id.
pub fn build_module_variant(
    kernel: &Kernel,
    out: &Path,
    variant: &str,
    edit: impl Fn(&str) -> String,
) -> Result<PathBuf> {
    build_in(kernel, out, &format!("{}-{variant}", kernel.release), edit)
}

fn build_in(
    kernel: &Kernel,
    out: &Path,
    name: &str,
    edit: impl Fn(&str) -> String,
) -> Result<PathBuf> {
    let dir = out.join(name);
    let _guard = lock(&out.join(format!("{name}.lock")))?;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let src = module_source_dir();
    for file in SOURCES {
        let text = fs::read_to_string(src.join(file))
            .with_context(|| format!("reading {}", src.join(file).display()))?;
        let text = if *file == "wqflush_test.c" {
            edit(&text)
        } else {
            text
        };
        write_if_changed(&dir.join(file), &text)?;
    }
    let make = make_args(kernel, &dir);
    let mut cmd = match kernel.series.toolchain() {
        Toolchain::Host { .. } => {
            let mut cmd = Command::new("make");
            cmd.args(&make);
            cmd
        }
        Toolchain::TrixieChroot => {
            let chroot = trixie_chroot(out)?;
            if kernel.arch != Arch::Amd64 {
                add_cross_compiler(&chroot, &out.join("chroot-trixie.lock"))?;
            }
            in_chroot(&chroot, &[&kernel.root, &dir], &make)
        }
    };
    run(&mut cmd).with_context(|| format!("building {MODULE_NAME}.ko for {}", kernel.release))?;
    let ko = dir.join(format!("{MODULE_NAME}.ko"));
    if !ko.exists() {
        bail!("make succeeded but {} is missing", ko.display());
    }
    Ok(ko)
}

/// `make -C <headers> M=<dir> modules`'s arguments, without BTF when the host has no pahole
/// (6.12 needs it; the chroot has its own), cross-compiling for a guest of another
/// architecture (`ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu-`).
fn make_args(kernel: &Kernel, dir: &Path) -> Vec<String> {
    let mut args = vec![
        "-C".to_owned(),
        kernel.headers.display().to_string(),
        format!("M={}", dir.display()),
        format!("-j{}", jobs()),
    ];
    if let Some((arch, prefix)) = kernel.arch.cross() {
        args.push(format!("ARCH={arch}"));
        args.push(format!("CROSS_COMPILE={prefix}"));
    }
    if let Toolchain::Host { cc } = kernel.series.toolchain() {
        args.extend(cc.map(|cc| format!("CC={cc}")));
        if !have_pahole() {
            args.push("CONFIG_DEBUG_INFO_BTF_MODULES=".to_owned());
        }
    }
    args.push("modules".to_owned());
    args
}

/// What the trixie chroot holds: gcc-14 for 7.x's flags, pahole for module BTF, libelf for
/// objtool, bc and kmod for kbuild's scripts.
const CHROOT_PACKAGES: &str = "gcc-14,make,libc6-dev,libelf-dev,bc,kmod,dwarves";

/// A minimal trixie under `out/chroot-trixie` (debootstrap, about 80 s once), for kernels
/// whose modules this machine's compiler and glibc cannot build.
fn trixie_chroot(out: &Path) -> Result<PathBuf> {
    let dir = out.join("chroot-trixie");
    let root = dir.join("root");
    let _guard = lock(&out.join("chroot-trixie.lock"))?;
    if dir.join(".complete").exists() {
        forget_mirror(&root)?;
        return Ok(root);
    }
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mirror = crate::debian::main_mirror()?;
    eprintln!(
        "vmtest: debootstrapping trixie into {} (once)",
        root.display()
    );
    run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={CHROOT_PACKAGES}"),
            "trixie",
        ])
        .arg(&root)
        .arg(&mirror))
    .context(
        "debootstrap of the trixie build chroot failed (apt-get install debootstrap; needs root)",
    )?;
    forget_mirror(&root)?;
    fs::write(dir.join(".complete"), "trixie\n").context("writing .complete marker")?;
    Ok(root)
}

/// What the trixie chroot needs besides [`CHROOT_PACKAGES`] to build arm64 modules: gcc-14's
/// cross compiler and binutils (7.x's flags need gcc-14, kbuild's tools trixie's glibc).
const CHROOT_CROSS_PACKAGES: &[&str] = &["gcc-14-aarch64-linux-gnu", "binutils-aarch64-linux-gnu"];

/// Installs [`CHROOT_CROSS_PACKAGES`] into the chroot once (a chroot debootstrapped for amd64
/// alone lacks them). apt in the chroot reads a sources list given on its command line and kept
/// in a private tmpfs that vanishes with the mount namespace, and its lists are removed after,
/// so no file left behind names the mirror.
fn add_cross_compiler(root: &Path, lock_path: &Path) -> Result<()> {
    let _guard = lock(lock_path)?;
    if root.join("usr/bin/aarch64-linux-gnu-gcc-14").exists() {
        return Ok(());
    }
    eprintln!("vmtest: installing the arm64 cross compiler into the trixie chroot (once)");
    let mirror = crate::debian::main_mirror()?;
    let script = include_str!("../guest/chroot-apt.sh");
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .args(CHROOT_CROSS_PACKAGES)
    .env("R", root)
    .env("MIRROR", mirror);
    run(&mut cmd).context("installing gcc-14-aarch64-linux-gnu into the trixie chroot")?;
    Ok(())
}

/// debootstrap leaves the mirror it used in the chroot's sources.list; no file the harness keeps
/// names a mirror (the builds need no apt inside).
fn forget_mirror(root: &Path) -> Result<()> {
    let list = root.join("etc/apt/sources.list");
    fs::write(
        &list,
        "# Left empty: the harness takes the mirror from the host's apt configuration.\n",
    )
    .with_context(|| format!("writing {}", list.display()))
}

/// Runs `make args` inside `chroot` with each of `dirs` bind-mounted at its own path, so the
/// headers' absolute paths hold inside too, and /proc (objtool reads it). The mounts live in a
/// private mount namespace and vanish with it, whatever happens to the build.
fn in_chroot(chroot: &Path, dirs: &[&Path], args: &[String]) -> Command {
    let mut script = String::from("set -e\n");
    for (i, _) in dirs.iter().enumerate() {
        script.push_str(&format!(
            "mkdir -p \"$R$D{i}\"\nmount --bind \"$D{i}\" \"$R$D{i}\"\n"
        ));
    }
    script.push_str("mount -t proc proc \"$R/proc\"\n");
    // A clean environment: cargo's MAKEFLAGS and jobserver must not reach this make.
    script.push_str("exec chroot \"$R\" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin make \"$@\"\n");
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        &script,
        "sh",
    ])
    .args(args)
    .env("R", chroot);
    for (i, d) in dirs.iter().enumerate() {
        cmd.env(format!("D{i}"), d);
    }
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
