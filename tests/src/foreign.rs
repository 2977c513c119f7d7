//! Debian's build of a program for a guest of another architecture (arm64 on this amd64
//! machine): the package and its dependency closure downloaded through a private apt state,
//! extracted once into the cache, and the files the guest needs to run it: the program, the
//! shared libraries its `DT_NEEDED` entries name (transitively) and the dynamic loader its
//! `PT_INTERP` names.
//!
//! `ldd` cannot list a foreign program's libraries (it runs the program's loader), so they are
//! resolved from the ELF files the way the guest's loader will: `DT_RPATH`/`DT_RUNPATH`, then
//! Debian's built-in search path (the guest has no `ld.so.cache`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};
use object::Endianness;
use object::elf::{DT_NEEDED, DT_RPATH, DT_RUNPATH, FileHeader64};
use object::read::elf::{FileHeader as _, ProgramHeader as _};

use crate::arch::Arch;
use crate::debian::{lists_stale, main_mirror};
use crate::util::{lock, run};

/// The suite the programs come from: bookworm's, as on this machine (bpftrace 0.17).
const SUITE: &str = "bookworm";

/// `(host path, guest path)` pairs for Debian's `program` of `arch` (arm64), from `package`
/// (`util-linux`), at `guest` in the guest, with its libraries and dynamic loader at the paths
/// the guest's loader looks for them.
pub fn program(
    cache: &Path,
    arch: Arch,
    program: &str,
    package: &str,
    guest: &str,
) -> Result<Vec<(PathBuf, String)>> {
    let tuple = multiarch(arch);
    let root = extracted(cache, arch, package)?;
    let bin = ["usr/bin", "usr/sbin", "bin", "sbin"]
        .iter()
        .map(|dir| format!("/{dir}/{program}"))
        .find(|p| root.join(&p[1..]).symlink_metadata().is_ok())
        .with_context(|| format!("{package}:{arch} ships no {program} in a bin directory"))?;
    let mut files = vec![(in_tree(&root, &bin)?, guest.to_owned())];
    files.extend(libraries(&root, tuple, &bin, &|p| {
        read_dynamic(p).with_context(|| format!("reading {} of {package}:{arch}", p.display()))
    })?);
    Ok(files)
}

/// `package` of `arch` and its dependency closure, extracted once into
/// `cache/foreign-<arch>/<package>/root` (marked by `.complete`, under a lock).
fn extracted(cache: &Path, arch: Arch, package: &str) -> Result<PathBuf> {
    let base = cache.join(format!("foreign-{arch}"));
    let dir = base.join(package);
    let root = dir.join("root");
    let _guard = lock(&base.join(format!("{package}.lock")))?;
    if dir.join(".complete").exists() {
        return Ok(root);
    }
    // A previous run died half-way: start from scratch rather than trust partial files.
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing stale {}", dir.display()))?;
    }
    let debs = download(&Apt::open(&base, arch)?, package, &dir.join("debs.tmp"))?;
    for deb in &debs {
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))
            .with_context(|| format!("extracting {}", deb.display()))?;
    }
    let names: Vec<String> = debs
        .iter()
        .filter_map(|d| Some(d.file_name()?.to_string_lossy().into_owned()))
        .collect();
    fs::remove_dir_all(dir.join("debs.tmp")).context("removing the downloaded .debs")?;
    fs::write(dir.join(".complete"), names.join("\n") + "\n").context("writing .complete")?;
    Ok(root)
}

/// `package` and everything it depends on (not what it recommends) as `.deb` files in `dir`:
/// apt resolves the closure against an empty dpkg status, so nothing is taken as installed.
fn download(apt: &Apt, package: &str, dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir.join("partial"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = apt.command("apt-get");
    cmd.arg("-o")
        .arg(format!("Dir::Cache::archives={}", dir.display()))
        .args([
            "install",
            "--download-only",
            "--no-install-recommends",
            "-y",
            "-q",
        ])
        .arg(package);
    run(&mut cmd).with_context(|| {
        format!(
            "downloading {package}:{} (network to the Debian mirror needed)",
            apt.arch
        )
    })?;
    let mut debs = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            debs.push(path);
        }
    }
    ensure!(
        !debs.is_empty(),
        "apt-get left no .deb for {package} in {}",
        dir.display()
    );
    debs.sort();
    Ok(debs)
}

/// apt with a state of its own in `cache/foreign-<arch>/apt`: the suite [`SUITE`] of this
/// machine's Debian mirror for one architecture, an empty dpkg status. Held under its lock
/// (concurrent apt-gets on one state would fail on its lock instead of waiting).
struct Apt {
    dir: PathBuf,
    arch: Arch,
    _guard: fs::File,
}

