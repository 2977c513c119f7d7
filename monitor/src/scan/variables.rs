//! Module variables that stand for a system queue: a flush of `my_wq` is a flush of
//! `system_unbound_wq` when every store to `my_wq` in the module stores that queue's value and its
//! address never escapes (no `lea`, no pointer to it in data, no export).

use std::collections::{BTreeSet, HashMap};

use anyhow::Result;

use crate::scan::{
    calls::Code,
    flow::{Effect, Mem, Ref, Val},
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
    let near = |r: Ref| matches!(r, Ref::Local { section: s, .. } if s == section);
    let mut queues = BTreeSet::new();
    let mut only_queues = true;
    for base in code.functions_referring(near)? {
        code.run(&base, |_, insn, state| {
            if insn.reloc != Some(var) {
                return;
            }
            match insn.effect {
                Effect::Load {
                    from: Mem::At(_), ..
                }
                | Effect::Page { .. } => {}
                Effect::Store {
                    src: Some(src),
                    to: Mem::At(_),
                } => match state[usize::from(src)] {
                    Val::Loaded(Ref::Extern(q)) if module.queues.contains_key(&q) => {
                        queues.insert(module.queues[&q].clone());
                    }
                    _ => only_queues = false,
                },
                _ => only_queues = false,
            }
        })?;
    }
    Ok((only_queues && !queues.is_empty()).then_some(queues))
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
        let hit = code.relocs(s)?.iter().any(|(at, target)| match target {
            Ref::Local {
                section: t,
                offset: o,
            } if t == section => {
                // Code's pc-relative targets are only known once decoded: look near.
                let outside = is_code && module.function_at(s, at).is_none();
                (!is_code && o == offset) || (outside && o.abs_diff(offset) <= 16)
            }
            _ => false,
        });
        if hit {
            return Ok(true);
        }
    }
    Ok(false)
}
