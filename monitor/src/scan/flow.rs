//! The value flow inside one function: which registers hold a `system_*wq` value (or a module
//! variable's, or a symbol's address) before each instruction. The decoders (x86_64.rs,
//! aarch64.rs) turn machine code into [`Insn`]s; this file knows no instruction set.
//!
//! It is a forward data-flow over basic blocks: a register keeps a value only when every path
//! into a block agrees on it, so a value is never claimed on a path that could have replaced it.
//! Code no path reaches (static-key branches patched at run time, switch targets reached
//! through an indirect jump) is analysed too, starting with nothing known.

use std::collections::{HashMap, VecDeque};

/// A general-purpose register's number (x86_64: rax = 0 ... r15 = 15; aarch64: x0 ... x30, and 31
/// for sp/xzr).
pub(crate) type Reg = u8;

/// Registers as a bit set.
pub(crate) type Regs = u32;

/// What a relocation names: an undefined symbol (by its index in the object's symbol table), or a
/// byte in one of the object's own sections.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Ref {
    Extern(usize),
    Local { section: usize, offset: u64 },
}

/// A memory operand the flow can follow.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mem {
    /// A relocated address (x86_64 rip-relative, aarch64 `:lo12:`).
    At(Ref),
    /// A register plus a displacement: a symbol's address held in `base` (aarch64 `adrp` + `add`).
    Base { base: Reg, offset: i64 },
}

/// Where a jump goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Target {
    /// An offset in the jump's own section.
    Here(u64),
    /// Through a relocation: another section (a `.cold` piece) or a symbol (a tail call).
    At(Ref),
    Indirect,
}

/// What an instruction does, as far as the flow cares.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Effect {
    Other,
    Load {
        dst: Reg,
        from: Mem,
    },
    /// `src` None: a constant or a register the flow does not track.
    Store {
        src: Option<Reg>,
        to: Mem,
    },
    /// `dst` = the address of `of` (x86_64 `lea`, aarch64 `add :lo12:`): the address escapes.
    AddrOf {
        dst: Reg,
        of: Ref,
    },
    /// `dst` = the 4 KiB page of `of` (aarch64 `adrp`), which only a following `:lo12:` access uses.
    Page {
        dst: Reg,
        of: Ref,
    },
    Copy {
        dst: Reg,
        src: Reg,
    },
    /// `dst` = `src` + `imm`: an address moved along (aarch64 `add x0, x1, #8` after a section
    /// anchor, x86_64 `lea rax, [rbx + 8]`).
    AddImm {
        dst: Reg,
        src: Reg,
        imm: i64,
    },
    Call(Option<Ref>),
    Jump {
        to: Target,
        conditional: bool,
    },
    /// Control does not go on to the next instruction (return, trap).
    Stop,
}

/// One decoded instruction.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Insn {
    /// Offset in its section.
    pub(crate) offset: u64,
    pub(crate) effect: Effect,
    /// Registers it overwrites (a call: the caller-saved ones).
    pub(crate) kills: Regs,
}

/// A register's value.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) enum Val {
    #[default]
    Unknown,
    /// The value stored at `Ref`: a `system_*wq` variable's, or a module variable's.
    Loaded(Ref),
    /// The address (or, after `adrp`, the page) of `Ref`.
    Addr(Ref),
}

pub(crate) type State = [Val; 32];

/// A contiguous run of instructions of one function: its body, or a `.cold`/`.part` piece.
pub(crate) struct Piece {
    pub(crate) section: usize,
    pub(crate) insns: Vec<Insn>,
    /// Entered from outside (a function's entry); a `.cold` piece is only jumped to.
    pub(crate) entry: bool,
}

/// Runs the flow over `pieces` (one function and its pieces) and calls `visit` with every
/// instruction, the index of its piece, and the registers' values just before it.
pub(crate) fn run(pieces: &[Piece], mut visit: impl FnMut(usize, &Insn, &State)) {
    let graph = Graph::new(pieces);
    let states = graph.solve();
    for (b, block) in graph.blocks.iter().enumerate() {
        let mut state = states[b].unwrap_or_default();
        for i in block.start..block.end {
            let insn = &graph.insns[i];
            visit(graph.piece_of[i], insn, &state);
            step(&mut state, insn);
        }
    }
}

