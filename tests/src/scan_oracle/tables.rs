//! A module file's sections, symbols and relocations, from one `objdump -h -t -r`: which code to
//! disassemble (the functions that hold a flush call or refer to a variable) and where a
//! relocation points.

use super::isa::Target;
use crate::arch::Arch;
use anyhow::Result;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::process::Command;

/// A symbol from `objdump -t`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    pub name: String,
    pub section: String,
    pub value: i64,
    pub size: i64,
    pub local_object: bool,
    pub function: bool,
}

/// A relocation: the section it patches, where, its type and what it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionReloc {
    pub section: String,
    pub at: i64,
    pub kind: String,
    pub target: Target,
}

/// The tables of one module file, indexed; relocations kept as text per section and parsed
/// when asked for (a large module has a quarter of a million, and few matter).
pub struct Tables {
    pub symbols: Vec<Symbol>,
    relocs: Vec<(String, String)>,
    /// Sections of machine code (objdump's `CODE` flag).
    pub code: HashSet<String>,
    sections: HashSet<String>,
    by_name: HashMap<String, usize>,
}

impl Tables {
    pub fn read(arch: Arch, path: &Path) -> Result<Tables> {
        let out = crate::util::run_stdout(
            Command::new(arch.binutil("objdump"))
                .args(["-h", "-t", "-r"])
                .arg(path),
        )?;
        Ok(Tables::parse(&out))
    }

    fn parse(text: &str) -> Tables {
        let (mut symbols, mut code, mut sections) = (Vec::new(), HashSet::new(), HashSet::new());
        let mut relocs: Vec<(String, String)> = Vec::new();
        let mut part = "";
        let mut last_section = String::new();
        for line in text.lines() {
            if line == "Sections:" || line == "SYMBOL TABLE:" {
                part = line;
            } else if let Some(rest) = line.strip_prefix("RELOCATION RECORDS FOR [") {
                part = "RELOCATION";
                relocs.push((rest.trim_end_matches("]:").to_string(), String::new()));
            } else if part == "Sections:" {
                let words: Vec<&str> = line.split_whitespace().collect();
                if words.first().is_some_and(|w| w.parse::<u32>().is_ok()) && words.len() > 1 {
                    last_section = words[1].to_string();
                    sections.insert(last_section.clone());
                } else if line.contains("CODE") {
                    code.insert(last_section.clone());
                }
            } else if part == "SYMBOL TABLE:" {
                symbols.extend(symbol_line(line));
            } else if part == "RELOCATION"
                && let Some((_, block)) = relocs.last_mut()
            {
                block.push_str(line);
                block.push('\n');
            }
        }
        let by_name = symbols
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        Tables {
            symbols,
            relocs,
            code,
            sections,
            by_name,
        }
    }

    /// The relocations that name one of `symbols` (a symbol or a section), anywhere.
    pub fn relocs_naming(&self, symbols: &[&str]) -> Vec<SectionReloc> {
        let mut out = Vec::new();
        for (section, block) in &self.relocs {
            for line in block
                .lines()
                .filter(|l| symbols.iter().any(|s| l.contains(s)))
            {
                out.extend(
                    reloc_line(section, line)
                        .filter(|r| symbols.contains(&r.target.symbol.as_str())),
                );
            }
        }
        out
    }

    /// The relocations that patch `section`.
    pub fn relocs_in(&self, section: &str) -> Vec<SectionReloc> {
        self.relocs
            .iter()
            .filter(|(s, _)| s == section)
            .flat_map(|(s, block)| block.lines().filter_map(|l| reloc_line(s, l)))
            .collect()
    }

    /// A target as (section, offset in it): a named symbol's own section and value added.
    pub fn locate<'s>(&'s self, t: &'s Target) -> Option<(&'s str, i64)> {
        if self.sections.contains(&t.symbol) {
            return Some((t.symbol.as_str(), t.offset));
        }
        let s = &self.symbols[*self.by_name.get(&t.symbol)?];
        Some((s.section.as_str(), s.value + t.offset))
    }

    /// The object a target falls in.
    pub fn resolve(&self, t: &Target) -> Option<&Symbol> {
        let (section, offset) = self.locate(t)?;
        self.symbols
            .iter()
            .filter(|s| !s.function && s.size > 0)
            .find(|s| is_in(s, section, offset))
    }

    /// The function symbols that contain the places `at` (section, offset), one per address
    /// (`module_init()`/`module_exit()` alias theirs as `init_module`/`cleanup_module`; the
    /// function's own name is kept).
    pub fn functions_containing(&self, at: &[(&str, i64)]) -> Vec<&Symbol> {
        let places: BTreeSet<(&str, i64)> = at.iter().copied().collect();
        let mut found: BTreeMap<(&str, i64), &Symbol> = BTreeMap::new();
        for s in self.symbols.iter().filter(|s| s.function && s.size > 0) {
            let section = s.section.as_str();
            let inside = (section, s.value)..(section, s.value + s.size);
            if places.range(inside).next().is_none() {
                continue;
            }
            let alias = matches!(s.name.as_str(), "init_module" | "cleanup_module");
            let slot = found.entry((s.section.as_str(), s.value)).or_insert(s);
            if !alias {
                *slot = s;
            }
        }
        found.into_values().collect()
    }
}

