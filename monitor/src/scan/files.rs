//! Which files a scan reads: module files named on the command line whatever their names,
//! module files found under directories (recursively, without following links), and by default
//! the running kernel's module tree.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

/// The names modules are installed under (CONFIG_MODULE_COMPRESS_*).
const MODULE_SUFFIXES: [&str; 4] = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"];

/// The running kernel's module tree: `/lib/modules/$(uname -r)`, which holds `kernel/`,
/// `updates/`, `extra/` and DKMS's modules.
pub fn running_tree() -> Result<PathBuf> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading the kernel release from /proc/sys/kernel/osrelease")?;
    let tree = Path::new("/lib/modules").join(release.trim());
    if !tree.is_dir() {
        bail!(
            "the running kernel has no module tree at {}: give the module files or \
             directories to scan",
            tree.display()
        );
    }
    Ok(tree)
}

/// The files to read, in a stable order, and the paths that could not be listed.
pub fn expand(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<String>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        if !path.is_dir() {
            files.push(path.clone());
            continue;
        }
        let walk = walkdir::WalkDir::new(path).sort_by_file_name();
        for entry in walk {
            match entry {
                Ok(e) if e.file_type().is_file() && is_module_name(e.file_name()) => {
                    files.push(e.into_path());
                }
                Ok(_) => {}
                Err(e) => errors.push(format!("cannot list {}: {e}", path.display())),
            }
        }
    }
    (files, errors)
}

fn is_module_name(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|n| MODULE_SUFFIXES.iter().any(|s| n.ends_with(s)))
}

/// About how large a module file is once decompressed: xz's index says; gzip and zstd modules
/// are taken as 5 times their size.
pub fn decompressed_size(path: &Path) -> u64 {
    let Ok(file) = std::fs::File::open(path) else {
        return 0;
    };
    let size = file.metadata().map_or(0, |m| m.len());
    let name = path.to_string_lossy();
    if name.ends_with(".xz") {
        lzma_rust2::xz_uncompressed_size(&file).unwrap_or(size.saturating_mul(5))
    } else if name.ends_with(".zst") || name.ends_with(".gz") {
        size.saturating_mul(5)
    } else {
        size
    }
}

/// A module's name from its file name, for a module without `.modinfo`: `foo-bar.ko.xz` is
/// `foo_bar`.
pub fn module_name_of(path: &Path) -> String {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("?");
    let stem = MODULE_SUFFIXES
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .or_else(|| name.split('.').next())
        .unwrap_or(name);
    stem.replace('-', "_")
}
