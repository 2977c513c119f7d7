//! Picks a Debian kernel ABI of each tested series from a private apt state, downloads the image,
//! headers and kbuild packages and extracts them into the cache.
//!
//! The suites come from the mirrors this machine's apt already uses (read from
//! `/etc/apt/sources.list{,.d}`), through apt lists, caches and a sources list of the harness's
//! own under the cache: the machine's apt configuration is never changed.

use crate::arch::Arch;
use crate::util::{lock, run, run_stdout};
use anyhow::{Context, Result, bail};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The kernel series wqflush is tested on: the three generations a fleet runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Series {
    /// bullseye(-security)'s 5.10: `linux-image-5.10.0-<N>-amd64`; the flush function is
    /// `flush_workqueue()` itself (before 5.19).
    V5_10,
    /// bookworm's own kernel: `linux-image-6.1.0-<N>-amd64`.
    V6_1,
    /// bookworm-security's backport: `linux-image-6.12.<N>+deb12-amd64`.
    V6_12,
    /// trixie-backports' newest 7.x: `linux-binary-7.<M>.<P>+deb13-amd64` (7.x's
    /// `linux-image-*` is an empty package); its modules need gcc-14, built in a trixie chroot.
    V7,
}

/// How a series' ABI appears in its image package's name: `<image><head><numbers><tail>-<arch>`.
struct Naming {
    image: &'static str,
    head: &'static str,
    tail: &'static str,
}

impl Series {
    pub const ALL: [Series; 4] = [Series::V5_10, Series::V6_1, Series::V6_12, Series::V7];

    /// The series named as `cargo xtask --kernel` takes it: `5.10`, `6.1`, `6.12`, `7`.
    pub fn from_name(name: &str) -> Option<Series> {
        Series::ALL.into_iter().find(|s| s.to_string() == name)
    }

