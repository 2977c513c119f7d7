//! `wqflush scan` on synthetic relocatable objects built here from the C fixtures in
//! `tests/scan/` for the architecture `WQFLUSH_ARCH` names (gcc, or Debian's aarch64 cross gcc):
//! each fixture's sites (or none, for the look-alikes) exactly as its `// expect:` lines state,
//! after `objdump -dr` confirmed the code has the shape the fixture is for; corrupt and truncated
//! files fail alone, with one line and no panic; a directory yields its compressed modules.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use wqflush_vmtest::Arch;
use wqflush_vmtest::scan_objects::{Fixture, Scan, Site, disassemble, fixture_names, scan};
use wqflush_vmtest::util::unique_dir;

/// A scratch directory for one test, removed when the test passes (kept to look at otherwise).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Result<Scratch> {
        unique_dir(&std::env::temp_dir(), &format!("wqflush-scan-{name}")).map(Scratch)
    }

    fn done(self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Compiles `name` for the architecture under test and checks every shape it states.
fn build(name: &str, dir: &Path, extra: &[&str]) -> Result<(Fixture, PathBuf)> {
    let arch = Arch::current()?;
    let fixture = Fixture::load(name)?;
    let object = fixture.compile(arch, dir, extra)?;
    let listing = disassemble(arch, &object)?;
    for shape in fixture.shapes(arch)? {
        listing
            .check(&shape, arch)
            .with_context(|| format!("fixture {name} on {arch}"))?;
    }
    Ok((fixture, object))
}

/// The module name wqflush should give a file: its name up to `.ko`, as the kernel names it.
fn module_of(file: &Path) -> String {
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
    let name = name.unwrap_or_default();
    name.split(".ko").next().unwrap_or_default().to_owned()
}

/// Every site reported for `file`, checked for the fields a fixture does not state: the module
/// named after the file, and `source` (`null` without debug info).
fn sites_of(scan: &Scan, file: &Path, with_source: bool) -> Result<BTreeSet<Site>> {
    let mut sites = BTreeSet::new();
    for record in scan.sites_of(file) {
        ensure!(record["module"] == module_of(file), "module: {record}");
        ensure!(
            record["source"].is_string() == with_source,
            "source: {record}"
        );
        let site = Site::from_json(record)?;
        ensure!(sites.insert(site), "the same site twice: {}", scan.stdout);
    }
    Ok(sites)
}

/// One fixture alone: exactly the sites it states, the exit code and summary that go with them.
fn check_fixture(name: &str) -> Result<()> {
    let scratch = Scratch::new(name)?;
    let (fixture, object) = build(name, &scratch.0, &[])?;
    let expected = fixture.expected(Arch::current()?)?;
    let scan = scan(&[&object])?;
    let context = || {
        format!(
            "{name}: wqflush scan printed\n{}{}",
            scan.stdout, scan.stderr
        )
    };
    let got = sites_of(&scan, &object, false).with_context(context)?;
    ensure!(
        got == expected,
        "{}\nwant {expected:#?}\ngot {got:#?}",
        context()
    );
    ensure!(scan.sites.len() == expected.len(), "{}", context());
    let want_code = if expected.is_empty() { 0 } else { 3 };
    ensure!(
        scan.code == Some(want_code),
        "exit {:?}, want {want_code}; {}",
        scan.code,
        context()
    );
    ensure!(scan.stderr_lines().is_empty(), "{}", context());
    let summary = [
        ("files", 1),
        ("sites", expected.len() as u64),
        ("modules", u64::from(!expected.is_empty())),
        ("errors", 0),
    ];
    for (key, want) in summary {
        ensure!(
            scan.count(key)? == want,
            "summary {key}: want {want}; {}",
            context()
        );
    }
    scratch.done();
    Ok(())
}

/// One test per fixture, so each case passes or fails on its own; `every_fixture_has_a_test`
/// keeps the list in step with `tests/scan/`.
macro_rules! fixture_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            #[ignore = "needs WQFLUSH_HOST_BIN; run through cargo xtask test"]
            fn $name() -> Result<()> {
                check_fixture(stringify!($name))
            }
        )*
        const FIXTURE_TESTS: &[&str] = &[$(stringify!($name)),*];
    };
}

