//! Fixtures built at test time with this machine's gcc and binutils: `gcc -g -c` makes an ET_REL
//! object with `.rela.debug_*` sections, and `ld -r --build-id` gives it the build-id note, which
//! is how kbuild links a `.ko`. The call sites' offsets are read from the `.rela.text`
//! relocations of the calls, so no test depends on how gcc lays out the code.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

use super::*;
use crate::sources::line;

const RELEASE: &str = "6.1.0-test";

const HELPER_H: &str = "\
extern int sink(int);

static inline __attribute__((always_inline)) int wq_helper(int x)
{
	return sink(x + 1); /* HELPER_CALL */
}
";

const FIX_C: &str = "\
#include <linux/wqhelper.h>

__attribute__((noinline)) int outer(int x)
{
	int a = wq_helper(x); /* OUTER_INLINED */
	sink(x); /* OUTER_CALL */
	a += x * 2; /* OUTER_NEXT */
	return a + sink(a);
}

__attribute__((noinline, section(\".init.text\"))) int fix_init(int x)
{
	sink(x * 3); /* INIT_CALL */
	return x + 1;
}

int renamed(int x) __asm__(\"fix_fn.constprop.0\");
__attribute__((noinline)) int renamed(int x)
{
	return sink(x) + 1; /* RENAMED_CALL */
}
";

/// A static function whose name another file uses too.
const DUP_C: &str = "\
extern int sink(int);

static __attribute__((noinline)) int dup(int x)
{
	return sink(x) + NTH; /* DUP_CALL */
}

int use_dup_NTH(int x)
{
	return dup(x) + sink(NTH);
}
";

fn have(tool: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok();
    if !found {
        eprintln!("skipping: `{tool}` is not installed");
    }
    found
}

fn run(dir: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The line a marker comment is on, in FIX_C or HELPER_H.
fn line_of(source: &str, marker: &str) -> u32 {
    let at = source.lines().position(|l| l.contains(marker)).unwrap();
    at as u32 + 1
}

/// A scratch directory laid out like a kernel tree (`include/linux/wqhelper.h`,
/// `drivers/md/fix.c`), with a system root beside it, removed when the test ends.
struct Tree {
    dir: PathBuf,
}

impl Tree {
    fn new(name: &str) -> Option<Self> {
        if !have("gcc") || !have("ld") {
            return None;
        }
        let dir =
            std::env::temp_dir().join(format!("wqflush-source-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("ktree/include/linux")).unwrap();
        fs::create_dir_all(dir.join("ktree/drivers/md")).unwrap();
        fs::create_dir_all(dir.join("root")).unwrap();
        fs::write(dir.join("ktree/include/linux/wqhelper.h"), HELPER_H).unwrap();
        fs::write(dir.join("ktree/drivers/md/fix.c"), FIX_C).unwrap();
        Some(Tree { dir })
    }

    fn ktree(&self) -> PathBuf {
        self.dir.join("ktree")
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// Compiles in the tree (kbuild's in-tree layout: relative names, comp_dir the tree) and
    /// links `name` with a build-id, as kbuild links a module.
    fn module(&self, name: &str, cflags: &[&str]) -> PathBuf {
        self.module_of(name, FIX_C, cflags)
    }

    /// The same from another version of `drivers/md/fix.c`.
    fn module_of(&self, name: &str, source: &str, cflags: &[&str]) -> PathBuf {
        let fix_c = self.ktree().join("drivers/md/fix.c");
        fs::write(&fix_c, source).unwrap();
        let object = format!("{name}.o");
        let mut args = vec!["-g", "-O0", "-Iinclude", "-c", "drivers/md/fix.c"];
        args.extend_from_slice(cflags);
        args.extend_from_slice(&["-o", &object]);
        run(&self.ktree(), "gcc", &args);
        let ko = format!("{name}.ko");
        run(
            &self.ktree(),
            "ld",
            &["-r", "--build-id=sha1", &object, "-o", &ko],
        );
        fs::write(&fix_c, FIX_C).unwrap();
        self.ktree().join(ko)
    }

    /// Installs `file` under the root as `path`.
    fn install(&self, file: &Path, path: &str) -> PathBuf {
        let to = self.root().join(path);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(file, &to).unwrap();
        to
    }

    /// Makes `module` (None: vmlinux) "run" with the build-id of `file`.
    fn load(&self, module: Option<&str>, file: &Path) {
        self.load_id(module, &build_id_note(file));
    }

    fn load_id(&self, module: Option<&str>, notes: &[u8]) {
        let path = match module {
            Some(m) => self
                .root()
                .join(format!("sys/module/{m}/notes/.note.gnu.build-id")),
            None => self.root().join("sys/kernel/notes"),
        };
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, notes).unwrap();
    }

    fn resolver(&self, dirs: Vec<PathBuf>) -> SourceResolver {
        SourceResolver::new(DebugInfoSearch::with_root(self.root(), RELEASE, dirs))
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The raw `.note.gnu.build-id` section, as sysfs shows it.
fn build_id_note(file: &Path) -> Vec<u8> {
    let data = fs::read(file).unwrap();
    let elf = object::File::parse(&*data).unwrap();
    let section = elf.section_by_name(".note.gnu.build-id").unwrap();
    section.data().unwrap().to_vec()
}

/// Each call of `sink` as (function, offset of its return address), in code order: the
/// offsets a kernel stack would show for frames that made these calls.
fn calls(file: &Path) -> Vec<(String, u64)> {
    let data = fs::read(file).unwrap();
    let elf = object::File::parse(&*data).unwrap();
    let mut calls = Vec::new();
    for section in elf
        .sections()
        .filter(|s| s.name().is_ok_and(|n| n.contains("text")))
    {
        for (offset, reloc) in section.relocations() {
            let object::RelocationTarget::Symbol(index) = reloc.target() else {
                continue;
            };
            if elf.symbol_by_index(index).unwrap().name() != Ok("sink") {
                continue;
            }
            // `call rel32`: the relocation is the instruction's last 4 bytes.
            let ret = offset + 4;
            let function = elf
                .symbols()
                .find(|s| {
                    s.section_index() == Some(section.index())
                        && s.kind() == object::SymbolKind::Text
                        && (s.address()..s.address() + s.size()).contains(&ret.saturating_sub(1))
                })
                .unwrap();
            let name = function.name().unwrap().to_owned();
            calls.push((name, ret - function.address()));
        }
    }
    calls
}

fn call(file: &Path, function: &str, nth: usize) -> u64 {
    calls(file)
        .into_iter()
        .filter(|(f, _)| f == function)
        .nth(nth)
        .unwrap_or_else(|| panic!("no call {nth} in {function}"))
        .1
}

/// What the first call in `outer` (inside the inlined helper) resolves to.
fn helper_chain() -> Vec<SourceLine> {
    vec![
        line(
            "wq_helper",
            "include/linux/wqhelper.h",
            line_of(HELPER_H, "HELPER_CALL"),
            true,
        ),
        line(
            "outer",
            "drivers/md/fix.c",
            line_of(FIX_C, "OUTER_INLINED"),
            false,
        ),
    ]
}

fn outer_call(
    resolver: &mut SourceResolver,
    module: Option<&str>,
    file: &Path,
) -> Option<Vec<SourceLine>> {
    let offset = call(file, "outer", 0);
    resolver
        .resolve(module, "outer", offset, true)
        .map(|l| l.to_vec())
}

#[test]
fn names_the_inlined_helper_then_the_function_it_is_inlined_into() {
    let Some(tree) = Tree::new("inline") else {
        return;
    };
    let ko = tree.module("wqfix", &[]);
    tree.install(&ko, &format!("lib/modules/{RELEASE}/extra/wqfix.ko"));
    tree.load(Some("wqfix"), &ko);
    let mut resolver = tree.resolver(vec![]);
    assert_eq!(
        outer_call(&mut resolver, Some("wqfix"), &ko),
        Some(helper_chain())
    );
}

#[test]
fn a_return_address_resolves_to_the_line_of_the_call() {
    let Some(tree) = Tree::new("return") else {
        return;
    };
    let ko = tree.module("wqfix", &[]);
    tree.install(&ko, &format!("lib/modules/{RELEASE}/kernel/wqfix.ko"));
    tree.load(Some("wqfix"), &ko);
    let mut resolver = tree.resolver(vec![]);
    let ret = call(&ko, "outer", 1);
    let at = |resolver: &mut SourceResolver, is_return| {
        let lines = resolver
            .resolve(Some("wqfix"), "outer", ret, is_return)
            .unwrap();
        assert_eq!(lines.len(), 1, "{lines:?}");
        lines[0].line.unwrap()
    };
    assert_eq!(at(&mut resolver, true), line_of(FIX_C, "OUTER_CALL"));
    // The same offset as the innermost frame (not a return address) is the next line's code:
    // this is what the lookup of address - 1 corrects.
    assert_eq!(at(&mut resolver, false), line_of(FIX_C, "OUTER_NEXT"));
}

#[test]
fn each_text_section_of_a_module_has_its_own_addresses() {
    let Some(tree) = Tree::new("sections") else {
        return;
    };
    let ko = tree.module("wqfix", &[]);
    tree.install(&ko, &format!("lib/modules/{RELEASE}/extra/wqfix.ko"));
    tree.load(Some("wqfix"), &ko);
    let mut resolver = tree.resolver(vec![]);
    // fix_init is at offset 0 of .init.text as outer is of .text: with every section at 0 one
    // would be taken for the other.
    let ret = call(&ko, "fix_init", 0);
    let lines = resolver.resolve(Some("wqfix"), "fix_init", ret, true);
    assert_eq!(
        lines.as_deref(),
        Some(
            &[line(
                "fix_init",
                "drivers/md/fix.c",
                line_of(FIX_C, "INIT_CALL"),
                false
            )][..]
        )
    );
    let ret = call(&ko, "fix_fn.constprop.0", 0);
    let lines = resolver.resolve(Some("wqfix"), "fix_fn.constprop.0", ret, true);
    assert_eq!(
        lines.as_deref(),
        // An assembler name is DW_AT_linkage_name, which addr2line prefers.
        Some(
            &[line(
                "fix_fn.constprop.0",
                "drivers/md/fix.c",
                line_of(FIX_C, "RENAMED_CALL"),
                false
            )][..]
        )
    );
    assert_eq!(
        resolver.resolve(Some("wqfix"), "no_such_function", 1, true),
        None
    );
    assert_eq!(
        resolver.resolve(Some("wqfix"), "outer", 0x10_0000, true),
        None,
        "past its end"
    );
}

#[test]
fn a_file_of_another_build_never_gives_a_line() {
    let Some(tree) = Tree::new("stale") else {
        return;
    };
    let ko = tree.module("wqfix", &[]);
    let installed = tree.install(&ko, &format!("lib/modules/{RELEASE}/extra/wqfix.ko"));
    let mut other = build_id_note(&ko);
    let last = other.len() - 1;
    other[last] ^= 1;
    tree.load_id(Some("wqfix"), &other);
    let mut resolver = tree.resolver(vec![]);
    assert_eq!(outer_call(&mut resolver, Some("wqfix"), &ko), None);
    assert_eq!(
        resolver.status(Some("wqfix")),
        DebugStatus::BuildIdDiffers(installed)
    );
    assert_eq!(resolver.loaded_objects(), 0);
    assert_eq!(resolver.memory_bytes(), 0);
}

#[test]
fn the_file_with_the_running_build_id_wins_over_an_earlier_stale_one() {
    let Some(tree) = Tree::new("order") else {
        return;
    };
    // Another build, in which every line of fix.c is two lines further down.
    let stale_c = FIX_C.replacen('\n', "\n\n\n", 1);
    let stale = tree.module_of("stale", &stale_c, &[]);
    let ko = tree.module("wqfix", &[]);
    let given = tree.dir.join("given");
    fs::create_dir_all(given.join("sub")).unwrap();
    fs::copy(&stale, given.join("sub/wqfix.ko")).unwrap();
    let debug = tree.install(
        &ko,
        &format!("usr/lib/debug/lib/modules/{RELEASE}/kernel/drivers/md/wqfix.ko"),
    );
    tree.load(Some("wqfix"), &ko);
    let mut resolver = tree.resolver(vec![given.clone()]);
    assert_eq!(
        outer_call(&mut resolver, Some("wqfix"), &ko),
        Some(helper_chain())
    );
    assert_eq!(resolver.status(Some("wqfix")), DebugStatus::Found(debug));
    // The module reloaded as the other build: the stale file is now the right one.
    tree.load(Some("wqfix"), &stale);
    let lines = outer_call(&mut resolver, Some("wqfix"), &stale).unwrap();
    assert_eq!(lines[1].line, Some(line_of(FIX_C, "OUTER_INLINED") + 2));
    assert_eq!(
        resolver.status(Some("wqfix")),
        DebugStatus::Found(given.join("sub/wqfix.ko"))
    );
    assert_eq!(
        resolver.loaded_objects(),
        1,
        "the old build's DWARF is dropped"
    );
}

#[test]
fn reads_xz_zstd_and_gzip_compressed_modules() {
    let Some(tree) = Tree::new("compressed") else {
        return;
    };
    let ko = tree.module("wqfix", &[]);
    tree.load(Some("wqfix"), &ko);
    for (tool, args, suffix) in [
        (
            "xz",
            &["-k", "--check=crc32", "--lzma2=dict=1MiB"][..],
            "xz",
        ),
        ("zstd", &["-q", "-k"][..], "zst"),
        ("gzip", &["-k", "-n"][..], "gz"),
    ] {
        if !have(tool) {
            continue;
        }
        let mut args = args.to_vec();
        args.push("wqfix.ko");
        run(&tree.ktree(), tool, &args);
        let name = format!("wqfix.ko.{suffix}");
        let dir = tree.dir.join(format!("given-{suffix}"));
        fs::create_dir_all(&dir).unwrap();
        fs::rename(tree.ktree().join(&name), dir.join(&name)).unwrap();
        let mut resolver = tree.resolver(vec![dir.clone()]);
        assert_eq!(
            outer_call(&mut resolver, Some("wqfix"), &ko),
            Some(helper_chain()),
            "{name}"
        );
        assert_eq!(
            resolver.status(Some("wqfix")),
            DebugStatus::Found(dir.join(&name))
        );
        assert!(resolver.memory_bytes() > 0);
    }
}

#[test]
fn reads_compressed_debug_sections_and_dwarf_4() {
    let Some(tree) = Tree::new("gz") else { return };
    let zlib = tree.module("zlib", &["-gz"]);
    let dwarf4 = tree.module("dwarf4", &["-gdwarf-4"]);
    let mut cases = vec![("zlib", zlib.clone()), ("dwarf4", dwarf4)];
    if have("objcopy") {
        let zstd = tree.ktree().join("zstd.ko");
        let (from, to) = (zlib.to_str().unwrap(), zstd.to_str().unwrap());
        run(
            &tree.ktree(),
            "objcopy",
            &["--compress-debug-sections=zstd", from, to],
        );
        cases.push(("zstd", zstd));
    }
    for (name, ko) in cases {
        let dir = tree.dir.join(format!("given-{name}"));
        fs::create_dir_all(&dir).unwrap();
        fs::copy(&ko, dir.join("wqfix.ko")).unwrap();
        tree.load(Some("wqfix"), &ko);
        let mut resolver = tree.resolver(vec![dir]);
        assert_eq!(
            outer_call(&mut resolver, Some("wqfix"), &ko),
            Some(helper_chain()),
            "{name}"
        );
    }
}

#[test]
fn resolves_vmlinux_by_symbol_address() {
    let Some(tree) = Tree::new("vmlinux") else {
        return;
    };
    // A linked file with real addresses stands in for vmlinux; its build-id comes after
    // another note, as in /sys/kernel/notes.
    // The calls' offsets come from the object it is linked from, where they are relocations.
    let pic = tree.module("pic", &["-fPIC"]);
    let pic_o = tree.ktree().join("pic.o");
    run(
        &tree.ktree(),
        "gcc",
        &[
            "-shared",
            "-nostdlib",
            "-Wl,--build-id=sha1",
            "pic.o",
            "-o",
            "vmlinux",
        ],
    );
    let vmlinux = tree.ktree().join("vmlinux");
    assert_eq!(calls(&pic), calls(&pic_o));
    let mut notes = vec![4, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0];
    notes.extend_from_slice(b"Xen\0\x01\x02\x03\x04");
    notes.extend(build_id_note(&vmlinux));
    tree.load_id(None, &notes);
    let debug = tree.install(&vmlinux, &format!("usr/lib/debug/boot/vmlinux-{RELEASE}"));
    let mut resolver = tree.resolver(vec![]);
    assert_eq!(
        outer_call(&mut resolver, None, &pic_o),
        Some(helper_chain())
    );
    assert_eq!(resolver.status(None), DebugStatus::Found(debug));
    assert_eq!(
        resolver.status(Some("wqfix")),
        DebugStatus::NoRunningBuildId
    );
}

/// Compiles `source` in `dir` with the tree's headers, into `dir/object`.
fn compile(tree: &Tree, dir: &Path, source: &Path, object: &str) {
    let include = format!("-I{}", tree.ktree().join("include").display());
    let source = source.to_str().unwrap();
    run(
        dir,
        "gcc",
        &["-g", "-O0", &include, "-c", source, "-o", object],
    );
}

#[test]
fn paths_are_relative_to_the_tree_or_the_module_source() {
    let Some(tree) = Tree::new("paths") else {
        return;
    };
    let ktree = tree.ktree();
    // An O= build: comp_dir is the build directory, sources are named absolutely.
    fs::create_dir_all(ktree.join("obj")).unwrap();
    compile(
        &tree,
        &ktree.join("obj"),
        &ktree.join("drivers/md/fix.c"),
        "o.o",
    );
    // An out-of-tree module: compiled from the tree (make -C), its source elsewhere.
    let module_dir = tree.dir.join("src/wqfix");
    fs::create_dir_all(&module_dir).unwrap();
    fs::write(module_dir.join("wqfix_main.c"), FIX_C).unwrap();
    compile(&tree, &ktree, &module_dir.join("wqfix_main.c"), "m.o");
    for (object, file) in [("obj/o.o", "drivers/md/fix.c"), ("m.o", "wqfix_main.c")] {
        let link = ["-r", "--build-id=sha1", object, "-o", "wqfix.ko"];
        run(&ktree, "ld", &link);
        let ko = ktree.join("wqfix.ko");
        tree.load(Some("wqfix"), &ko);
        let mut resolver = tree.resolver(vec![ko.clone()]);
        let mut expected = helper_chain();
        expected[1].file = Some(file.into());
        let got = outer_call(&mut resolver, Some("wqfix"), &ko);
        assert_eq!(got, Some(expected), "{object}");
    }
}

#[test]
fn a_name_two_functions_share_gives_no_line_when_they_differ() {
    let Some(tree) = Tree::new("dup") else { return };
    for n in ["1", "2"] {
        fs::write(
            tree.ktree().join(format!("dup{n}.c")),
            DUP_C.replace("NTH", n),
        )
        .unwrap();
        run(
            &tree.ktree(),
            "gcc",
            &["-g", "-O0", "-c", &format!("dup{n}.c")],
        );
    }
    run(
        &tree.ktree(),
        "ld",
        &["-r", "--build-id=sha1", "dup1.o", "dup2.o", "-o", "dup.ko"],
    );
    let ko = tree.ktree().join("dup.ko");
    tree.load(Some("dup"), &ko);
    let mut resolver = tree.resolver(vec![ko.clone()]);
    let ret = call(&ko, "dup", 0);
    assert_eq!(resolver.resolve(Some("dup"), "dup", ret, true), None);
    // Names kallsyms can tell apart still resolve.
    let ret = call(&ko, "use_dup_1", 0);
    assert!(
        resolver
            .resolve(Some("dup"), "use_dup_1", ret, true)
            .is_some()
    );
}

#[test]
fn answers_are_kept_and_nothing_is_loaded_without_debug_info() {
    let Some(tree) = Tree::new("cache") else {
        return;
    };
    let ko = tree.module("wqfix", &[]);
    let stripped = tree.ktree().join("stripped.ko");
    if have("objcopy") {
        let (from, to) = (ko.to_str().unwrap(), stripped.to_str().unwrap());
        run(&tree.ktree(), "objcopy", &["--strip-debug", from, to]);
        let installed = tree.install(
            &stripped,
            &format!("lib/modules/{RELEASE}/kernel/x/other.ko"),
        );
        tree.load(Some("other"), &stripped);
        let mut resolver = tree.resolver(vec![]);
        assert_eq!(resolver.resolve(Some("other"), "outer", 0x1f, true), None);
        assert_eq!(
            resolver.status(Some("other")),
            DebugStatus::NoDebugInfo(installed)
        );
        assert_eq!((resolver.loaded_objects(), resolver.memory_bytes()), (0, 0));
    }
    // `-` in a file name is `_` in the module's name.
    tree.install(&ko, &format!("lib/modules/{RELEASE}/kernel/wq-fix.ko"));
    tree.load(Some("wq_fix"), &ko);
    let mut resolver = tree.resolver(vec![]);
    let ret = call(&ko, "outer", 0);
    let first = resolver
        .resolve(Some("wq_fix"), "outer", ret, true)
        .unwrap();
    let again = resolver
        .resolve(Some("wq_fix"), "outer", ret, true)
        .unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    assert_eq!(resolver.loaded_objects(), 1);
    assert!(resolver.memory_bytes() > 0);
    let dashed = resolver
        .resolve(Some("wq-fix"), "outer", ret, true)
        .unwrap();
    assert!(Arc::ptr_eq(&first, &dashed));
}

#[test]
fn truncated_and_corrupt_files_give_errors_not_panics() {
    let Some(tree) = Tree::new("hostile") else {
        return;
    };
    let ko = tree.module("wqfix", &[]);
    tree.load(Some("wqfix"), &ko);
    let data = fs::read(&ko).unwrap();
    let dir = tree.dir.join("given");
    fs::create_dir_all(&dir).unwrap();
    let step = (data.len() / 97).max(1);
    for len in (0..data.len()).step_by(step) {
        fs::write(dir.join("wqfix.ko"), &data[..len]).unwrap();
        let mut resolver = tree.resolver(vec![dir.clone()]);
        let lines = outer_call(&mut resolver, Some("wqfix"), &ko);
        // A cut that loses only sections addr2line does not read may still resolve, and then
        // correctly.
        assert!(
            lines.is_none() || lines == Some(helper_chain()),
            "cut at {len}"
        );
    }
    // Flipped bytes in the DWARF must not panic either.
    let mut corrupt = data.clone();
    for i in (data.len() / 4..data.len() * 3 / 4).step_by(7) {
        corrupt[i] ^= 0x5a;
    }
    fs::write(dir.join("wqfix.ko"), &corrupt).unwrap();
    let _ = outer_call(&mut tree.resolver(vec![dir.clone()]), Some("wqfix"), &ko);
    if have("xz") {
        run(&tree.ktree(), "xz", &["-k", "wqfix.ko"]);
        let xz = fs::read(tree.ktree().join("wqfix.ko.xz")).unwrap();
        fs::remove_file(dir.join("wqfix.ko")).unwrap();
        fs::write(dir.join("wqfix.ko.xz"), &xz[..xz.len() / 2]).unwrap();
        let mut resolver = tree.resolver(vec![dir.clone()]);
        assert_eq!(outer_call(&mut resolver, Some("wqfix"), &ko), None);
        assert!(matches!(
            resolver.status(Some("wqfix")),
            DebugStatus::Unreadable { .. }
        ));
    }
}

#[test]
fn normalizes_paths_by_text() {
    assert_eq!(normalize("/a/./b//c/../d"), "/a/b/d");
    assert_eq!(normalize("./include/linux/x.h"), "include/linux/x.h");
    assert_eq!(normalize("/../a"), "/a");
    assert_eq!(normalize("../a/b"), "../a/b");
    assert_eq!(normalize("."), ".");
    assert_eq!(
        join(Some("/build/linux"), "./drivers/md/dm.c"),
        "/build/linux/drivers/md/dm.c"
    );
    assert_eq!(join(Some("/build/linux"), "/src/x.c"), "/src/x.c");
    assert_eq!(
        strip_dir("/build/linux/drivers/x.c", "/build/linux"),
        Some("drivers/x.c")
    );
    assert_eq!(strip_dir("/build/linux2/x.c", "/build/linux"), None);
    assert_eq!(strip_dir("/x.c", "/"), None);
}

#[test]
fn the_resolver_can_move_between_threads() {
    fn send<T: Send>() {}
    send::<SourceResolver>();
}
