//! Where the debug info of the running kernel and of its modules is, and whether it belongs to
//! the running build.
//!
//! A file counts only when its GNU build-id equals the running object's (`/sys/kernel/notes` for
//! vmlinux, `/sys/module/M/notes/.note.gnu.build-id` for a module): a debug file of another build
//! names wrong lines with full confidence, which is worse than naming none. The search goes, first
//! usable file wins:
//! 1. the `--debuginfo` directories, recursively: `vmlinux`, `vmlinux-<release>`,
//!    `<module>.ko[.xz|.zst|.gz|.debug]` (`-` and `_` are one character in module names);
//! 2. the distributions' debug packages: `/usr/lib/debug/boot/vmlinux-<release>` (Debian, Ubuntu),
//!    `/usr/lib/debug/lib/modules/<release>/` (both, Fedora's `vmlinux` and `.ko.debug` included),
//!    `/usr/lib/debug/.build-id/xx/yyyy.debug` (Fedora, by the running build-id);
//! 3. what is installed, when it carries DWARF: the module's own file under
//!    `/lib/modules/<release>` (`kernel/`, `updates/`, `extra/`, dkms), or a local build's
//!    `vmlinux` (`/boot/vmlinux-<release>`, `/lib/modules/<release>/build/vmlinux`).

use std::{
    collections::HashSet,
    fmt, fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use crate::sources::{debug_file::DebugFile, debug_object};

/// The ELF note type of the GNU build-id.
const NT_GNU_BUILD_ID: u32 = 3;

/// How deep and how wide a recursive search goes: a kernel build tree is about 10 levels and
/// 100k files; a directory cycle or a huge tree given by mistake must still end.
const MAX_DEPTH: usize = 24;
const MAX_ENTRIES: usize = 2_000_000;

/// The file names a module may be installed or shipped under.
const MODULE_SUFFIXES: &[&str] = &[".ko", ".ko.xz", ".ko.zst", ".ko.gz", ".ko.debug"];

/// What the search found for one object, for `doctor`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DebugStatus {
    /// This file has the running build-id and DWARF.
    Found(PathBuf),
    /// The best candidate: a file of another build (an old debug package, a rebuilt module).
    BuildIdDiffers(PathBuf),
    /// The best candidate has no build-id note, so it cannot be shown to match.
    NoBuildId(PathBuf),
    /// The best candidate could not be read as ELF (truncated, corrupt, bad compression).
    Unreadable { path: PathBuf, error: String },
    /// The best candidate is the running build's but stripped of DWARF (an installed module).
    NoDebugInfo(PathBuf),
    /// No file of that name anywhere the search looks.
    NotFound,
    /// The running object's build-id is not readable (not loaded, no notes, not root).
    NoRunningBuildId,
}

impl DebugStatus {
    /// Which of two failed candidates says most: a stale debug file is what a user can fix, a
    /// stripped installed module is what every machine has.
    fn rank(&self) -> u8 {
        match self {
            DebugStatus::Found(_) => 0,
            DebugStatus::BuildIdDiffers(_) => 1,
            DebugStatus::NoBuildId(_) => 2,
            DebugStatus::Unreadable { .. } => 3,
            DebugStatus::NoDebugInfo(_) => 4,
            DebugStatus::NotFound => 5,
            DebugStatus::NoRunningBuildId => 6,
        }
    }
}

impl fmt::Display for DebugStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DebugStatus::Found(p) => write!(f, "{}", p.display()),
            DebugStatus::BuildIdDiffers(p) => {
                write!(f, "{} is of another build (build-id differs)", p.display())
            }
            DebugStatus::NoBuildId(p) => write!(f, "{} has no build-id", p.display()),
            DebugStatus::Unreadable { path, error } => {
                write!(f, "{} is unreadable: {error}", path.display())
            }
            DebugStatus::NoDebugInfo(p) => write!(f, "{} has no debug info", p.display()),
            DebugStatus::NotFound => write!(f, "no debug info found"),
            DebugStatus::NoRunningBuildId => write!(f, "the running build-id is unknown"),
        }
    }
}