fixture_tests! {
    direct,
    tail,
    callee_saved,
    cold,
    init_exit,
    scheduled_work_510,
    module_var,
    constprop,
    two_queues,
    queue_work_on,
    field_param,
    overwritten,
}

#[test]
fn every_fixture_has_a_test() -> Result<()> {
    let on_disk: BTreeSet<String> = fixture_names()?.into_iter().collect();
    let listed: BTreeSet<String> = FIXTURE_TESTS.iter().map(|s| (*s).to_owned()).collect();
    ensure!(
        on_disk == listed,
        "tests/scan/*.c {on_disk:?} != fixture_tests! {listed:?}"
    );
    Ok(())
}

/// With debug info (`-g`), `source` is the fixture's line of the first flush of each queue.
#[test]
#[ignore = "needs WQFLUSH_HOST_BIN; run through cargo xtask test"]
fn source_is_the_flush_line_from_debug_info() -> Result<()> {
    let scratch = Scratch::new("source")?;
    let (fixture, object) = build("two_queues", &scratch.0, &["-g"])?;
    let scan = scan(&[&object])?;
    let got = sites_of(&scan, &object, true)?;
    let want = fixture.expected(Arch::current()?)?;
    ensure!(
        got == want,
        "want {want:#?}, got {got:#?}; printed\n{}",
        scan.stdout
    );
    for record in &scan.sites {
        let wq = record["wq"].as_str().context("wq")?;
        let line = fixture.line_of(&format!("__flush_workqueue({wq})"))?;
        let want = format!("two_queues.c:{line}");
        let source = record["source"].as_str().context("source")?;
        ensure!(
            source.ends_with(&want),
            "source {source:?}, want …{want}: {record}"
        );
    }
    scratch.done();
    Ok(())
}

/// Where the section header table and two sections' headers lie, read with the `object` crate
/// (independent of wqflush's reader) so the corruptions below hit what they mean to.
struct Layout {
    len: usize,
    shoff: usize,
    table_end: usize,
    symtab_header: usize,
    rela_text_header: usize,
}

impl Layout {
    fn read(bytes: &[u8]) -> Result<Layout> {
        use object::read::elf::{ElfFile64, FileHeader as _};
        use object::{Object as _, ObjectSection as _};
        let file = ElfFile64::<object::Endianness>::parse(bytes)?;
        let header = file.elf_header();
        let endian = file.endian();
        let shoff = usize::try_from(header.e_shoff(endian))?;
        let entsize = usize::from(header.e_shentsize(endian));
        let count = usize::from(header.e_shnum(endian));
        let index = |name: &str| {
            let section = file.section_by_name(name);
            section
                .map(|s| shoff + s.index().0 * entsize)
                .with_context(|| format!("no {name}"))
        };
        Ok(Layout {
            len: bytes.len(),
            shoff,
            table_end: shoff + count * entsize,
            symtab_header: index(".symtab")?,
            rela_text_header: index(".rela.text")?,
        })
    }
}

/// Copies of `good` that no reader can take: truncated anywhere before the end of the section
/// header table (which gcc puts last: checked), or with a header field pointing outside the file.
fn broken_copies(good: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let l = Layout::read(good)?;
    ensure!(
        l.table_end == l.len,
        "section headers not last: {} of {}",
        l.table_end,
        l.len
    );
    let mut copies = Vec::new();
    for len in [0, 1, 4, 16, 63, 64, l.len / 2, l.shoff, l.len - 1] {
        copies.push((format!("truncated-{len}"), good[..len].to_vec()));
    }
    let mut patch = |name: &str, at: usize, value: &[u8]| {
        let mut bytes = good.to_vec();
        bytes[at..at + value.len()].copy_from_slice(value);
        copies.push((name.to_owned(), bytes));
    };
    let far = (u64::MAX / 2).to_le_bytes();
    patch("magic", 1, b"XLF");
    patch("e_shoff", 0x28, &far);
    patch("e_shnum", 0x3c, &0xfe00_u16.to_le_bytes());
    patch("e_shstrndx", 0x3e, &0xfe00_u16.to_le_bytes());
    // Section header fields: sh_link at 40, sh_offset at 24, sh_size at 32.
    patch("symtab-offset", l.symtab_header + 24, &far);
    patch("symtab-size", l.symtab_header + 32, &far);
    patch(
        "symtab-strtab",
        l.symtab_header + 40,
        &0xfe00_u32.to_le_bytes(),
    );
    // The relocations of the code: without them no call can be resolved, so the file cannot
    // be called clean.
    patch("rela-text-offset", l.rela_text_header + 24, &far);
    patch("rela-text-size", l.rela_text_header + 32, &far);
    patch(
        "rela-text-symtab",
        l.rela_text_header + 40,
        &0xfe00_u32.to_le_bytes(),
    );
    Ok(copies)
}

