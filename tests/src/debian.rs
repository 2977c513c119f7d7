//! Picks a Debian bookworm kernel ABI from apt's metadata, downloads the image, headers and
//! kbuild packages and extracts them into the cache.

use crate::util::{lock, run, run_stdout};
use anyhow::{Context, Result, bail};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The two kernel series wqflush is tested on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Series {
    /// bookworm's own kernel: `linux-image-6.1.0-<N>-amd64`.
    V6_1,
    /// bookworm-security's backport: `linux-image-6.12.<N>+deb12-amd64`.
    V6_12,
}

impl Series {
    pub const ALL: [Series; 2] = [Series::V6_1, Series::V6_12];

    /// The ABI in an image package name (`6.1.0-56`, `6.12.117+deb12`) and its sort key.
    fn parse_image(self, pkg: &str) -> Option<(u64, String)> {
        let abi = pkg.strip_prefix("linux-image-")?.strip_suffix("-amd64")?;
        let n = match self {
            Series::V6_1 => abi.strip_prefix("6.1.0-")?,
            Series::V6_12 => abi.strip_prefix("6.12.")?.strip_suffix("+deb12")?,
        };
        // Rejects flavours like `-rt`/`-cloud` and `-dbg`, whose remainder is not a number.
        let key = n.parse().ok()?;
        Some((key, abi.to_string()))
    }

    fn image_prefix(self) -> &'static str {
        match self {
            Series::V6_1 => "linux-image-6.1.0-",
            Series::V6_12 => "linux-image-6.12.",
        }
    }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
        })
    }
}

/// An extracted Debian kernel ready to boot and build modules against.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub series: Series,
    /// Package ABI, e.g. `6.1.0-56` or `6.12.117+deb12`.
    pub abi: String,
    /// `uname -r` in the guest, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// The bzImage to pass to `-kernel`.
    pub vmlinuz: PathBuf,
    /// The arch headers tree for `make -C <headers> M=... modules`.
    pub headers: PathBuf,
    /// `lib/modules/<release>` of the image package (in-tree `.ko`/`.ko.xz` files).
    pub modules_dir: PathBuf,
    pub system_map: PathBuf,
    pub config: PathBuf,
    /// Everything the packages contain, extracted as if `/`.
    pub root: PathBuf,
}

/// Returns a ready kernel of `series`, downloading it into `cache/<abi>/` on first use.
pub fn prepare_kernel(series: Series, cache: &Path) -> Result<Kernel> {
    let abi = newest_abi(series)?;
    let dir = cache.join(&abi);
    let _guard = lock(&cache.join(format!("{abi}.lock")))?;
    if !dir.join(".complete").exists() {
        populate(&abi, &dir)
            .with_context(|| format!("preparing kernel {abi} in {}", dir.display()))?;
    }
    locate(series, &abi, &dir.join("root"))
}

/// Downloads and extracts the packages of `abi` into `dir/root`, then marks `dir` complete.
fn populate(abi: &str, dir: &Path) -> Result<()> {
    let root = dir.join("root");
    if root.exists() {
        // A previous run died half-way; start from scratch rather than trust partial files.
        fs::remove_dir_all(&root).with_context(|| format!("removing stale {}", root.display()))?;
    }
    let debs_dir = dir.join("debs.tmp");
    fs::create_dir_all(&debs_dir).with_context(|| format!("creating {}", debs_dir.display()))?;
    let debs = download(&packages_for(abi)?, &debs_dir)?;
    for deb in &debs {
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
    }
    patch_headers_makefile(&root, abi)?;
    // The .debs are ~200 MB and everything needed is extracted.
    fs::remove_dir_all(&debs_dir).with_context(|| format!("removing {}", debs_dir.display()))?;
    fs::write(dir.join(".complete"), format!("{abi}\n")).context("writing .complete marker")
}

/// The newest ABI of `series` that has both an image and an amd64 headers package.
fn newest_abi(series: Series) -> Result<String> {
    let mut images: Vec<(u64, String)> = pkgnames(series.image_prefix())?
        .iter()
        .filter_map(|p| series.parse_image(p))
        .collect();
    images.sort();
    let headers = pkgnames("linux-headers-")?;
    images
        .into_iter()
        .rev()
        .map(|(_, abi)| abi)
        .find(|abi| headers.iter().any(|h| *h == format!("linux-headers-{abi}-amd64")))
        .with_context(|| {
            format!("apt knows no linux-image-{series}.x amd64 package with matching headers; check /etc/apt/sources.list (6.12 comes from bookworm-security)")
        })
}

