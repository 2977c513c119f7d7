//! What one instruction does to the register being followed, for x86_64 (AT&T syntax) and
//! arm64, and the backward walk from a flush call to the loads that fed its first argument.

use super::is_system_wq;
use super::listing::{Function, Insn, Reloc};
use crate::arch::Arch;
use std::collections::{BTreeSet, HashMap};

/// Where a value in a register came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// Loaded from a `system_*wq` variable.
    Wq(String),
    /// Loaded from memory a relocation names: a symbol or section and the offset in it.
    Memory(Target),
    /// Anything else: a parameter, a computed value, a load through a pointer, a call's result.
    Unknown,
}

/// A location in a module: `(symbol or section, offset)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub symbol: String,
    pub offset: i64,
}

impl Target {
    pub fn plus(&self, delta: i64) -> Target {
        Target {
            symbol: self.symbol.clone(),
            offset: self.offset + delta,
        }
    }
}

/// What an instruction does to the followed register.
#[derive(Debug, PartialEq, Eq)]
enum Effect {
    /// Leaves it alone.
    None,
    /// Copies another register into it (follow that one instead).
    Copy(String),
    /// Sets it to another register plus a constant (`add x0, x19, #0x38`, `lea 0x8(%rax),%rdi`).
    Offset(String, i64),
    /// Loads it from memory a relocation names.
    Load(Source),
    /// Loads it from a base register plus a displacement, no relocation (`ldr x0, [x19, #56]`).
    LoadVia(String, i64),
    /// Sets it to an address a relocation names (`add x0, x0, :lo12:.bss`, `lea`, `mov $sym`).
    Address(Target),
    /// Writes something else into it.
    Clobber,
}

/// What the walk looks for: the value a register holds, or the address it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    Value,
    Address,
}

/// The register that holds a call's first argument.
pub fn first_argument(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "rdi",
        Arch::Arm64 => "x0",
    }
}

/// A call (`call`/`bl`) or a jump (`jmp`/`b`), the instructions a relocation can make a call
/// or tail call of the flush function.
pub fn is_call_or_jump(arch: Arch, insn: &Insn) -> bool {
    match arch {
        Arch::Amd64 => matches!(insn.mnemonic.as_str(), "call" | "callq" | "jmp" | "jmpq"),
        Arch::Arm64 => matches!(insn.mnemonic.as_str(), "bl" | "b"),
    }
}

/// The backward walk over one function: its instructions and, for each address, the branches
/// that jump there.
pub struct Walker<'a> {
    arch: Arch,
    f: &'a Function,
    jumps_to: HashMap<u64, Vec<usize>>,
}

impl<'a> Walker<'a> {
    pub fn new(arch: Arch, f: &'a Function) -> Walker<'a> {
        let mut jumps_to: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, insn) in f.insns.iter().enumerate() {
            if let Some(target) = local_branch_target(arch, insn) {
                jumps_to.entry(target).or_default().push(i);
            }
        }
        Walker { arch, f, jumps_to }
    }

    /// Every source of `reg`'s value at instruction `at` (before it runs), over every path
    /// that reaches it: along the fall-through unless the instruction before ends its block
    /// (a jump, a return), and along each local branch that jumps to an instruction. A load
    /// through a base register is followed to the address in that register, so a load from a
    /// section anchor plus an offset (gcc on arm64) counts as a load from that location.
    pub fn sources(&self, at: usize, reg: &str) -> BTreeSet<Source> {
        self.walk(at, reg, Mode::Value)
    }

    /// Every address `reg` can hold at `at`, as `Memory(target)`; `Unknown` for anything else.
    pub fn address_sources(&self, at: usize, reg: &str) -> BTreeSet<Source> {
        self.walk(at, reg, Mode::Address)
    }