    /// Position in [`Series::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The function every workqueue flush passes through: `__flush_workqueue` since 5.19
    /// (c4f135d64382 made `flush_workqueue()` a macro around it), `flush_workqueue` before.
    pub fn flush_function(self) -> &'static str {
        match self {
            Series::V5_10 => "flush_workqueue",
            _ => "__flush_workqueue",
        }
    }

    /// The queue `flush_scheduled_work()` flushes: `system_percpu_wq` since 6.18, and in
    /// Debian's 6.12, which backported that change; `system_wq` before.
    pub fn scheduled_work_queue(self) -> &'static str {
        match self {
            Series::V5_10 | Series::V6_1 => "system_wq",
            Series::V6_12 | Series::V7 => "system_percpu_wq",
        }
    }

    /// Whether Debian builds this kernel with fprobe (CONFIG_FPROBE), so kprobe-multi links
    /// (5.18+) work, for the architecture `WQFLUSH_ARCH` names: amd64 not 5.10 (too old) and
    /// not 6.1 (not enabled); arm64 only 7.x (6.1 and 6.12 do not enable it).
    pub fn has_fprobe(self) -> bool {
        self.has_fprobe_on(Arch::current().unwrap_or(Arch::Amd64))
    }

    /// [`Series::has_fprobe`] for `arch`.
    pub fn has_fprobe_on(self, arch: Arch) -> bool {
        match arch {
            Arch::Amd64 => matches!(self, Series::V6_12 | Series::V7),
            Arch::Arm64 => self == Series::V7,
        }
    }

    /// Whether Debian's build can attach fentry to kernel functions, for the architecture
    /// `WQFLUSH_ARCH` names: arm64 needs DYNAMIC_FTRACE_WITH_DIRECT_CALLS (6.5+), so not 6.1.
    pub fn has_fentry(self) -> bool {
        self.has_fentry_on(Arch::current().unwrap_or(Arch::Amd64))
    }

    /// [`Series::has_fentry`] for `arch`.
    pub fn has_fentry_on(self, arch: Arch) -> bool {
        arch == Arch::Amd64 || self != Series::V6_1
    }

    /// The method tests use where they do not test one: fentry, else kprobe.
    pub fn fentry_or_kprobe(self) -> &'static str {
        if self.has_fentry() {
            "fentry"
        } else {
            "kprobe"
        }
    }

    /// Whether the kernel counts the runs a kprobe or kprobe-multi program was skipped for
    /// (6.7+).
    pub fn counts_kprobe_misses(self) -> bool {
        matches!(self, Series::V6_12 | Series::V7)
    }

    fn naming(self) -> Naming {
        let (image, head, tail) = match self {
            Series::V5_10 => ("linux-image-", "5.10.0-", ""),
            Series::V6_1 => ("linux-image-", "6.1.0-", ""),
            Series::V6_12 => ("linux-image-", "6.12.", "+deb12"),
            Series::V7 => ("linux-binary-", "7.", "+deb13"),
        };
        Naming { image, head, tail }
    }

    /// The ABI in an image package name for `arch` (`6.1.0-56`, `7.3.4+deb13`) and its sort
    /// key.
    fn parse_image(self, arch: Arch, pkg: &str) -> Option<(Vec<u64>, String)> {
        let n = self.naming();
        let abi = pkg
            .strip_prefix(n.image)?
            .strip_suffix(arch.debian())?
            .strip_suffix('-')?;
        let numbers = abi.strip_prefix(n.head)?.strip_suffix(n.tail)?;
        // Rejects flavours like `-rt`/`-cloud`, `-dbg` and `-unsigned`, whose remainder is not
        // dotted numbers.
        let key = numbers
            .split('.')
            .map(|part| part.parse().ok())
            .collect::<Option<Vec<u64>>>()?;
        Some((key, abi.to_string()))
    }

    /// The packages to extract for `abi`, besides the headers' dependencies.
    fn packages(self, arch: Arch, abi: &str) -> Vec<String> {
        let image = format!("{}{abi}-{arch}", self.naming().image);
        match self {
            // 7.x moved the config (and the placeholder System.map) into linux-base-<abi>.
            Series::V7 => vec![image, format!("linux-base-{abi}-{arch}")],
            _ => vec![image],
        }
    }

    /// The compiler the test module is built with.
    pub(crate) fn toolchain(self) -> Toolchain {
        match self {
            // 5.10's headers name gcc-10, which bookworm lacks; its gcc-12 builds the module.
            Series::V5_10 => Toolchain::Host { cc: Some("gcc") },
            Series::V6_1 | Series::V6_12 => Toolchain::Host { cc: None },
            // 7.x's flags (-fmin-function-alignment) need gcc-14, and its kbuild tools link
            // against trixie's glibc.
            Series::V7 => Toolchain::TrixieChroot,
        }
    }
}

/// Where the test module for a series is compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Toolchain {
    /// This machine's make and gcc; `cc` overrides the compiler the headers name.
    Host { cc: Option<&'static str> },
    /// A debootstrapped trixie with gcc-14 ([`crate::module`] builds it once).
    TrixieChroot,
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Series::V5_10 => "5.10",
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
            Series::V7 => "7",
        })
    }
}

/// An extracted Debian kernel ready to boot and build modules against.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub series: Series,
    /// The guest architecture (`WQFLUSH_ARCH` when it was prepared).
    pub arch: Arch,
    /// Package ABI, e.g. `6.1.0-56` or `7.3.4+deb13`.
    pub abi: String,
    /// `uname -r` in the guest, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// The image to pass to `-kernel`: a bzImage on amd64, an uncompressed `Image` on arm64.
    pub vmlinuz: PathBuf,
    /// The arch headers tree for `make -C <headers> M=... modules`.
    pub headers: PathBuf,
    /// The kernel's build configuration.
    pub config: PathBuf,
    /// Everything the packages contain, extracted as if `/`.
    pub root: PathBuf,
    /// The static busybox of this architecture for the guest.
    pub busybox: PathBuf,
}

impl Kernel {
    /// The value of `option` (`CONFIG_...`) in the kernel's config: `y`, `m`, a number or a
    /// string without its quotes; `None` when it is not set.
    pub fn config_option(&self, option: &str) -> Result<Option<String>> {
        let text = fs::read_to_string(&self.config)
            .with_context(|| format!("reading {}", self.config.display()))?;
        Ok(config_value(&text, option))
    }
}

