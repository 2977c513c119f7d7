//! A module's own pointer variables that hold a system queue: 8 bytes of a local object (a
//! pointer, or a pointer member of a struct) that every access in code only loads, or stores a
//! value loaded from one `system_*wq` variable into, whose object's address does not escape (no
//! relocation to it outside code and debug info, none passed to a call or stored), and that no
//! relocation initialises. Accesses are found by relocation or through a register holding an
//! address (a section anchor plus an offset, as gcc addresses `.bss` on arm64).

use super::is_system_wq;
use super::isa::{Source, Target, Walker, arm64_base, reloc_target, x86_base, x86_reg};
use super::listing::{Function, Insn, Reloc, disassemble};
use super::tables::{SectionReloc, Symbol, Tables, is_in};
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
        let (Some(object), Some((_, offset))) = (tables.resolve(target), tables.locate(target))
        else {
            return Ok(None);
        };
        // Eight aligned bytes of a local object: a pointer, or a pointer member of a struct.
        let within = offset - object.value;
        if !object.local_object || within % 8 != 0 || within + 8 > object.size {
            return Ok(None);
        }
        let slot = Slot {
            name: match within {
                0 => object.name.clone(),
                _ => format!("{}+{within:#x}", object.name),
            },
            start: offset,
            object,
        };
        if let Some(verdict) = self.verdicts.get(&slot.name) {
            return Ok(verdict.clone().map(|wq| (slot.name.clone(), wq)));
        }
        let verdict = if self.escapes_in_data(object) {
            None
        } else {
            let functions = disassemble(self.arch, self.path, &self.referring_functions(object))?;
            stored_queue(self.arch, &functions, tables, &slot)
        };
        self.verdicts.insert(slot.name.clone(), verdict.clone());
        Ok(verdict.map(|wq| (slot.name, wq)))
    }

    /// Whether a relocation outside code and debug info points into `object` (its address is
    /// in some table) or initialises it.
    fn escapes_in_data(&self, object: &Symbol) -> bool {
        let tables = self.tables;
        let data = |r: &SectionReloc| {
            !tables.code.contains(&r.section) && !r.section.starts_with(".debug")
        };
        let points_in = tables
            .relocs_naming(&[&object.section, &object.name])
            .iter()
            .filter(|r| data(r))
            .any(|r| {
                tables
                    .locate(&r.target)
                    .is_some_and(|(s, off)| is_in(object, s, off))
            });
        let initialises = tables
            .relocs_in(&object.section)
            .iter()
            .any(|r| is_in(object, &r.section, r.at));
        points_in || initialises
    }

    /// The functions with a relocation in code that may designate `var`: naming it, or its
    /// section with an addend near it (x86's PC-relative addends are off by up to 12), or
    /// forming an address in its section below it (an arm64 section anchor).
    fn referring_functions(&self, var: &Symbol) -> Vec<&'a Symbol> {
        let tables = self.tables;
        let near = |addend: i64| (var.value - 16..var.value + var.size + 16).contains(&addend);
        let relocs = tables.relocs_naming(&[&var.section, &var.name]);
        let places: Vec<(&str, i64)> = relocs
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

/// The 8 bytes asked about: a pointer-sized local object, or one member of a local struct
/// (`holder+0x8`), named as `wqflush scan` names it.
struct Slot<'a> {
    name: String,
    start: i64,
    object: &'a Symbol,
}

impl Slot<'_> {
    fn overlaps(&self, section: &str, offset: i64, width: i64) -> bool {
        section == self.object.section && offset < self.start + 8 && self.start < offset + width
    }

    fn in_object(&self, section: &str, offset: i64) -> bool {
        is_in(self.object, section, offset)
    }
}

/// What an instruction does with the slot.
enum Use {
    Nothing,
    /// Reads it (or part of it).
    Read,
    /// Stores this 64-bit register into exactly it.
    Store(String),
}

/// The one system queue every store into the slot stores, if every access to it is a load or
/// such a store, no address into its object escapes, and there is at least one store.
fn stored_queue(
    arch: Arch,
    functions: &[Function],
    tables: &Tables,
    slot: &Slot,
) -> Option<String> {
    let mut queues = BTreeSet::new();
    for f in functions {
        let walker = Walker::new(arch, f);
        let anchored = forms_address(arch, f, tables, slot.object);
        for i in 0..f.insns.len() {
            match use_of(arch, &walker, f, i, tables, slot, anchored)? {
                Use::Nothing | Use::Read => {}
                Use::Store(reg) => queues.extend(walker.sources(i, &reg)),
            }
        }
    }
    let only = queues.first()?.clone();
    match (queues.len(), only) {
        (1, Source::Wq(wq)) if is_system_wq(&wq) => Some(wq),
        _ => None,
    }
}