    fn walk(&self, at: usize, reg: &str, mode: Mode) -> BTreeSet<Source> {
        let mut out = BTreeSet::new();
        let mut seen = HashMap::new();
        // (instruction, register, its offset from what is looked for, skip the instruction)
        let mut work = vec![(at, reg.to_string(), 0i64, true)];
        while let Some((i, reg, delta, skip)) = work.pop() {
            // A register met again with another offset is a pointer moving in a loop.
            match seen.insert((i, reg.clone(), skip), delta) {
                None => {}
                Some(before) if before == delta => continue,
                Some(_) => {
                    out.insert(Source::Unknown);
                    continue;
                }
            }
            let (mut reg, mut delta) = (reg, delta);
            if !skip {
                match self.step(i, &reg, mode) {
                    Step::Continue => {}
                    Step::Follow(from, plus) => (reg, delta) = (from, delta + plus),
                    Step::Found(sources) => {
                        out.extend(sources.into_iter().map(|s| shift(s, delta)));
                        continue;
                    }
                }
            }
            let falls_in = i > 0 && !ends_block(self.arch, &self.f.insns[i - 1]);
            let jumps = self.jumps_to.get(&self.f.insns[i].addr);
            if !falls_in && jumps.is_none() {
                // The function's entry, or a block only an indirect jump reaches.
                out.insert(Source::Unknown);
            }
            if falls_in {
                work.push((i - 1, reg.clone(), delta, false));
            }
            for &from in jumps.into_iter().flatten() {
                work.push((from, reg.clone(), delta, false));
            }
        }
        out
    }

    /// What instruction `i` means for the walk looking for `reg` in `mode`.
    fn step(&self, i: usize, reg: &str, mode: Mode) -> Step {
        let unknown = || Step::Found(BTreeSet::from([Source::Unknown]));
        match (self.effect(i, reg), mode) {
            (Effect::None, _) => Step::Continue,
            (Effect::Copy(from), _) => Step::Follow(from, 0),
            (Effect::Offset(from, plus), Mode::Address) => Step::Follow(from, plus),
            (Effect::Load(source), Mode::Value) => Step::Found(BTreeSet::from([source])),
            (Effect::LoadVia(base, disp), Mode::Value) => Step::Found(
                self.address_sources(i, &base)
                    .into_iter()
                    .map(|a| loaded_from(a, disp))
                    .collect(),
            ),
            (Effect::Address(target), Mode::Address) => {
                Step::Found(BTreeSet::from([Source::Memory(target)]))
            }
            _ => unknown(),
        }
    }

    /// The sources of the first argument of the call at `call`.
    pub fn first_argument_sources(&self, call: usize) -> BTreeSet<Source> {
        self.sources(call, first_argument(self.arch))
    }

    fn effect(&self, i: usize, reg: &str) -> Effect {
        match self.arch {
            Arch::Amd64 => x86_effect(self.f, i, reg),
            Arch::Arm64 => arm64_effect(self.f, i, reg),
        }
    }
}

/// What the walk does at one instruction.
enum Step {
    Continue,
    /// Follow another register from here, which differs by a constant.
    Follow(String, i64),
    Found(BTreeSet<Source>),
}

/// `Memory(target)` moved by `delta`: the address in a register `delta` past the one found.
fn shift(source: Source, delta: i64) -> Source {
    match source {
        Source::Memory(t) if delta != 0 => Source::Memory(t.plus(delta)),
        other => other,
    }
}

/// The value loaded from `address` plus `disp`: a system queue's own variable, or a location.
fn loaded_from(address: Source, disp: i64) -> Source {
    match address {
        Source::Memory(t) if disp + t.offset == 0 && is_system_wq(&t.symbol) => {
            Source::Wq(t.symbol)
        }
        Source::Memory(t) => Source::Memory(t.plus(disp)),
        _ => Source::Unknown,
    }
}

/// The address a branch without relocation jumps to in the same section (`je 4d03 <f+0x2e3>`,
/// `cbz x0, 5b60 <f+0xe0>`, `tbnz w0, #3, 5b60 <f+0xe0>`).
fn local_branch_target(arch: Arch, insn: &Insn) -> Option<u64> {
    if !insn.relocs.is_empty() || !is_branch(arch, &insn.mnemonic) {
        return None;
    }
    let last = *insn.operand_list().last()?;
    let hex = last.split_whitespace().next()?;
    u64::from_str_radix(hex, 16).ok()
}