/// The GNU build-id in raw ELF notes, as `/sys/kernel/notes` and
/// `/sys/module/M/notes/.note.gnu.build-id` hold them (the kernel's byte order, 4-byte aligned).
pub fn build_id_from_notes(mut notes: &[u8]) -> Option<&[u8]> {
    while notes.len() >= 12 {
        let word = |at: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(notes.get(at..at + 4)?.try_into().ok()?))
        };
        let namesz = usize::try_from(word(0)?).ok()?;
        let descsz = usize::try_from(word(4)?).ok()?;
        let kind = word(8)?;
        let desc_at = 12usize.checked_add(namesz.checked_next_multiple_of(4)?)?;
        let name = notes.get(12..12usize.checked_add(namesz)?)?;
        let desc = notes.get(desc_at..desc_at.checked_add(descsz)?)?;
        if kind == NT_GNU_BUILD_ID && name.strip_suffix(b"\0").unwrap_or(name) == b"GNU" {
            return Some(desc);
        }
        let next = desc_at.checked_add(descsz.checked_next_multiple_of(4)?)?;
        notes = notes.get(next..).unwrap_or_default();
    }
    None
}

/// A module name as the kernel spells it: `-` in a file name is `_` in the module's name.
pub fn module_name(name: &str) -> String {
    name.replace('-', "_")
}

/// The object a frame is in.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Wanted {
    Vmlinux,
    /// The module's name with `_` for `-`.
    Module(String),
}

impl Wanted {
    fn new(module: Option<&str>) -> Self {
        module.map_or(Wanted::Vmlinux, |m| Wanted::Module(module_name(m)))
    }

    fn matches(&self, file_name: &str, release: &str) -> bool {
        match self {
            Wanted::Vmlinux => {
                let name = file_name.strip_suffix(".debug").unwrap_or(file_name);
                name == "vmlinux" || name.strip_prefix("vmlinux-") == Some(release)
            }
            Wanted::Module(m) => MODULE_SUFFIXES
                .iter()
                .filter_map(|s| file_name.strip_suffix(s))
                .any(|stem| module_name(stem) == *m),
        }
    }
}

/// Where to look: the `--debuginfo` directories, and the system's root (`/`, or a directory
/// laid out like it in tests) with the running release.
#[derive(Clone, Debug)]
pub struct DebugInfoSearch {
    root: PathBuf,
    release: String,
    dirs: Vec<PathBuf>,
}

impl DebugInfoSearch {
    /// Searches `dirs` first, then the running system.
    pub fn new(dirs: Vec<PathBuf>) -> Result<Self> {
        let release = fs::read_to_string("/proc/sys/kernel/osrelease")
            .context("reading the kernel release from /proc/sys/kernel/osrelease")?;
        Ok(Self::with_root("/", release.trim(), dirs))
    }

    /// Searches `dirs` first, then the system under `root` (`/sys`, `/usr/lib/debug`,
    /// `/lib/modules`, `/boot` below it) as if `release` were running.
    pub fn with_root(root: impl Into<PathBuf>, release: &str, dirs: Vec<PathBuf>) -> Self {
        DebugInfoSearch {
            root: root.into(),
            release: release.to_owned(),
            dirs,
        }
    }

    pub fn release(&self) -> &str {
        &self.release
    }

    /// The running object's build-id: vmlinux's for `None`, else the loaded module's; None when
    /// it cannot be read (a module not loaded, a kernel without notes, no privileges).
    pub fn running_build_id(&self, module: Option<&str>) -> Option<Vec<u8>> {
        let path = match module {
            None => self.root.join("sys/kernel/notes"),
            Some(m) => self
                .root
                .join("sys/module")
                .join(module_name(m))
                .join("notes/.note.gnu.build-id"),
        };
        let notes = fs::read(path).ok()?;
        build_id_from_notes(&notes)
            .filter(|id| !id.is_empty())
            .map(<[u8]>::to_vec)
    }

