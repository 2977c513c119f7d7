//! Synthetic relocatable objects for `wqflush scan`: the C fixtures in `tests/scan/`, each stating
//! next to its code the sites it must produce (`// expect:`) and the code shape it exists to
//! exercise (`// shape:`), compiled for the architecture under test with kernel-like flags,
//! checked against `objdump -dr` (so a compiler that stops emitting the shape fails the test
//! instead of making it pass for nothing), and scanned by the host's wqflush.
//!
//! A fixture's comment lines: `// expect: caller=F wq=Q section=text|init|exit [via=V]
//! [calls=N]` per site, or `// expect: none`; `// shape: F calls|jumps SYM`, `F loads SYM into
//! arg1|arg2|saved|any`, `F has MNEMONIC`, `F in SECTION`; `// cflags: FLAGS`. Each takes a
//! `-amd64` or `-arm64` suffix (`// shape-arm64:`) to apply to that architecture only.

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Arch, util, workspace_root};

/// Where the fixtures live.
pub fn fixture_dir() -> PathBuf {
    workspace_root().join("tests").join("scan")
}

/// The name (file stem) of every fixture, sorted.
pub fn fixture_names() -> Result<Vec<String>> {
    let dir = fixture_dir();
    let mut names = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "c") {
            let stem = path.file_stem().and_then(|s| s.to_str());
            names.push(stem.context("non-UTF-8 fixture name")?.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// One site as `wqflush scan --json` reports it, reduced to what a fixture can state.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Site {
    pub caller: String,
    pub wq: String,
    pub section: String,
    pub via: Option<String>,
    pub calls: u64,
}

impl Site {
    /// Parses `caller=X wq=Y section=Z [via=V] [calls=N]` (an `// expect:` line).
    fn parse(text: &str) -> Result<Site> {
        let mut fields = BTreeMap::new();
        for word in text.split_whitespace() {
            let (key, value) = word.split_once('=').with_context(|| format!("{word:?}"))?;
            ensure!(fields.insert(key, value).is_none(), "{key} given twice");
        }
        let mut take = |key: &str| fields.remove(key).map(str::to_owned);
        let site = Site {
            caller: take("caller").context("no caller=")?,
            wq: take("wq").context("no wq=")?,
            section: take("section").context("no section=")?,
            via: take("via"),
            calls: take("calls").map_or(Ok(1), |n| n.parse())?,
        };
        ensure!(fields.is_empty(), "unknown fields {:?}", fields.keys());
        Ok(site)
    }

    /// The fields of one `static_site` JSON record.
    pub fn from_json(record: &Value) -> Result<Site> {
        let text = |key: &str| {
            record[key]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("{key} is not a string in {record}"))
        };
        let via = match &record["via"] {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => bail!("via is {other} in {record}"),
        };
        Ok(Site {
            caller: text("caller")?,
            wq: text("wq")?,
            section: text("section")?,
            via,
            calls: record["calls"].as_u64().context("calls is no number")?,
        })
    }
}

/// A register class a shape can name: the first or second argument, any callee-saved register,
/// or any register at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    Arg1,
    Arg2,
    Saved,
    Any,
}

impl Reg {
    fn parse(name: &str) -> Result<Reg> {
        Ok(match name {
            "arg1" => Reg::Arg1,
            "arg2" => Reg::Arg2,
            "saved" => Reg::Saved,
            "any" => Reg::Any,
            _ => bail!("register class {name:?}: want arg1, arg2, saved or any"),
        })
    }

    /// Whether `reg`, as objdump prints it, belongs to the class.
    fn holds(self, arch: Arch, reg: &str) -> bool {
        let saved_x86 = ["%rbx", "%rbp", "%r12", "%r13", "%r14", "%r15"];
        let saved_arm = |r: &str| {
            r.strip_prefix('x')
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| (19..=28).contains(&n))
        };
        match (self, arch) {
            (Reg::Any, _) => true,
            (Reg::Arg1, Arch::Amd64) => reg == "%rdi",
            (Reg::Arg1, Arch::Arm64) => reg == "x0",
            (Reg::Arg2, Arch::Amd64) => reg == "%rsi",
            (Reg::Arg2, Arch::Arm64) => reg == "x1",
            (Reg::Saved, Arch::Amd64) => saved_x86.contains(&reg),
            (Reg::Saved, Arch::Arm64) => saved_arm(reg),
        }
    }
}