fn is_branch(arch: Arch, m: &str) -> bool {
    match arch {
        Arch::Amd64 => m.starts_with('j'),
        Arch::Arm64 => {
            m == "b" || m.starts_with("b.") || matches!(m, "cbz" | "cbnz" | "tbz" | "tbnz")
        }
    }
}

/// Whether execution never falls through from `insn` to the next one.
fn ends_block(arch: Arch, insn: &Insn) -> bool {
    let m = insn.mnemonic.as_str();
    match arch {
        Arch::Amd64 => matches!(m, "jmp" | "jmpq" | "ud2" | "int3" | "hlt") || m.starts_with("ret"),
        Arch::Arm64 => matches!(m, "b" | "br" | "brk" | "udf") || m.starts_with("ret"),
    }
}

/// The 64-bit register an x86 operand names (`%edi`, `%dil`, `%r12d` -> `rdi`, `rdi`, `r12`),
/// and whether the operand is the full 64-bit register.
pub(super) fn x86_reg(op: &str) -> Option<(String, bool)> {
    let name = op.strip_prefix('%')?;
    const LEGACY: [(&str, [&str; 5]); 8] = [
        ("rax", ["rax", "eax", "ax", "al", "ah"]),
        ("rbx", ["rbx", "ebx", "bx", "bl", "bh"]),
        ("rcx", ["rcx", "ecx", "cx", "cl", "ch"]),
        ("rdx", ["rdx", "edx", "dx", "dl", "dh"]),
        ("rsi", ["rsi", "esi", "si", "sil", "sil"]),
        ("rdi", ["rdi", "edi", "di", "dil", "dil"]),
        ("rbp", ["rbp", "ebp", "bp", "bpl", "bpl"]),
        ("rsp", ["rsp", "esp", "sp", "spl", "spl"]),
    ];
    for (full, names) in LEGACY {
        if names.contains(&name) {
            return Some((full.to_string(), name == full));
        }
    }
    let digits = name.strip_prefix('r')?;
    let n: String = digits.chars().take_while(char::is_ascii_digit).collect();
    let rest = &digits[n.len()..];
    if n.is_empty() || !["", "d", "w", "b"].contains(&rest) {
        return None;
    }
    Some((format!("r{n}"), rest.is_empty()))
}

/// Registers a call may change (the SysV ABI's caller-saved ones).
const X86_CALLER_SAVED: [&str; 9] = ["rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11"];

/// Instructions that write no general register besides those they name as destination.
fn x86_reads_only(m: &str) -> bool {
    m.starts_with('j')
        || m.starts_with("cmp") && !m.starts_with("cmpxchg")
        || m.starts_with("test")
        || m.starts_with("push")
        || m.starts_with("nop")
        || m.starts_with("prefetch")
        || m.starts_with("ret")
        || matches!(
            m,
            "bt" | "btq"
                | "btl"
                | "ud2"
                | "int3"
                | "endbr64"
                | "lfence"
                | "mfence"
                | "sfence"
                | "pause"
                | "clflush"
                | "cli"
                | "sti"
                | "hlt"
        )
}

/// Instructions that write registers they do not name (besides calls): string operations,
/// multiply/divide, sign extensions of rax, cpuid, rdtsc, rdmsr, syscall, cmpxchg.
fn x86_implicit_writes(m: &str) -> &'static [&'static str] {
    let string_op = ["movs", "stos", "lods", "cmps", "scas", "ins", "outs"]
        .iter()
        .any(|op| m.starts_with(op) && m.len() <= op.len() + 1);
    if string_op {
        return &["rdi", "rsi", "rcx", "rax"];
    }
    let rax_rdx = [
        "mul", "div", "idiv", "cltq", "cqto", "cltd", "cwtl", "cdqe", "cqo", "rdtsc", "rdtscp",
        "rdmsr", "xgetbv", "rdpid", "rdrand", "cpuid", "syscall", "cmpxchg",
    ];
    if rax_rdx.iter().any(|op| m.starts_with(op)) || m == "imul" || m == "imulq" {
        return &["rax", "rdx", "rcx", "rbx", "r11"];
    }
    &[]
}