/// The state after `insn`.
pub(crate) fn step(state: &mut State, insn: &Insn) {
    let set = match insn.effect {
        Effect::Load { dst, from } => Some((dst, load(state, from))),
        Effect::AddrOf { dst, of } | Effect::Page { dst, of } => Some((dst, Val::Addr(of))),
        Effect::Copy { dst, src } => Some((dst, state[usize::from(src)])),
        Effect::AddImm { dst, src, imm } => Some((dst, moved(state[usize::from(src)], imm))),
        _ => None,
    };
    for (r, val) in state.iter_mut().enumerate() {
        if insn.kills & (1 << r) != 0 {
            *val = Val::Unknown;
        }
    }
    if let Some((dst, val)) = set {
        state[usize::from(dst)] = val;
    }
}

/// An address plus a displacement; anything else is no longer known.
fn moved(val: Val, imm: i64) -> Val {
    match val {
        Val::Addr(Ref::Local { section, offset }) => Val::Addr(Ref::Local {
            section,
            offset: offset.wrapping_add_signed(imm),
        }),
        _ => Val::Unknown,
    }
}

/// What a load reads: a relocated place, or one a register holds the address of.
pub(crate) fn load(state: &State, from: Mem) -> Val {
    match from {
        Mem::At(r) => Val::Loaded(r),
        Mem::Base { base, offset } => match state[usize::from(base)] {
            Val::Addr(Ref::Local { section, offset: o }) => Val::Loaded(Ref::Local {
                section,
                offset: o.wrapping_add_signed(offset),
            }),
            Val::Addr(r @ Ref::Extern(_)) if offset == 0 => Val::Loaded(r),
            _ => Val::Unknown,
        },
    }
}

struct Block {
    start: usize,
    end: usize,
    succ: Vec<usize>,
}

/// The function's instructions, flattened, cut into basic blocks.
struct Graph {
    insns: Vec<Insn>,
    /// Each instruction's piece.
    piece_of: Vec<usize>,
    blocks: Vec<Block>,
    /// Blocks that start a piece entered from outside.
    entries: Vec<usize>,
}

impl Graph {
    fn new(pieces: &[Piece]) -> Graph {
        let (insns, piece_of, targets) = flatten(pieces);
        let leader = leaders(&insns, &piece_of, &targets);
        let (mut blocks, block_at, entries) = cut(&leader, &piece_of, pieces);
        for block in &mut blocks {
            let last = block.end - 1;
            if let Some(t) = targets[last] {
                block.succ.push(block_at[t]);
            }
            let falls = !matches!(
                insns[last].effect,
                Effect::Stop
                    | Effect::Jump {
                        conditional: false,
                        ..
                    }
            );
            if falls && block.end < insns.len() && piece_of[block.end] == piece_of[last] {
                block.succ.push(block_at[block.end]);
            }
        }
        Graph {
            insns,
            piece_of,
            blocks,
            entries,
        }
    }

    /// Each block's state on entry: the meet over the paths into it, iterated to a fixed point.
    /// Blocks no path reaches start from nothing known, and never change what a path into a
    /// reached block brings (padding after a jump falls through into a jump target).
    fn solve(&self) -> Vec<Option<State>> {
        let mut states: Vec<Option<State>> = vec![None; self.blocks.len()];
        for &e in &self.entries {
            states[e] = Some(State::default());
        }
        let none = vec![false; self.blocks.len()];
        self.propagate(&mut states, self.entries.clone(), &none);
        let reached: Vec<bool> = states.iter().map(Option::is_some).collect();
        for b in 0..self.blocks.len() {
            if states[b].is_none() {
                states[b] = Some(State::default());
                self.propagate(&mut states, vec![b], &reached);
            }
        }
        states
    }

