//! A module's own pointer variables that hold a system queue: a local 8-byte object whose every
//! reference in code is a load or a store of a value loaded from one `system_*wq` variable,
//! whose address nothing takes (no `lea`/`add :lo12:` of it, no relocation naming it outside
//! code and debug info), and that no relocation initialises.

use super::is_system_wq;
use super::isa::{Source, Target, Walker, reloc_target, x86_reg};
use super::listing::{Chunk, Insn, Listing};
use crate::arch::Arch;
use anyhow::Result;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::process::Command;

/// A relocation outside code: the section it patches, where, and what it points at.
struct DataReloc {
    section: String,
    at: i64,
    target: Target,
}

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

/// The symbol table of a module file (`objdump -t`), indexed.
pub struct Symbols {
    pub list: Vec<Symbol>,
    sections: HashSet<String>,
    by_name: HashMap<String, usize>,
}

impl Symbols {
    pub fn read(arch: Arch, path: &Path) -> Result<Symbols> {
        let out =
            crate::util::run_stdout(Command::new(arch.binutil("objdump")).arg("-t").arg(path))?;
        Ok(Symbols::new(out.lines().filter_map(symbol_line).collect()))
    }

    fn new(list: Vec<Symbol>) -> Symbols {
        let sections = list.iter().map(|s| s.section.clone()).collect();
        let by_name = list
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        Symbols {
            list,
            sections,
            by_name,
        }
    }

    /// A target as (section, offset in it): a named symbol's own section and value added.
    fn locate<'s>(&'s self, t: &'s Target) -> Option<(&'s str, i64)> {
        if t.symbol.starts_with('.') || self.sections.contains(&t.symbol) {
            return Some((t.symbol.as_str(), t.offset));
        }
        let s = &self.list[*self.by_name.get(&t.symbol)?];
        Some((s.section.as_str(), s.value + t.offset))
    }

    /// The object a target falls in.
    fn resolve(&self, t: &Target) -> Option<&Symbol> {
        let (section, offset) = self.locate(t)?;
        self.list
            .iter()
            .filter(|s| s.local_object || s.size > 0)
            .find(|s| is_in(s, section, offset))
    }
}

/// A module's symbols, its non-code relocations and an index of the relocations in its code
/// (both made on first need), and the verdict on each variable asked about.
pub struct Variables<'a> {
    arch: Arch,
    path: &'a Path,
    chunks: &'a [Chunk<'a>],
    symbols: &'a Symbols,
    data_relocs: Option<Vec<DataReloc>>,
    /// For each symbol or section a relocation in code names: (chunk, addend) of each.
    code_relocs: HashMap<String, Vec<(usize, i64)>>,
    verdicts: HashMap<String, Option<String>>,
}

impl<'a> Variables<'a> {
    pub fn new(
        arch: Arch,
        path: &'a Path,
        chunks: &'a [Chunk<'a>],
        symbols: &'a Symbols,
    ) -> Variables<'a> {
        Variables {
            arch,
            path,
            chunks,
            symbols,
            data_relocs: None,
            code_relocs: HashMap::new(),
            verdicts: HashMap::new(),
        }
    }

    /// The variable at `target` and the system queue it always holds, when it is such a
    /// variable.
    pub fn queue_of(&mut self, target: &Target) -> Result<Option<(String, String)>> {
        let symbols = self.symbols;
        let (Some(var), Some((_, offset))) = (symbols.resolve(target), symbols.locate(target))
        else {
            return Ok(None);
        };
        // The whole of a pointer-sized local object: not a member of a struct.
        if !var.local_object || var.size != 8 || var.value != offset {
            return Ok(None);
        }
        if let Some(verdict) = self.verdicts.get(&var.name) {
            return Ok(verdict.clone().map(|wq| (var.name.clone(), wq)));
        }
        if self.data_relocs.is_none() {
            self.data_relocs = Some(self.data_relocs()?);
            self.index_code_relocs();
        }
        let data_relocs = self.data_relocs.as_deref().unwrap_or_default();
        let escapes = data_relocs.iter().any(|r| {
            is_in(var, &r.section, r.at)
                || symbols
                    .locate(&r.target)
                    .is_some_and(|(s, off)| is_in(var, s, off))
        });
        let verdict = if escapes {
            None
        } else {
            let listing = self.referring_functions(var);
            stored_queue(self.arch, &listing, symbols, var)
        };
        self.verdicts.insert(var.name.clone(), verdict.clone());
        Ok(verdict.map(|wq| (var.name.clone(), wq)))
    }

    fn index_code_relocs(&mut self) {
        for (i, chunk) in self.chunks.iter().enumerate() {
            for r in chunk.relocs() {
                self.code_relocs
                    .entry(r.symbol)
                    .or_default()
                    .push((i, r.addend));
            }
        }
    }

    /// The functions with a relocation that may designate `var`, parsed: naming it, or its
    /// section with an addend near it (x86's PC-relative addends are off by up to 12).
    fn referring_functions(&self, var: &Symbol) -> Listing {
        let near = |addend: i64| (var.value - 16..var.value + var.size + 16).contains(&addend);
        let by_section = self.code_relocs.get(&var.section).into_iter().flatten();
        let by_name = self.code_relocs.get(&var.name).into_iter().flatten();
        let wanted: BTreeSet<usize> = by_section
            .filter(|(_, addend)| near(*addend))
            .chain(by_name)
            .map(|(i, _)| *i)
            .collect();
        let functions = wanted
            .into_iter()
            .map(|i| self.chunks[i].parse(self.arch))
            .collect();
        Listing { functions }
    }

    /// Every relocation outside code and debug sections.
    fn data_relocs(&self) -> Result<Vec<DataReloc>> {
        let out = crate::util::run_stdout(
            Command::new(self.arch.binutil("objdump"))
                .arg("-r")
                .arg(self.path),
        )?;
        let code: BTreeSet<&str> = self.chunks.iter().map(|c| c.section).collect();
        let mut relocs = Vec::new();
        let mut section = String::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("RELOCATION RECORDS FOR [") {
                section = rest.trim_end_matches("]:").to_string();
                continue;
            }
            if code.contains(section.as_str()) || section.starts_with(".debug") {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(offset), Some(_kind), Some(value)) =
                (words.next(), words.next(), words.next())
            else {
                continue;
            };
            let Ok(at) = i64::from_str_radix(offset, 16) else {
                continue;
            };
            let (symbol, offset) = split_addend(value);
            relocs.push(DataReloc {
                section: section.clone(),
                at,
                target: Target {
                    symbol: symbol.to_string(),
                    offset,
                },
            });
        }
        Ok(relocs)
    }
}