/// Whether `offset` in `section` lies inside `symbol`.
pub fn is_in(symbol: &Symbol, section: &str, offset: i64) -> bool {
    section == symbol.section
        && offset >= symbol.value
        && offset < symbol.value + symbol.size.max(1)
}

/// `0000000000000010 l     O .bss\t0000000000000008 storm_wq` -> the symbol.
fn symbol_line(line: &str) -> Option<Symbol> {
    let (left, right) = line.split_once('\t')?;
    let value = i64::from_str_radix(left.get(..16)?, 16).ok()?;
    let flags = left.get(17..24)?;
    let section = left.get(24..)?.trim().to_string();
    let (size, name) = right.split_once(' ')?;
    Some(Symbol {
        name: name.trim().to_string(),
        section,
        value,
        size: i64::from_str_radix(size, 16).ok()?,
        local_object: flags.starts_with('l') && flags.contains('O'),
        function: flags.contains('F'),
    })
}

/// `0000000000000008 R_X86_64_64       .bss+0x0000000000000010` -> the relocation.
fn reloc_line(section: &str, line: &str) -> Option<SectionReloc> {
    let mut words = line.split_whitespace();
    let at = i64::from_str_radix(words.next()?, 16).ok()?;
    let kind = words.next()?.to_string();
    let (symbol, offset) = split_addend(words.next()?);
    Some(SectionReloc {
        section: section.to_string(),
        at,
        kind,
        target: Target {
            symbol: symbol.to_string(),
            offset,
        },
    })
}

/// `.bss+0x0000000000000010` -> (`.bss`, 16).
pub fn split_addend(value: &str) -> (&str, i64) {
    match value.rfind(['+', '-']) {
        Some(i) if value[i + 1..].starts_with("0x") => {
            let n = i64::from_str_radix(&value[i + 3..], 16).unwrap_or(0);
            (&value[..i], if &value[i..=i] == "-" { -n } else { n })
        }
        _ => (value, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "
m.ko:     file format elf64-x86-64

Sections:
Idx Name          Size      VMA               LMA               File off  Algn
  0 .text         00000100  0000000000000000  0000000000000000  00000040  2**4
                  CONTENTS, ALLOC, LOAD, RELOC, READONLY, CODE
  1 .bss          00000040  0000000000000000  0000000000000000  00000140  2**3
                  ALLOC

SYMBOL TABLE:
0000000000000000 l    d  .bss\t0000000000000000 .bss
0000000000000010 l     O .bss\t0000000000000008 storm_wq
0000000000000020 l     F .text\t0000000000000010 flush_storm
0000000000000020 g     F .text\t0000000000000010 cleanup_module
0000000000000000         *UND*\t0000000000000000 system_wq

RELOCATION RECORDS FOR [.text]:
OFFSET           TYPE              VALUE
0000000000000023 R_X86_64_PC32     .bss+0x000000000000000c
0000000000000028 R_X86_64_PLT32    __flush_workqueue-0x0000000000000004
";

    #[test]
    fn parses_objdump_tables() {
        let t = Tables::parse(TEXT);
        assert!(t.code.contains(".text") && !t.code.contains(".bss"));
        assert_eq!(t.symbols.len(), 5);
        let relocs = t.relocs_in(".text");
        assert_eq!(relocs[0].target.offset, 0xc);
        assert_eq!(relocs[1].target.symbol, "__flush_workqueue");
        assert_eq!(relocs[1].target.offset, -4);
        assert_eq!(t.relocs_naming(&[".bss"]), relocs[..1]);
        let storm = Target {
            symbol: ".bss".into(),
            offset: 0x10,
        };
        assert_eq!(t.resolve(&storm).map(|s| s.name.as_str()), Some("storm_wq"));
        let f = t.functions_containing(&[(".text", 0x28)]);
        assert_eq!(
            f.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["flush_storm"]
        );
        assert!(t.symbols[4].name == "system_wq" && !t.symbols[4].local_object);
    }
}