fn x86_effect(f: &Function, i: usize, reg: &str) -> Effect {
    let insn = &f.insns[i];
    let m = insn.mnemonic.as_str();
    let ops = insn.operand_list();
    if m == "call" || m == "callq" {
        return if X86_CALLER_SAVED.contains(&reg) {
            Effect::Clobber
        } else {
            Effect::None
        };
    }
    if x86_implicit_writes(m).contains(&reg) || m == "leave" && reg == "rbp" {
        return Effect::Clobber;
    }
    let names_reg = |op: &str| x86_reg(op).is_some_and(|(r, _)| r == reg);
    if m.starts_with("xchg") || m.starts_with("xadd") {
        return if ops.iter().any(|op| names_reg(op)) {
            Effect::Clobber
        } else {
            Effect::None
        };
    }
    if x86_reads_only(m) {
        return Effect::None;
    }
    let Some(dest) = ops.last().and_then(|op| x86_reg(op)) else {
        return Effect::None;
    };
    if dest.0 != reg {
        return Effect::None;
    }
    if ops.len() != 2 || !dest.1 {
        return Effect::Clobber;
    }
    x86_write(f, i, ops[0])
}

/// What the two-operand instruction `i` writes into its 64-bit destination register.
fn x86_write(f: &Function, i: usize, src: &str) -> Effect {
    let insn = &f.insns[i];
    let reloc = insn.relocs.first();
    let imm = || parse_imm(src.strip_prefix('$')?);
    let dest = insn
        .operand_list()
        .last()
        .and_then(|d| x86_reg(d))
        .map(|d| d.0);
    match (insn.mnemonic.as_str(), x86_reg(src)) {
        ("mov" | "movq", Some((from, true))) => Effect::Copy(from),
        ("mov" | "movq", _) if src.starts_with('$') => match reloc {
            Some(r) => Effect::Address(reloc_target(Arch::Amd64, f, i, r)),
            None => Effect::Clobber,
        },
        ("mov" | "movq", None) if reloc.is_some() => load_from(Arch::Amd64, f, i),
        ("mov" | "movq", None) => match x86_base(src) {
            Some((base, disp)) => Effect::LoadVia(base, disp),
            None => Effect::Clobber,
        },
        ("lea" | "leaq", None) => match (reloc, x86_base(src)) {
            (Some(r), _) => Effect::Address(reloc_target(Arch::Amd64, f, i, r)),
            (None, Some((base, disp))) => Effect::Offset(base, disp),
            _ => Effect::Clobber,
        },
        ("add" | "addq", None) if reloc.is_none() => match (dest, imm()) {
            (Some(d), Some(n)) => Effect::Offset(d, n),
            _ => Effect::Clobber,
        },
        ("sub" | "subq", None) if reloc.is_none() => match (dest, imm()) {
            (Some(d), Some(n)) => Effect::Offset(d, -n),
            _ => Effect::Clobber,
        },
        _ => Effect::Clobber,
    }
}

/// `0x38`, `-0x8`, `56` -> the number.
fn parse_imm(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let n = match digits.strip_prefix("0x") {
        Some(hex) => i64::from_str_radix(hex, 16).ok()?,
        None => digits.parse().ok()?,
    };
    Some(if negative { -n } else { n })
}

/// An x86 memory operand with a base register and no index (`0x38(%rax)`, `(%rbx)`): the base
/// and the displacement; `None` for `%rip`, `%rsp` (the stack) and indexed forms.
pub(super) fn x86_base(op: &str) -> Option<(String, i64)> {
    let (disp, rest) = op.split_once('(')?;
    let inner = rest.strip_suffix(')')?;
    if inner.contains(',') {
        return None;
    }
    let (base, full) = x86_reg(inner)?;
    if !full || base == "rsp" {
        return None;
    }
    let disp = if disp.is_empty() { 0 } else { parse_imm(disp)? };
    Some((base, disp))
}