/// `apt-cache pkgnames <prefix>`, running `apt-get update` once if the lists look empty.
fn pkgnames(prefix: &str) -> Result<Vec<String>> {
    let list = || -> Result<Vec<String>> {
        let out = run_stdout(Command::new("apt-cache").args(["pkgnames", prefix]))?;
        Ok(out.lines().map(str::to_string).collect())
    };
    let names = list()?;
    if !names.is_empty() {
        return Ok(names);
    }
    run(Command::new("apt-get").args(["update", "-qq"]))
        .context("apt lists look empty and `apt-get update` failed (needs root and network)")?;
    list()
}

/// The image, amd64 headers, and the headers' `-common` and `linux-kbuild-*` dependencies.
fn packages_for(abi: &str) -> Result<Vec<String>> {
    let image = format!("linux-image-{abi}-amd64");
    let headers = format!("linux-headers-{abi}-amd64");
    let mut pkgs = vec![image, headers.clone()];
    for dep in depends(&headers)? {
        if dep.starts_with("linux-headers-") && dep.ends_with("-common")
            || dep.starts_with("linux-kbuild-")
        {
            pkgs.push(dep);
        }
    }
    if pkgs.len() != 4 {
        bail!("expected -common and linux-kbuild-* among the Depends of {headers}, got {pkgs:?}");
    }
    Ok(pkgs)
}

/// Package names in the candidate's `Depends:` (first alternative, versions dropped).
fn depends(pkg: &str) -> Result<Vec<String>> {
    let out = run_stdout(Command::new("apt-cache").args(["show", "--no-all-versions", pkg]))?;
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("Depends:"))
        .with_context(|| format!("`apt-cache show {pkg}` has no Depends: line"))?;
    Ok(line
        .split(',')
        .filter_map(|d| d.split('|').next())
        .filter_map(|d| d.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// `apt-get download` into `dir`; returns the `.deb` files found there afterwards.
fn download(pkgs: &[String], dir: &Path) -> Result<Vec<PathBuf>> {
    run(Command::new("apt-get")
        .arg("download")
        .arg("-q")
        .args(pkgs)
        .current_dir(dir))
    .context("downloading kernel packages (network to the Debian mirror needed)")?;
    let mut debs = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            debs.push(path);
        }
    }
    if debs.len() < pkgs.len() {
        bail!(
            "apt-get download left {} .deb files for {} packages in {}",
            debs.len(),
            pkgs.len(),
            dir.display()
        );
    }
    Ok(debs)
}

/// The arch headers' Makefile includes the common tree by absolute `/usr/src/...` path; point
/// it into the extracted root so the tree works wherever the cache lives.
fn patch_headers_makefile(root: &Path, abi: &str) -> Result<()> {
    let makefile = root.join(format!("usr/src/linux-headers-{abi}-amd64/Makefile"));
    let text =
        fs::read_to_string(&makefile).with_context(|| format!("reading {}", makefile.display()))?;
    let src = root.join("usr/src");
    let patched = text.replace("/usr/src/", &format!("{}/", src.display()));
    fs::write(&makefile, patched).with_context(|| format!("writing {}", makefile.display()))
}

/// Finds the files of an extracted kernel; `release` comes from its modules directory.
fn locate(series: Series, abi: &str, root: &Path) -> Result<Kernel> {
    let release = format!("{abi}-amd64");
    let modules_dir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| root.join(d).join(&release))
        .find(|d| d.is_dir())
        .with_context(|| format!("no lib/modules/{release} in {}", root.display()))?;
    let kernel = Kernel {
        series,
        abi: abi.to_string(),
        vmlinuz: root.join(format!("boot/vmlinuz-{release}")),
        headers: root.join(format!("usr/src/linux-headers-{release}")),
        system_map: root.join(format!("boot/System.map-{release}")),
        config: root.join(format!("boot/config-{release}")),
        modules_dir,
        root: root.to_path_buf(),
        release,
    };
    for p in [&kernel.vmlinuz, &kernel.headers] {
        if !p.exists() {
            bail!(
                "{} missing; delete {} to re-download",
                p.display(),
                root.display()
            );
        }
    }
    Ok(kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        let v61 = Series::V6_1;
        assert_eq!(
            v61.parse_image("linux-image-6.1.0-56-amd64"),
            Some((56, "6.1.0-56".into()))
        );
        assert_eq!(v61.parse_image("linux-image-6.1.0-56-rt-amd64"), None);
        assert_eq!(v61.parse_image("linux-image-6.1.0-56-amd64-dbg"), None);
        let v612 = Series::V6_12;
        let abi = Some((117, "6.12.117+deb12".into()));
        assert_eq!(v612.parse_image("linux-image-6.12.117+deb12-amd64"), abi);
        assert_eq!(
            v612.parse_image("linux-image-6.12.117+deb12-cloud-amd64"),
            None
        );
    }
}