/// What a fixture's code must look like in `objdump -dr`, from a `// shape: FUNC ...` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// `FUNC calls SYM`: a call (`call` / `bl`) relocated against SYM.
    Calls { func: String, sym: String },
    /// `FUNC jumps SYM`: a jump (`jmp` / `b`) relocated against SYM, i.e. a tail call.
    Jumps { func: String, sym: String },
    /// `FUNC loads SYM into REG`: a load (`mov` / `ldr`) of the variable SYM into REG.
    Loads { func: String, sym: String, reg: Reg },
    /// `FUNC has MNEMONIC`: an instruction with that mnemonic (`paciasp`).
    Has { func: String, mnemonic: String },
    /// `FUNC in SECTION`: the function lies in that section.
    In { func: String, section: String },
}

impl Shape {
    fn parse(text: &str) -> Result<Shape> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let own = |i: usize| words[i].to_owned();
        Ok(match words.as_slice() {
            [_, "calls", _] => Shape::Calls {
                func: own(0),
                sym: own(2),
            },
            [_, "jumps", _] => Shape::Jumps {
                func: own(0),
                sym: own(2),
            },
            [_, "loads", _, "into", reg] => Shape::Loads {
                func: own(0),
                sym: own(2),
                reg: Reg::parse(reg)?,
            },
            [_, "has", _] => Shape::Has {
                func: own(0),
                mnemonic: own(2),
            },
            [_, "in", _] => Shape::In {
                func: own(0),
                section: own(2),
            },
            _ => {
                bail!("shape {text:?}: want FUNC calls|jumps|has|in X, or FUNC loads SYM into REG")
            }
        })
    }
}

/// One fixture: its source and what its comment lines state.
#[derive(Debug)]
pub struct Fixture {
    pub name: String,
    pub path: PathBuf,
    pub source: String,
}

impl Fixture {
    pub fn load(name: &str) -> Result<Fixture> {
        let path = fixture_dir().join(format!("{name}.c"));
        let source =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Fixture {
            name: name.to_owned(),
            path,
            source,
        })
    }

    /// The values of the `// KEY:` lines and, for `arch`, the `// KEY-amd64:` (or `-arm64`) ones.
    fn directives(&self, key: &str, arch: Arch) -> Vec<&str> {
        let generic = format!("// {key}:");
        let specific = format!("// {key}-{}:", arch.debian());
        self.source
            .lines()
            .filter_map(|l| {
                l.strip_prefix(&generic)
                    .or_else(|| l.strip_prefix(&specific))
            })
            .map(str::trim)
            .collect()
    }

    /// The sites the fixture states (`// expect: none` for none); every fixture states something.
    pub fn expected(&self, arch: Arch) -> Result<BTreeSet<Site>> {
        let lines = self.directives("expect", arch);
        ensure!(
            !lines.is_empty(),
            "{}: no `// expect:` line",
            self.path.display()
        );
        if lines == ["none"] {
            return Ok(BTreeSet::new());
        }
        lines
            .iter()
            .map(|l| Site::parse(l).with_context(|| format!("{}: expect {l:?}", self.name)))
            .collect()
    }

    /// The code shapes the fixture exists for (at least one: a fixture without is untested).
    pub fn shapes(&self, arch: Arch) -> Result<Vec<Shape>> {
        let lines = self.directives("shape", arch);
        ensure!(
            !lines.is_empty(),
            "{}: no `// shape:` line",
            self.path.display()
        );
        lines
            .iter()
            .map(|l| Shape::parse(l).with_context(|| format!("{}: shape {l:?}", self.name)))
            .collect()
    }

    /// The 1-based number of the first line containing `text`.
    pub fn line_of(&self, text: &str) -> Result<usize> {
        let index = self.source.lines().position(|l| l.contains(text));
        index
            .map(|i| i + 1)
            .with_context(|| format!("{}: no line contains {text:?}", self.name))
    }

    /// Compiles the fixture for `arch` into `out_dir/NAME.ko`, with `extra` flags after the
    /// fixture's own (`-g` for debug info).
    pub fn compile(&self, arch: Arch, out_dir: &Path, extra: &[&str]) -> Result<PathBuf> {
        let out = out_dir.join(format!("{}.ko", self.name));
        let mut cmd = Command::new(compiler(arch));
        cmd.args(KERNEL_FLAGS)
            .args(arch_flags(arch))
            .args(
                self.directives("cflags", arch)
                    .iter()
                    .flat_map(|l| l.split_whitespace()),
            )
            .args(extra)
            .arg("-I")
            .arg(fixture_dir())
            .arg(&self.path)
            .arg("-o")
            .arg(&out);
        util::run(&mut cmd)
            .with_context(|| format!("compiling {} for {arch}", self.path.display()))?;
        Ok(out)
    }
}