/// Whether `f` puts in a register an address that is, or may lead into, `object`: an x86 `lea`
/// or `mov $` of it, an arm64 `add :lo12:` of it or of its section below it (an anchor). Only
/// then can an instruction without a relocation reach it, or its address escape.
fn forms_address(arch: Arch, f: &Function, tables: &Tables, object: &Symbol) -> bool {
    f.insns.iter().enumerate().any(|(i, insn)| {
        let forming = match arch {
            Arch::Amd64 => insn.mnemonic.starts_with("lea") || insn.operands.starts_with('$'),
            Arch::Arm64 => insn.mnemonic == "add",
        };
        forming
            && insn.relocs.iter().any(|r| {
                let t = reloc_target(arch, f, i, r);
                tables.locate(&t).is_some_and(|(section, offset)| {
                    is_in(object, section, offset)
                        || arch == Arch::Arm64
                            && section == object.section
                            && offset <= object.value
                })
            })
    })
}

/// What instruction `i` does with the slot; `None` when it lets an address into the object
/// escape or writes the slot other than by storing a whole register.
fn use_of(
    arch: Arch,
    walker: &Walker<'_>,
    f: &Function,
    i: usize,
    tables: &Tables,
    slot: &Slot,
    anchored: bool,
) -> Option<Use> {
    let insn = &f.insns[i];
    let in_object = |reg: &str| {
        walker.address_sources(i, reg).iter().any(|s| {
            matches!(s, Source::Memory(t)
                if tables.locate(t).is_some_and(|(sec, off)| slot.in_object(sec, off)))
        })
    };
    if anchored && escape_registers(arch, insn).iter().any(|r| in_object(r)) {
        return None;
    }
    let width = access_width(arch, insn);
    let mut addresses = Vec::new();
    if let Some(r) = memory_reloc(arch, insn) {
        addresses.push(reloc_target(arch, f, i, r));
    } else if anchored && let Some((base, disp)) = base_operand(arch, insn) {
        for source in walker.address_sources(i, &base) {
            if let Source::Memory(t) = source {
                addresses.push(t.plus(disp));
            }
        }
    }
    let hits: Vec<i64> = addresses
        .iter()
        .filter_map(|t| tables.locate(t))
        .filter(|(section, offset)| slot.overlaps(section, *offset, width))
        .map(|(_, offset)| offset)
        .collect();
    if hits.is_empty() {
        return Some(Use::Nothing);
    }
    let exact = hits.iter().all(|&offset| offset == slot.start) && width == 8;
    match (
        writes_memory(arch, insn),
        exact,
        stored_register(arch, insn),
    ) {
        (false, _, _) => Some(Use::Read),
        (true, true, Some(reg)) => Some(Use::Store(reg)),
        _ => None,
    }
}

/// The relocation that gives a memory operand's address: x86's rip-relative or absolute
/// operand (not `lea`, not an immediate), arm64's `:lo12:` of a load or store.
fn memory_reloc(arch: Arch, insn: &Insn) -> Option<&Reloc> {
    match arch {
        Arch::Amd64 => {
            let memory = insn
                .operand_list()
                .iter()
                .any(|op| !op.starts_with('$') && !op.starts_with('%') && !op.starts_with('*'));
            (memory && !insn.mnemonic.starts_with("lea") && !insn.mnemonic.starts_with('j'))
                .then(|| insn.relocs.first())
                .flatten()
        }
        Arch::Arm64 => insn.relocs.iter().find(|r| r.kind.contains("LDST")),
    }
}

/// A memory operand's base register and displacement (no relocation, no index).
fn base_operand(arch: Arch, insn: &Insn) -> Option<(String, i64)> {
    if insn.mnemonic.starts_with("lea") || insn.mnemonic == "prfm" {
        return None;
    }
    insn.operand_list().iter().find_map(|op| match arch {
        Arch::Amd64 => x86_base(op),
        Arch::Arm64 => arm64_base(op),
    })
}