/// An arm64 address without index or write-back (`[x19, #56]`, `[x0]`): the base and the
/// offset; `None` for the stack pointer.
pub(super) fn arm64_base(op: &str) -> Option<(String, i64)> {
    let inner = op.strip_prefix('[')?.strip_suffix(']')?;
    let mut parts = inner.split(',').map(str::trim);
    let (base, full) = arm64_reg(parts.next()?)?;
    let offset = match parts.next() {
        None => 0,
        Some(imm) => parse_imm(imm.strip_prefix('#')?)?,
    };
    (full && parts.next().is_none()).then_some((base, offset))
}

/// `#0x38` or `#0x1, lsl #12` -> the number.
fn arm64_imm(ops: &[&str]) -> Option<i64> {
    let n = parse_imm(ops.first()?.strip_prefix('#')?)?;
    match ops.get(1) {
        None => Some(n),
        Some(shift) => Some(n << shift.strip_prefix("lsl #")?.parse::<u32>().ok()?),
    }
}

/// The source a memory load at `i` reads, from its relocation; `Clobber` when none names it.
fn load_from(arch: Arch, f: &Function, i: usize) -> Effect {
    match f.insns[i].relocs.first() {
        Some(r) if is_system_wq(&r.symbol) => Effect::Load(Source::Wq(r.symbol.clone())),
        Some(r) => Effect::Load(Source::Memory(reloc_target(arch, f, i, r))),
        None => Effect::Clobber,
    }
}

/// The location a relocation of instruction `i` designates: for x86's PC-relative ones the
/// addend is relative to the end of the patched field, not the end of the instruction.
pub fn reloc_target(arch: Arch, f: &Function, i: usize, r: &Reloc) -> Target {
    let pc_relative = matches!(r.kind.as_str(), "R_X86_64_PC32" | "R_X86_64_PLT32");
    let offset = if arch == Arch::Amd64 && pc_relative {
        let end = f.insns.get(i + 1).map_or(r.offset + 4, |next| next.addr);
        r.addend + (end as i64 - r.offset as i64)
    } else {
        r.addend
    };
    Target {
        symbol: r.symbol.clone(),
        offset,
    }
}

/// The `xN` an arm64 operand names (`w0`/`x0` -> `x0`), and whether it is the 64-bit form.
fn arm64_reg(op: &str) -> Option<(String, bool)> {
    let (kind, n) = op.split_at_checked(1)?;
    let n: u8 = n.parse().ok()?;
    match kind {
        "x" if n <= 30 => Some((format!("x{n}"), true)),
        "w" if n <= 30 => Some((format!("x{n}"), false)),
        _ => None,
    }
}

/// arm64 instructions that write no register they name (stores, compares, branches, hints);
/// exclusive stores write their status register, so they are not among them.
fn arm64_reads_only(m: &str) -> bool {
    m.starts_with("st") && !m.starts_with("stx") && !m.starts_with("stlx")
        || m.starts_with("b.")
        || m.starts_with("ret")
        || m.starts_with("prfm")
        || m.starts_with("prfum")
        || matches!(
            m,
            "b" | "br"
                | "cmp"
                | "cmn"
                | "tst"
                | "ccmp"
                | "ccmn"
                | "fcmp"
                | "fcmpe"
                | "cbz"
                | "cbnz"
                | "tbz"
                | "tbnz"
                | "nop"
                | "hint"
                | "dmb"
                | "dsb"
                | "isb"
                | "paciasp"
                | "autiasp"
                | "pacibsp"
                | "autibsp"
                | "bti"
                | "msr"
                | "sys"
                | "dc"
                | "ic"
                | "tlbi"
                | "at"
                | "sev"
                | "sevl"
                | "wfe"
                | "wfi"
                | "yield"
                | "brk"
                | "udf"
                | "csdb"
                | "esb"
                | "sb"
                | "clrex"
        )
}

/// Atomics that write their second register operand (`ldadd x1, x2, [x0]`, `swp`).
fn arm64_atomic(m: &str) -> bool {
    m.starts_with("swp")
        || m.starts_with("cas")
        || [
            "ldadd", "ldclr", "ldeor", "ldset", "ldsmax", "ldsmin", "ldumax", "ldumin",
        ]
        .iter()
        .any(|op| m.starts_with(op))
}

