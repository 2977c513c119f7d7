//! A second kind of guest: a real Debian 12 (bookworm) userland with systemd as PID 1, for
//! tests of what a fleet installs (the .deb, its systemd unit, Prometheus scraping it).
//!
//! The root file system is debootstrapped once into the cache and packed as an uncompressed
//! newc cpio; each boot appends a second, small cpio with the test's files, the scenario, the
//! helpers and `vmtest.service`, which runs the scenario once `multi-user.target` is up, writes
//! `@@EXIT <status>` to the data port and powers off. The kernel unpacks both archives into its
//! initramfs root and starts `/lib/systemd/systemd` there (`rdinit=`): no disk, no root switch.
//!
//! The guest interface is the busybox guest's (tests/README.md): fd 3 is the data port, the
//! helpers are sourced, `/etc/kernel-release` holds `uname -r`; the shell is bash, the tools are
//! Debian's (coreutils, util-linux, kmod, procps, curl) instead of busybox.

use crate::arch::Arch;
use crate::cache_dir;
use crate::debian::{Kernel, Series, main_mirror, prepare_kernel};
use crate::guest::{self, HELPERS_PATH, RUN_PATH, SCENARIO_PATH};
use crate::module::{MODULE_GUEST_PATH, build_module};
use crate::qemu::{VmRun, boot_retrying};
use crate::util::{lock, run, unique_dir};
use anyhow::{Context, Result};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Guest memory: the unpacked root (~200 MB) and, while it unpacks, the image itself live in
/// RAM, plus Prometheus and the journal.
pub const SYSTEMD_MEMORY_MB: u32 = 3072;

/// Added to the harness's kernel command line. The root stays the initramfs (`rdinit=` runs
/// systemd there; systemd, not being in an initrd without `/etc/initrd-release`, boots it as
/// the real system); `rootfstype=tmpfs` makes that root a tmpfs rather than a ramfs, so `df`
/// and size limits behave as on a machine. The rest keeps the console readable in a failed
/// test's output: unit names instead of ellipsized descriptions, no colour codes (the kernel
/// hands `SYSTEMD_COLORS=0` to PID 1 as an environment variable).
pub const SYSTEMD_APPEND: &str = "rdinit=/lib/systemd/systemd rootfstype=tmpfs \
    systemd.status_unit_format=name SYSTEMD_COLORS=0";

const SUITE: &str = "bookworm";

/// debootstrap's `--include`, without recommends (debootstrap never installs them): systemd
/// as init, dbus for systemctl's and logind's bus, the scrape target's consumer and its client,
/// kmod for insmod, procps for ps/pgrep in scenarios.
const PACKAGES: &str = "systemd,systemd-sysv,dbus,prometheus,curl,kmod,procps";

/// Bump when [`customize`] changes: cached roots are customized again (and repacked), their
/// debootstrap is kept.
const CUSTOMIZE_REVISION: u32 = 2;

/// Units that would slow a TCG boot, wait for hardware or devices no udev announces (there is
/// no udev in the image), or run maintenance a throwaway guest never needs.
const MASKED: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-tmpfiles-clean.timer",
    "getty.target",
    "getty@.service",
    "serial-getty@.service",
    "console-getty.service",
    "systemd-timesyncd.service",
    "systemd-networkd-wait-online.service",
    "systemd-logind.service",
    "systemd-pstore.service",
    // ConditionNeedsUpdate= units: every boot starts from the same image, so each would run on
    // every boot (ldconfig alone takes seconds under TCG).
    "ldconfig.service",
    "systemd-update-done.service",
    "systemd-journal-catalog-update.service",
    "systemd-sysusers.service",
    "systemd-hwdb-update.service",
];

/// The cached root file system and its packed image.
#[derive(Debug, Clone)]
pub struct Rootfs {
    /// The debootstrapped tree.
    pub tree: PathBuf,
    /// The tree as an uncompressed newc cpio.
    pub image: PathBuf,
}