/// `option`'s value in kernel config text.
fn config_value(text: &str, option: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(option)?.strip_prefix('='))
        .map(|v| v.trim_matches('"').to_string())
}

/// Returns a ready kernel of `series` for the architecture `WQFLUSH_ARCH` names, downloading it
/// into `cache/<abi>/` (amd64) or `cache/<abi>-arm64/` on first use.
pub fn prepare_kernel(series: Series, cache: &Path) -> Result<Kernel> {
    let arch = Arch::current()?;
    if arch == Arch::Arm64 && series == Series::V5_10 {
        bail!("no arm64 run for 5.10: the harness tests arm64 on 6.1, 6.12 and 7.x only");
    }
    let apt = Apt::open(cache, arch)?;
    let abi = newest_abi(&apt, series)?;
    let name = kernel_dir_name(arch, &abi);
    let dir = cache.join(&name);
    let busybox = guest_busybox(&apt, cache)?;
    let _guard = lock(&cache.join(format!("{name}.lock")))?;
    if !dir.join(".complete").exists() {
        populate(&apt, series, &abi, &dir)
            .with_context(|| format!("preparing kernel {abi} in {}", dir.display()))?;
    }
    locate(series, arch, &abi, &dir.join("root"), busybox)
}

/// The module tree (`.../lib/modules/<release>/`) of `series`' newest kernel for the
/// architecture `WQFLUSH_ARCH` names: the image package's own up to 6.x; from 7.x, where the
/// image holds none, `linux-modules-<abi>-<arch>` downloaded and extracted into
/// `cache/<abi>[-<arch>]-modules/` on first use.
pub fn module_tree(series: Series, cache: &Path) -> Result<PathBuf> {
    let kernel = prepare_kernel(series, cache)?;
    if let Some(tree) = find_module_tree(&kernel.root, &kernel.release) {
        return Ok(tree);
    }
    let apt = Apt::open(cache, kernel.arch)?;
    let name = format!("{}-modules", kernel_dir_name(kernel.arch, &kernel.abi));
    let dir = cache.join(&name);
    let _guard = lock(&cache.join(format!("{name}.lock")))?;
    if !dir.join(".complete").exists() {
        let pkg = format!("linux-modules-{}", kernel.release);
        extract_packages(&apt, &[pkg], &dir).with_context(|| {
            format!(
                "preparing {}'s modules in {}",
                kernel.release,
                dir.display()
            )
        })?;
    }
    find_module_tree(&dir.join("root"), &kernel.release).with_context(|| {
        format!(
            "linux-modules-{} has no lib/modules/{}/kernel; delete {} to re-download",
            kernel.release,
            kernel.release,
            dir.display()
        )
    })
}

/// `root/lib/modules/<release>` or `root/usr/lib/modules/<release>`, whichever has modules.
fn find_module_tree(root: &Path, release: &str) -> Option<PathBuf> {
    ["lib/modules", "usr/lib/modules"]
        .map(|m| root.join(m).join(release))
        .into_iter()
        .find(|tree| tree.join("kernel").is_dir())
}

/// Downloads `pkgs` and extracts them into `dir/root`, then marks `dir` complete; a partial
/// earlier attempt is removed first.
fn extract_packages(apt: &Apt, pkgs: &[String], dir: &Path) -> Result<()> {
    let root = dir.join("root");
    let _ = fs::remove_dir_all(&root);
    let debs_dir = dir.join("debs.tmp");
    let _ = fs::remove_dir_all(&debs_dir);
    fs::create_dir_all(&debs_dir).with_context(|| format!("creating {}", debs_dir.display()))?;
    for deb in download(apt, pkgs, &debs_dir)? {
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
    }
    fs::remove_dir_all(&debs_dir).with_context(|| format!("removing {}", debs_dir.display()))?;
    fs::write(dir.join(".complete"), format!("{}\n", pkgs.join(" ")))
        .context("writing .complete marker")
}

/// The cache folder of a kernel: the ABI for amd64 (as before there were two architectures),
/// the ABI with the architecture for the others.
fn kernel_dir_name(arch: Arch, abi: &str) -> String {
    match arch {
        Arch::Amd64 => abi.to_string(),
        _ => format!("{abi}-{arch}"),
    }
}

