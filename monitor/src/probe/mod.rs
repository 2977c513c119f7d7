//! Loading the eBPF object and attaching it to the flush function: by a kprobe-multi link, by
//! fentry or by a kprobe.
//!
//! Why `--attach auto` tries them in this order (measured under QEMU, 4 kthreads flushing on
//! one CPU beside a busy one; docs/preemption.md):
//! - kprobe-multi (5.18+, CONFIG_FPROBE): its handler runs with preemption disabled, so it never
//!   skips a flush, and it needs no perf event, so it works without CAP_SYS_ADMIN under
//!   Debian's `perf_event_paranoid=3` (the shipped unit).
//! - fentry, only where it cannot lose: a trampoline program runs preemptibly, and since 5.12
//!   the kernel skips it on a CPU where a preempted flusher is still inside it
//!   (`recursion_misses`; 84-91% of such a storm on full or lazy preemption, Debian 7.x's
//!   default). Kernels before 5.12 have no such check; without preemption nothing interrupts
//!   the program.
//! - kprobe: runs with preemption off, loses nothing, but needs `perf_event_open`.
//!
//! `--attach fentry` stays possible; its misses are counted and reported.
//!
//! Nothing here outlives the process: every link and program is a file descriptor, so the
//! kernel detaches them when wqflush exits, however it exits.

pub mod bpf_syscall;
pub mod errors;
pub mod kprobe_multi;
pub mod maps;
pub mod unpreempted;

use std::fmt;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Btf, Ebpf,
    programs::{FEntry, FExit, Iter, KProbe, ProgramError, RawTracePoint},
};
use monitor_ebpf::{MAX_FLUSH_RANGES, MAX_QUEUES, NAME_LEN};

use std::os::fd::AsFd as _;

use self::errors::{ENOTSUPP, errno, explain, explain_object};
use crate::kernel::{
    btf::{self, MissCounters},
    preemption,
    target::Target,
};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/wqflush-ebpf"));

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Attach {
    /// kprobe-multi, else fentry where it cannot miss flushes, else kprobe
    Auto,
    /// a BPF trampoline; can miss flushes on full or lazy preemption (counted)
    Fentry,
    /// a perf-event kprobe (needs CAP_SYS_ADMIN under perf_event_paranoid=3)
    Kprobe,
    /// a kprobe-multi (fprobe) link, 5.18+
    KprobeMulti,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Fentry,
    Kprobe,
    KprobeMulti,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Fentry => "fentry",
            Method::Kprobe => "kprobe",
            Method::KprobeMulti => "kprobe-multi",
        })
    }
}

impl Attach {
    pub fn methods(self) -> &'static [Method] {
        match self {
            Attach::Auto => &[Method::KprobeMulti, Method::Fentry, Method::Kprobe],
            Attach::Fentry => &[Method::Fentry],
            Attach::Kprobe => &[Method::Kprobe],
            Attach::KprobeMulti => &[Method::KprobeMulti],
        }
    }
}

/// A live probe: dropping it detaches and unloads everything.
pub struct Probe {
    pub ebpf: Ebpf,
    pub method: Method,
    /// The kprobe-multi program and link, which aya does not hold.
    multi: Option<kprobe_multi::MultiLink>,
    /// `--waits` with kprobe-multi: the return program's link.
    _multi_exit: Option<kprobe_multi::MultiLink>,
    /// `--waits`: the exit program and the work-item tracepoint are attached.
    pub waits: bool,
}

/// Attaches with the first method that works; the error lists every method's reason.
pub fn attach(target: &Target, attach: Attach, waits: bool) -> Result<Probe> {
    let mut reasons = Vec::new();
    // Without `--waits` a method that fails attaches nothing, so the next one reuses its object:
    // one load, one set of maps (Debian's 6.1 refuses kprobe-multi only at the link).
    let mut spare = None;
    for &method in attach.methods() {
        if attach == Attach::Auto
            && method == Method::Fentry
            && let Some(why) =
                preemption::fentry_can_miss(btf::read_miss_counters().unwrap_or_default())
        {
            reasons.push(format!(
                "  fentry: not chosen: it can miss flushes here ({why}); --attach fentry accepts \
                 that, with the misses counted"
            ));
            continue;
        }
        if attach == Attach::Auto && method == Method::KprobeMulti && target.lacks_fprobe {
            reasons.push(
                "  kprobe-multi: not available: this kernel has no fprobe (CONFIG_FPROBE: a \
                 feature probe's kprobe-multi link was refused as unsupported)"
                    .to_owned(),
            );
            continue;
        }
        let attached = match waits {
            true => attach_with(target, method, waits),
            false => attach_reusing(target, method, &mut spare),
        };
        match attached {
            Ok(probe) => return Ok(probe),
            Err(err) => reasons.push(format!("  {method}: {err:#}")),
        }
    }
    Err(anyhow!(
        "cannot probe {} on this kernel:\n{}\nRun `wqflush doctor` for details, or `cargo xtask demo` \
         to see wqflush in a Debian kernel under QEMU.",
        target.function,
        reasons.join("\n")
    ))
}