/// Flags the kernel's build uses on both architectures: relocatable, no PIC, no libc.
const KERNEL_FLAGS: &[&str] = &[
    "-O2",
    "-c",
    "-fno-pic",
    "-fno-common",
    "-fno-strict-aliasing",
    "-ffreestanding",
    "-nostdinc",
    "-Wall",
];

/// The code model and ABI flags of each architecture's kernel modules.
fn arch_flags(arch: Arch) -> &'static [&'static str] {
    match arch {
        Arch::Amd64 => &[
            "-mcmodel=kernel",
            "-mno-red-zone",
            "-fno-asynchronous-unwind-tables",
        ],
        Arch::Arm64 => &["-mcmodel=small", "-mgeneral-regs-only"],
    }
}

/// The C compiler for `arch` on this amd64 host: kbuild's `CROSS_COMPILE` prefix plus `gcc`.
pub fn compiler(arch: Arch) -> String {
    let prefix = arch.cross().map_or("", |(_, prefix)| prefix);
    format!("{prefix}gcc")
}

/// One instruction of an `objdump -dr` listing, with the symbols of its relocations.
#[derive(Debug, Clone)]
pub struct Insn {
    pub mnemonic: String,
    pub operands: String,
    pub relocs: Vec<String>,
}

/// A function of the listing: its section and instructions.
#[derive(Debug, Default)]
pub struct Function {
    pub section: String,
    pub insns: Vec<Insn>,
}

/// `objdump -dr` of an object, by function symbol.
#[derive(Debug)]
pub struct Listing {
    pub text: String,
    pub functions: BTreeMap<String, Function>,
}

/// Disassembles `object` with the binutils of `arch`.
pub fn disassemble(arch: Arch, object: &Path) -> Result<Listing> {
    let mut cmd = Command::new(arch.binutil("objdump"));
    cmd.arg("-dr").arg("--no-show-raw-insn").arg(object);
    let out = util::run(&mut cmd)?;
    let text = String::from_utf8(out.stdout).context("objdump printed non-UTF-8")?;
    let functions = parse_listing(&text);
    Ok(Listing { text, functions })
}

/// Splits objdump's listing into functions. Lines: `Disassembly of section S:`, `ADDR <NAME>:`,
/// `   ADDR:\tMNEMONIC OPERANDS` and, under an instruction, `\t\t\tOFF: R_TYPE\tSYM+ADDEND`.
fn parse_listing(text: &str) -> BTreeMap<String, Function> {
    let mut functions: BTreeMap<String, Function> = BTreeMap::new();
    let mut section = String::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(s) = line.strip_prefix("Disassembly of section ") {
            section = s.trim_end_matches(':').to_owned();
        } else if let Some(name) = function_header(line) {
            let f = functions.entry(name.to_owned()).or_default();
            f.section.clone_from(&section);
            current = Some(name.to_owned());
        } else if let Some(f) = current.as_ref().and_then(|c| functions.get_mut(c)) {
            if let Some(sym) = reloc_symbol(line) {
                if let Some(insn) = f.insns.last_mut() {
                    insn.relocs.push(sym.to_owned());
                }
            } else if let Some(insn) = instruction(line) {
                f.insns.push(insn);
            }
        }
    }
    functions
}

fn function_header(line: &str) -> Option<&str> {
    let (addr, rest) = line.split_once(' ')?;
    let name = rest.strip_prefix('<')?.strip_suffix(">:")?;
    addr.chars().all(|c| c.is_ascii_hexdigit()).then_some(name)
}

/// The symbol of a relocation line, without its addend (`system_wq-0x4` -> `system_wq`).
fn reloc_symbol(line: &str) -> Option<&str> {
    let (_, rest) = line.trim_start().split_once(": R_")?;
    let (_, target) = rest.split_once('\t')?;
    // From the second character: section symbols start with a dot, never with a sign.
    let end = target
        .char_indices()
        .skip(1)
        .find(|&(_, c)| c == '+' || c == '-')
        .map_or(target.len(), |(i, _)| i);
    Some(&target[..end]).filter(|s| !s.is_empty())
}

