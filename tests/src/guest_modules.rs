//! The distribution's kernel modules the busybox guest loads before it opens its data channel
//! (Debian's arm64 6.1 builds the virtio console and its PCI transport as modules; 6.12 and
//! 7.x build them in), with their dependencies, read from each module's `.modinfo` because the
//! guest has no depmod data.

use crate::arch::Arch;
use crate::debian::Kernel;
use crate::util::run;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the data channel needs per architecture: (config option, module).
fn data_channel_needs(arch: Arch) -> &'static [(&'static str, &'static str)] {
    match arch {
        Arch::Amd64 => &[],
        // `-device virtio-serial-pci` (crate::arch).
        Arch::Arm64 => &[
            ("CONFIG_VIRTIO_PCI", "virtio_pci"),
            ("CONFIG_VIRTIO_CONSOLE", "virtio_console"),
        ],
    }
}

/// The modules to insmod, dependencies first: (name, contents, decompressed).
pub(crate) fn data_channel_modules(kernel: &Kernel) -> Result<Vec<(String, Vec<u8>)>> {
    modules_if_modular(kernel, data_channel_needs(kernel.arch))
}

/// Of `needs` (config option, module), the modules `kernel` builds as modules, with their
/// dependencies, dependencies first: (name, contents, decompressed). Built-in ones need none.
pub(crate) fn modules_if_modular(
    kernel: &Kernel,
    needs: &[(&str, &str)],
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut wanted = Vec::new();
    for (option, module) in needs {
        if kernel.config_option(option)?.as_deref() == Some("m") {
            wanted.push(*module);
        }
    }
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let dir = kernel
        .root
        .join("lib/modules")
        .join(&kernel.release)
        .join("kernel");
    let index = index_modules(&dir)?;
    let mut out = Vec::new();
    for module in wanted {
        add_with_dependencies(module, &index, &mut out, 0)?;
    }
    Ok(out)
}

/// Module name (`-` as `_`) -> its file under `dir`.
fn index_modules(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut index = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(name) = module_name(&path) {
                index.insert(name, path);
            }
        }
    }
    Ok(index)
}

/// `.../virtio-mmio.ko.xz` -> `virtio_mmio`.
fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = file
        .strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))?;
    Some(stem.replace('-', "_"))
}

/// Appends `module` after its dependencies (once each).
fn add_with_dependencies(
    module: &str,
    index: &BTreeMap<String, PathBuf>,
    out: &mut Vec<(String, Vec<u8>)>,
    depth: usize,
) -> Result<()> {
    if out.iter().any(|(name, _)| name == module) {
        return Ok(());
    }
    if depth > 16 {
        bail!("module dependencies nest deeper than 16 at {module}");
    }
    let path = index
        .get(module)
        .with_context(|| format!("kernel module {module} not found in the image package"))?;
    let bytes = read_module(path)?;
    for dep in depends(&bytes) {
        add_with_dependencies(&dep, index, out, depth + 1)?;
    }
    out.push((module.to_string(), bytes));
    Ok(())
}

/// The module's bytes, decompressed (busybox insmod takes plain `.ko` files).
fn read_module(path: &Path) -> Result<Vec<u8>> {
    if path.extension().is_some_and(|e| e == "xz") {
        let out = run(Command::new("xz").arg("-dc").arg(path))
            .with_context(|| format!("decompressing {}", path.display()))?;
        return Ok(out.stdout);
    }
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// The `depends=a,b` entry of a module's `.modinfo` (NUL-separated `key=value` strings).
fn depends(ko: &[u8]) -> Vec<String> {
    let key = b"depends=";
    ko.windows(key.len())
        .enumerate()
        .filter(|(i, w)| *w == key && (*i == 0 || ko[i - 1] == 0))
        .find_map(|(i, _)| {
            let rest = &ko[i + key.len()..];
            let end = rest.iter().position(|&b| b == 0)?;
            Some(String::from_utf8_lossy(&rest[..end]).into_owned())
        })
        .map(|list| {
            list.split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_depends_from_modinfo() {
        let ko = b"\x7fELF junk\0license=GPL\0depends=virtio_ring,virtio-x\0intree=Y\0";
        assert_eq!(depends(ko), ["virtio_ring", "virtio_x"]);
        assert!(depends(b"\0depends=\0name=x\0").is_empty());
        // A `depends=` inside another string is not the entry.
        assert!(depends(b"\0description=no depends=here\0").is_empty());
        assert_eq!(
            module_name(Path::new("/m/virtio-mmio.ko.xz")).as_deref(),
            Some("virtio_mmio")
        );
        assert_eq!(module_name(Path::new("/m/modules.dep")), None);
    }
}