    /// What `doctor` shows for an object: the file that would be used, or why none is.
    pub fn status(&self, module: Option<&str>) -> DebugStatus {
        match self.running_build_id(module) {
            Some(id) => self.find(module, &id).0,
            None => DebugStatus::NoRunningBuildId,
        }
    }

    /// Every file the search would consider for an object, in search order.
    pub fn candidates(&self, module: Option<&str>, build_id: &[u8]) -> Vec<PathBuf> {
        let wanted = Wanted::new(module);
        (0..TIERS)
            .flat_map(|tier| self.tier(tier, &wanted, build_id))
            .collect()
    }

    /// The first file with this build-id and DWARF, opened (a compressed module decompressed
    /// once, here); otherwise the most telling reason why there is none.
    pub fn find(&self, module: Option<&str>, build_id: &[u8]) -> (DebugStatus, Option<DebugFile>) {
        let wanted = Wanted::new(module);
        let mut seen = HashSet::new();
        let mut best = DebugStatus::NotFound;
        // Tier by tier, so the later (slower) searches run only when the earlier found nothing.
        for tier in 0..TIERS {
            for path in self.tier(tier, &wanted, build_id) {
                if !seen.insert(path.clone()) {
                    continue;
                }
                match check(&path, build_id) {
                    (status, Some(file)) => return (status, Some(file)),
                    (status, None) if status.rank() < best.rank() => best = status,
                    _ => {}
                }
            }
        }
        (best, None)
    }

    fn tier(&self, tier: usize, wanted: &Wanted, build_id: &[u8]) -> Vec<PathBuf> {
        match tier {
            0 => {
                let mut found = Vec::new();
                for dir in &self.dirs {
                    self.walk(dir, wanted, &mut found);
                }
                found
            }
            1 => self.distro_paths(wanted, build_id),
            _ => self.installed_paths(wanted),
        }
    }

    /// Debian's, Ubuntu's and Fedora's debug packages.
    fn distro_paths(&self, wanted: &Wanted, build_id: &[u8]) -> Vec<PathBuf> {
        let debug = self.root.join("usr/lib/debug");
        let modules = debug.join("lib/modules").join(&self.release);
        let mut found = match wanted {
            Wanted::Vmlinux => existing(vec![
                debug.join("boot").join(format!("vmlinux-{}", self.release)),
                modules.join("vmlinux"),
            ]),
            Wanted::Module(_) => {
                let mut found = Vec::new();
                self.walk(&modules, wanted, &mut found);
                found
            }
        };
        found.extend(existing(
            build_id_path(&debug, build_id).into_iter().collect(),
        ));
        found
    }

    /// The installed module, or the vmlinux of a kernel built and installed here.
    fn installed_paths(&self, wanted: &Wanted) -> Vec<PathBuf> {
        let modules = self.root.join("lib/modules").join(&self.release);
        match wanted {
            Wanted::Vmlinux => existing(vec![
                self.root
                    .join("boot")
                    .join(format!("vmlinux-{}", self.release)),
                modules.join("build/vmlinux"),
                modules.join("vmlinux"),
            ]),
            Wanted::Module(_) => {
                let mut found = Vec::new();
                self.walk(&modules, wanted, &mut found);
                found
            }
        }
    }

    fn walk(&self, dir: &Path, wanted: &Wanted, found: &mut Vec<PathBuf>) {
        let matches = |name: &str| wanted.matches(name, &self.release);
        // A file given instead of a directory is a candidate of its own.
        if dir.is_file() {
            let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if matches(name) {
                found.push(dir.to_owned());
            }
            return;
        }
        let mut budget = MAX_ENTRIES;
        walk_dir(dir, 0, &matches, &mut budget, found);
    }
}

/// The searches `find` runs, in order: `--debuginfo`, debug packages, installed files.
const TIERS: usize = 3;

