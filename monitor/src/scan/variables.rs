//! Module variables that stand for a system queue: a flush of `my_wq` is a flush of
//! `system_unbound_wq` when every store to `my_wq` in the module stores that queue's value and its
//! address never escapes: no pointer to it in data (a struct, the export table), none passed to
//! a call or stored anywhere.
//!
//! A store is found by the place it writes, however the code addresses it: a relocation naming
//! the variable (x86_64 rip-relative, aarch64 `:lo12:`), or a register holding the address of a
//! section anchor plus an offset (gcc on aarch64 addresses `.bss` variables from `.bss` itself).

use std::collections::{BTreeSet, HashMap};

use anyhow::Result;

use crate::scan::{
    calls::{Code, call_args},
    flow::{self, Effect, Ref, State, Val},
};

/// For each of `vars` that only ever receives system queues: their names.
pub(crate) fn system_queues_in(
    code: &mut Code<'_, '_>,
    vars: &BTreeSet<(usize, u64)>,
) -> Result<HashMap<(usize, u64), BTreeSet<String>>> {
    let mut out = HashMap::new();
    for &(section, offset) in vars {
        if let Some(queues) = assigned(code, section, offset)? {
            out.insert((section, offset), queues);
        }
    }
    Ok(out)
}

/// What the stores to one variable put there.
#[derive(Default)]
struct Stores {
    queues: BTreeSet<String>,
    /// Something else is stored, or its address escapes.
    other: bool,
}

/// The queues stored in the variable at `offset` of `section`; None when anything else may be.
fn assigned(
    code: &mut Code<'_, '_>,
    section: usize,
    offset: u64,
) -> Result<Option<BTreeSet<String>>> {
    let module = code.module;
    let var = Ref::Local { section, offset };
    if escapes_in_data(code, var)? {
        return Ok(None);
    }
    let args = call_args(module.isa);
    let near = |r: Ref| matches!(r, Ref::Local { section: s, .. } if s == section);
    let mut stores = Stores::default();
    for base in code.functions_referring(near)? {
        code.run(&base, |_, insn, state| {
            let queue = |r: Ref| match r {
                Ref::Extern(q) => module.queues.get(&q).cloned(),
                Ref::Local { .. } => None,
            };
            visit(&mut stores, var, args, insn.effect, state, queue);
        })?;
    }
    let Stores { queues, other } = stores;
    Ok((!other && !queues.is_empty()).then_some(queues))
}

/// One instruction's part: a store to the variable, or its address passed on.
fn visit(
    stores: &mut Stores,
    var: Ref,
    args: &[u8],
    effect: Effect,
    state: &State,
    queue: impl Fn(Ref) -> Option<String>,
) {
    let holds_address = |r: u8| state[usize::from(r)] == Val::Addr(var);
    match effect {
        Effect::Store { src, to } => {
            if src.is_some_and(holds_address) {
                stores.other = true;
            }
            if flow::load(state, to) != Val::Loaded(var) {
                return;
            }
            let value = src.map(|r| state[usize::from(r)]);
            match value {
                Some(Val::Loaded(r)) if queue(r).is_some() => {
                    stores.queues.extend(queue(r));
                }
                _ => stores.other = true,
            }
        }
        Effect::Call(_) | Effect::Jump { .. } if args.iter().any(|&r| holds_address(r)) => {
            stores.other = true;
        }
        _ => {}
    }
}

/// Whether data (a pointer in a struct, the export table) or code outside any function refers
/// to the variable.
fn escapes_in_data(code: &mut Code<'_, '_>, var: Ref) -> Result<bool> {
    let module = code.module;
    let Ref::Local { section, offset } = var else {
        return Ok(true);
    };
    for s in module.allocated_sections() {
        let is_code = module.is_code(s);
        let mut hit = false;
        module.each_reloc(s, |at, target, _| {
            if let Ref::Local {
                section: t,
                offset: o,
            } = target
                && t == section
            {
                // Code's pc-relative targets are only known once decoded: look near.
                let outside = is_code && module.function_at(s, at).is_none();
                hit |= (!is_code && o == offset) || (outside && o.abs_diff(offset) <= 16);
            }
        })?;
        if hit {
            return Ok(true);
        }
    }
    Ok(false)
}