/// Checks one run of `scan --json BAD... GOOD`: exit 1, one stderr line per bad file naming it,
/// and the good file's site still reported.
fn check_fails_alone(scan: &Scan, bad: &[&Path], good: &Path) -> Result<()> {
    let context = || format!("printed\n{}{}", scan.stdout, scan.stderr);
    ensure!(
        scan.code == Some(1),
        "exit {:?}, want 1; {}",
        scan.code,
        context()
    );
    let lines = scan.stderr_lines();
    ensure!(
        lines.len() == bad.len(),
        "want one stderr line per bad file; {}",
        context()
    );
    for file in bad {
        let name = file.to_string_lossy();
        let naming = lines.iter().filter(|l| l.contains(&*name)).count();
        ensure!(
            naming == 1,
            "{name} named {naming} times on stderr; {}",
            context()
        );
    }
    ensure!(
        scan.sites_of(good).len() == 1,
        "the good file's site is missing; {}",
        context()
    );
    ensure!(scan.count("errors")? == bad.len() as u64, "{}", context());
    ensure!(scan.count("sites")? == 1, "{}", context());
    Ok(())
}

#[test]
#[ignore = "needs WQFLUSH_HOST_BIN; run through cargo xtask test"]
fn broken_files_fail_alone_without_a_panic() -> Result<()> {
    let scratch = Scratch::new("broken")?;
    let (_, good) = build("direct", &scratch.0, &[])?;
    let bytes = fs::read(&good)?;
    let mut all = Vec::new();
    for (name, copy) in broken_copies(&bytes)? {
        let bad = scratch.0.join(format!("{name}.ko"));
        fs::write(&bad, copy)?;
        let run = scan(&[&bad, &good])?;
        check_fails_alone(&run, &[&bad], &good).with_context(|| format!("{name}.ko"))?;
        all.push(bad);
    }
    let missing = scratch.0.join("missing.ko");
    let run = scan(&[&missing, &good])?;
    check_fails_alone(&run, &[&missing], &good).context("a file that does not exist")?;
    all.push(missing);
    all.push(good.clone());
    let paths: Vec<&Path> = all.iter().map(PathBuf::as_path).collect();
    let (bad, _) = paths.split_at(paths.len() - 1);
    check_fails_alone(&scan(&paths)?, bad, &good).context("every broken file in one run")?;
    scratch.done();
    Ok(())
}

/// xorshift64: reproducible "random" bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }
}

/// Flipped bytes, anywhere or in the headers: whatever the scanner makes of the copy (it may
/// still be readable), it never panics, names only the copy on stderr, and still reports the
/// good file's site.
#[test]
#[ignore = "needs WQFLUSH_HOST_BIN; run through cargo xtask test"]
fn flipped_bytes_never_panic() -> Result<()> {
    let scratch = Scratch::new("flipped")?;
    let (_, good) = build("direct", &scratch.0, &[])?;
    let bytes = fs::read(&good)?;
    let layout = Layout::read(&bytes)?;
    let mut rng = Rng(0x5eed_2023_0f15_0001);
    for round in 0..200 {
        let mut copy = bytes.clone();
        for _ in 0..1 + rng.below(4) {
            // Half the rounds hit the ELF header or the section header table.
            let at = match round % 2 {
                0 => rng.below(copy.len()),
                _ if rng.below(4) == 0 => rng.below(64),
                _ => layout.shoff + rng.below(layout.table_end - layout.shoff),
            };
            copy[at] ^= 1 << rng.below(8);
        }
        let bad = scratch.0.join(format!("flip-{round}.ko"));
        fs::write(&bad, &copy)?;
        let run = scan(&[&bad, &good]).with_context(|| format!("round {round}"))?;
        let context = || format!("round {round}: printed\n{}{}", run.stdout, run.stderr);
        ensure!(
            matches!(run.code, Some(1 | 3)),
            "exit {:?}; {}",
            run.code,
            context()
        );
        let name = bad.to_string_lossy();
        ensure!(
            run.stderr_lines().iter().all(|l| l.contains(&*name)),
            "{}",
            context()
        );
        ensure!(
            run.sites_of(&good).len() == 1,
            "good site missing; {}",
            context()
        );
        fs::remove_file(&bad)?;
    }
    scratch.done();
    Ok(())
}