/// Files named `matches` under `dir`, in name order. Symbolic links to directories are not
/// followed: `/lib/modules/<release>/build` and `source` lead into whole kernel trees.
fn walk_dir(
    dir: &Path,
    depth: usize,
    matches: &dyn Fn(&str) -> bool,
    budget: &mut usize,
    found: &mut Vec<PathBuf>,
) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.take(*budget).filter_map(Result::ok).collect();
    *budget = budget.saturating_sub(entries.len());
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        if kind.is_dir() {
            if depth < MAX_DEPTH && *budget > 0 {
                walk_dir(&path, depth + 1, matches, budget, found);
            }
        } else if entry.file_name().to_str().is_some_and(matches) && path.is_file() {
            found.push(path);
        }
    }
}

/// The paths that exist and are no directory (a symlink counts as what it points at; a pipe or
/// device is a candidate too, and read like a file).
fn existing(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths
        .into_iter()
        .filter(|p| p.metadata().is_ok_and(|m| !m.is_dir()))
        .collect()
}

/// `/usr/lib/debug/.build-id/xx/yyyy.debug`: the first byte of the build-id names the directory.
fn build_id_path(debug: &Path, build_id: &[u8]) -> Option<PathBuf> {
    let (first, rest) = build_id.split_first()?;
    let rest: String = rest.iter().map(|b| format!("{b:02x}")).collect();
    Some(
        debug
            .join(".build-id")
            .join(format!("{first:02x}"))
            .join(format!("{rest}.debug")),
    )
}