impl Apt {
    /// Writes the sources list and refreshes the lists when they are missing, stale or were
    /// made for other sources.
    fn open(base: &Path, arch: Arch) -> Result<Apt> {
        let apt = Apt {
            dir: base.join("apt"),
            arch,
            _guard: lock(&base.join("apt.lock"))?,
        };
        for sub in ["lists/partial", "sources.list.d", "preferences.d"] {
            let d = apt.dir.join(sub);
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        fs::write(apt.dir.join("status"), "").context("writing the private dpkg status")?;
        let sources = format!(
            "# Written by the wqflush test harness; see tests/src/foreign.rs\n\
             deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {} {SUITE} main\n",
            main_mirror()?
        );
        let list = apt.dir.join("sources.list");
        let changed = fs::read_to_string(&list).ok().as_deref() != Some(sources.as_str());
        if changed {
            fs::write(&list, &sources).with_context(|| format!("writing {}", list.display()))?;
        }
        if changed || lists_stale(&apt.dir.join("lists")) {
            run(apt.command("apt-get").args(["update", "-qq"])).with_context(|| {
                format!("updating the private {arch} apt lists (network to the Debian mirror)")
            })?;
        }
        Ok(apt)
    }

    /// `apt-get` reading only this state: nothing of the machine's sources, preferences, lists
    /// or dpkg status, and only packages of this architecture.
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
        for option in [
            format!("APT::Architecture={arch}"),
            format!("APT::Architectures={arch}"),
            "Acquire::Languages=none".to_owned(),
            // The cache may not be writable by apt's _apt user.
            "APT::Sandbox::User=root".to_owned(),
        ] {
            cmd.arg("-o").arg(option);
        }
        cmd
    }
}

/// The multiarch tuple of an architecture: its library directories' name.
fn multiarch(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "x86_64-linux-gnu",
        Arch::Arm64 => "aarch64-linux-gnu",
    }
}

/// What the dynamic loader reads of an ELF file.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Dynamic {
    /// `PT_INTERP`: the loader's path (programs only).
    interp: Option<String>,
    /// `DT_NEEDED`: sonames, in order.
    needed: Vec<String>,
    /// `DT_RUNPATH`, or `DT_RPATH` when there is no `DT_RUNPATH`: directories, `$ORIGIN` kept.
    runpath: Vec<String>,
}

/// Parses `path`'s interpreter and dynamic section (64-bit ELF, either byte order).
fn read_dynamic(path: &Path) -> Result<Dynamic> {
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let data = data.as_slice();
    let header = FileHeader64::<Endianness>::parse(data).context("not a 64-bit ELF file")?;
    let endian = header.endian()?;
    let mut dynamic = Dynamic::default();
    for ph in header.program_headers(endian, data)? {
        if let Some(interp) = ph.interpreter(endian, data)? {
            dynamic.interp = Some(String::from_utf8_lossy(interp).into_owned());
        }
    }
    let table = header.sections(endian, data)?.dynamic_table(endian, data)?;
    let (mut runpath, mut rpath) = (None, None);
    for d in table.iter() {
        let text =
            || -> Result<String> { Ok(String::from_utf8_lossy(table.string(d)?).into_owned()) };
        match d.tag {
            DT_NEEDED => dynamic.needed.push(text()?),
            DT_RUNPATH => runpath = Some(text()?),
            DT_RPATH => rpath = Some(text()?),
            _ => {}
        }
    }
    // The loader ignores DT_RPATH when DT_RUNPATH is present.
    if let Some(list) = runpath.or(rpath) {
        dynamic.runpath = list
            .split(':')
            .filter(|d| !d.is_empty())
            .map(str::to_owned)
            .collect();
    }
    Ok(dynamic)
}

/// The loader and every library `bin` (a path in the guest, inside `root`) needs, transitively:
/// `(file in root, guest path)`. `read` parses an ELF file (a parameter for the tests).
fn libraries(
    root: &Path,
    tuple: &str,
    bin: &str,
    read: &dyn Fn(&Path) -> Result<Dynamic>,
) -> Result<Vec<(PathBuf, String)>> {
    let program = read(&in_tree(root, bin)?)?;
    let interp = program
        .interp
        .clone()
        .with_context(|| format!("{bin} names no dynamic loader (PT_INTERP)"))?;
    let mut found: BTreeMap<String, PathBuf> = BTreeMap::new();
    found.insert(interp.clone(), in_tree(root, &interp)?);
    // Sonames already placed: the loader loads each once, wherever it found it first.
    let mut sonames: BTreeSet<String> = BTreeSet::new();
    let mut queue = VecDeque::from([(bin.to_owned(), program)]);
    while let Some((path, dynamic)) = queue.pop_front() {
        let origin = Path::new(&path).parent().unwrap_or(Path::new("/"));
        for soname in &dynamic.needed {
            if !sonames.insert(soname.clone()) {
                continue;
            }
            let dirs = search_path(&dynamic.runpath, origin, tuple);
            let guest = dirs
                .iter()
                // The guest's file system resolves `..`; the initramfs needs plain paths.
                .filter_map(|dir| normalize(&Path::new(dir).join(soname)).ok())
                .map(|p| p.to_string_lossy().into_owned())
                .find(|p| in_tree(root, p).is_ok())
                .with_context(|| format!("{path} needs {soname}, found in none of {dirs:?}"))?;
            let host = in_tree(root, &guest)?;
            queue.push_back((guest.clone(), read(&host)?));
            found.insert(guest, host);
        }
    }
    Ok(found
        .into_iter()
        .map(|(guest, host)| (host, guest))
        .collect())
}

