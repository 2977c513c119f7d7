//! The systemd guest's root for an architecture this (amd64) machine cannot run programs of
//! (arm64; no binfmt_misc or qemu-user here): `debootstrap --foreign` unpacks the packages on
//! the host, and the second stage (the packages' maintainer scripts) runs in a guest of that
//! architecture: Debian's 6.12 kernel boots the half-made root as its initramfs with
//! `tests/guest/second-stage.sh` as `rdinit=`, which finishes it and writes it as a tar onto a
//! raw virtio disk; the host unpacks that tar in place of the half-made root.

use crate::arch::Arch;
use crate::debian::{Kernel, Series, main_mirror, prepare_kernel};
use crate::guest_modules::modules_if_modular;
use crate::qemu::boot_with_disk;
use crate::systemd_guest::cpio_of;
use crate::util::{run, tail};
use anyhow::{Context, Result, bail};
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// `tests/guest/second-stage.sh`, at [`STAGE_DIR`]`/run.sh` in the half-made root.
const SECOND_STAGE: &str = include_str!("../guest/second-stage.sh");

/// The script's directory in the root (the script leaves it out of the tar).
const STAGE_DIR: &str = "vmtest-second-stage";

/// What the script prints once the tar is on the disk.
const DONE: &str = "vmtest: second stage done";

/// The raw disk's size; sparse on the host. The finished root is about 600 MB.
const DISK_BYTES: u64 = 4 << 30;

/// Guest memory: the half-made root, its packages and the installed root all live in RAM.
const MEMORY_MB: u32 = 4096;

/// The second stage under TCG: about 9 minutes measured on two cores shared with other guests.
const TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// Debootstraps `suite` with `packages` (`--include`) for `arch` into `tree` (which must not
/// exist), using `scratch` (removed at the end) for the boot's files.
pub(crate) fn debootstrap_foreign(
    tree: &Path,
    arch: Arch,
    suite: &str,
    packages: &str,
    scratch: &Path,
) -> Result<()> {
    first_stage(tree, arch, suite, packages)?;
    let cache = crate::cache_dir();
    let kernel = prepare_kernel(Series::V6_12, &cache)?;
    if kernel.arch != arch {
        bail!("the {arch} root's second stage needs WQFLUSH_ARCH={arch}");
    }
    if scratch.exists() {
        fs::remove_dir_all(scratch).with_context(|| format!("removing {}", scratch.display()))?;
    }
    fs::create_dir_all(scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let result = second_stage(&kernel, tree, scratch);
    let _ = fs::remove_dir_all(scratch);
    result
}

/// `debootstrap --foreign`: downloads and unpacks, configures nothing.
fn first_stage(tree: &Path, arch: Arch, suite: &str, packages: &str) -> Result<()> {
    eprintln!(
        "vmtest: debootstrapping {suite} ({arch}, first stage) into {} (once)",
        tree.display()
    );
    // A private mount namespace as for the native root (systemd_guest::debootstrap).
    run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "debootstrap"])
        .args(["--foreign", &format!("--arch={arch}"), "--variant=minbase"])
        .arg(format!("--include={packages}"))
        .arg(suite)
        .arg(tree)
        .arg(main_mirror()?))
    .with_context(|| format!("debootstrap --foreign --arch={arch} failed (root; debootstrap)"))?;
    Ok(())
}

/// Boots `kernel` with `tree` plus the script as its initramfs, and replaces `tree` with what
/// the guest wrote to the disk.
fn second_stage(kernel: &Kernel, tree: &Path, scratch: &Path) -> Result<()> {
    stage_script(kernel, tree)?;
    let image = scratch.join("half-made.cpio");
    cpio_of(tree, &image, &[])?;
    let disk = scratch.join("disk.raw");
    File::create(&disk)
        .and_then(|f| f.set_len(DISK_BYTES))
        .with_context(|| format!("creating {}", disk.display()))?;
    let t = Instant::now();
    eprintln!(
        "vmtest: running the second stage on {} under TCG (minutes)",
        kernel.release
    );
    let append = format!("rdinit=/{STAGE_DIR}/run.sh");
    let vm = boot_with_disk(kernel, &image, TIMEOUT, &append, MEMORY_MB, &disk)?;
    if !vm.console.contains(DONE) {
        bail!(
            "the second stage did not finish; console tail:\n{}",
            tail(&vm.console, 60)
        );
    }
    eprintln!("vmtest: second stage took {:?}", t.elapsed());
    fs::remove_dir_all(tree).with_context(|| format!("removing {}", tree.display()))?;
    fs::create_dir_all(tree).with_context(|| format!("creating {}", tree.display()))?;
    run(Command::new("tar")
        .args(["--numeric-owner", "-xpf"])
        .arg(&disk)
        .arg("-C")
        .arg(tree))
    .with_context(|| format!("unpacking the finished root into {}", tree.display()))?;
    // The tar's `.` is the guest's initramfs root, mode 1777.
    fs::set_permissions(tree, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", tree.display()))
}

/// Writes the script and the modules it loads (virtio_blk, when a module) into `tree`.
fn stage_script(kernel: &Kernel, tree: &Path) -> Result<()> {
    let dir = tree.join(STAGE_DIR);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let script = dir.join("run.sh");
    fs::write(&script, SECOND_STAGE).with_context(|| format!("writing {}", script.display()))?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", script.display()))?;
    let modules = modules_if_modular(kernel, &[("CONFIG_VIRTIO_BLK", "virtio_blk")])?;
    for (i, (name, bytes)) in modules.iter().enumerate() {
        let path = dir.join(format!("{i:02}-{name}.ko"));
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_matches_the_harness() {
        assert!(SECOND_STAGE.contains(&format!("here=/{STAGE_DIR}\n")));
        assert!(SECOND_STAGE.contains(&format!("echo \"{DONE}\"\n")));
    }
}