/// A candidate's verdict; the file comes back open only when it is usable.
fn check(path: &Path, running: &[u8]) -> (DebugStatus, Option<DebugFile>) {
    let unreadable = |e: anyhow::Error| DebugStatus::Unreadable {
        path: path.to_owned(),
        error: format!("{e:#}"),
    };
    let file = match DebugFile::open(path) {
        Ok(file) => file,
        Err(e) => return (unreadable(e), None),
    };
    let seen = match debug_object::inspect(&file) {
        Ok(seen) => seen,
        Err(e) => return (unreadable(e), None),
    };
    let path = path.to_owned();
    match seen.build_id {
        None => (DebugStatus::NoBuildId(path), None),
        Some(id) if id != running => (DebugStatus::BuildIdDiffers(path), None),
        Some(_) if !seen.has_dwarf => (DebugStatus::NoDebugInfo(path), None),
        Some(_) => (DebugStatus::Found(path), Some(file)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32).to_ne_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_ne_bytes());
        n.extend_from_slice(&kind.to_ne_bytes());
        n.extend_from_slice(name);
        n.resize(n.len().next_multiple_of(4), 0);
        n.extend_from_slice(desc);
        n.resize(n.len().next_multiple_of(4), 0);
        n
    }

    #[test]
    fn finds_the_gnu_build_id_among_other_notes() {
        let mut notes = note(b"Xen\0", 3, b"xen-3.0");
        notes.extend(note(b"Linux\0", 1, &[1, 2, 3]));
        notes.extend(note(b"GNU\0", 1, b"not the build-id"));
        notes.extend(note(b"GNU\0", NT_GNU_BUILD_ID, &[0xab; 20]));
        assert_eq!(build_id_from_notes(&notes), Some(&[0xab; 20][..]));
        let only = note(b"GNU\0", NT_GNU_BUILD_ID, &[1, 2, 3, 4, 5]);
        assert_eq!(build_id_from_notes(&only), Some(&[1, 2, 3, 4, 5][..]));
    }

    #[test]
    fn truncated_or_hostile_notes_give_none() {
        let good = note(b"GNU\0", NT_GNU_BUILD_ID, &[7; 20]);
        for len in 0..good.len() {
            // Any cut that loses part of the build-id gives nothing, never a shorter id.
            assert_eq!(build_id_from_notes(&good[..len]), None, "cut at {len}");
        }
        let mut huge = good.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(build_id_from_notes(&huge), None);
        let mut huge_desc = good;
        huge_desc[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(build_id_from_notes(&huge_desc), None);
        assert_eq!(build_id_from_notes(&[0xff; 64]), None);
    }

    #[test]
    fn matches_module_and_vmlinux_file_names() {
        let m = Wanted::new(Some("dm_mod"));
        for name in ["dm-mod.ko", "dm_mod.ko.xz", "dm-mod.ko.zst", "dm_mod.ko.gz"] {
            assert!(m.matches(name, "6.1.0-1-amd64"), "{name}");
        }
        assert!(m.matches("dm-mod.ko.debug", "6.1.0-1-amd64"));
        for name in ["dm-mod.o", "dm-mod.mod.o", "xdm_mod.ko", "dm_mod.ko.bak"] {
            assert!(!m.matches(name, "6.1.0-1-amd64"), "{name}");
        }
        let v = Wanted::new(None);
        for name in [
            "vmlinux",
            "vmlinux-6.1.0-1-amd64",
            "vmlinux-6.1.0-1-amd64.debug",
        ] {
            assert!(v.matches(name, "6.1.0-1-amd64"), "{name}");
        }
        for name in [
            "vmlinux-6.1.0-2-amd64",
            "vmlinuz-6.1.0-1-amd64",
            "vmlinux.o",
        ] {
            assert!(!v.matches(name, "6.1.0-1-amd64"), "{name}");
        }
    }

    #[test]
    fn build_id_path_is_the_fedora_layout() {
        let p = build_id_path(Path::new("/usr/lib/debug"), &[0x1a, 0x2b, 0x3c]);
        assert_eq!(
            p.as_deref(),
            Some(Path::new("/usr/lib/debug/.build-id/1a/2b3c.debug"))
        );
        assert_eq!(build_id_path(Path::new("/x"), &[]), None);
    }

    #[test]
    fn walks_recursively_without_following_directory_links() {
        let root = tempdir("walk");
        let rel = "6.1.0-test";
        let modules = root.join("lib/modules").join(rel);
        fs::create_dir_all(modules.join("kernel/drivers/md")).unwrap();
        fs::create_dir_all(modules.join("updates/dkms")).unwrap();
        fs::create_dir_all(root.join("elsewhere")).unwrap();
        fs::write(modules.join("kernel/drivers/md/dm-mod.ko.xz"), b"x").unwrap();
        fs::write(modules.join("updates/dkms/dm_mod.ko"), b"x").unwrap();
        fs::write(root.join("elsewhere/dm-mod.ko"), b"x").unwrap();
        std::os::unix::fs::symlink(root.join("elsewhere"), modules.join("build")).unwrap();
        let search = DebugInfoSearch::with_root(&root, rel, vec![]);
        let found = search.installed_paths(&Wanted::new(Some("dm_mod")));
        assert_eq!(
            found,
            vec![
                modules.join("kernel/drivers/md/dm-mod.ko.xz"),
                modules.join("updates/dkms/dm_mod.ko"),
            ]
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn reports_the_most_telling_reason_for_no_file() {
        let root = tempdir("status");
        let search = DebugInfoSearch::with_root(&root, "6.1.0-test", vec![root.join("given")]);
        assert_eq!(search.status(Some("foo")), DebugStatus::NoRunningBuildId);
        let notes = root.join("sys/module/foo/notes");
        fs::create_dir_all(&notes).unwrap();
        fs::write(
            notes.join(".note.gnu.build-id"),
            note(b"GNU\0", NT_GNU_BUILD_ID, &[9; 20]),
        )
        .unwrap();
        assert_eq!(search.running_build_id(Some("foo")), Some(vec![9; 20]));
        assert_eq!(search.status(Some("foo")), DebugStatus::NotFound);
        fs::create_dir_all(root.join("given")).unwrap();
        fs::write(root.join("given/foo.ko"), b"\x7fELF truncated").unwrap();
        assert!(matches!(
            search.status(Some("foo")),
            DebugStatus::Unreadable { path, .. } if path == root.join("given/foo.ko")
        ));
        fs::write(root.join("given/foo.ko"), b"\xfd7zXZ\0 not really xz").unwrap();
        assert!(matches!(
            search.status(Some("foo")),
            DebugStatus::Unreadable { .. }
        ));
        fs::remove_dir_all(&root).unwrap();
    }

    pub(crate) fn tempdir(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "wqflush-debuginfo-{what}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
