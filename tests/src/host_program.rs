//! A program of this machine for the guest, with the shared libraries `ldd` lists (they keep
//! their host paths, so the guest's dynamic loader finds them).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};

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