/// Loads and attaches one method in a fresh object, so a failed method leaves nothing behind.
/// With `waits`, the exit program and the work-item tracepoint go first, so no flush the entry
/// program tracks can return unseen.
pub fn attach_with(target: &Target, method: Method, waits: bool) -> Result<Probe> {
    let mut ebpf = load(target, waits)?;
    crate::timing::mark("eBPF object parsed, maps created");
    let multi_exit = if waits {
        attach_waits(&mut ebpf, target, method)?
    } else {
        None
    };
    let multi = attach_entry(&mut ebpf, target, method)?;
    Ok(Probe {
        ebpf,
        method,
        multi,
        _multi_exit: multi_exit,
        waits,
    })
}

/// Attaches one method without `--waits`, in `spare` (the object a failed method left, with
/// nothing attached) or a fresh object; on failure the object goes back to `spare`.
fn attach_reusing(target: &Target, method: Method, spare: &mut Option<Ebpf>) -> Result<Probe> {
    let mut ebpf = match spare.take() {
        Some(ebpf) => ebpf,
        None => {
            let ebpf = load(target, false)?;
            crate::timing::mark("eBPF object parsed, maps created");
            ebpf
        }
    };
    match attach_entry(&mut ebpf, target, method) {
        Ok(multi) => Ok(Probe {
            ebpf,
            method,
            multi,
            _multi_exit: None,
            waits: false,
        }),
        Err(e) => {
            crate::timing::mark(&format!("{method} failed"));
            *spare = Some(ebpf);
            Err(e)
        }
    }
}

/// The entry program of `method`; a kprobe-multi link (which aya does not hold) is returned.
fn attach_entry(
    ebpf: &mut Ebpf,
    target: &Target,
    method: Method,
) -> Result<Option<kprobe_multi::MultiLink>> {
    Ok(match method {
        Method::Fentry => attach_fentry(ebpf, target).map(|()| None)?,
        Method::Kprobe => attach_kprobe(ebpf, target.function).map(|()| None)?,
        Method::KprobeMulti => Some(kprobe_multi::attach(
            ebpf,
            EBPF_OBJECT,
            "flush_kprobe",
            target.function,
            false,
        )?),
    })
}

/// `--waits`: the flush function's exit program for `method`, the work-item tracepoint, and
/// the task iterator (loaded now, run only for a stuck flush). Loaded only then: the verifier's
/// work is start-up time.
fn attach_waits(
    ebpf: &mut Ebpf,
    target: &Target,
    method: Method,
) -> Result<Option<kprobe_multi::MultiLink>> {
    let multi = attach_exit(ebpf, target, method)?;
    let prog: &mut Iter = program(ebpf, "running_work")?;
    prog.load("task", kernel_btf(target, "--waits' task iterator")?)
        .map_err(|e| explain(e, "loading the task iterator (5.8+)"))?;
    let prog: &mut RawTracePoint = program(ebpf, "work_end")?;
    prog.load()
        .map_err(|e| explain(e, "loading the workqueue_execute_end program"))?;
    prog.attach("workqueue_execute_end")
        .map_err(|e| explain(e, "attaching to workqueue_execute_end"))?;
    crate::timing::mark("--waits: exit program, workqueue_execute_end and the task iterator ready");
    Ok(multi)
}

/// The exit program of `method`: fexit, a kretprobe, or a kprobe-multi return link (which
/// aya does not hold, so it is returned).
fn attach_exit(
    ebpf: &mut Ebpf,
    target: &Target,
    method: Method,
) -> Result<Option<kprobe_multi::MultiLink>> {
    match method {
        Method::Fentry => {
            let prog: &mut FExit = program(ebpf, "flush_fexit")?;
            prog.load(target.function, kernel_btf(target, "fexit")?)
                .map_err(|e| explain(e, "loading the exit program"))?;
            prog.attach()
                .map_err(|e| explain(e, "attaching the exit program"))?;
        }
        Method::Kprobe => {
            let prog: &mut KProbe = program(ebpf, "flush_kretprobe")?;
            prog.load()
                .map_err(|e| explain(e, "loading the exit program"))?;
            prog.attach(target.function, 0)
                .map_err(|e| explain(e, "attaching the exit program"))?;
        }
        Method::KprobeMulti => {
            return Ok(Some(kprobe_multi::attach(
                ebpf,
                EBPF_OBJECT,
                "flush_kretprobe",
                target.function,
                true,
            )?));
        }
    }
    Ok(None)
}

