//! Struct offsets from the running kernel's BTF. Rust eBPF has no CO-RE relocations, so user
//! space reads the offsets the probe needs and passes them in as globals.

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Btf, Type};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Where the probe finds what it reads besides the flushed pointer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    /// offsetof(struct workqueue_struct, name)
    pub wq_name: u32,
    /// sizeof(workqueue_struct.name): WQ_NAME_LEN, 24 before 6.9 and 32 since.
    pub wq_name_len: u32,
    /// offsetof(struct task_struct, flags)
    pub task_flags: u32,
}

pub fn read_offsets() -> Result<Offsets> {
    let btf =
        Btf::from_file(VMLINUX).with_context(|| format!("cannot read kernel BTF {VMLINUX}"))?;
    let (wq_name, name_type) = member(&btf, "workqueue_struct", "name")?;
    let Type::Array(array) = resolve(&btf, name_type)? else {
        bail!("workqueue_struct.name is not an array");
    };
    let (task_flags, _) = member(&btf, "task_struct", "flags")?;
    Ok(Offsets {
        wq_name,
        wq_name_len: array.len() as u32,
        task_flags,
    })
}

/// Byte offset and type of `strukt.field`, looking into anonymous struct/union members.
fn member(btf: &Btf, strukt: &str, field: &str) -> Result<(u32, Type)> {
    let ty = btf
        .resolve_types_by_name(strukt)
        .with_context(|| format!("struct {strukt} not in kernel BTF"))?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(_)))
        .ok_or_else(|| anyhow!("struct {strukt} not in kernel BTF"))?;
    find_member(btf, &ty, field)?
        .map(|(bits, t)| (bits / 8, t))
        .ok_or_else(|| anyhow!("struct {strukt} has no member {field}"))
}

fn find_member(btf: &Btf, ty: &Type, field: &str) -> Result<Option<(u32, Type)>> {
    let (Type::Struct(s) | Type::Union(s)) = ty else {
        return Ok(None);
    };
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        let mty = btf.resolve_chained_type(m)?;
        if name == field {
            return Ok(Some((m.bit_offset(), mty)));
        }
        if name.is_empty() {
            if let Some((bits, t)) = find_member(btf, &resolve(btf, mty)?, field)? {
                return Ok(Some((m.bit_offset() + bits, t)));
            }
        }
    }
    Ok(None)
}

/// Strips typedefs and qualifiers.
fn resolve(btf: &Btf, mut ty: Type) -> Result<Type> {
    while let Type::Typedef(_) | Type::Const(_) | Type::Volatile(_) | Type::Restrict(_) = ty {
        let inner = ty.as_btf_type().context("BTF type without target")?;
        ty = btf.resolve_chained_type(inner)?;
    }
    Ok(ty)
}