/// The base register a pre-indexed (`[x1, #8]!`) or post-indexed (`[x1], #8`) address writes
/// back.
fn writeback_base<'o>(ops: &[&'o str]) -> Option<&'o str> {
    let at = ops.iter().position(|o| o.starts_with('['))?;
    let address = ops[at];
    if !(address.ends_with("]!") || at + 1 < ops.len()) {
        return None;
    }
    address[1..].split([',', ']']).next().map(str::trim)
}

fn arm64_effect(f: &Function, i: usize, reg: &str) -> Effect {
    let insn = &f.insns[i];
    let m = insn.mnemonic.as_str();
    let ops = insn.operand_list();
    if m == "bl" || m == "blr" {
        let n: u8 = reg[1..].parse().unwrap_or(0);
        return if n <= 18 || n == 30 {
            Effect::Clobber
        } else {
            Effect::None
        };
    }
    let names_reg = |op: &str| arm64_reg(op).is_some_and(|(r, _)| r == reg);
    if writeback_base(&ops).is_some_and(names_reg) {
        return Effect::Clobber;
    }
    if arm64_atomic(m) {
        return if ops.iter().take(2).any(|op| names_reg(op)) {
            Effect::Clobber
        } else {
            Effect::None
        };
    }
    if arm64_reads_only(m) {
        return Effect::None;
    }
    let writes = if m == "ldp" || m == "ldnp" || m.starts_with("ldxp") || m.starts_with("ldaxp") {
        2
    } else {
        1
    };
    let Some(hit) = ops.iter().take(writes).position(|op| names_reg(op)) else {
        return Effect::None;
    };
    let full = arm64_reg(ops[hit]).is_some_and(|(_, full)| full);
    if hit != 0 || !full || writeback_base(&ops).is_some() {
        return Effect::Clobber;
    }
    arm64_write(f, i, &ops)
}

/// What instruction `i` writes into its first operand, a 64-bit register.
fn arm64_write(f: &Function, i: usize, ops: &[&str]) -> Effect {
    let insn = &f.insns[i];
    let reloc = insn.relocs.first();
    let from = ops.get(1).and_then(|op| arm64_reg(op));
    match (insn.mnemonic.as_str(), from) {
        ("mov", Some((from, true))) if ops.len() == 2 => Effect::Copy(from),
        ("ldr", _) if ops.len() == 2 && reloc.is_some() => load_from(Arch::Arm64, f, i),
        ("ldr", _) if ops.len() == 2 => match arm64_base(ops[1]) {
            Some((base, offset)) => Effect::LoadVia(base, offset),
            None => Effect::Clobber,
        },
        ("add", Some((_, true))) if reloc.is_some_and(|r| r.kind.contains("ADD_ABS_LO12")) => {
            Effect::Address(reloc_target(
                Arch::Arm64,
                f,
                i,
                reloc.unwrap_or_else(|| unreachable!()),
            ))
        }
        ("add", Some((from, true))) if reloc.is_none() => match arm64_imm(&ops[2..]) {
            Some(n) => Effect::Offset(from, n),
            None => Effect::Clobber,
        },
        ("sub", Some((from, true))) if reloc.is_none() => match arm64_imm(&ops[2..]) {
            Some(n) => Effect::Offset(from, -n),
            None => Effect::Clobber,
        },
        _ => Effect::Clobber,
    }
}

#[cfg(test)]
mod tests {
    use super::super::listing::parse_all;
    use super::*;

    fn sources(arch: Arch, text: &str) -> BTreeSet<Source> {
        let l = parse_all(arch, text);
        let f = &l[0];
        let call = f
            .insns
            .iter()
            .rposition(|i| {
                i.relocs
                    .iter()
                    .any(|r| r.symbol.ends_with("flush_workqueue"))
            })
            .unwrap();
        Walker::new(arch, f).sources(call, first_argument(arch))
    }

    fn wq(name: &str) -> Source {
        Source::Wq(name.to_string())
    }