fn instruction(line: &str) -> Option<Insn> {
    let (addr, insn) = line.split_once(":\t")?;
    if !addr.trim().chars().all(|c| c.is_ascii_hexdigit()) || insn.starts_with(['R', '\t']) {
        return None;
    }
    // objdump's own comments: `// #-1` (arm64) and `# 10 <f+0x10>` (x86; arm64's immediates
    // are `#16`, with no space after the hash).
    let insn = insn.split("//").next()?.split("# ").next()?.trim();
    let (mnemonic, operands) = insn.split_once(char::is_whitespace).unwrap_or((insn, ""));
    Some(Insn {
        mnemonic: mnemonic.to_owned(),
        operands: operands.trim().to_owned(),
        relocs: Vec::new(),
    })
}

impl Insn {
    fn refers_to(&self, sym: &str) -> bool {
        self.relocs.iter().any(|r| r == sym)
    }

    fn is_call(&self, arch: Arch) -> bool {
        match arch {
            Arch::Amd64 => matches!(self.mnemonic.as_str(), "call" | "callq"),
            Arch::Arm64 => self.mnemonic == "bl",
        }
    }

    fn is_jump(&self, arch: Arch) -> bool {
        match arch {
            Arch::Amd64 => matches!(self.mnemonic.as_str(), "jmp" | "jmpq"),
            Arch::Arm64 => self.mnemonic == "b",
        }
    }

    /// The register a load writes: AT&T's last operand, arm64's first.
    fn load_destination(&self, arch: Arch) -> Option<&str> {
        match arch {
            Arch::Amd64 if matches!(self.mnemonic.as_str(), "mov" | "movq") => {
                self.operands.rsplit(',').next().map(str::trim)
            }
            Arch::Arm64 if self.mnemonic == "ldr" => self.operands.split(',').next(),
            _ => None,
        }
    }
}

impl Listing {
    /// Fails, quoting the listing, unless the object has `shape`.
    pub fn check(&self, shape: &Shape, arch: Arch) -> Result<()> {
        let (func, found) = match shape {
            Shape::Calls { func, sym } => (
                func,
                self.any(func, |i| i.is_call(arch) && i.refers_to(sym)),
            ),
            Shape::Jumps { func, sym } => (
                func,
                self.any(func, |i| i.is_jump(arch) && i.refers_to(sym)),
            ),
            Shape::Loads { func, sym, reg } => (
                func,
                self.any(func, |i| {
                    i.refers_to(sym) && i.load_destination(arch).is_some_and(|d| reg.holds(arch, d))
                }),
            ),
            Shape::Has { func, mnemonic } => (func, self.any(func, |i| &i.mnemonic == mnemonic)),
            Shape::In { func, section } => (
                func,
                self.functions.get(func).map(|f| &f.section == section),
            ),
        };
        match found {
            Some(true) => Ok(()),
            Some(false) => bail!(
                "the compiled fixture no longer has the shape `{shape:?}` it exists to test \
                 (compiler change?); objdump -dr:\n{}",
                self.text
            ),
            None => bail!(
                "no function `{func}` in the compiled fixture (compiler change? `.cold` and \
                 `.constprop` pieces are the compiler's choice); objdump -dr:\n{}",
                self.text
            ),
        }
    }

    fn any(&self, func: &str, pred: impl Fn(&Insn) -> bool) -> Option<bool> {
        self.functions.get(func).map(|f| f.insns.iter().any(pred))
    }
}

/// The host's wqflush, from `WQFLUSH_HOST_BIN` (`cargo xtask test` sets it).
pub fn host_bin() -> Result<PathBuf> {
    std::env::var_os("WQFLUSH_HOST_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .context("WQFLUSH_HOST_BIN is not set: run through `cargo xtask test`")
}

/// What one `wqflush scan --json` run printed.
#[derive(Debug)]
pub struct Scan {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The `static_site` records.
    pub sites: Vec<Value>,
    /// The `scan_summary` record (the last line).
    pub summary: Value,
}

/// Runs `wqflush scan --json PATHS...`; fails when it panicked or printed anything but JSON.
pub fn scan(paths: &[&Path]) -> Result<Scan> {
    let bin = host_bin()?;
    let out = Command::new(&bin)
        .args(["scan", "--json"])
        .args(paths)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code();
    // Rust's panic exit code, or its message: a corrupt file must never get there.
    ensure!(
        code != Some(101) && !stderr.contains("panicked"),
        "wqflush scan {paths:?} panicked ({:?}):\n{stderr}",
        out.status
    );
    let records = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).with_context(|| format!("not JSON: {l}")))
        .collect::<Result<Vec<_>>>()?;
    let (summary, sites) = records
        .split_last()
        .with_context(|| format!("wqflush scan printed nothing; stderr:\n{stderr}"))?;
    ensure!(
        summary["type"] == "scan_summary",
        "last line is no scan_summary: {summary}"
    );
    ensure!(
        sites.iter().all(|s| s["type"] == "static_site"),
        "records before the summary that are not static_site:\n{stdout}"
    );
    Ok(Scan {
        code,
        sites: sites.to_vec(),
        summary: summary.clone(),
        stdout,
        stderr,
    })
}