    /// Carries states from the `work` blocks along the edges until nothing changes; blocks in
    /// `frozen` keep theirs.
    fn propagate(&self, states: &mut [Option<State>], work: Vec<usize>, frozen: &[bool]) {
        let mut work = VecDeque::from(work);
        while let Some(b) = work.pop_front() {
            let mut state = states[b].unwrap_or_default();
            for insn in &self.insns[self.blocks[b].start..self.blocks[b].end] {
                step(&mut state, insn);
            }
            for &s in &self.blocks[b].succ {
                if !frozen[s] && merge(&mut states[s], &state) {
                    work.push_back(s);
                }
            }
        }
    }
}

/// The pieces' instructions in one list, each one's piece, and where each jump lands in the
/// list (a jump out of the function lands nowhere).
fn flatten(pieces: &[Piece]) -> (Vec<Insn>, Vec<usize>, Vec<Option<usize>>) {
    let mut insns = Vec::new();
    let mut at = HashMap::new();
    let mut piece_of = Vec::new();
    for (p, piece) in pieces.iter().enumerate() {
        for insn in &piece.insns {
            at.insert((piece.section, insn.offset), insns.len());
            insns.push(*insn);
            piece_of.push(p);
        }
    }
    let targets = (0..insns.len())
        .map(|i| {
            let Effect::Jump { to, .. } = insns[i].effect else {
                return None;
            };
            match to {
                Target::Here(offset) => at.get(&(pieces[piece_of[i]].section, offset)).copied(),
                Target::At(Ref::Local { section, offset }) => at.get(&(section, offset)).copied(),
                _ => None,
            }
        })
        .collect();
    (insns, piece_of, targets)
}

/// Which instructions start a basic block: a piece's first, a jump's target, and the one after
/// a jump or a stop.
fn leaders(insns: &[Insn], piece_of: &[usize], targets: &[Option<usize>]) -> Vec<bool> {
    let mut leader = vec![false; insns.len() + 1];
    for i in 0..insns.len() {
        if i == 0 || piece_of[i] != piece_of[i - 1] {
            leader[i] = true;
        }
        if let Some(t) = targets[i] {
            leader[t] = true;
        }
        if ends_block(&insns[i].effect) {
            leader[i + 1] = true;
        }
    }
    leader
}

/// The blocks (without their edges), each instruction's block, and the blocks that start a
/// piece entered from outside.
fn cut(
    leader: &[bool],
    piece_of: &[usize],
    pieces: &[Piece],
) -> (Vec<Block>, Vec<usize>, Vec<usize>) {
    let n = piece_of.len();
    let mut blocks = Vec::new();
    let mut block_at = vec![0; n];
    let mut entries = Vec::new();
    let mut start = 0;
    for i in 1..=n {
        if i < n && !leader[i] {
            continue;
        }
        let starts_piece = start == 0 || piece_of[start] != piece_of[start - 1];
        if starts_piece && pieces[piece_of[start]].entry {
            entries.push(blocks.len());
        }
        block_at[start..i].fill(blocks.len());
        blocks.push(Block {
            start,
            end: i,
            succ: Vec::new(),
        });
        start = i;
    }
    (blocks, block_at, entries)
}

fn ends_block(effect: &Effect) -> bool {
    matches!(effect, Effect::Jump { .. } | Effect::Stop)
}