/// How many bytes a memory access covers: its register's size (x86 by name or suffix; arm64
/// `x` 8, `w` 4, `b`/`h` forms 1/2, pairs twice).
fn access_width(arch: Arch, insn: &Insn) -> i64 {
    let m = insn.mnemonic.as_str();
    let ops = insn.operand_list();
    match arch {
        Arch::Amd64 => {
            let by_reg = ops.iter().find_map(|op| x86_reg_width(op));
            let by_suffix = match m.chars().last() {
                Some('b') => 1,
                Some('w') => 2,
                Some('l') => 4,
                _ => 8,
            };
            by_reg.unwrap_or(by_suffix)
        }
        Arch::Arm64 => {
            let reg = if ops.first().is_some_and(|o| o.starts_with('x')) {
                8
            } else {
                4
            };
            let pair = if m.contains('p') && !m.starts_with("prf") {
                2
            } else {
                1
            };
            if m.ends_with('b') && !m.starts_with("sub") {
                1
            } else if m.ends_with('h') {
                2
            } else {
                reg * pair
            }
        }
    }
}

/// An x86 register operand's width in bytes.
fn x86_reg_width(op: &str) -> Option<i64> {
    let (full, is64) = x86_reg(op)?;
    let name = op.trim_start_matches('%');
    Some(if is64 {
        8
    } else if name.starts_with('e') || name.ends_with('d') {
        4
    } else if name.ends_with('l') || name.ends_with('b') || name.ends_with('h') && full != name {
        1
    } else {
        2
    })
}

/// Whether the instruction writes its memory operand.
fn writes_memory(arch: Arch, insn: &Insn) -> bool {
    let m = insn.mnemonic.as_str();
    match arch {
        Arch::Amd64 => {
            let last = insn.operand_list().last().copied().unwrap_or("");
            let reads_only = m.starts_with("cmp") && !m.starts_with("cmpxchg")
                || m.starts_with("test")
                || m.starts_with("push")
                || m.starts_with("bt") && m.len() <= 3;
            let dest_memory = !last.starts_with('%') && !last.starts_with('$');
            !reads_only && (dest_memory || m.starts_with("xchg") || m.starts_with("xadd"))
        }
        Arch::Arm64 => {
            m.starts_with("st")
                || m.starts_with("swp")
                || m.starts_with("cas")
                || [
                    "ldadd", "ldclr", "ldeor", "ldset", "ldsmax", "ldsmin", "ldumax", "ldumin",
                ]
                .iter()
                .any(|op| m.starts_with(op))
        }
    }
}

/// The 64-bit register a store writes to memory whole (`mov %rax,0x8(%rbx)`, `str x1, [..]`).
fn stored_register(arch: Arch, insn: &Insn) -> Option<String> {
    let ops = insn.operand_list();
    match (arch, insn.mnemonic.as_str(), ops.as_slice()) {
        (Arch::Amd64, "mov" | "movq", [src, _]) => x86_reg(src).filter(|r| r.1).map(|r| r.0),
        (Arch::Arm64, "str" | "stur" | "stlr", [src, _]) if src.starts_with('x') => {
            Some(src.to_string())
        }
        _ => None,
    }
}

/// Registers whose address, if it points into the object, escapes at this instruction: a
/// call's argument registers, a stored register, a string operation's pointers.
fn escape_registers(arch: Arch, insn: &Insn) -> Vec<String> {
    let m = insn.mnemonic.as_str();
    let ops = insn.operand_list();
    let named = |regs: &[&str]| regs.iter().map(|r| r.to_string()).collect();
    // A jump leaves the function only as a tail call (a relocation) or an indirect one.
    let leaves = !insn.relocs.is_empty() || insn.operands.starts_with('*');
    match arch {
        Arch::Amd64 if m == "call" || m == "jmp" && leaves => {
            named(&["rdi", "rsi", "rdx", "rcx", "r8", "r9"])
        }
        Arch::Amd64 if ["stos", "movs"].iter().any(|op| m.starts_with(op)) => {
            named(&["rdi", "rsi"])
        }
        Arch::Amd64 if writes_memory(arch, insn) => ops
            .iter()
            .filter_map(|op| x86_reg(op).filter(|r| r.1).map(|r| r.0))
            .collect(),
        Arch::Arm64 if matches!(m, "bl" | "blr" | "br") || m == "b" && leaves => {
            (0..8).map(|n| format!("x{n}")).collect()
        }
        Arch::Arm64 if m.starts_with("st") => ops
            .iter()
            .filter(|op| !op.starts_with('['))
            .filter(|op| op.starts_with('x'))
            .map(|op| op.to_string())
            .collect(),
        _ => Vec::new(),
    }
}