/// The bookworm root of `WQFLUSH_ARCH` under `cache/systemd/` (amd64) or `cache/systemd-arm64/`,
/// debootstrapped and packed on first use, or again after [`CUSTOMIZE_REVISION`] or
/// [`PACKAGES`] changed: amd64's natively (about 75 s, ~100 MB downloaded), arm64's second
/// stage in an arm64 guest ([`crate::systemd_foreign`], minutes under TCG).
pub fn prepare_rootfs(cache: &Path) -> Result<Rootfs> {
    let arch = Arch::current()?;
    let dir = match arch {
        Arch::Amd64 => cache.join("systemd"),
        _ => cache.join(format!("systemd-{arch}")),
    };
    let name = format!("rootfs-{SUITE}");
    let rootfs = Rootfs {
        tree: dir.join(&name),
        image: dir.join(format!("{name}.cpio")),
    };
    let _guard = lock(&dir.join(format!("{name}.lock")))?;
    let complete = dir.join(format!("{name}.complete"));
    let recipe = format!("{PACKAGES}\nrevision {CUSTOMIZE_REVISION}\n");
    if fs::read_to_string(&complete).ok().as_deref() == Some(recipe.as_str())
        && rootfs.image.exists()
    {
        return Ok(rootfs);
    }
    let _ = fs::remove_file(&complete);
    let bootstrapped = dir.join(format!("{name}.debootstrapped"));
    if fs::read_to_string(&bootstrapped).ok().as_deref() != Some(PACKAGES) {
        debootstrap(
            &rootfs.tree,
            arch,
            &dir.join(format!("{name}.second-stage")),
        )?;
        fs::write(&bootstrapped, PACKAGES).context("writing the debootstrap marker")?;
    }
    customize(&rootfs.tree).with_context(|| format!("customizing {}", rootfs.tree.display()))?;
    pack(&rootfs.tree, &rootfs.image)?;
    fs::write(&complete, recipe).context("writing the .complete marker")?;
    Ok(rootfs)
}

/// Debootstraps the root of `arch` into `tree`; `scratch` is for a foreign second stage.
fn debootstrap(tree: &Path, arch: Arch, scratch: &Path) -> Result<()> {
    if tree.exists() {
        // A half-made or outdated root: start over rather than trust it.
        fs::remove_dir_all(tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    if arch != Arch::Amd64 {
        return crate::systemd_foreign::debootstrap_foreign(tree, arch, SUITE, PACKAGES, scratch);
    }
    eprintln!(
        "vmtest: debootstrapping {SUITE} into {} (once)",
        tree.display()
    );
    // debootstrap mounts /proc and /sys in the tree and unmounts them at its end, unless a
    // process a package's script started still holds them (seen here: /proc left mounted, and
    // every later pack of the tree failed in it). In a private mount namespace whatever it
    // mounts goes with the namespace.
    run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "debootstrap"])
        .args(["--variant=minbase", &format!("--include={PACKAGES}"), SUITE])
        .arg(tree)
        .arg(main_mirror()?))
    .context(
        "debootstrap of the systemd guest's root failed (apt-get install debootstrap; root)",
    )?;
    Ok(())
}

