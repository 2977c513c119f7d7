//! x86_64 machine code to the flow's [`Insn`]s, with iced-x86: what each instruction loads,
//! stores, copies, calls or jumps to, and which registers it overwrites.

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess,
    OpKind, Register,
};

use crate::scan::{
    flow::{Effect, Insn, Mem, Reg, Regs, Target},
    object::Relocs,
};

/// What a call may overwrite (SysV ABI): rax, rcx, rdx, rsi, rdi, r8-r11.
const CALLER_SAVED: Regs = 0b1111_1100_0111;

/// Decodes `code`, which starts at `start` in its section, with that section's relocations.
pub(crate) fn decode(code: &[u8], start: u64, relocs: &Relocs) -> Vec<Insn> {
    let mut decoder = Decoder::with_ip(64, code, start, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut ins = Instruction::default();
    let mut out = Vec::with_capacity(code.len() / 4);
    while decoder.can_decode() {
        decoder.decode_out(&mut ins);
        // A relocated field lies inside the instruction; rip-relative values count from its end.
        let reloc = relocs.within(ins.ip(), ins.next_ip(), ins.next_ip());
        let (effect, extra) = if ins.is_invalid() {
            (Effect::Other, Regs::MAX)
        } else {
            classify(&ins, reloc)
        };
        out.push(Insn {
            offset: ins.ip(),
            effect,
            kills: extra | written(&mut info, &ins),
        });
    }
    out
}

fn classify(ins: &Instruction, reloc: Option<crate::scan::flow::Ref>) -> (Effect, Regs) {
    let jump = |conditional| {
        let to = reloc.map_or(Target::Here(ins.near_branch_target()), Target::At);
        Effect::Jump { to, conditional }
    };
    match ins.flow_control() {
        FlowControl::Call => (Effect::Call(reloc), CALLER_SAVED),
        FlowControl::IndirectCall => (Effect::Call(None), CALLER_SAVED),
        FlowControl::UnconditionalBranch => (jump(false), 0),
        FlowControl::ConditionalBranch => (jump(true), 0),
        FlowControl::IndirectBranch => (
            Effect::Jump {
                to: Target::Indirect,
                conditional: false,
            },
            0,
        ),
        FlowControl::Return | FlowControl::Exception | FlowControl::Interrupt => (Effect::Stop, 0),
        _ => (data(ins, reloc), 0),
    }
}

/// Moves of 64-bit values between registers and memory, and `lea`.
fn data(ins: &Instruction, reloc: Option<crate::scan::flow::Ref>) -> Effect {
    let reg = |i| gpr64(ins.op_register(i));
    let mem = || memory(ins, reloc);
    match (ins.mnemonic(), ins.op0_kind(), ins.op1_kind()) {
        (Mnemonic::Mov, OpKind::Register, OpKind::Register) => match (reg(0), reg(1)) {
            (Some(dst), Some(src)) => Effect::Copy { dst, src },
            _ => Effect::Other,
        },
        (Mnemonic::Mov, OpKind::Register, OpKind::Memory) => match (reg(0), mem()) {
            (Some(dst), Some(from)) => Effect::Load { dst, from },
            _ => Effect::Other,
        },
        (Mnemonic::Mov, OpKind::Memory, kind) => match mem() {
            Some(to) if ins.memory_size().size() == 8 => Effect::Store {
                src: if kind == OpKind::Register {
                    reg(1)
                } else {
                    None
                },
                to,
            },
            _ => Effect::Other,
        },
        (Mnemonic::Lea, OpKind::Register, OpKind::Memory) => match (reg(0), reloc, mem()) {
            (Some(dst), Some(of), Some(Mem::At(_))) => Effect::AddrOf { dst, of },
            (Some(dst), None, Some(Mem::Base { base, offset })) => Effect::AddImm {
                dst,
                src: base,
                imm: offset,
            },
            _ => Effect::Other,
        },
        _ => Effect::Other,
    }
}

/// A memory operand the flow can follow: rip-relative with a relocation, or a register base
/// without an index, in the default segment.
fn memory(ins: &Instruction, reloc: Option<crate::scan::flow::Ref>) -> Option<Mem> {
    if ins.segment_prefix() != Register::None || ins.memory_index() != Register::None {
        return None;
    }
    if ins.memory_base() == Register::RIP {
        return reloc.map(Mem::At);
    }
    let base = gpr64(ins.memory_base())?;
    #[allow(clippy::cast_possible_wrap)] // the displacement is a sign-extended 32-bit field
    let offset = ins.memory_displacement64() as i64;
    Some(Mem::Base { base, offset })
}

/// The general-purpose registers `ins` writes, whole (writing eax clears rax's upper half).
fn written(info: &mut InstructionInfoFactory, ins: &Instruction) -> Regs {
    info.info(ins)
        .used_registers()
        .iter()
        .filter(|u| {
            matches!(
                u.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            )
        })
        .filter_map(|u| gpr64(u.register()))
        .fold(0, |regs, r| regs | 1 << r)
}

/// rax = 0 ... r15 = 15 for any width of a general-purpose register.
fn gpr64(reg: Register) -> Option<Reg> {
    let full = reg.full_register();
    let n = (full as u32).checked_sub(Register::RAX as u32)?;
    (n < 16).then_some(n as Reg)
}
