//! A dynamically linked program for the guest, with its shared libraries: this machine's own
//! for an amd64 guest (the libraries `ldd` lists keep their host paths, so the guest's dynamic
//! loader finds them), Debian's build of the guest's architecture otherwise ([`crate::foreign`]).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};

use crate::arch::Arch;

/// `(host path, guest path)` pairs for `program` (`setpriv`) at `guest` and its libraries, for
/// the architecture `WQFLUSH_ARCH` names: on amd64 this machine's (it must have Debian's
/// `package`, `util-linux`, installed), on arm64 `package`'s arm64 build from bookworm,
/// downloaded once into the VM cache.
pub fn for_guest(program: &str, package: &str, guest: &str) -> Result<Vec<(PathBuf, String)>> {
    match Arch::current()? {
        Arch::Amd64 => with_libraries(&host(program, package)?, guest),
        arch => crate::foreign::program(&crate::cache_dir(), arch, program, package, guest),
    }
}

/// Where this machine has `program`.
fn host(program: &str, package: &str) -> Result<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.exists())
        .with_context(|| format!("no {program} on this machine (apt-get install {package})"))
}

/// `(host path, guest path)` pairs for `bin` (at `guest`) and its libraries.
pub fn with_libraries(bin: &Path, guest: &str) -> Result<Vec<(PathBuf, String)>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd")?;
    ensure!(out.status.success(), "ldd {} failed", bin.display());
    let mut files = vec![(bin.to_path_buf(), guest.to_owned())];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            files.push((PathBuf::from(path), path.to_owned()));
        }
    }
    ensure!(
        files.iter().any(|(_, g)| g.contains("ld-linux")),
        "ldd {} names no dynamic loader",
        bin.display()
    );
    Ok(files)
}
