//! A module's own pointer variables that hold a system queue: a local 8-byte object whose every
//! reference in code is a load or a store of a value loaded from one `system_*wq` variable,
//! whose address nothing takes (no `lea`/`add :lo12:` of it, no relocation naming it outside
//! code and debug info), and that no relocation initialises.

use super::is_system_wq;
use super::isa::{Source, Target, Walker, arm64_base, reloc_target, x86_base, x86_reg};
use super::listing::{Function, Insn, disassemble};
use super::tables::{Symbol, Tables, is_in};
use crate::arch::Arch;
use anyhow::Result;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// A module's variables asked about, and the verdict on each.
pub struct Variables<'a> {
    arch: Arch,
    path: &'a Path,
    tables: &'a Tables,
    verdicts: HashMap<String, Option<String>>,
}

impl<'a> Variables<'a> {
    pub fn new(arch: Arch, path: &'a Path, tables: &'a Tables) -> Variables<'a> {
        Variables {
            arch,
            path,
            tables,
            verdicts: HashMap::new(),
        }
    }

    /// The variable at `target` and the system queue it always holds, when it is such a
    /// variable.
    pub fn queue_of(&mut self, target: &Target) -> Result<Option<(String, String)>> {
        let tables = self.tables;
        let (Some(var), Some((_, offset))) = (tables.resolve(target), tables.locate(target)) else {
            return Ok(None);
        };
        // The whole of a pointer-sized local object: not a member of a struct.
        if !var.local_object || var.size != 8 || var.value != offset {
            return Ok(None);
        }
        if let Some(verdict) = self.verdicts.get(&var.name) {
            return Ok(verdict.clone().map(|wq| (var.name.clone(), wq)));
        }
        let verdict = if self.escapes_in_data(var) {
            None
        } else {
            let functions = disassemble(self.arch, self.path, &self.referring_functions(var))?;
            stored_queue(self.arch, &functions, tables, var)
        };
        self.verdicts.insert(var.name.clone(), verdict.clone());
        Ok(verdict.map(|wq| (var.name.clone(), wq)))
    }

    /// Whether a relocation outside code and debug info points into `var` (its address is in
    /// some table) or initialises it.
    fn escapes_in_data(&self, var: &Symbol) -> bool {
        let tables = self.tables;
        tables
            .relocs
            .iter()
            .filter(|r| !tables.code.contains(&r.section) && !r.section.starts_with(".debug"))
            .any(|r| {
                is_in(var, &r.section, r.at)
                    || tables
                        .locate(&r.target)
                        .is_some_and(|(s, off)| is_in(var, s, off))
            })
    }

    /// The functions with a relocation in code that may designate `var`: naming it, or its
    /// section with an addend near it (x86's PC-relative addends are off by up to 12), or
    /// forming an address in its section below it (an arm64 section anchor).
    fn referring_functions(&self, var: &Symbol) -> Vec<&'a Symbol> {
        let tables = self.tables;
        let near = |addend: i64| (var.value - 16..var.value + var.size + 16).contains(&addend);
        let places: Vec<(&str, i64)> = tables
            .relocs
            .iter()
            .filter(|r| tables.code.contains(&r.section))
            .filter(|r| {
                let t = &r.target;
                let anchor = r.kind.contains("ADD_ABS_LO12") && t.offset <= var.value;
                t.symbol == var.name || t.symbol == var.section && (near(t.offset) || anchor)
            })
            .map(|r| (r.section.as_str(), r.at))
            .collect();
        tables.functions_containing(&places)
    }
}