/// The guest's busybox: this machine's busybox-static on amd64, Debian's `busybox-static`
/// of the guest architecture otherwise, extracted once into `cache/busybox-<arch>/`.
fn guest_busybox(apt: &Apt, cache: &Path) -> Result<PathBuf> {
    if apt.arch == Arch::Amd64 {
        return Ok(PathBuf::from("/bin/busybox"));
    }
    let dir = cache.join(format!("busybox-{}", apt.arch));
    // bookworm's package has /bin/busybox, trixie's (apt's candidate) /usr/bin/busybox.
    let find = || {
        ["root/bin/busybox", "root/usr/bin/busybox"]
            .map(|p| dir.join(p))
            .into_iter()
            .find(|p| p.exists())
    };
    let _guard = lock(&cache.join(format!("busybox-{}.lock", apt.arch)))?;
    if dir.join(".complete").exists()
        && let Some(busybox) = find()
    {
        return Ok(busybox);
    }
    let _ = fs::remove_dir_all(&dir);
    let debs_dir = dir.join("debs.tmp");
    fs::create_dir_all(&debs_dir).with_context(|| format!("creating {}", debs_dir.display()))?;
    for deb in download(apt, &["busybox-static".to_string()], &debs_dir)? {
        run(Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(dir.join("root")))?;
    }
    fs::remove_dir_all(&debs_dir).with_context(|| format!("removing {}", debs_dir.display()))?;
    let busybox =
        find().with_context(|| format!("busybox-static:{} has no /bin/busybox", apt.arch))?;
    fs::write(dir.join(".complete"), "busybox-static\n").context("writing .complete marker")?;
    Ok(busybox)
}

/// apt with a state of its own under the cache, for one architecture.
struct Apt {
    dir: PathBuf,
    arch: Arch,
}

/// Suites on the main mirror and on the security mirror that the series come from.
const SUITES: &[&str] = &["bullseye", "bookworm", "trixie", "trixie-backports"];
const SECURITY_SUITES: &[&str] = &["bullseye-security", "bookworm-security"];

/// Lists older than this name kernels the archive may have dropped (ABIs move weekly).
const LISTS_MAX_AGE: Duration = Duration::from_secs(6 * 3600);

/// Whether the apt lists in `dir` (the machine's `/var/lib/apt/lists`, or a private state's)
/// are missing or older than [`LISTS_MAX_AGE`]: the archive drops old ABIs weekly, so old lists
/// name kernels the mirror no longer has.
pub fn lists_stale(dir: &Path) -> bool {
    let newest = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("_Packages"))
        .filter_map(|e| e.metadata().and_then(|m| m.modified()).ok())
        .max();
    newest.is_none_or(|t| t.elapsed().unwrap_or_default() >= LISTS_MAX_AGE)
}

