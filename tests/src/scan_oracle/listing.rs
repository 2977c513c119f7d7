//! `objdump -dr --no-show-raw-insn` of a module, parsed into functions of instructions, each with
//! the relocations that fall inside it.

use super::tables::Symbol;
use crate::arch::Arch;
use anyhow::Result;
use std::path::Path;
use std::process::Command;

/// A relocation as objdump prints it under the instruction it patches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloc {
    /// Offset of the patched field in the section.
    pub offset: u64,
    /// `R_X86_64_PC32`, `R_AARCH64_CALL26`, ...
    pub kind: String,
    /// The symbol (`system_wq`) or section (`.bss`) it names.
    pub symbol: String,
    pub addend: i64,
}

/// One instruction: its address in the section, mnemonic (prefixes like `rep`/`lock` dropped
/// into `prefix`), operand text without objdump's comment, and relocations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insn {
    pub addr: u64,
    pub prefix: String,
    pub mnemonic: String,
    pub operands: String,
    pub relocs: Vec<Reloc>,
    /// Where each operand lies in `operands` (split once: the walks ask again and again).
    split: Vec<(usize, usize)>,
}

impl Insn {
    /// The operands split at the commas outside brackets and parentheses.
    pub fn operand_list(&self) -> Vec<&str> {
        self.split
            .iter()
            .map(|&(a, b)| self.operands[a..b].trim())
            .collect()
    }
}

/// The byte ranges of the operands in `text`.
fn split_operands(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.bytes().enumerate() {
        match c {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            b',' if depth == 0 => {
                out.push((start, i));
                start = i + 1;
            }
            _ => {}
        }
    }
    if !text[start..].trim().is_empty() {
        out.push((start, text.len()));
    }
    out
}

/// A symbol's code as objdump lists it under `<name>:` in a section.
#[derive(Debug, Clone, Default)]
pub struct Function {
    pub name: String,
    pub section: String,
    pub insns: Vec<Insn>,
}

/// How many functions of one file are disassembled one objdump each; past that, the whole
/// file at once.
const RANGES_MAX: usize = 24;

/// Disassembles the functions `wanted` of `path` (`objdump -dr` of their address ranges, or of
/// the whole file when there are many) and parses them, each named as its symbol.
pub fn disassemble(arch: Arch, path: &Path, wanted: &[&Symbol]) -> Result<Vec<Function>> {
    let objdump = || {
        let mut cmd = Command::new(arch.binutil("objdump"));
        cmd.args(["-dr", "--no-show-raw-insn"]).arg(path);
        cmd
    };
    let mut texts = Vec::new();
    if wanted.len() > RANGES_MAX {
        texts.push(crate::util::run_stdout(&mut objdump())?);
    } else {
        for s in wanted {
            texts.push(crate::util::run_stdout(
                objdump()
                    .arg(format!("--section={}", s.section))
                    .arg(format!("--start-address={:#x}", s.value))
                    .arg(format!("--stop-address={:#x}", s.value + s.size)),
            )?);
        }
    }
    let mut functions = Vec::new();
    for text in &texts {
        for chunk in chunks(text) {
            let symbol = wanted
                .iter()
                .find(|s| s.section == chunk.section && s.value == chunk.start as i64);
            if let Some(symbol) = symbol {
                let mut f = chunk.parse(arch);
                f.name = symbol.name.clone();
                functions.push(f);
            }
        }
    }
    Ok(functions)
}

/// Every function of a listing's text, parsed (for tests).
#[cfg(test)]
pub fn parse_all(arch: Arch, text: &str) -> Vec<Function> {
    chunks(text).iter().map(|c| c.parse(arch)).collect()
}

/// One `<symbol>:` of a listing, unparsed: its name, its section, the text up to the next one.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'t> {
    pub name: &'t str,
    /// The symbol's address in its section.
    pub start: u64,
    pub section: &'t str,
    pub body: &'t str,
}

impl Chunk<'_> {
    pub fn parse(&self, arch: Arch) -> Function {
        Function {
            name: self.name.to_string(),
            section: self.section.to_string(),
            insns: parse_body(arch, self.body),
        }
    }
}

/// objdump's text cut at its section and `<symbol>:` headers.
pub fn chunks(text: &str) -> Vec<Chunk<'_>> {
    let mut out = Vec::new();
    let mut section = "";
    // The open chunk: its symbol, address, section and where its body starts.
    let mut open: Option<((u64, &str), &str, usize)> = None;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let start = pos;
        pos += line.len();
        let line = line.trim_end_matches('\n');
        let header = line
            .strip_prefix("Disassembly of section ")
            .map(|s| (None, Some(s)));
        let header = header.or_else(|| symbol_header(line).map(|n| (Some(n), None)));
        let Some((symbol, new_section)) = header else {
            continue;
        };
        if let Some(((addr, name), section, from)) = open.take() {
            out.push(Chunk {
                name,
                start: addr,
                section,
                body: &text[from..start],
            });
        }
        if let Some(s) = new_section {
            section = s.trim_end_matches(':');
        }
        open = symbol.map(|n| (n, section, pos));
    }
    if let Some(((addr, name), section, from)) = open {
        out.push(Chunk {
            name,
            start: addr,
            section,
            body: &text[from..],
        });
    }
    out
}

/// A function's instructions, each with the relocation lines printed after it.
fn parse_body(arch: Arch, body: &str) -> Vec<Insn> {
    let mut insns: Vec<Insn> = Vec::new();
    for line in body.lines() {
        if let Some(reloc) = reloc_line(line) {
            if let Some(insn) = insns.last_mut() {
                insn.relocs.push(reloc);
            }
        } else if let Some(insn) = insn_line(arch, line) {
            insns.push(insn);
        }
    }
    insns
}