/// Where the guest's loader looks for a library of an object in `origin`: its run path, then
/// Debian's built-in directories (glibc's `--help` lists them; there is no `ld.so.cache`).
fn search_path(runpath: &[String], origin: &Path, tuple: &str) -> Vec<String> {
    let origin = origin.to_string_lossy();
    let mut dirs: Vec<String> = runpath
        .iter()
        .map(|d| d.replace("${ORIGIN}", &origin).replace("$ORIGIN", &origin))
        .collect();
    dirs.extend([
        format!("/lib/{tuple}"),
        format!("/usr/lib/{tuple}"),
        "/lib".to_owned(),
        "/usr/lib".to_owned(),
    ]);
    dirs
}

/// The regular file at the absolute guest path `path` inside `root`, following symlinks the way
/// the guest will (an absolute target stays inside `root`); fails when there is none.
fn in_tree(root: &Path, path: &str) -> Result<PathBuf> {
    let mut current = normalize(Path::new(path))?;
    for _ in 0..40 {
        let host = root.join(current.strip_prefix("/").unwrap_or(&current));
        let meta = host
            .symlink_metadata()
            .with_context(|| format!("{path}: no {} in {}", current.display(), root.display()))?;
        if !meta.file_type().is_symlink() {
            ensure!(
                meta.is_file(),
                "{path}: {} is not a file",
                current.display()
            );
            return Ok(host);
        }
        let target = fs::read_link(&host).with_context(|| format!("reading {}", host.display()))?;
        let parent = current.parent().unwrap_or(Path::new("/"));
        current = normalize(&parent.join(target))?;
    }
    bail!(
        "{path}: too many levels of symbolic links in {}",
        root.display()
    )
}