impl Apt {
    /// Writes the sources list and refreshes the lists when they are missing, stale or were
    /// made for other sources.
    /// amd64's state is `cache/apt`; another architecture's is `cache/apt-<arch>`, with amd64
    /// as a foreign architecture (linux-kbuild's tools run on this machine).
    fn open(cache: &Path, arch: Arch) -> Result<Apt> {
        let name = match arch {
            Arch::Amd64 => "apt".to_string(),
            _ => format!("apt-{arch}"),
        };
        let apt = Apt {
            dir: cache.join(&name),
            arch,
        };
        let _guard = lock(&cache.join(format!("{name}.lock")))?;
        for sub in [
            "lists/partial",
            "archives/partial",
            "sources.list.d",
            "preferences.d",
        ] {
            let d = apt.dir.join(sub);
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        fs::write(apt.dir.join("status"), "").context("writing the private dpkg status")?;
        let sources = sources_list(&mirrors()?);
        let list = apt.dir.join("sources.list");
        let changed = fs::read_to_string(&list).ok().as_deref() != Some(sources.as_str());
        if changed {
            fs::write(&list, &sources).with_context(|| format!("writing {}", list.display()))?;
        }
        if changed || apt.lists_stale() {
            run(apt.command("apt-get").args(["update", "-qq"])).context(
                "updating the harness's private apt lists (needs network to the Debian mirror)",
            )?;
        }
        Ok(apt)
    }

    fn lists_stale(&self) -> bool {
        lists_stale(&self.dir.join("lists"))
    }

    /// `apt-get`/`apt-cache` reading only this state: nothing of the machine's sources,
    /// preferences, lists or dpkg status.
    fn command(&self, program: &str) -> Command {
        let d = &self.dir;
        let mut cmd = Command::new(program);
        for (key, value) in [
            ("Dir::Etc::SourceList", d.join("sources.list")),
            ("Dir::Etc::SourceParts", d.join("sources.list.d")),
            ("Dir::Etc::Preferences", d.join("preferences")),
            ("Dir::Etc::PreferencesParts", d.join("preferences.d")),
            ("Dir::State::Lists", d.join("lists")),
            ("Dir::State::status", d.join("status")),
            ("Dir::Cache", d.clone()),
        ] {
            cmd.arg("-o").arg(format!("{key}={}", value.display()));
        }
        let arch = self.arch.debian();
        let architectures = match self.arch {
            Arch::Amd64 => "amd64".to_string(),
            _ => format!("{arch},amd64"),
        };
        cmd.arg("-o").arg(format!("APT::Architecture={arch}"));
        cmd.arg("-o")
            .arg(format!("APT::Architectures={architectures}"));
        for option in [
            "Acquire::Languages=none",
            // The cache is the harness's own, under the workspace; apt's _apt user may not
            // be able to write there.
            "APT::Sandbox::User=root",
        ] {
            cmd.arg("-o").arg(option);
        }
        cmd
    }

    /// `apt-cache pkgnames <prefix>`.
    fn pkgnames(&self, prefix: &str) -> Result<Vec<String>> {
        let out = run_stdout(self.command("apt-cache").args(["pkgnames", prefix]))?;
        Ok(out.lines().map(str::to_string).collect())
    }
}

/// The Debian archive and security archive URIs this machine's apt uses.
#[derive(Debug, PartialEq, Eq)]
struct Mirrors {
    main: String,
    security: String,
}

fn mirrors() -> Result<Mirrors> {
    let mut texts: Vec<String> = fs::read_to_string("/etc/apt/sources.list")
        .into_iter()
        .collect();
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if p.extension().is_some_and(|e| e == "sources" || e == "list") {
                texts.extend(fs::read_to_string(p).ok());
            }
        }
    }
    mirrors_in(&texts.join("\n")).context(
        "found no Debian mirror (a URI ending in /debian) in /etc/apt/sources.list or \
         /etc/apt/sources.list.d; the harness downloads Debian kernels from it",
    )
}

/// The Debian archive this machine's apt uses (debootstrap takes it too).
pub(crate) fn main_mirror() -> Result<String> {
    Ok(mirrors()?.main)
}

/// Mirrors named in apt sources text, deb822 (`URIs: ...`) or one-line (`deb [..] URI ...`).
fn mirrors_in(text: &str) -> Option<Mirrors> {
    let mut uris = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(list) = line.strip_prefix("URIs:") {
            uris.extend(list.split_whitespace());
        } else if let Some(rest) = line.strip_prefix("deb ") {
            let mut words = rest.split_whitespace().skip_while(|w| w.starts_with('['));
            // Options may hold spaces: `[ signed-by=... ]`.
            uris.extend(words.find(|w| w.contains("://")));
        }
    }
    let find = |suffix: &str| {
        uris.iter()
            .map(|u| u.trim_end_matches('/'))
            .find(|u| u.ends_with(suffix))
            .map(str::to_owned)
    };
    let main = find("/debian")?;
    let security = find("/debian-security").unwrap_or_else(|| format!("{main}-security"));
    Some(Mirrors { main, security })
}

fn sources_list(m: &Mirrors) -> String {
    let key = "[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]";
    let mut text = String::from("# Written by the wqflush test harness; see tests/src/debian.rs\n");
    for suite in SUITES {
        text.push_str(&format!("deb {key} {} {suite} main\n", m.main));
    }
    for suite in SECURITY_SUITES {
        text.push_str(&format!("deb {key} {} {suite} main\n", m.security));
    }
    text
}

