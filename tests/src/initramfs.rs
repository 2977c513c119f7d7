//! Packs a busybox initramfs that runs one scenario script and powers off.
//!
//! The cpio archive is written here rather than with `find | cpio` so `/dev/console` (needed
//! before devtmpfs is mounted, or `/init` starts without stdio) can be created without root,
//! and every file is owned by root in the guest.

use crate::debian::Kernel;
use crate::guest;
use crate::guest_modules::data_channel_modules;
use crate::ksymtab;
use crate::oracle;
use crate::util::{run, unique_path};
use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Writes `<out>/<unique>.cpio.gz` holding busybox, the `/init` from [`guest::INIT`] with the
/// [`guest::RUN`] it sources, the helpers, the architecture's facts ([`guest::arch_vars`]) and
/// modules, `init_script` as `/scenario.sh` and `files` (host path, absolute guest path).
pub fn build_initramfs(
    kernel: &Kernel,
    files: &[(PathBuf, String)],
    init_script: &str,
    out: &Path,
) -> Result<PathBuf> {
    let mut cpio = Cpio::default();
    cpio.dev("dev/console", 5, 1);
    cpio.file("init", guest::INIT.as_bytes(), 0o755);
    cpio.file(guest::RUN_PATH, guest::RUN.as_bytes(), 0o644);
    cpio.file(guest::HELPERS_PATH, guest::helpers().as_bytes(), 0o644);
    cpio.file(guest::SCENARIO_PATH, init_script.as_bytes(), 0o755);
    cpio.file(
        "etc/kernel-release",
        format!("{}\n", kernel.release).as_bytes(),
        0o644,
    );
    // Debian's busybox-static; a dynamic busybox would need its libraries in the image.
    cpio.host_file(&kernel.busybox, "bin/busybox")
        .context("busybox-static must be installed (apt-get install busybox-static)")?;
    add_arch_files(&mut cpio, kernel)?;
    for (host, guest_path) in files {
        cpio.host_file(host, guest_path)?;
    }
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let image = unique_path(out, "initramfs", ".cpio");
    fs::write(&image, cpio.finish()).with_context(|| format!("writing {}", image.display()))?;
    // -1: the guest decompresses under TCG, so a bigger, faster-to-inflate image wins.
    run(Command::new("gzip").arg("-1").arg("-f").arg(&image))?;
    let mut gz = image.into_os_string();
    gz.push(".gz");
    Ok(PathBuf::from(gz))
}

/// [`guest::ARCH_PATH`], the modules `/init` loads first, and where kallsyms lacks data symbols
/// the oracle's system queues from the image's export table ([`oracle::queue_locations`]) and
/// the image itself at Debian's place, for wqflush.
fn add_arch_files(cpio: &mut Cpio, kernel: &Kernel) -> Result<()> {
    let mut preload = Vec::new();
    for (i, (name, bytes)) in data_channel_modules(kernel)?.iter().enumerate() {
        let path = format!("{}/{i:02}-{name}.ko", guest::MODULES_DIR);
        cpio.file(&path, bytes, 0o644);
        preload.push(path);
    }
    let vars = guest::arch_vars(kernel.arch, &preload);
    cpio.file(guest::ARCH_PATH, vars.as_bytes(), 0o644);
    if kernel.config_option("CONFIG_KALLSYMS_ALL")?.as_deref() != Some("y") {
        // The package's System.map is a placeholder ("The real System.map is in the
        // linux-image-<version>-dbg package").
        let image = &kernel.vmlinuz;
        let anchor = kernel.series.flush_function();
        let bytes = fs::read(image).with_context(|| format!("reading {}", image.display()))?;
        let exports = ksymtab::exported(&bytes, |n| n == anchor || oracle::is_system_queue(n))
            .and_then(|exports| oracle::queue_locations(&exports, anchor))
            .with_context(|| format!("the system queues exported by {}", image.display()))?;
        cpio.file(oracle::SYSTEM_QUEUES_PATH, exports.as_bytes(), 0o644);
        // Where Debian installs it: wqflush finds the queues' addresses there without
        // KALLSYMS_ALL (docs/kernels.md). Only these guests carry it (30+ MB under TCG).
        cpio.file(&format!("boot/vmlinuz-{}", kernel.release), &bytes, 0o644);
    }
    Ok(())
}

/// A minimal writer for the `newc` cpio format the kernel unpacks.
#[derive(Default)]
struct Cpio {
    data: Vec<u8>,
    dirs: BTreeSet<String>,
    ino: u32,
}

impl Cpio {
    fn host_file(&mut self, host: &Path, guest_path: &str) -> Result<()> {
        let bytes = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        let mode = fs::metadata(host)?.permissions().mode() & 0o7777;
        self.file(guest_path, &bytes, mode);
        Ok(())
    }

    fn file(&mut self, path: &str, bytes: &[u8], perm: u32) {
        let path = self.parents(path);
        self.entry(&path, 0o100000 | perm, bytes, 0);
    }

    fn dev(&mut self, path: &str, major: u32, minor: u32) {
        let path = self.parents(path);
        self.entry(&path, 0o020000 | 0o600, &[], (major << 8) | minor);
    }

    /// Emits missing parent directories and returns `path` without its leading '/'.
    fn parents(&mut self, path: &str) -> String {
        let path = path.trim_start_matches('/').to_string();
        let mut prefix = String::new();
        let dirs: Vec<&str> = path.split('/').collect();
        for part in &dirs[..dirs.len().saturating_sub(1)] {
            prefix = if prefix.is_empty() {
                part.to_string()
            } else {
                format!("{prefix}/{part}")
            };
            if self.dirs.insert(prefix.clone()) {
                self.entry(&prefix.clone(), 0o040755, &[], 0);
            }
        }
        path
    }

    /// One newc record; `rdev` packs major/minor as (major << 8 | minor).
    fn entry(&mut self, name: &str, mode: u32, bytes: &[u8], rdev: u32) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            bytes.len() as u32,
            0,
            0,
            rdev >> 8,
            rdev & 0xff,
            name.len() as u32 + 1,
            0,
        ];
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        // Writes to a Vec cannot fail.
        let _ = self.data.write_all(header.as_bytes());
        let _ = self.data.write_all(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(bytes);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], 0);
        self.data
    }
}
