//! The modules the running kernel has loaded, and their files in its module tree: what
//! `watch --scan` and `check --scan` scan.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use crate::scan::{Scan, files, scan_files};

/// The names of the modules loaded now (/proc/modules' first column).
pub fn loaded() -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string("/proc/modules").context("reading /proc/modules")?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Scans the files of `modules` found under `tree`; a module without a file there (built from
/// elsewhere and loaded with insmod) is skipped.
pub fn scan_named(tree: &Path, modules: &BTreeSet<String>) -> Scan {
    let (all, errors) = files::expand(&[tree.to_path_buf()]);
    let mut out = Scan {
        errors,
        ..Scan::default()
    };
    let wanted: Vec<PathBuf> = all
        .into_iter()
        .filter(|f| modules.contains(&files::module_name_of(f)))
        .collect();
    out.add(&wanted, scan_files(&wanted));
    out
}