/// Downloads and extracts the packages of `abi` into `dir/root`, then marks `dir` complete.
fn populate(apt: &Apt, series: Series, abi: &str, dir: &Path) -> Result<()> {
    let root = dir.join("root");
    if root.exists() {
        // A previous run died half-way; start from scratch rather than trust partial files.
        fs::remove_dir_all(&root).with_context(|| format!("removing stale {}", root.display()))?;
    }
    let debs_dir = dir.join("debs.tmp");
    let _ = fs::remove_dir_all(&debs_dir);
    fs::create_dir_all(&debs_dir).with_context(|| format!("creating {}", debs_dir.display()))?;
    let debs = download(apt, &packages_for(apt, series, abi)?, &debs_dir)?;
    for deb in &debs {
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
    }
    patch_headers_makefile(&root, &format!("{abi}-{}", apt.arch))?;
    // The .debs are ~200 MB and everything needed is extracted.
    fs::remove_dir_all(&debs_dir).with_context(|| format!("removing {}", debs_dir.display()))?;
    fs::write(dir.join(".complete"), format!("{abi}\n")).context("writing .complete marker")
}

/// The newest ABI of `series` that has both an image and a headers package of the apt state's
/// architecture.
fn newest_abi(apt: &Apt, series: Series) -> Result<String> {
    let n = series.naming();
    let arch = apt.arch;
    let mut images: Vec<(Vec<u64>, String)> = apt
        .pkgnames(&format!("{}{}", n.image, n.head))?
        .iter()
        .filter_map(|p| series.parse_image(arch, p))
        .collect();
    images.sort();
    let headers = apt.pkgnames("linux-headers-")?;
    images
        .into_iter()
        .rev()
        .map(|(_, abi)| abi)
        .find(|abi| {
            headers
                .iter()
                .any(|h| *h == format!("linux-headers-{abi}-{arch}"))
        })
        .with_context(|| {
            format!(
                "the Debian archive offers no {series} kernel ({}{}...-{arch}) with matching \
                 headers",
                n.image, n.head
            )
        })
}

/// The image packages, the arch headers, and the headers' `-common` and `linux-kbuild-*`
/// dependencies; linux-kbuild always amd64's (`Multi-Arch: foreign`: its tools run on this
/// machine, and it has the modpost of every target).
fn packages_for(apt: &Apt, series: Series, abi: &str) -> Result<Vec<String>> {
    let headers = format!("linux-headers-{abi}-{}", apt.arch);
    let mut pkgs = series.packages(apt.arch, abi);
    pkgs.push(headers.clone());
    let extra: Vec<String> = depends(apt, &headers)?
        .into_iter()
        .filter(|d| {
            d.starts_with("linux-headers-") && d.ends_with("-common")
                || d.starts_with("linux-kbuild-")
        })
        .collect();
    if extra.len() != 2 {
        bail!("expected -common and linux-kbuild-* among the Depends of {headers}, got {extra:?}");
    }
    pkgs.extend(extra.into_iter().map(|p| host_package(apt.arch, p)));
    Ok(pkgs)
}

/// `linux-kbuild-V` as apt must name it to fetch amd64's from a state of another architecture.
fn host_package(arch: Arch, pkg: String) -> String {
    if arch != Arch::Amd64 && pkg.starts_with("linux-kbuild-") {
        format!("{pkg}:amd64")
    } else {
        pkg
    }
}