/// `path` made absolute and without `.` or `..` (lexically: directories are not links in a
/// Debian package's tree).
fn normalize(path: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir => {}
            Component::Prefix(_) => bail!("{}: not a Unix path", path.display()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A package tree as Debian's arm64 .debs extract: relative and absolute symlinks, a
    /// library found through `$ORIGIN`, a library two objects need.
    fn tree() -> Result<PathBuf> {
        let root = crate::util::unique_dir(&std::env::temp_dir(), "wqflush-foreign-test")?;
        for dir in [
            "usr/bin",
            "lib/aarch64-linux-gnu",
            "usr/lib/aarch64-linux-gnu",
            "usr/lib/llvm-14/lib",
        ] {
            fs::create_dir_all(root.join(dir))?;
        }
        for file in [
            "usr/bin/prog",
            "lib/aarch64-linux-gnu/ld-linux-aarch64.so.1",
            "lib/aarch64-linux-gnu/libc.so.6",
            "usr/lib/aarch64-linux-gnu/libz.so.1.2.13",
            "usr/lib/llvm-14/lib/libLLVM-14.so.1",
        ] {
            fs::write(root.join(file), file)?;
        }
        symlink(
            "aarch64-linux-gnu/ld-linux-aarch64.so.1",
            root.join("lib/ld-linux-aarch64.so.1"),
        )?;
        symlink(
            "libz.so.1.2.13",
            root.join("usr/lib/aarch64-linux-gnu/libz.so.1"),
        )?;
        symlink(
            "/usr/lib/aarch64-linux-gnu/libz.so.1.2.13",
            root.join("usr/lib/aarch64-linux-gnu/libabs.so.2"),
        )?;
        Ok(root)
    }

    /// What each file of [`tree`] "contains", keyed by its contents (its own path).
    fn fake_read(path: &Path) -> Result<Dynamic> {
        let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        Ok(match fs::read_to_string(path)?.as_str() {
            "usr/bin/prog" => Dynamic {
                interp: Some("/lib/ld-linux-aarch64.so.1".into()),
                needed: strings(&["libz.so.1", "libLLVM-14.so.1", "libc.so.6"]),
                runpath: strings(&["$ORIGIN/../lib/llvm-14/lib"]),
            },
            "usr/lib/aarch64-linux-gnu/libz.so.1.2.13" => Dynamic {
                needed: strings(&["libc.so.6", "libabs.so.2"]),
                ..Dynamic::default()
            },
            _ => Dynamic {
                needed: strings(&["libc.so.6"]),
                ..Dynamic::default()
            },
        })
    }

    #[test]
    fn libraries_resolve_like_the_guests_loader() -> Result<()> {
        let root = tree()?;
        let files = libraries(&root, "aarch64-linux-gnu", "/usr/bin/prog", &fake_read);
        let _ = fs::remove_dir_all(&root);
        let got: Vec<(String, String)> = files?
            .into_iter()
            .map(|(host, guest)| {
                let host = host.strip_prefix(&root).map(|p| p.display().to_string());
                (host.unwrap_or_default(), guest)
            })
            .collect();
        let want = [
            (
                "lib/aarch64-linux-gnu/libc.so.6",
                "/lib/aarch64-linux-gnu/libc.so.6",
            ),
            // The loader at the path PT_INTERP names, the file behind its link.
            (
                "lib/aarch64-linux-gnu/ld-linux-aarch64.so.1",
                "/lib/ld-linux-aarch64.so.1",
            ),
            // Through the program's $ORIGIN run path.
            (
                "usr/lib/llvm-14/lib/libLLVM-14.so.1",
                "/usr/lib/llvm-14/lib/libLLVM-14.so.1",
            ),
            // An absolute link stays in the tree.
            (
                "usr/lib/aarch64-linux-gnu/libz.so.1.2.13",
                "/usr/lib/aarch64-linux-gnu/libabs.so.2",
            ),
            (
                "usr/lib/aarch64-linux-gnu/libz.so.1.2.13",
                "/usr/lib/aarch64-linux-gnu/libz.so.1",
            ),
        ];
        let mut want: Vec<(String, String)> = want
            .iter()
            .map(|(h, g)| (h.to_string(), g.to_string()))
            .collect();
        want.sort_by(|a, b| a.1.cmp(&b.1));
        // By guest path, as `libraries` returns them.
        assert_eq!(got, want);
        Ok(())
    }

    #[test]
    fn a_missing_library_is_named() -> Result<()> {
        let root = tree()?;
        fs::remove_file(root.join("usr/lib/llvm-14/lib/libLLVM-14.so.1"))?;
        let err = libraries(&root, "aarch64-linux-gnu", "/usr/bin/prog", &fake_read);
        let _ = fs::remove_dir_all(&root);
        let err = format!("{:#}", err.err().context("resolved without libLLVM")?);
        assert!(err.contains("/usr/bin/prog needs libLLVM-14.so.1"), "{err}");
        Ok(())
    }

    #[test]
    fn reads_a_real_programs_loader_and_libraries() -> Result<()> {
        // This test's own binary: a dynamically linked x86-64 glibc program.
        let dynamic = read_dynamic(&std::env::current_exe()?)?;
        assert_eq!(
            dynamic.interp.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert!(
            dynamic.needed.iter().any(|n| n == "libc.so.6"),
            "{dynamic:?}"
        );
        Ok(())
    }

    #[test]
    fn run_paths_and_normal_paths() -> Result<()> {
        let runpath = ["$ORIGIN/../lib".to_owned(), "${ORIGIN}/x".to_owned()];
        let dirs = search_path(&runpath, Path::new("/usr/bin"), "aarch64-linux-gnu");
        assert_eq!(
            dirs[..3],
            ["/usr/bin/../lib", "/usr/bin/x", "/lib/aarch64-linux-gnu"]
        );
        assert_eq!(
            normalize(Path::new("/usr/bin/../lib/./a"))?,
            Path::new("/usr/lib/a")
        );
        assert_eq!(normalize(Path::new("/../a"))?, Path::new("/a"));
        Ok(())
    }

    /// Downloads util-linux's and bpftrace's arm64 closures into the VM cache (network).
    #[test]
    #[ignore = "downloads from the Debian mirror"]
    fn arm64_setpriv_and_bpftrace() -> Result<()> {
        for (prog, package) in [("setpriv", "util-linux"), ("bpftrace", "bpftrace")] {
            let files = program(&crate::cache_dir(), Arch::Arm64, prog, package, "/opt/p")?;
            for (host, guest) in &files {
                eprintln!("{guest} <- {}", host.display());
            }
            let guests: Vec<&str> = files.iter().map(|(_, g)| g.as_str()).collect();
            assert!(guests.contains(&"/lib/ld-linux-aarch64.so.1"), "{guests:?}");
            assert!(
                guests.contains(&"/lib/aarch64-linux-gnu/libc.so.6"),
                "{guests:?}"
            );
        }
        Ok(())
    }
}