/// The kernel's BTF, parsed once for all programs that need it; `need` names the one asking.
fn kernel_btf<'a>(target: &'a Target, need: &str) -> Result<&'a Btf> {
    target
        .kernel_btf
        .get_or_init(|| Btf::from_sys_fs().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| {
            anyhow!("{need} needs kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF): {e}")
        })
}

impl Probe {
    /// Flushes the kernel did not run the probe for, by its own counters; None where this
    /// kernel keeps no such count for this method (`counters` says which it keeps).
    pub fn missed(&self, counters: &MissCounters) -> Result<Option<u64>> {
        let prog = |name: &str| -> Result<u64> {
            let prog = self
                .ebpf
                .program(name)
                .with_context(|| format!("eBPF object has no program {name}"))?;
            let fd = prog.fd().context("the probe's program is not loaded")?;
            Ok(bpf_syscall::prog_recursion_misses(fd.as_fd())?)
        };
        Ok(match self.method {
            // Before 5.12 a trampoline has no recursion check, so it skips nothing.
            Method::Fentry if !counters.recursion_misses => Some(0),
            Method::Fentry => Some(prog("flush_fentry")?),
            _ if !counters.kprobe_missed => None,
            Method::Kprobe => Some(prog("flush_kprobe")?),
            Method::KprobeMulti => {
                let multi = self.multi.as_ref().context("no kprobe-multi link")?;
                let progs = bpf_syscall::prog_recursion_misses(multi.prog.as_fd())?;
                Some(progs + bpf_syscall::kprobe_multi_missed(multi.link.as_fd())?)
            }
        })
    }
}

fn load(target: &Target, waits: bool) -> Result<Ebpf> {
    let n = target.queues.len().min(MAX_QUEUES);
    let mut addrs = [0u64; MAX_QUEUES];
    let mut names = [[0u8; NAME_LEN]; MAX_QUEUES];
    for (i, q) in target.queues.iter().take(n).enumerate() {
        addrs[i] = q.addr;
        let name = q.name.as_deref().unwrap_or("").as_bytes();
        let len = name.len().min(NAME_LEN - 1);
        names[i][..len].copy_from_slice(&name[..len]);
    }
    let mut ranges = [[0u64; 2]; MAX_FLUSH_RANGES];
    for (slot, &(start, end)) in ranges.iter_mut().zip(&target.flush_ranges) {
        *slot = [start, end];
    }
    let offsets = target.offsets.unwrap_or_default();
    let (nr, by_name) = (n as u32, u32::from(target.by_name));
    let waits = u32::from(waits);
    // EbpfLoader::new() parses the kernel's BTF itself; `target::read` made one in parallel
    // with reading kallsyms. It borrows these globals, so it cannot be kept for a second load
    // (a second method under `--waits`, doctor's every method): that one pays for its own.
    let mut loader = target.loader.take().unwrap_or_default();
    loader
        .override_global("NR_QUEUES", &nr, true)
        .override_global("QUEUE_ADDRS", &addrs, true)
        .override_global("MATCH_BY_NAME", &by_name, true)
        .override_global("QUEUE_NAMES", &names, true)
        .override_global("WQ_NAME_OFFSET", &offsets.wq_name, true)
        .override_global("TASK_FLAGS_OFFSET", &offsets.task_flags, true)
        .override_global("TASK_PID_OFFSET", &offsets.task_pid, true)
        .override_global("FLUSH_RANGES", &ranges, true)
        .override_global("ENTRY_RETURNS", &target.entry_returns, true)
        .override_global("WAITS", &waits, true)
        .override_global("WORKER_FUNC_OFFSET", &offsets.worker_func, true)
        .override_global(
            "WORKER_OFFSETS",
            &offsets.worker_chain.unwrap_or_default(),
            true,
        )
        .load(EBPF_OBJECT)
        .map_err(explain_object)
}