/// `.bss+0x0000000000000010` -> (`.bss`, 16).
fn split_addend(value: &str) -> (&str, i64) {
    match value.rfind(['+', '-']) {
        Some(i) if value[i + 1..].starts_with("0x") => {
            let n = i64::from_str_radix(&value[i + 3..], 16).unwrap_or(0);
            (&value[..i], if &value[i..=i] == "-" { -n } else { n })
        }
        _ => (value, 0),
    }
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

fn is_in(var: &Symbol, section: &str, offset: i64) -> bool {
    section == var.section && offset >= var.value && offset < var.value + var.size.max(1)
}

/// The one system queue every store into `var` stores, if every reference in code is a load or
/// such a store and there is at least one store.
fn stored_queue(arch: Arch, listing: &Listing, symbols: &Symbols, var: &Symbol) -> Option<String> {
    let mut queues = BTreeSet::new();
    for f in &listing.functions {
        let walker = Walker::new(arch, f);
        for (i, insn) in f.insns.iter().enumerate() {
            let refers = insn.relocs.iter().any(|r| {
                let t = reloc_target(arch, f, i, r);
                symbols
                    .locate(&t)
                    .is_some_and(|(s, off)| is_in(var, s, off))
            });
            if !refers {
                continue;
            }
            match reference(arch, insn)? {
                Reference::Read => {}
                Reference::Store(reg) => queues.extend(walker.sources(i, &reg)),
            }
        }
    }
    let only = queues.first()?.clone();
    match (queues.len(), only) {
        (1, Source::Wq(wq)) if is_system_wq(&wq) => Some(wq),
        _ => None,
    }
}

/// How an instruction whose relocation names a variable uses it.
enum Reference {
    /// Loads or compares it (or, on arm64, forms its page address with `adrp`).
    Read,
    /// Stores this register into it.
    Store(String),
}

/// `None` for anything else: the address taken, a constant stored.
fn reference(arch: Arch, insn: &Insn) -> Option<Reference> {
    let ops = insn.operand_list();
    let m = insn.mnemonic.as_str();
    let memory = |op: &str| !op.starts_with('$') && !op.starts_with('%');
    match arch {
        Arch::Amd64 => match (m, ops.as_slice()) {
            ("mov" | "movq", [src, dst]) if memory(src) && dst.starts_with('%') => {
                Some(Reference::Read)
            }
            ("mov" | "movq", [src, dst]) if memory(dst) => match x86_reg(src) {
                Some((reg, true)) => Some(Reference::Store(reg)),
                _ => None,
            },
            _ if (m.starts_with("cmp") && !m.starts_with("cmpxchg")) || m.starts_with("test") => {
                Some(Reference::Read)
            }
            _ => None,
        },
        Arch::Arm64 => match (m, ops.as_slice()) {
            ("adrp", _) => Some(Reference::Read),
            ("ldr", [dst, _]) if dst.starts_with('x') => Some(Reference::Read),
            ("str", [src, _]) if src.starts_with('x') && *src != "xzr" => {
                Some(Reference::Store(src.to_string()))
            }
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_symbols() {
        let s = symbol_line("0000000000000010 l     O .bss\t0000000000000008 storm_wq").unwrap();
        assert_eq!(
            s,
            Symbol {
                name: "storm_wq".into(),
                section: ".bss".into(),
                value: 16,
                size: 8,
                local_object: true,
                function: false,
            }
        );
        assert!(
            symbol_line("0000000000000000         *UND*\t0000000000000000 system_wq")
                .is_some_and(|s| !s.local_object)
        );
        assert_eq!(split_addend(".bss+0x0000000000000010"), (".bss", 16));
        assert_eq!(split_addend("system_wq-0x4"), ("system_wq", -4));
    }
}
