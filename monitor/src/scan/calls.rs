//! The flush calls of one module and the value each passes as the queue: the flow run over every
//! function (with its pieces) that calls or tail-calls a flush function.

use std::collections::BTreeSet;

use anyhow::Result;

use crate::scan::{
    aarch64,
    flow::{self, Effect, Insn, Piece, Ref, State, Target, Val},
    object::{Isa, Module},
    x86_64,
};

/// A call (or tail-call jump) of a flush function.
#[derive(Clone, Debug)]
pub(crate) struct FlushCall {
    /// The function piece it is in (an index into `Module::functions`).
    pub(crate) function: usize,
    /// Its offset in that piece's section.
    pub(crate) offset: u64,
    /// What the first argument register holds.
    pub(crate) queue: Val,
}

/// Decodes and follows the functions of one module.
pub(crate) struct Code<'m, 'd> {
    pub(crate) module: &'m Module<'d>,
}

impl<'m, 'd> Code<'m, 'd> {
    pub(crate) fn new(module: &'m Module<'d>) -> Self {
        Code { module }
    }

    /// Runs the flow over the function named `base` and its pieces; `visit` gets each
    /// instruction with its piece (an index into `Module::functions`) and the state before it.
    pub(crate) fn run(
        &mut self,
        base: &str,
        mut visit: impl FnMut(usize, &Insn, &State),
    ) -> Result<()> {
        let module = self.module;
        let members: Vec<usize> = (0..module.functions.len())
            .filter(|&i| module.functions[i].base_name() == base)
            .collect();
        let mut pieces = Vec::with_capacity(members.len());
        for &i in &members {
            let f = &module.functions[i];
            let code = module.code(f)?;
            let relocs = module.relocs(f.section, f.start..f.end)?;
            let insns = match module.isa {
                Isa::X86_64 => x86_64::decode(code, f.start, &relocs),
                Isa::Aarch64 => aarch64::decode(code, f.start, &relocs),
            };
            pieces.push(Piece {
                section: f.section,
                insns,
                entry: !f.is_cold(),
            });
        }
        flow::run(&pieces, |p, insn, state| visit(members[p], insn, state));
        Ok(())
    }

    /// The functions (by base name) with a relocation against `wanted` in their code.
    pub(crate) fn functions_referring(
        &mut self,
        wanted: impl Fn(Ref) -> bool,
    ) -> Result<BTreeSet<String>> {
        let module = self.module;
        let mut out = BTreeSet::new();
        for section in module.allocated_sections() {
            if !module.is_code(section) {
                continue;
            }
            module.each_reloc(section, |at, target, _| {
                if !wanted(target) {
                    return;
                }
                if let Some(f) = module.function_at(section, at) {
                    out.insert(module.functions[f].base_name().to_owned());
                }
            })?;
        }
        Ok(out)
    }
}

/// The registers that carry a call's arguments: x86_64 rdi, rsi, rdx, rcx, r8, r9; aarch64
/// x0-x7.
pub(crate) fn call_args(isa: Isa) -> &'static [u8] {
    match isa {
        Isa::X86_64 => &[7, 6, 2, 1, 8, 9],
        Isa::Aarch64 => &[0, 1, 2, 3, 4, 5, 6, 7],
    }
}

/// Every flush call in the module, with what it passes.
pub(crate) fn flush_calls(code: &mut Code<'_, '_>) -> Result<Vec<FlushCall>> {
    let module = code.module;
    let is_flush = |r: Ref| matches!(r, Ref::Extern(i) if module.flush.contains(&i));
    let first_arg = call_args(module.isa)[0];
    let mut calls = Vec::new();
    for base in code.functions_referring(is_flush)? {
        code.run(&base, |function, insn, state| {
            let target = match insn.effect {
                Effect::Call(Some(r))
                | Effect::Jump {
                    to: Target::At(r), ..
                } => r,
                _ => return,
            };
            if is_flush(target) {
                calls.push(FlushCall {
                    function,
                    offset: insn.offset,
                    queue: state[usize::from(first_arg)],
                });
            }
        })?;
    }
    Ok(calls)
}