fn attach_fentry(ebpf: &mut Ebpf, target: &Target) -> Result<()> {
    let btf = kernel_btf(target, "fentry")?;
    let prog: &mut FEntry = program(ebpf, "flush_fentry")?;
    prog.load(target.function, btf)
        .map_err(|e| explain(e, "loading"))?;
    mark_verified("fentry", || prog.info().ok());
    prog.attach().map_err(|e| match errno(&e) {
        // arm64 before 6.5 (Debian's 6.1) cannot call a BPF trampoline from a kernel function.
        Some(libc::EOPNOTSUPP | ENOTSUPP) => anyhow!(
            "attaching failed: {e} (this kernel cannot attach BPF trampolines to kernel \
             functions: on arm64 that needs CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS, 6.5+)"
        ),
        _ => explain(e, "attaching"),
    })?;
    Ok(())
}

fn attach_kprobe(ebpf: &mut Ebpf, function: &str) -> Result<()> {
    if !kprobes_available() {
        return Err(anyhow!(
            "this kernel has no kprobes (CONFIG_KPROBES is off: no /sys/bus/event_source/devices/kprobe \
             and no tracefs kprobe_events)"
        ));
    }
    let prog: &mut KProbe = program(ebpf, "flush_kprobe")?;
    prog.load().map_err(|e| explain(e, "loading"))?;
    mark_verified("kprobe", || prog.info().ok());
    prog.attach(function, 0).map_err(|e| match errno(&e) {
        Some(libc::EACCES | libc::EPERM) if perf_event_paranoid() >= 3 => anyhow!(
            "attaching failed: {e} (perf_event_open refused: kernel.perf_event_paranoid is 3, \
             Debian's default, which allows perf events only with CAP_SYS_ADMIN; kprobe-multi \
             and fentry need no perf event, or run `sysctl kernel.perf_event_paranoid=2`)"
        ),
        _ => explain(e, "attaching"),
    })?;
    Ok(())
}

/// Whether this kernel lacks fprobe, so that it can make no kprobe-multi link, asked without
/// loading the probe: a two-instruction kprobe-multi program linked with flags no kernel knows.
/// A kernel with fprobe checks them first and answers EINVAL, as does one before 5.18; one
/// built without fprobe answers EOPNOTSUPP whatever the request. Nothing is attached or looked
/// up, so it costs a program load. False unless that answer is certain.
pub fn lacks_fprobe() -> bool {
    use aya_obj::generated::{
        BPF_ALU64, BPF_EXIT, BPF_JMP, BPF_K, BPF_MOV, bpf_attach_type, bpf_insn, bpf_prog_type,
    };
    // SAFETY: bpf_insn is plain integers; all-zero is `r0 = r0 + 0` until the codes are set.
    let mut insns: [bpf_insn; 2] = unsafe { std::mem::zeroed() };
    // r0 = 0; exit
    insns[0].code = (BPF_ALU64 | BPF_MOV | BPF_K) as u8;
    insns[1].code = (BPF_JMP | BPF_EXIT) as u8;
    let load = bpf_syscall::ProgLoad {
        prog_type: bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32,
        expected_attach_type: bpf_attach_type::BPF_TRACE_KPROBE_MULTI as u32,
        insns: &insns,
        license: c"GPL",
        name: "wqflush_probe",
    };
    let Ok(prog) = bpf_syscall::prog_load(&load) else {
        return false;
    };
    let refusal = bpf_syscall::kprobe_multi_link_refusal(prog.as_fd());
    matches!(refusal.raw_os_error(), Some(libc::EOPNOTSUPP | ENOTSUPP))
}

/// `kernel.perf_event_paranoid`; Debian's kernels add level 3 (perf events for CAP_SYS_ADMIN
/// only), upstream stops at 2.
pub fn perf_event_paranoid() -> i32 {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(2)
}

/// With `WQFLUSH_TIMINGS`, how much the verifier walked (asking costs a syscall, so only then).
fn mark_verified(method: &str, info: impl FnOnce() -> Option<aya::programs::ProgramInfo>) {
    if crate::timing::enabled() {
        let insns = info().and_then(|i| i.verified_instruction_count());
        crate::timing::mark(&format!(
            "{method} program verified ({} instructions processed)",
            insns.map_or("?".into(), |n| n.to_string())
        ));
    }
}

fn kprobes_available() -> bool {
    [
        "/sys/bus/event_source/devices/kprobe",
        "/sys/kernel/tracing/kprobe_events",
        "/sys/kernel/debug/tracing/kprobe_events",
    ]
    .iter()
    .any(|p| std::path::Path::new(p).exists())
}

pub(super) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("eBPF object has no program {name}"))?;
    Ok(prog.try_into()?)
}
