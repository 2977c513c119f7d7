//! Struct offsets from the running kernel's BTF. Rust eBPF has no CO-RE relocations, so user
//! space reads the offsets the probe needs and passes them in as globals.

use std::{collections::HashMap, fs::File, io::Write as _, os::fd::AsRawFd as _};

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Backend, Btf, Type};
use monitor_ebpf::WORKER_CHAIN;

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
    /// From a worker task to the workqueue of the work item it runs (see
    /// `monitor_ebpf::WORKER_CHAIN`); None when this kernel's BTF lacks a link.
    pub worker_chain: Option<[u32; WORKER_CHAIN]>,
    /// offsetof(struct worker, current_func), for `--waits`; 0 when BTF lacks it.
    pub worker_func: u32,
    /// offsetof(struct task_struct, pid): a worker's thread id, for `--waits`' task iterator.
    pub task_pid: u32,
}

/// The structs whose members the probe reads.
const STRUCTS: &[&str] = &[
    "workqueue_struct",
    "task_struct",
    "kthread",
    "worker",
    "pool_workqueue",
];

pub fn read_offsets() -> Result<Offsets> {
    let btf = open_vmlinux().with_context(|| format!("cannot read kernel BTF {VMLINUX}"))?;
    let structs = Structs::find(&btf, STRUCTS)?;
    let (wq_name, name_type) = structs.member("workqueue_struct", "name")?;
    let Type::Array(array) = resolve(&btf, name_type)? else {
        bail!("workqueue_struct.name is not an array");
    };
    let (task_flags, _) = structs.member("task_struct", "flags")?;
    let (task_pid, _) = structs.member("task_struct", "pid")?;
    let worker_chain = worker_chain(&structs).ok();
    let worker_func = structs
        .member("worker", "current_func")
        .map_or(0, |(off, _)| off);
    Ok(Offsets {
        wq_name,
        wq_name_len: array.len() as u32,
        task_flags,
        worker_chain,
        worker_func,
        task_pid,
    })
}

/// Which of the kernel's counters of skipped probe runs this kernel keeps. Read from BTF, not
/// guessed from a version: a field in `bpf_prog_info`/`bpf_link_info` exists exactly where the
/// kernel reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MissCounters {
    /// `bpf_prog_info.recursion_misses` (5.12+, with the trampolines' recursion check).
    pub recursion_misses: bool,
    /// `bpf_link_info.kprobe_multi.missed` (6.7+): that series also counts the runs a kprobe
    /// or kprobe-multi program was skipped for in `recursion_misses`.
    pub kprobe_missed: bool,
}

/// Reads [`MissCounters`]; off the attach path, since it costs two more scans of the BTF.
pub fn read_miss_counters() -> Result<MissCounters> {
    let btf = open_vmlinux().with_context(|| format!("cannot read kernel BTF {VMLINUX}"))?;
    let structs = Structs::find(&btf, &["bpf_prog_info", "bpf_link_info"])?;
    let kprobe_missed = structs
        .member("bpf_link_info", "kprobe_multi")
        .ok()
        .map(|(_, ty)| resolve(&btf, ty).and_then(|t| find_member(&btf, &t, "missed")))
        .transpose()?
        .flatten()
        .is_some();
    Ok(MissCounters {
        recursion_misses: structs.member("bpf_prog_info", "recursion_misses").is_ok(),
        kprobe_missed,
    })
}

/// btf-rs's mmap backend only indexes where each type starts. Its default backend also builds a
/// table of every name, which under QEMU/TCG took 0.7 s of a 2.5 s start-up for the few lookups
/// made here. sysfs BTF can be mmapped since 6.16; older kernels' is copied into a memfd.
fn open_vmlinux() -> Result<Btf> {
    if let Ok(btf) = Btf::from_file_with_backend(VMLINUX, Backend::Mmap) {
        return Ok(btf);
    }
    let bytes = std::fs::read(VMLINUX)?;
    let memfd = rustix::fs::memfd_create("wqflush-btf", rustix::fs::MemfdFlags::CLOEXEC)
        .context("memfd_create")?;
    let mut memfd = File::from(memfd);
    memfd
        .write_all(&bytes)
        .context("copying BTF into a memfd")?;
    // The mapping btf-rs makes outlives both the path's fd and `memfd`.
    Ok(Btf::from_file_with_backend(
        format!("/proc/self/fd/{}", memfd.as_raw_fd()),
        Backend::Mmap,
    )?)
}

/// Kernel history: struct kthread hangs off task_struct.worker_private since 5.17, off
/// set_child_tid before; kthread.data is the struct worker of a workqueue worker
/// (kernel/workqueue_internal.h), whose current_pwq->wq is the queue of the running work item.
fn worker_chain(structs: &Structs) -> Result<[u32; WORKER_CHAIN]> {
    let task = structs
        .member("task_struct", "worker_private")
        .or_else(|_| structs.member("task_struct", "set_child_tid"))?;
    Ok([
        task.0,
        structs.member("kthread", "data")?.0,
        structs.member("worker", "current_pwq")?.0,
        structs.member("pool_workqueue", "wq")?.0,
    ])
}

/// The structs a caller asks for, each looked up once: a lookup by name is a scan of all ~130k types
/// with the mmap backend. (One regex pass over the names measured slower than five plain scans.)
struct Structs<'a> {
    btf: &'a Btf,
    by_name: HashMap<&'static str, Vec<Type>>,
}

impl<'a> Structs<'a> {
    fn find(btf: &'a Btf, names: &[&'static str]) -> Result<Self> {
        let mut by_name = HashMap::new();
        for &name in names {
            let types = btf.resolve_types_by_name(name).unwrap_or_default();
            let structs = types
                .into_iter()
                .filter(|t| matches!(t, Type::Struct(_)))
                .collect();
            by_name.insert(name, structs);
        }
        Ok(Self { btf, by_name })
    }

    /// Byte offset and type of `strukt.field`, looking into anonymous struct/union members.
    /// Several compilation units may define a struct of the same name; the first with the field
    /// wins.
    fn member(&self, strukt: &str, field: &str) -> Result<(u32, Type)> {
        let types = self
            .by_name
            .get(strukt)
            .filter(|types| !types.is_empty())
            .with_context(|| format!("struct {strukt} not in kernel BTF"))?;
        for ty in types {
            if let Some((bits, t)) = find_member(self.btf, ty, field)? {
                return Ok((bits / 8, t));
            }
        }
        Err(anyhow!(
            "no struct {strukt} with a member {field} in kernel BTF"
        ))
    }
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
        if name.is_empty()
            && let Some((bits, t)) = find_member(btf, &resolve(btf, mty)?, field)?
        {
            return Ok(Some((m.bit_offset() + bits, t)));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's own kernel BTF (every kernel wqflush supports has these structs).
    #[test]
    fn reads_the_offsets_the_probe_needs_from_this_kernel() {
        if !std::path::Path::new(VMLINUX).exists() {
            eprintln!("no {VMLINUX} here; the VM tests cover BTF");
            return;
        }
        let o = read_offsets().unwrap();
        assert!(o.wq_name > 0 && [24, 32].contains(&o.wq_name_len), "{o:?}");
        assert!(o.task_flags > 0, "{o:?}");
        let chain = o.worker_chain.expect("worker chain");
        assert!(chain.iter().all(|&off| off > 0), "{chain:?}");
        // This host runs 6.18: both counters exist.
        let c = read_miss_counters().unwrap();
        assert!(c.recursion_misses && c.kprobe_missed, "{c:?}");
    }
}
