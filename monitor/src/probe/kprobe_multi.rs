//! The kprobe program on a kprobe-multi (fprobe) link: ftrace-based like fentry, but its handler
//! runs with preemption disabled, so no flusher preempted inside the program can make the
//! kernel skip it for the next flush on that CPU (fentry's `recursion_misses`), and it needs no
//! perf event, so Debian's `perf_event_paranoid=3` does not demand CAP_SYS_ADMIN for it.
//! Kernel history: BPF_TRACE_KPROBE_MULTI since 5.18 (CONFIG_FPROBE); its miss counters in
//! `bpf_link_info` since 6.7.
//!
//! aya 0.14 cannot load a program for this attach type (the kernel wants
//! `expected_attach_type = BPF_TRACE_KPROBE_MULTI` at load time). So the same program of the same
//! object is linked here with aya-obj, against the maps aya already created (and whose
//! read-only globals it already froze), and loaded and attached through `bpf_syscall`.

use std::{
    collections::HashSet,
    ffi::CString,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result, anyhow};
use aya::{Ebpf, maps::Map};
use aya_obj::generated::{bpf_attach_type, bpf_prog_type};

use crate::probe::bpf_syscall;

/// `BPF_TRACE_KPROBE_SESSION` in the kernel's `enum bpf_attach_type` (6.10+), right after
/// `BPF_NETKIT_PEER` (55), the last value aya-obj 0.3's bindings know.
pub const BPF_TRACE_KPROBE_SESSION: u32 = 56;

/// When the link runs the program.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// At the function's entry.
    Entry,
    /// At its return (BPF_F_KPROBE_MULTI_RETURN).
    Return,
    /// A kprobe session (6.10+): at the entry, and at the return of each call whose entry run
    /// returned 0.
    Session,
}

/// A live kprobe-multi attachment; dropping it detaches.
pub struct MultiLink {
    pub prog: OwnedFd,
    pub link: OwnedFd,
}

/// Loads `program` of `object` (already loaded by aya as `ebpf`, for its maps) and attaches it
/// to `function` with a kprobe-multi link that runs it as `run` says.
pub fn attach(
    ebpf: &Ebpf,
    object: &[u8],
    program: &str,
    function: &str,
    run: Run,
) -> Result<MultiLink> {
    let (insns, license) = linked_program(ebpf, object, program)?;
    let attach_type = match run {
        Run::Session => BPF_TRACE_KPROBE_SESSION,
        Run::Entry | Run::Return => bpf_attach_type::BPF_TRACE_KPROBE_MULTI as u32,
    };
    let flags = match run {
        Run::Return => aya_obj::generated::BPF_F_KPROBE_MULTI_RETURN,
        Run::Entry | Run::Session => 0,
    };
    let load = bpf_syscall::ProgLoad {
        prog_type: bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32,
        expected_attach_type: attach_type,
        insns: &insns,
        license: &license,
        name: program,
    };
    let prog = bpf_syscall::prog_load(&load).map_err(|(err, log)| {
        let hint = match err.raw_os_error() {
            // An unknown expected_attach_type: the kernel predates kprobe-multi.
            Some(libc::EINVAL) if log.is_empty() => " (kprobe-multi needs 5.18+)",
            _ => "",
        };
        let log = if log.is_empty() {
            log
        } else {
            format!("\nverifier log:\n{log}")
        };
        anyhow!("loading failed: {err}{hint}{log}")
    })?;
    let name = CString::new(function).context("function name")?;
    let link = bpf_syscall::kprobe_multi_link(prog.as_fd(), &[&name], attach_type, flags)
        .map_err(|e| anyhow!("attaching failed: {e}{}", link_hint(&e, run)))?;
    Ok(MultiLink { prog, link })
}

/// What a refused link most likely means.
fn link_hint(e: &std::io::Error, run: Run) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(524) => " (the kernel has no fprobe: CONFIG_FPROBE)",
        // Before 6.10 the kernel knows no kprobe session; it checks only at the link.
        Some(libc::EINVAL) if run == Run::Session => " (kprobe sessions need 6.10+)",
        Some(libc::EINVAL) => " (kprobe-multi links need 5.18+)",
        Some(libc::ESRCH) | Some(libc::ENOENT) => " (no such function to probe)",
        _ => "",
    }
}

/// `program`'s instructions with its map references and calls resolved, as aya resolves them
/// for the programs it loads itself.
fn linked_program(
    ebpf: &Ebpf,
    object: &[u8],
    program: &str,
) -> Result<(Vec<aya_obj::generated::bpf_insn>, CString)> {
    let mut obj = aya_obj::Object::parse(object).context("parsing the eBPF object")?;
    let maps: Vec<(String, i32, aya_obj::Map)> = obj
        .maps
        .iter()
        .map(|(name, def)| Ok((name.clone(), map_fd(ebpf, name)?, def.clone())))
        .collect::<Result<_>>()?;
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_maps(
        maps.iter().map(|(name, fd, def)| (name.as_str(), *fd, def)),
        &text_sections,
    )
    .context("resolving the program's maps")?;
    obj.relocate_calls(&text_sections)
        .context("resolving the program's calls")?;
    let prog = obj
        .programs
        .get(program)
        .with_context(|| format!("eBPF object has no program {program}"))?;
    let function = obj
        .functions
        .get(&prog.function_key())
        .with_context(|| format!("eBPF object has no code for {program}"))?;
    Ok((function.instructions.clone(), prog.license.clone()))
}

/// The fd of the map aya created for `name`.
fn map_fd(ebpf: &Ebpf, name: &str) -> Result<i32> {
    let map = ebpf
        .map(name)
        .with_context(|| format!("aya created no map {name}"))?;
    let data = match map {
        Map::Array(d) | Map::HashMap(d) | Map::PerCpuArray(d) | Map::RingBuf(d) => d,
        _ => {
            return Err(anyhow!(
                "map {name} is of a type this loader does not expect"
            ));
        }
    };
    Ok(data.fd().as_fd().as_raw_fd())
}