/// Runs `tool ARGS` (a compressor) and fails with its stderr.
fn compress(tool: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .with_context(|| format!("running {tool} (apt-get install {tool})"))?;
    ensure!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A directory of modules as a distribution ships them: `.ko`, and `.ko.xz`, `.ko.zst`, `.ko.gz`
/// made with the kernel's own compressors' settings, one in a subdirectory. Copies of the same
/// object named `notes.txt` and `.o` lie beside them and are not scanned.
fn module_tree(dir: &Path, object: &Path) -> Result<Vec<PathBuf>> {
    let tree = dir.join("tree");
    fs::create_dir_all(tree.join("kernel/drivers"))?;
    let plain = tree.join("plain.ko");
    fs::copy(object, &plain)?;
    let copy = |name: &str| -> Result<String> {
        let to = tree.join(name);
        fs::copy(object, &to)?;
        to.to_str().map(str::to_owned).context("non-UTF-8 path")
    };
    let xz = copy("kernel/drivers/xz_mod.ko")?;
    compress("xz", &["--check=crc32", "--lzma2=dict=1MiB", "-f", &xz])?;
    let zst = copy("zst_mod.ko")?;
    compress("zstd", &["-q", "-19", "--rm", "-f", &zst])?;
    let gz = copy("gz_mod.ko")?;
    compress("gzip", &["-n", "-9", "-f", &gz])?;
    copy("notes.txt")?;
    copy("object.o")?;
    Ok(vec![
        plain,
        PathBuf::from(format!("{xz}.xz")),
        PathBuf::from(format!("{zst}.zst")),
        PathBuf::from(format!("{gz}.gz")),
    ])
}

#[test]
#[ignore = "needs WQFLUSH_HOST_BIN; run through cargo xtask test"]
fn directory_yields_each_compressed_module() -> Result<()> {
    let scratch = Scratch::new("tree")?;
    let (fixture, object) = build("direct", &scratch.0, &[])?;
    let modules = module_tree(&scratch.0, &object)?;
    let scan = scan(&[&scratch.0.join("tree")])?;
    let context = || format!("printed\n{}{}", scan.stdout, scan.stderr);
    let expected = fixture.expected(Arch::current()?)?;
    for module in &modules {
        ensure!(module.exists(), "{} was not made", module.display());
        let got = sites_of(&scan, module, false)?;
        ensure!(
            got == expected,
            "{}: {got:?}; {}",
            module.display(),
            context()
        );
    }
    let files: BTreeSet<&str> = scan
        .sites
        .iter()
        .filter_map(|s| s["file"].as_str())
        .collect();
    ensure!(
        files.len() == modules.len(),
        "files other than the modules; {}",
        context()
    );
    ensure!(scan.code == Some(3), "exit {:?}; {}", scan.code, context());
    let n = modules.len() as u64;
    for (key, want) in [("files", n), ("sites", n), ("modules", n), ("errors", 0)] {
        ensure!(
            scan.count(key)? == want,
            "summary {key}: want {want}; {}",
            context()
        );
    }
    ensure!(scan.stderr_lines().is_empty(), "{}", context());
    scratch.done();
    Ok(())
}

/// The summary record is the contract's: these four counts and nothing missing.
#[test]
#[ignore = "needs WQFLUSH_HOST_BIN; run through cargo xtask test"]
fn json_records_have_the_contract_fields() -> Result<()> {
    let scratch = Scratch::new("fields")?;
    let (_, object) = build("module_var", &scratch.0, &[])?;
    let scan = scan(&[&object])?;
    let site_fields = [
        "type", "module", "caller", "wq", "section", "via", "source", "file", "calls",
    ];
    for record in &scan.sites {
        let Value::Object(map) = record else {
            anyhow::bail!("not an object: {record}")
        };
        for field in site_fields {
            ensure!(map.contains_key(field), "no {field} in {record}");
        }
    }
    for field in ["files", "sites", "modules", "errors"] {
        scan.count(field)?;
    }
    scratch.done();
    Ok(())
}