/// Makes the debootstrapped tree a quick-booting test guest; idempotent.
fn customize(tree: &Path) -> Result<()> {
    // Size: apt's downloads and lists (the guest installs with dpkg -i), docs, locales, and
    // moment-timezone's 214 MB of data, which only Prometheus's web UI pages load.
    run(Command::new("sh")
        .arg("-c")
        .arg(
            "rm -rf var/cache/apt/archives/*.deb var/cache/apt/*.bin var/lib/apt/lists/* \
             usr/share/doc/* usr/share/man/* usr/share/locale/* usr/share/info/* \
             usr/share/javascript/moment-timezone/*",
        )
        .current_dir(tree))?;
    let system = tree.join("etc/systemd/system");
    for unit in MASKED {
        replace_symlink(Path::new("/dev/null"), &system.join(unit))?;
    }
    // Installed but disabled: a test starts Prometheus with the configuration it wants.
    remove_if_present(&system.join("multi-user.target.wants/prometheus.service"))?;
    // Not graphical.target, which adds nothing here but a step in the boot log.
    replace_symlink(
        Path::new("/lib/systemd/system/multi-user.target"),
        &system.join("default.target"),
    )?;
    for (path, text) in CONFIG {
        let path = tree.join(path);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    // debootstrap copied the build host's resolver configuration; the guest has loopback only.
    remove_if_present(&tree.join("etc/resolv.conf"))
}

/// Files [`customize`] writes into the tree. `etc/apt/sources.list` replaces the one
/// debootstrap wrote, which names the build host's mirror.
const CONFIG: &[(&str, &str)] = &[
    ("etc/hostname", "vmtest\n"),
    (
        "etc/hosts",
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tvmtest\n",
    ),
    (
        "etc/apt/sources.list",
        "# The wqflush test guest installs packages with dpkg -i only.\n",
    ),
    (
        "etc/fstab",
        "# The root is the initramfs; nothing to mount.\n",
    ),
    (
        // Volatile: nothing outlives a boot, and flushing to /var/log would only copy RAM to RAM.
        "etc/systemd/journald.conf.d/vmtest.conf",
        "[Journal]\nStorage=volatile\nRateLimitBurst=0\n",
    ),
];

fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    remove_if_present(link)?;
    symlink(target, link).with_context(|| format!("linking {}", link.display()))
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// `cpio -o -H newc` of everything under `tree` (owners, modes, device nodes and hard links as
/// they are: the tree was made by root), written beside and renamed into place.
fn pack(tree: &Path, image: &Path) -> Result<()> {
    let partial = image.with_extension("cpio.partial");
    cpio_of(tree, &partial, &[])?;
    fs::rename(&partial, image).with_context(|| format!("renaming to {}", image.display()))
}

/// Writes the newc cpio of the tree at `dir` to `out`; `extra` are more `cpio` options. Only
/// the tree's own file system: a mount inside it (a pseudo file system left mounted) is packed
/// as its empty mount point.
pub(crate) fn cpio_of(dir: &Path, out: &Path, extra: &[&str]) -> Result<()> {
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let cpio = format!(
        "find . -mindepth 1 -xdev -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet {}",
        extra.join(" ")
    );
    run(Command::new("sh")
        .arg("-c")
        .arg(cpio)
        .current_dir(dir)
        .stdout(Stdio::from(file)))
    .with_context(|| format!("packing {} (apt-get install cpio)", dir.display()))?;
    Ok(())
}

/// `vmtest.service`: the scenario, once the system is up. `DefaultDependencies=no` because
/// the defaults would order `multi-user.target` (which wants this unit) after it, a cycle
/// with `After=multi-user.target`.
const UNIT: &str = "\
[Unit]
Description=wqflush VM test scenario
DefaultDependencies=no
After=multi-user.target

[Service]
Type=exec
ExecStart=/usr/lib/vmtest/run-scenario
";

/// The unit's program (`tests/guest/systemd-init.sh`): the busybox guest's `/init` minus the
/// mounts, which systemd made; the console and data channel are the architecture's
/// ([`guest::arch_vars`]). It sources [`guest::RUN`] as `/init` does.
const RUN_SCENARIO: &str = include_str!("../guest/systemd-init.sh");

/// Lays out the per-boot files under `stage` as the guest sees them.
fn stage_overlay(
    kernel: &Kernel,
    rootfs: &Path,
    files: &[(PathBuf, String)],
    script: &str,
    stage: &Path,
) -> Result<()> {
    let release = format!("{}\n", kernel.release);
    let helpers = guest::helpers();
    let arch = guest::arch_vars(kernel.arch, &[]);
    let written: [(&str, &[u8], u32); 7] = [
        (guest::ARCH_PATH, arch.as_bytes(), 0o644),
        (HELPERS_PATH, helpers.as_bytes(), 0o644),
        (RUN_PATH, guest::RUN.as_bytes(), 0o644),
        (SCENARIO_PATH, script.as_bytes(), 0o755),
        ("/etc/kernel-release", release.as_bytes(), 0o644),
        (
            "/usr/lib/vmtest/run-scenario",
            RUN_SCENARIO.as_bytes(),
            0o755,
        ),
        ("/etc/systemd/system/vmtest.service", UNIT.as_bytes(), 0o644),
    ];
    for (guest_path, bytes, mode) in written {
        write_staged(stage, &in_tree(rootfs, guest_path), bytes, mode)?;
    }
    for (host, guest_path) in files {
        let bytes = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        let mode = fs::metadata(host)?.permissions().mode() & 0o7777;
        write_staged(stage, &in_tree(rootfs, guest_path), &bytes, mode)?;
    }
    let wants = stage.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants)?;
    replace_symlink(
        Path::new("/etc/systemd/system/vmtest.service"),
        &wants.join("vmtest.service"),
    )
}

/// `guest_path` relative to the root, through the root's merged-/usr links (`/lib` ->
/// `usr/lib`): the kernel replaces an existing entry of another type, so a directory `lib` in
/// the second archive would delete the `lib` symlink and with it every library path.
fn in_tree(rootfs: &Path, guest_path: &str) -> String {
    let rel = guest_path.trim_start_matches('/');
    let Some((first, rest)) = rel.split_once('/') else {
        return rel.to_owned();
    };
    match fs::read_link(rootfs.join(first)) {
        Ok(target) if target.is_relative() => format!("{}/{rest}", target.display()),
        _ => rel.to_owned(),
    }
}