/// The one system queue every store into `var` stores, if every reference in code is a load or
/// such a store and there is at least one store.
fn stored_queue(
    arch: Arch,
    functions: &[Function],
    symbols: &Tables,
    var: &Symbol,
) -> Option<String> {
    let mut queues = BTreeSet::new();
    for f in functions {
        let walker = Walker::new(arch, f);
        let at = |t: &Target| symbols.locate(t).is_some_and(|(s, off)| is_in(var, s, off));
        let anchored = forms_address(arch, f, symbols, var);
        for (i, insn) in f.insns.iter().enumerate() {
            let direct = insn.relocs.iter().any(|r| at(&reloc_target(arch, f, i, r)));
            let reference = if direct {
                reference(arch, insn)?
            } else if !anchored {
                continue;
            } else {
                match through_register(arch, &walker, insn, i, &at)? {
                    Some(reference) => reference,
                    None => continue,
                }
            };
            match reference {
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

/// Whether `f` puts an address in a register that is, or may lead to, `var`'s: an x86 `lea` or
/// `mov $` of it, an arm64 `add :lo12:` of it or of its section below it (an anchor). Only then
/// can an instruction without a relocation reach it.
fn forms_address(arch: Arch, f: &Function, symbols: &Tables, var: &Symbol) -> bool {
    f.insns.iter().enumerate().any(|(i, insn)| {
        let addressing = match arch {
            Arch::Amd64 => insn.mnemonic.starts_with("lea") || insn.operands.starts_with('$'),
            Arch::Arm64 => insn.mnemonic == "add",
        };
        addressing
            && insn.relocs.iter().any(|r| {
                let t = reloc_target(arch, f, i, r);
                symbols.locate(&t).is_some_and(|(section, offset)| {
                    section == var.section
                        && (is_in(var, section, offset)
                            || arch == Arch::Arm64 && offset <= var.value)
                })
            })
    })
}

/// How instruction `i` uses the variable through an address in a register (a section anchor
/// plus an offset): `Ok(None)` when it does not, `Err(())` when it lets the address escape
/// (passes it to a call, stores it) or uses it other than by a load or a store of a register.
fn through_register(
    arch: Arch,
    walker: &Walker<'_>,
    insn: &Insn,
    i: usize,
    at: &dyn Fn(&Target) -> bool,
) -> Option<Option<Reference>> {
    let holds = |reg: &str, disp: i64| {
        walker
            .address_sources(i, reg)
            .iter()
            .any(|s| matches!(s, Source::Memory(t) if at(&t.plus(disp))))
    };
    let ops = insn.operand_list();
    let escapes = match arch {
        Arch::Amd64 if matches!(insn.mnemonic.as_str(), "call" | "jmp") => {
            ["rdi", "rsi", "rdx", "rcx", "r8", "r9"]
                .iter()
                .any(|r| holds(r, 0))
        }
        Arch::Arm64 if matches!(insn.mnemonic.as_str(), "bl" | "b") && !insn.relocs.is_empty() => {
            (0..8).any(|n| holds(&format!("x{n}"), 0))
        }
        _ => stored_register(arch, insn).is_some_and(|r| holds(&r, 0)),
    };
    if escapes {
        return None;
    }
    let base = ops.iter().find_map(|op| match arch {
        Arch::Amd64 => x86_base(op),
        Arch::Arm64 => arm64_base(op),
    });
    match base {
        Some((reg, disp)) if holds(&reg, disp) => reference(arch, insn).map(Some),
        _ => Some(None),
    }
}

/// The register a store instruction stores (`mov %rax,0x8(%rbx)`, `str x1, [x19, #56]`).
fn stored_register(arch: Arch, insn: &Insn) -> Option<String> {
    let ops = insn.operand_list();
    match (arch, insn.mnemonic.as_str(), ops.as_slice()) {
        (Arch::Amd64, "mov" | "movq", [src, dst]) if !dst.starts_with('%') => {
            x86_reg(src).filter(|r| r.1).map(|r| r.0)
        }
        (Arch::Arm64, m, [src, ..]) if m.starts_with("st") && src.starts_with('x') => {
            Some(src.to_string())
        }
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

/// `None` for anything else: the address taken (but for a section anchor's `add :lo12:` or an
/// x86 `lea`, whose uses are checked where they are), a constant stored.
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
            ("lea" | "leaq", _) => Some(Reference::Read),
            _ => None,
        },
        Arch::Arm64 => match (m, ops.as_slice()) {
            ("adrp" | "add", _) => Some(Reference::Read),
            ("ldr", [dst, _]) if dst.starts_with('x') => Some(Reference::Read),
            ("str", [src, _]) if src.starts_with('x') && *src != "xzr" => {
                Some(Reference::Store(src.to_string()))
            }
            _ => None,
        },
    }
}