impl Scan {
    /// The sites reported for `file`.
    pub fn sites_of(&self, file: &Path) -> Vec<&Value> {
        let file = file.to_string_lossy();
        self.sites.iter().filter(|s| s["file"] == *file).collect()
    }

    /// A summary count (`files`, `sites`, `modules`, `errors`).
    pub fn count(&self, key: &str) -> Result<u64> {
        self.summary[key]
            .as_u64()
            .with_context(|| format!("summary has no {key}: {}", self.summary))
    }

    /// The stderr lines that say something.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86: &str = "\
Disassembly of section .text:

0000000000000000 <flush_saved>:
   0:\tpush   %rbx
   1:\tmov    0x0(%rip),%rbx        # 8 <flush_saved+0x8>
\t\t\t4: R_X86_64_PC32\tsystem_highpri_wq-0x4
   8:\tcall   d <flush_saved+0xd>
\t\t\t9: R_X86_64_PLT32\t__flush_workqueue-0x4
  16:\tjmp    1b <flush_saved+0x1b>
\t\t\t17: R_X86_64_PLT32\tother-0x4
";

    const ARM: &str = "\
Disassembly of section .text.unlikely:

0000000000000000 <foo.cold>:
   4:\tadrp\tx0, 0 <system_long_wq>
\t\t\t4: R_AARCH64_ADR_PREL_PG_HI21\tsystem_long_wq
   8:\tldr\tx0, [x0]
\t\t\t8: R_AARCH64_LDST64_ABS_LO12_NC\tsystem_long_wq
   c:\tbl\t0 <__flush_workqueue>
\t\t\tc: R_AARCH64_CALL26\t__flush_workqueue
  18:\tmov\tw0, #0xffffffff            \t// #-1
";

    fn listing(text: &str) -> Listing {
        Listing {
            text: text.to_owned(),
            functions: parse_listing(text),
        }
    }

    #[test]
    fn x86_shapes() {
        let l = listing(X86);
        let shape = |s| Shape::parse(s).unwrap();
        let ok = |s| l.check(&shape(s), Arch::Amd64).is_ok();
        assert!(ok("flush_saved loads system_highpri_wq into saved"));
        assert!(!ok("flush_saved loads system_highpri_wq into arg1"));
        assert!(ok("flush_saved calls __flush_workqueue"));
        assert!(!ok("flush_saved jumps __flush_workqueue"));
        assert!(ok("flush_saved jumps other"));
        assert!(ok("flush_saved in .text"));
        assert!(!ok("missing calls other"));
    }

    #[test]
    fn arm64_shapes() {
        let l = listing(ARM);
        let ok = |s| l.check(&Shape::parse(s).unwrap(), Arch::Arm64).is_ok();
        assert!(ok("foo.cold loads system_long_wq into arg1"));
        assert!(ok("foo.cold calls __flush_workqueue"));
        assert!(ok("foo.cold in .text.unlikely"));
        assert!(ok("foo.cold has mov"));
        let mov = &l.functions["foo.cold"].insns[3];
        assert_eq!(
            (mov.mnemonic.as_str(), mov.operands.as_str()),
            ("mov", "w0, #0xffffffff")
        );
    }

    #[test]
    fn expect_lines() {
        let site = Site::parse("caller=f wq=system_wq section=exit via=my_wq calls=2").unwrap();
        assert_eq!(site.via.as_deref(), Some("my_wq"));
        assert_eq!(site.calls, 2);
        assert_eq!(
            Site::parse("caller=f wq=system_wq section=text")
                .unwrap()
                .calls,
            1
        );
        assert!(Site::parse("caller=f wq=system_wq").is_err());
        assert!(Site::parse("caller=f wq=w section=text colour=red").is_err());
    }

    #[test]
    fn every_fixture_states_sites_and_shapes() {
        let names = fixture_names().unwrap();
        assert!(names.len() >= 10, "{names:?}");
        for name in names {
            let fixture = Fixture::load(&name).unwrap();
            for arch in Arch::ALL {
                fixture.expected(arch).unwrap();
                fixture.shapes(arch).unwrap();
            }
        }
    }
}