/// `0000000000005240 <aoedev_exit>:` -> (0x5240, `aoedev_exit`).
fn symbol_header(line: &str) -> Option<(u64, &str)> {
    let (addr, rest) = line.split_once(' ')?;
    let addr = u64::from_str_radix(addr, 16).ok()?;
    Some((addr, rest.strip_prefix('<')?.strip_suffix(">:")?))
}

/// `\t\t\t5248: R_X86_64_PC32\tsystem_wq-0x4` -> the relocation.
fn reloc_line(line: &str) -> Option<Reloc> {
    let rest = line.strip_prefix("\t\t\t")?;
    let (offset, rest) = rest.split_once(": ")?;
    let offset = u64::from_str_radix(offset.trim(), 16).ok()?;
    let (kind, target) = rest.split_once(char::is_whitespace)?;
    let target = target.trim();
    // `sym-0x4`, `sym+0x10`, `.bss+0x2704`: C names and section names hold no sign, so the last
    // sign before a `0x` starts the addend.
    let (symbol, addend) = match target.rfind(['+', '-']) {
        Some(i) if target[i + 1..].starts_with("0x") => {
            let value = i64::from_str_radix(&target[i + 3..], 16).unwrap_or(0);
            let sign = if target.as_bytes()[i] == b'-' { -1 } else { 1 };
            (&target[..i], sign * value)
        }
        _ => (target, 0),
    };
    Some(Reloc {
        offset,
        kind: kind.to_string(),
        symbol: symbol.to_string(),
        addend,
    })
}

/// `    5245:\tmov    0x0(%rip),%rdi        # 524c <aoedev_exit+0xc>` -> the instruction.
fn insn_line(arch: Arch, line: &str) -> Option<Insn> {
    let (addr, rest) = line.split_once(":\t")?;
    let addr = u64::from_str_radix(addr.trim(), 16).ok()?;
    // The comment objdump appends: `# 524c <...>` on x86, `// #-95` on arm64 (where `#` marks
    // an immediate).
    let comment = match arch {
        Arch::Amd64 => "#",
        Arch::Arm64 => "//",
    };
    let text = rest.split(comment).next().unwrap_or("").trim();
    let mut words = text.splitn(2, char::is_whitespace);
    let mut mnemonic = words.next().filter(|m| !m.is_empty())?.to_string();
    let mut operands = words.next().unwrap_or("").trim().to_string();
    let mut prefix = String::new();
    while [
        "rep", "repz", "repnz", "repe", "repne", "lock", "notrack", "bnd", "cs", "ds",
    ]
    .contains(&mnemonic.as_str())
        && !operands.is_empty()
    {
        prefix = mnemonic;
        let mut words = operands.splitn(2, char::is_whitespace);
        let next = words.next().unwrap_or("").to_string();
        operands = words.next().unwrap_or("").trim().to_string();
        mnemonic = next;
    }
    Some(Insn {
        addr,
        prefix,
        mnemonic,
        split: split_operands(&operands),
        operands,
        relocs: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86: &str = "
Disassembly of section .text:

0000000000005240 <aoedev_exit>:
    5240:\tcall   5245 <aoedev_exit+0x5>
\t\t\t5241: R_X86_64_PLT32\t__fentry__-0x4
    5245:\tmov    0x0(%rip),%rdi        # 524c <aoedev_exit+0xc>
\t\t\t5248: R_X86_64_PC32\tsystem_wq-0x4
    524c:\trep stos %rax,%es:(%rdi)
    524f:\tmov    $0x0,%rdi
\t\t\t5252: R_X86_64_32S\t.bss+0x2704
";

    #[test]
    fn parses_x86() {
        let l = parse_all(Arch::Amd64, X86);
        assert_eq!(l.len(), 1);
        let f = &l[0];
        assert_eq!(
            (f.name.as_str(), f.section.as_str()),
            ("aoedev_exit", ".text")
        );
        assert_eq!(f.insns.len(), 4);
        assert_eq!(f.insns[1].operand_list(), ["0x0(%rip)", "%rdi"]);
        assert_eq!(f.insns[1].relocs[0].symbol, "system_wq");
        assert_eq!(f.insns[1].relocs[0].addend, -4);
        assert_eq!(f.insns[2].prefix, "rep");
        assert_eq!(f.insns[2].mnemonic, "stos");
        assert_eq!(f.insns[3].relocs[0].symbol, ".bss");
        assert_eq!(f.insns[3].relocs[0].addend, 0x2704);
    }

    #[test]
    fn parses_arm64() {
        let text = "
Disassembly of section .exit.text:

0000000000000000 <cleanup_module>:
   0:\tmov\tw21, #0xffffffa1            \t// #-95
   4:\tldr\tx0, [x1, #8]
\t\t\t4: R_AARCH64_LDST64_ABS_LO12_NC\tsystem_wq
   8:\tbl\t0 <__flush_workqueue>
\t\t\t8: R_AARCH64_CALL26\t__flush_workqueue
";
        let l = parse_all(Arch::Arm64, text);
        let f = &l[0];
        assert_eq!(f.section, ".exit.text");
        assert_eq!(f.insns[0].operand_list(), ["w21", "#0xffffffa1"]);
        assert_eq!(f.insns[1].operand_list(), ["x0", "[x1, #8]"]);
        assert_eq!(f.insns[2].relocs[0].symbol, "__flush_workqueue");
    }
}
