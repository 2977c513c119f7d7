//! aarch64 machine code to the flow's [`Insn`]s, with yaxpeax-arm: `adrp` + `ldr`/`str`/`add` with
//! `:lo12:` relocations, register moves, calls, branches, and the registers each overwrites.

use yaxpeax_arch::{Decoder, U8Reader};
use yaxpeax_arm::armv8::a64::{InstDecoder, Instruction, Opcode, Operand, SizeCode};

use crate::scan::{
    flow::{Effect, Insn, Mem, Ref, Reg, Regs, Target},
    object::Relocs,
};

/// What a call may overwrite (AAPCS64): x0-x18 and the link register x30.
const CALLER_SAVED: Regs = 0x4007_ffff;

/// Decodes `code`, which starts at `start` in its section, with that section's relocations.
pub(crate) fn decode(code: &[u8], start: u64, relocs: &Relocs) -> Vec<Insn> {
    let decoder = InstDecoder::default();
    let mut out = Vec::with_capacity(code.len() / 4);
    for (offset, word) in (start..).step_by(4).zip(code.chunks_exact(4)) {
        // aarch64 relocations apply to the whole instruction word, with no bias.
        let reloc = relocs.within(offset, offset + 4, 0);
        let (effect, kills) = match decoder.decode(&mut U8Reader::new(word)) {
            Ok(ins) => classify(&ins, offset, reloc),
            // Data in the text, or an instruction yaxpeax does not know: trust no register after.
            Err(_) => (Effect::Other, Regs::MAX),
        };
        out.push(Insn {
            offset,
            effect,
            kills,
        });
    }
    out
}

fn classify(ins: &Instruction, offset: u64, reloc: Option<Ref>) -> (Effect, Regs) {
    use Opcode::*;
    let pc = |op: &Operand| match op {
        Operand::PCOffset(d) => Some(offset.wrapping_add_signed(*d)),
        _ => None,
    };
    let jump = |conditional| {
        let here = ins.operands.iter().find_map(pc).map(Target::Here);
        let to = reloc.map(Target::At).or(here).unwrap_or(Target::Indirect);
        Effect::Jump { to, conditional }
    };
    match ins.opcode {
        BL => (Effect::Call(reloc), CALLER_SAVED),
        BLR | BLRAA | BLRAAZ | BLRAB | BLRABZ => (Effect::Call(None), CALLER_SAVED),
        B => (jump(false), 0),
        Bcc(_) | CBZ | CBNZ | TBZ | TBNZ => (jump(true), 0),
        BR | BRAA | BRAAZ | BRAB | BRABZ => (jump(false), 0),
        RET | RETAA | RETAB | ERET | BRK | UDF | HLT => (Effect::Stop, 0),
        _ => data(ins, reloc),
    }
}

/// Loads, stores, moves and address arithmetic of 64-bit registers; any other instruction
/// overwrites its first register operand (two for load pairs).
fn data(ins: &Instruction, reloc: Option<Ref>) -> (Effect, Regs) {
    use Opcode::*;
    let ops = &ins.operands;
    let x = |i: usize| match ops[i] {
        Operand::Register(SizeCode::X, r) | Operand::RegisterOrSP(SizeCode::X, r) => Some(r as Reg),
        _ => None,
    };
    let base = match ops[1] {
        Operand::RegPreIndex(b, off, false) => Some((b as Reg, i64::from(off))),
        _ => None,
    };
    let mem = base.map(|(base, offset)| match reloc {
        Some(r) => Mem::At(r),
        None => Mem::Base { base, offset },
    });
    let effect = match (ins.opcode, x(0), mem) {
        (ADRP, Some(dst), _) => reloc.map_or(Effect::Other, |of| Effect::Page { dst, of }),
        (ADD, Some(dst), _) => match (reloc, x(1), ops[2]) {
            (Some(of), _, _) => Effect::AddrOf { dst, of },
            (None, Some(src), Operand::Immediate(imm)) => Effect::AddImm {
                dst,
                src,
                imm: i64::from(imm),
            },
            _ => Effect::Other,
        },
        (LDR, Some(dst), Some(from)) => Effect::Load { dst, from },
        (STR, src, Some(to)) => Effect::Store {
            src: src.filter(|&r| r != 31),
            to,
        },
        (ORR, Some(dst), _) => match (ops[1], ops[2]) {
            (Operand::Register(SizeCode::X, 31), Operand::RegShift(_, 0, SizeCode::X, src)) => {
                Effect::Copy {
                    dst,
                    src: src as Reg,
                }
            }
            _ => Effect::Other,
        },
        _ => Effect::Other,
    };
    (effect, overwritten(ins))
}

/// The registers an instruction writes: the first operand, but for stores; the second too for
/// load pairs; the base register of a pre- or post-indexed access.
fn overwritten(ins: &Instruction) -> Regs {
    use Opcode::*;
    let reg = |op: &Operand| match op {
        Operand::Register(_, r) | Operand::RegisterOrSP(_, r) => 1 << r,
        _ => 0,
    };
    let stores = matches!(
        ins.opcode,
        STR | STRB
            | STRH
            | STP
            | STNP
            | STUR
            | STURB
            | STURH
            | STLR
            | STLRB
            | STLRH
            | STTR
            | STTRB
            | STTRH
    );
    let mut kills = if stores { 0 } else { reg(&ins.operands[0]) };
    if matches!(ins.opcode, LDP | LDNP | LDPSW | LDXP | LDAXP) {
        kills |= reg(&ins.operands[1]);
    }
    for op in &ins.operands {
        match op {
            Operand::RegPreIndex(b, _, true) | Operand::RegPostIndex(b, _) => kills |= 1 << b,
            _ => {}
        }
    }
    kills
}