/// Meets `incoming` into `into`; true when `into` changed.
fn merge(into: &mut Option<State>, incoming: &State) -> bool {
    match into {
        None => {
            *into = Some(*incoming);
            true
        }
        Some(state) => {
            let mut changed = false;
            for (have, new) in state.iter_mut().zip(incoming) {
                if *have != *new && *have != Val::Unknown {
                    *have = Val::Unknown;
                    changed = true;
                }
            }
            changed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WQ: Ref = Ref::Extern(1);
    const OTHER: Ref = Ref::Extern(2);
    const FLUSH: Ref = Ref::Extern(3);

    fn insn(offset: u64, effect: Effect, kills: Regs) -> Insn {
        Insn {
            offset,
            effect,
            kills,
        }
    }

    fn load(offset: u64, dst: Reg, what: Ref) -> Insn {
        insn(
            offset,
            Effect::Load {
                dst,
                from: Mem::At(what),
            },
            1 << dst,
        )
    }

    fn jump(offset: u64, to: u64, conditional: bool) -> Insn {
        let effect = Effect::Jump {
            to: Target::Here(to),
            conditional,
        };
        insn(offset, effect, 0)
    }

    fn call(offset: u64) -> Insn {
        insn(offset, Effect::Call(Some(FLUSH)), 0b1)
    }

    /// The value register 0 holds at each flush call.
    fn at_calls(pieces: &[Piece]) -> Vec<Val> {
        let mut out = Vec::new();
        run(pieces, |_, i, state| {
            if i.effect == Effect::Call(Some(FLUSH)) {
                out.push(state[0]);
            }
        });
        out
    }

    fn piece(insns: Vec<Insn>) -> Piece {
        Piece {
            section: 1,
            insns,
            entry: true,
        }
    }

    #[test]
    fn a_value_survives_a_join_only_when_every_path_brings_it() {
        // 0: r0 = WQ; 1: if .. goto 3; 2: r0 = OTHER; 3: call
        let differ = piece(vec![
            load(0, 0, WQ),
            jump(1, 3, true),
            load(2, 0, OTHER),
            call(3),
        ]);
        assert_eq!(at_calls(&[differ]), [Val::Unknown]);
        let agree = piece(vec![
            load(0, 0, WQ),
            jump(1, 3, true),
            load(2, 0, WQ),
            call(3),
        ]);
        assert_eq!(at_calls(&[agree]), [Val::Loaded(WQ)]);
    }

    #[test]
    fn calls_and_writes_kill_what_they_overwrite() {
        let p = piece(vec![
            load(0, 0, WQ),
            insn(1, Effect::Copy { dst: 5, src: 0 }, 1 << 5),
            call(2),
            call(3),
            insn(4, Effect::Copy { dst: 0, src: 5 }, 1),
            call(5),
        ]);
        assert_eq!(
            at_calls(&[p]),
            [Val::Loaded(WQ), Val::Unknown, Val::Loaded(WQ)]
        );
    }

    #[test]
    fn unreached_padding_does_not_spoil_a_jump_target() {
        // 0: r0 = WQ; 1: if .. goto 4; 2: stop; 3: (padding, unreached) falls into 4: call
        let p = piece(vec![
            load(0, 0, WQ),
            jump(1, 4, true),
            insn(2, Effect::Stop, 0),
            insn(3, Effect::Other, Regs::MAX),
            call(4),
        ]);
        assert_eq!(at_calls(&[p]), [Val::Loaded(WQ)]);
    }

    #[test]
    fn a_cold_piece_gets_the_state_of_the_jump_into_it() {
        let body = piece(vec![
            load(0, 0, WQ),
            insn(
                1,
                Effect::Jump {
                    to: Target::At(Ref::Local {
                        section: 2,
                        offset: 8,
                    }),
                    conditional: true,
                },
                0,
            ),
            insn(2, Effect::Stop, 0),
        ]);
        let cold = Piece {
            section: 2,
            insns: vec![call(8)],
            entry: false,
        };
        assert_eq!(at_calls(&[body, cold]), [Val::Loaded(WQ)]);
    }

    #[test]
    fn a_register_holding_an_address_loads_the_place_it_points_at() {
        let var = Ref::Local {
            section: 4,
            offset: 16,
        };
        let p = piece(vec![
            insn(
                0,
                Effect::Page {
                    dst: 1,
                    of: Ref::Local {
                        section: 4,
                        offset: 8,
                    },
                },
                1 << 1,
            ),
            insn(
                1,
                Effect::Load {
                    dst: 0,
                    from: Mem::Base { base: 1, offset: 8 },
                },
                1,
            ),
            call(2),
        ]);
        assert_eq!(at_calls(&[p]), [Val::Loaded(var)]);
    }
}