/// Package names in the candidate's `Depends:` (first alternative, versions dropped).
fn depends(apt: &Apt, pkg: &str) -> Result<Vec<String>> {
    let out = run_stdout(
        apt.command("apt-cache")
            .args(["show", "--no-all-versions", pkg]),
    )?;
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
fn download(apt: &Apt, pkgs: &[String], dir: &Path) -> Result<Vec<PathBuf>> {
    run(apt
        .command("apt-get")
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

/// The arch headers' Makefile includes the common tree (and, from 7.x, sets `KBUILD_OUTPUT`)
/// by absolute `/usr/src/...` path; point it into the extracted root so the tree works
/// wherever the cache lives.
fn patch_headers_makefile(root: &Path, release: &str) -> Result<()> {
    let makefile = root.join(format!("usr/src/linux-headers-{release}/Makefile"));
    let text =
        fs::read_to_string(&makefile).with_context(|| format!("reading {}", makefile.display()))?;
    let src = root.join("usr/src");
    let patched = text.replace("/usr/src/", &format!("{}/", src.display()));
    fs::write(&makefile, patched).with_context(|| format!("writing {}", makefile.display()))
}

/// Finds the files of an extracted kernel: under `boot/` up to 6.x, under
/// `usr/lib/modules/<release>/` from 7.x.
fn locate(series: Series, arch: Arch, abi: &str, root: &Path, busybox: PathBuf) -> Result<Kernel> {
    let release = format!("{abi}-{arch}");
    let first = |candidates: [PathBuf; 2]| {
        let [a, b] = candidates;
        if a.exists() { a } else { b }
    };
    let modules = root.join("usr/lib/modules").join(&release);
    let kernel = Kernel {
        series,
        arch,
        abi: abi.to_string(),
        vmlinuz: first([
            root.join(format!("boot/vmlinuz-{release}")),
            modules.join("vmlinuz"),
        ]),
        headers: root.join(format!("usr/src/linux-headers-{release}")),
        config: first([
            root.join(format!("boot/config-{release}")),
            modules.join("config"),
        ]),
        root: root.to_path_buf(),
        release,
        busybox,
    };
    for p in [&kernel.vmlinuz, &kernel.headers, &kernel.config] {
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

    fn key(parts: &[u64], abi: &str) -> Option<(Vec<u64>, String)> {
        Some((parts.to_vec(), abi.to_string()))
    }

    #[test]
    fn image_names() {
        let v = Series::V5_10;
        assert_eq!(
            v.parse_image(Arch::Amd64, "linux-image-5.10.0-46-amd64"),
            key(&[46], "5.10.0-46")
        );
        assert_eq!(
            v.parse_image(Arch::Amd64, "linux-image-5.10.0-46-amd64-unsigned"),
            None
        );
        assert_eq!(
            v.parse_image(Arch::Amd64, "linux-image-5.10.0-46-rt-amd64"),
            None
        );
        let v = Series::V6_1;
        assert_eq!(
            v.parse_image(Arch::Amd64, "linux-image-6.1.0-56-amd64"),
            key(&[56], "6.1.0-56")
        );
        assert_eq!(
            v.parse_image(Arch::Amd64, "linux-image-6.1.0-56-rt-amd64"),
            None
        );
        assert_eq!(
            v.parse_image(Arch::Amd64, "linux-image-6.1.0-56-amd64-dbg"),
            None
        );
        let v = Series::V6_12;
        let abi = key(&[117], "6.12.117+deb12");
        assert_eq!(
            v.parse_image(Arch::Amd64, "linux-image-6.12.117+deb12-amd64"),
            abi
        );
        assert_eq!(
            v.parse_image(Arch::Amd64, "linux-image-6.12.117+deb12-cloud-amd64"),
            None
        );
        let v = Series::V7;
        assert_eq!(
            v.parse_image(Arch::Amd64, "linux-binary-7.3.4+deb13-amd64"),
            key(&[3, 4], "7.3.4+deb13")
        );
        assert_eq!(
            v.parse_image(Arch::Amd64, "linux-binary-unsigned-7.3.4+deb13-amd64"),
            None
        );
        assert_eq!(
            v.parse_image(Arch::Amd64, "linux-binary-7.3.4+deb13-rt-amd64"),
            None
        );
        assert_eq!(
            v.parse_image(Arch::Amd64, "linux-image-7.3.4+deb13-amd64"),
            None
        );
        // 7.10 sorts after 7.9.
        assert!(
            v.parse_image(Arch::Amd64, "linux-binary-7.10.1+deb13-amd64")
                > v.parse_image(Arch::Amd64, "linux-binary-7.9.12+deb13-amd64")
        );
    }

    #[test]
    fn fprobe_per_arch() {
        let on = |arch| {
            Series::ALL
                .into_iter()
                .filter(|s| s.has_fprobe_on(arch))
                .collect::<Vec<_>>()
        };
        assert_eq!(on(Arch::Amd64), [Series::V6_12, Series::V7]);
        assert_eq!(on(Arch::Arm64), [Series::V7]);
    }

    #[test]
    fn config_values() {
        let text = "# CONFIG_KALLSYMS_ALL is not set\nCONFIG_VIRTIO=y\nCONFIG_VIRTIO_MMIO=m\n\
                    CONFIG_LOCALVERSION=\"\"\nCONFIG_ARM64_VA_BITS=48\n";
        assert_eq!(config_value(text, "CONFIG_KALLSYMS_ALL"), None);
        assert_eq!(config_value(text, "CONFIG_VIRTIO").as_deref(), Some("y"));
        assert_eq!(
            config_value(text, "CONFIG_VIRTIO_MMIO").as_deref(),
            Some("m")
        );
        assert_eq!(
            config_value(text, "CONFIG_ARM64_VA_BITS").as_deref(),
            Some("48")
        );
        assert_eq!(
            config_value(text, "CONFIG_LOCALVERSION").as_deref(),
            Some("")
        );
    }

    #[test]
    fn arm64_image_names() {
        let arm = Arch::Arm64;
        assert_eq!(
            Series::V6_1.parse_image(arm, "linux-image-6.1.0-57-arm64"),
            key(&[57], "6.1.0-57")
        );
        assert_eq!(
            Series::V6_1.parse_image(Arch::Amd64, "linux-image-6.1.0-57-arm64"),
            None
        );
        assert_eq!(
            Series::V6_1.parse_image(arm, "linux-image-6.1.0-57-amd64"),
            None
        );
        assert_eq!(
            Series::V6_1.parse_image(arm, "linux-image-6.1.0-57-rt-arm64"),
            None
        );
        assert_eq!(
            Series::V6_12.parse_image(arm, "linux-image-6.12.118+deb12-arm64-16k"),
            None
        );
        assert_eq!(
            Series::V7.parse_image(arm, "linux-binary-7.3.4+deb13-arm64"),
            key(&[3, 4], "7.3.4+deb13")
        );
        assert_eq!(
            Series::V7.packages(arm, "7.3.4+deb13"),
            [
                "linux-binary-7.3.4+deb13-arm64",
                "linux-base-7.3.4+deb13-arm64"
            ]
        );
        assert_eq!(kernel_dir_name(arm, "6.1.0-57"), "6.1.0-57-arm64");
        assert_eq!(kernel_dir_name(Arch::Amd64, "6.1.0-57"), "6.1.0-57");
        assert_eq!(
            host_package(arm, "linux-kbuild-6.1".into()),
            "linux-kbuild-6.1:amd64"
        );
        assert_eq!(
            host_package(arm, "linux-headers-6.1.0-57-common".into()),
            "linux-headers-6.1.0-57-common"
        );
        assert_eq!(
            host_package(Arch::Amd64, "linux-kbuild-6.1".into()),
            "linux-kbuild-6.1"
        );
    }

    #[test]
    fn series_names_round_trip() {
        for s in Series::ALL {
            assert_eq!(Series::from_name(&s.to_string()), Some(s));
            assert_eq!(Series::ALL[s.index()], s);
        }
        assert_eq!(Series::from_name("6"), None);
    }

    #[test]
    fn mirrors_from_deb822_and_one_line_sources() {
        let deb822 = "Types: deb\n# http://snapshot.example/archive/debian/2025\nURIs: http://m.example/debian\nSuites: bookworm\n\nTypes: deb\nURIs: http://m.example/debian-security/\nSuites: bookworm-security\n";
        assert_eq!(
            mirrors_in(deb822),
            Some(Mirrors {
                main: "http://m.example/debian".into(),
                security: "http://m.example/debian-security".into()
            })
        );
        let one_line = "deb [ signed-by=/k.gpg ] https://n.example/debian bookworm main\n";
        let m = mirrors_in(one_line).unwrap();
        assert_eq!(m.main, "https://n.example/debian");
        assert_eq!(m.security, "https://n.example/debian-security");
        assert_eq!(
            mirrors_in("deb https://packages.example/apt cloud main\n"),
            None
        );
        let list = sources_list(&m);
        assert!(list.contains("https://n.example/debian trixie-backports main"));
        assert!(list.contains("https://n.example/debian-security bullseye-security main"));
    }
}
