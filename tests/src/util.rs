//! Small process and file helpers shared by the modules.

use anyhow::{Context, Result, bail};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Runs `cmd` to completion and fails with its stderr when it exits non-zero, because most
/// failures here (apt, make, cpio) explain themselves only on stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {shown}; is the program installed?"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed with {}:\n{}{}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stdout), 40),
            tail(&String::from_utf8_lossy(&out.stderr), 40)
        );
    }
    Ok(out)
}

/// Like [`run`] but returns stdout as text.
pub(crate) fn run_stdout(cmd: &mut Command) -> Result<String> {
    let out = run(cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last `lines` lines of `text`, for error messages that must stay readable.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut s = all[start..].join("\n");
    if !s.is_empty() {
        s.push('\n');
    }
    s
}

/// Holds an exclusive advisory lock on `path` until dropped, so parallel tests (threads or
/// processes) that need the same cache entry wait instead of extracting over each other.
pub(crate) fn lock(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

/// A path under `parent` whose name is unique across threads and processes.
pub(crate) fn unique_path(parent: &Path, prefix: &str, suffix: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    parent.join(format!(
        "{prefix}-{}-{n}-{nanos}{suffix}",
        std::process::id()
    ))
}

/// A fresh directory under `parent` whose name is unique across threads and processes.
pub fn unique_dir(parent: &Path, prefix: &str) -> Result<PathBuf> {
    let dir = unique_path(parent, prefix, "");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Writes `text` to `to` unless it already holds it, so make's timestamps stay meaningful.
pub(crate) fn write_if_changed(to: &Path, text: &str) -> Result<()> {
    if fs::read(to).ok().as_deref() == Some(text.as_bytes()) {
        return Ok(());
    }
    fs::write(to, text).with_context(|| format!("writing {}", to.display()))
}