fn write_staged(stage: &Path, rel: &str, bytes: &[u8], mode: u32) -> Result<()> {
    let path = stage.join(rel);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// The root's image with the per-boot archive appended, in `scratch`.
fn boot_image(
    kernel: &Kernel,
    rootfs: &Rootfs,
    files: &[(PathBuf, String)],
    script: &str,
    scratch: &Path,
) -> Result<PathBuf> {
    let stage = scratch.join("overlay");
    stage_overlay(kernel, &rootfs.tree, files, script, &stage)?;
    let overlay = scratch.join("overlay.cpio");
    // Owned by root in the guest, whoever owns the staged copies.
    cpio_of(&stage, &overlay, &["--owner=0:0"])?;
    let image = scratch.join("initramfs.cpio");
    let mut out = File::create(&image).with_context(|| format!("creating {}", image.display()))?;
    for part in [&rootfs.image, &overlay] {
        let mut input = File::open(part).with_context(|| format!("opening {}", part.display()))?;
        io::copy(&mut input, &mut out).with_context(|| format!("writing {}", image.display()))?;
    }
    Ok(image)
}

/// Boots `kernel` with the systemd root, `files` (host path, guest path) and `script` run by
/// `vmtest.service`; returns what the guest wrote, unchecked.
pub fn run_systemd_scenario(
    kernel: &Kernel,
    rootfs: &Rootfs,
    files: &[(PathBuf, String)],
    script: &str,
    timeout: Duration,
) -> Result<VmRun> {
    let scratch = unique_dir(&std::env::temp_dir(), "wqflush-systemd")?;
    let result = boot_image(kernel, rootfs, files, script, &scratch).and_then(|image| {
        boot_retrying(kernel, &image, timeout, SYSTEMD_MEMORY_MB, SYSTEMD_APPEND)
    });
    let _ = fs::remove_dir_all(&scratch);
    result
}

/// Boots `series` in the systemd guest with the test module at [`MODULE_GUEST_PATH`] and
/// `files`, runs `script`, and fails unless it exited 0 with a clean kernel log.
pub fn boot_systemd_scenario(
    series: Series,
    script: &str,
    files: &[(PathBuf, String)],
    timeout: Duration,
) -> Result<VmRun> {
    let cache = cache_dir();
    let t = Instant::now();
    let kernel = prepare_kernel(series, &cache)?;
    let ko = build_module(&kernel, &cache.join("module"))?;
    let rootfs = prepare_rootfs(&cache)?;
    eprintln!(
        "{series}: kernel {}, module and systemd root ready in {:?}",
        kernel.release,
        t.elapsed()
    );
    let mut all = vec![(ko, MODULE_GUEST_PATH.to_owned())];
    all.extend(files.iter().cloned());
    let t = Instant::now();
    let run = run_systemd_scenario(&kernel, &rootfs, &all, script, timeout)?;
    eprintln!(
        "{series}: systemd boot and scenario took {:?} ({})",
        t.elapsed(),
        run.console
            .lines()
            .find(|l| l.starts_with("vmtest: uptime at scenario start"))
            .unwrap_or("the scenario never started")
    );
    run.ensure_success()?;
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_follow_the_merged_usr_links() -> Result<()> {
        let root = unique_dir(&std::env::temp_dir(), "wqflush-systemd-test")?;
        fs::create_dir_all(root.join("usr/lib"))?;
        fs::create_dir_all(root.join("etc"))?;
        symlink("usr/lib", root.join("lib"))?;
        assert_eq!(
            in_tree(&root, "/lib/vmtest/helpers.sh"),
            "usr/lib/vmtest/helpers.sh"
        );
        assert_eq!(in_tree(&root, "/etc/kernel-release"), "etc/kernel-release");
        assert_eq!(in_tree(&root, "/scenario.sh"), "scenario.sh");
        assert_eq!(in_tree(&root, RUN_PATH), "usr/lib/vmtest/run.sh");
        fs::remove_dir_all(&root)?;
        Ok(())
    }

    #[test]
    fn the_service_program_runs_the_shared_part() {
        assert!(RUN_SCENARIO.contains(&format!(". {RUN_PATH}\n")));
        assert!(RUN_SCENARIO.contains(&format!(". {}\n", guest::ARCH_PATH)));
        assert!(RUN_SCENARIO.contains("3>\"$DATA_TTY\"\n"));
    }
}