    #[test]
    fn x86_direct_and_through_callee_saved() {
        let text = "
0000000000000000 <f>:
   0:\tmov    0x0(%rip),%rbx        # 7 <f+0x7>
\t\t\t3: R_X86_64_PC32\tsystem_long_wq-0x4
   7:\tcall   c <f+0xc>
\t\t\t8: R_X86_64_PLT32\tother-0x4
   c:\tmov    %rbx,%rdi
   f:\tcall   14 <f+0x14>
\t\t\t10: R_X86_64_PLT32\t__flush_workqueue-0x4
";
        assert_eq!(sources(Arch::Amd64, text), [wq("system_long_wq")].into());
    }

    #[test]
    fn x86_caller_saved_lost_and_join() {
        // The queue in rax does not survive `other`; at 0x10 two paths meet.
        let text = "
0000000000000000 <f>:
   0:\tmov    0x0(%rip),%rax
\t\t\t3: R_X86_64_PC32\tsystem_wq-0x4
   7:\tcall   c <f+0xc>
\t\t\t8: R_X86_64_PLT32\tother-0x4
   c:\ttest   %eax,%eax
   e:\tje     17 <f+0x17>
  10:\tmov    %rax,%rdi
  13:\tjmp    1d <f+0x1d>
  17:\tmov    0x0(%rip),%rdi
\t\t\t1a: R_X86_64_PC32\tsystem_unbound_wq-0x4
  1d:\tcall   22 <f+0x22>
\t\t\t1e: R_X86_64_PLT32\tflush_workqueue-0x4
";
        assert_eq!(
            sources(Arch::Amd64, text),
            [wq("system_unbound_wq"), Source::Unknown].into()
        );
    }

    #[test]
    fn x86_module_variable() {
        let text = "
0000000000000000 <f>:
   0:\tmov    0x0(%rip),%rdi
\t\t\t3: R_X86_64_PC32\t.bss+0x14
   7:\tjmp    c <f+0xc>
\t\t\t8: R_X86_64_PLT32\t__flush_workqueue-0x4
";
        let target = Target {
            symbol: ".bss".into(),
            offset: 0x18,
        };
        assert_eq!(sources(Arch::Amd64, text), [Source::Memory(target)].into());
    }

    #[test]
    fn arm64_adrp_ldr_and_copy() {
        let text = "
0000000000000000 <f>:
   0:\tadrp\tx19, 0 <system_highpri_wq>
\t\t\t0: R_AARCH64_ADR_PREL_PG_HI21\tsystem_highpri_wq
   4:\tldr\tx19, [x19]
\t\t\t4: R_AARCH64_LDST64_ABS_LO12_NC\tsystem_highpri_wq
   8:\tbl\t0 <other>
\t\t\t8: R_AARCH64_CALL26\tother
   c:\tmov\tx0, x19
  10:\tb\t0 <__flush_workqueue>
\t\t\t10: R_AARCH64_JUMP26\t__flush_workqueue
";
        assert_eq!(sources(Arch::Arm64, text), [wq("system_highpri_wq")].into());
    }

    #[test]
    fn arm64_lookalike() {
        // The queue goes to queue_work_on in x1; x0 is a parameter.
        let text = "
0000000000000000 <f>:
   0:\tadrp\tx1, 0 <system_wq>
\t\t\t0: R_AARCH64_ADR_PREL_PG_HI21\tsystem_wq
   4:\tldr\tx1, [x1]
\t\t\t4: R_AARCH64_LDST64_ABS_LO12_NC\tsystem_wq
   8:\tmov\tx0, x20
   c:\tbl\t0 <__flush_workqueue>
\t\t\tc: R_AARCH64_CALL26\t__flush_workqueue
";
        assert_eq!(sources(Arch::Arm64, text), [Source::Unknown].into());
    }

    #[test]
    fn registers() {
        assert_eq!(x86_reg("%dil"), Some(("rdi".into(), false)));
        assert_eq!(x86_reg("%r12d"), Some(("r12".into(), false)));
        assert_eq!(x86_reg("%r12"), Some(("r12".into(), true)));
        assert_eq!(x86_reg("0x0(%rip)"), None);
        assert_eq!(arm64_reg("w19"), Some(("x19".into(), false)));
        assert_eq!(arm64_reg("xzr"), None);
    }
}
