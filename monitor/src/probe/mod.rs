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
pub mod kprobe_multi;
pub mod unpreempted;

use std::{fmt, io};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Btf, Ebpf,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{FEntry, FExit, Iter, KProbe, ProgramError, RawTracePoint},
};
use monitor_ebpf::{
    CountKey, InFlight, LOST_RINGBUF, LOST_UNCOUNTED, LOST_WAITS, MAX_FLUSH_RANGES, MAX_QUEUES,
    NAME_LEN, RunningWork, WaitStats, WaitedKey,
};

use std::os::fd::AsFd as _;

use crate::{
    kernel::{
        btf::{self, MissCounters},
        preemption,
        target::Target,
    },
    sites::Lost,
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
        match attach_with(target, method, waits) {
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
    let mut multi = None;
    match method {
        Method::Fentry => attach_fentry(&mut ebpf, target)?,
        Method::Kprobe => attach_kprobe(&mut ebpf, target.function)?,
        Method::KprobeMulti => {
            multi = Some(kprobe_multi::attach(
                &ebpf,
                EBPF_OBJECT,
                "flush_kprobe",
                target.function,
                false,
            )?);
        }
    }
    Ok(Probe {
        ebpf,
        method,
        multi,
        _multi_exit: multi_exit,
        waits,
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
    // EbpfLoader::new() parses the kernel's BTF itself; `prepare` made one in parallel with
    // reading kallsyms. A second method (the kprobe fallback) pays for its own.
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
    prog.attach().map_err(|e| explain(e, "attaching"))?;
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

/// `kernel.perf_event_paranoid`; Debian's kernels add level 3 (perf events for CAP_SYS_ADMIN
/// only), upstream stops at 2.
fn perf_event_paranoid() -> i32 {
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

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("eBPF object has no program {name}"))?;
    Ok(prog.try_into()?)
}

/// Adds what an errno means for this tool to aya's error.
fn explain(err: ProgramError, doing: &str) -> anyhow::Error {
    let hint = errno(&err)
        .and_then(|e| errno_hint(e, Step::Program))
        .map(|h| format!(" ({h})"));
    let verifier = match &err {
        ProgramError::LoadError { verifier_log, .. } if hint.is_none() => {
            format!("\nverifier log:\n{verifier_log}")
        }
        _ => String::new(),
    };
    anyhow!(
        "{doing} failed: {err}{}{verifier}",
        hint.unwrap_or_default()
    )
}

/// Loading the object creates its maps (and reads its BTF): a failure there is about maps,
/// never about tracing the flush function.
fn explain_object(err: aya::EbpfError) -> anyhow::Error {
    let hint = errno(&err)
        .and_then(|e| errno_hint(e, Step::Maps))
        .map(|h| format!(" ({h})"))
        .unwrap_or_default();
    anyhow!("creating the probe's maps failed: {err}{hint}")
}

/// The errno in an aya error, wherever in its chain of sources it sits.
fn errno(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(code) = e
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        if let Some(ProgramError::LoadError { io_error, .. }) = e.downcast_ref::<ProgramError>() {
            return io_error.raw_os_error();
        }
        cause = e.source();
    }
    None
}

/// The kernel-internal errno BPF returns for unsupported attach types.
const ENOTSUPP: i32 = 524;

/// Which step of attaching an errno came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Creating the maps (loading the object).
    Maps,
    /// Loading or attaching the program on the flush function.
    Program,
}

fn errno_hint(errno: i32, step: Step) -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    Some(match (errno, step) {
        (libc::EPERM | libc::EACCES, _) if !root => {
            "permission denied: run as root, or with CAP_BPF, CAP_PERFMON and CAP_SYSLOG"
        }
        (libc::EPERM, Step::Maps) => {
            "EPERM as root: the kernel refused to create a BPF map; before 5.11 maps count \
             against RLIMIT_MEMLOCK, so raise `ulimit -l` (LimitMEMLOCK=infinity in a unit)"
        }
        (libc::EPERM, Step::Program) => {
            "EPERM as root: this kernel does not allow tracing this function (lockdown, or a BPF restriction)"
        }
        (libc::EACCES, _) => "EACCES as root: the kernel refused (lockdown, or an LSM policy)",
        (libc::ENOENT, _) => "ENOENT: the kernel has no such function or probe type",
        (libc::EOPNOTSUPP | ENOTSUPP, _) => "not supported by this kernel",
        (libc::EINVAL, Step::Maps) => {
            "EINVAL: the kernel rejected a map (the ring buffer needs 5.8)"
        }
        (libc::EINVAL, Step::Program) => "EINVAL: the kernel rejected the request",
        _ => return None,
    })
}

/// Notifications of module loads (see `watch::module_loaded`); an error when the kernel refuses the
/// tracepoint, in which case modules are re-read only when a new call site shows up.
pub fn module_loads(ebpf: &mut Ebpf) -> Result<RingBuf<MapData>> {
    let prog: &mut RawTracePoint = program(ebpf, "module_load")?;
    prog.load().map_err(|e| explain(e, "loading"))?;
    prog.attach("module_load")
        .map_err(|e| explain(e, "attaching"))?;
    let map = ebpf
        .take_map("MODULE_LOADS")
        .context("eBPF object has no MODULE_LOADS map")?;
    Ok(RingBuf::try_from(map)?)
}

/// The ring buffer the probe sends events through.
pub fn events(ebpf: &mut Ebpf) -> Result<RingBuf<MapData>> {
    let map = ebpf
        .take_map("EVENTS")
        .context("eBPF object has no EVENTS map")?;
    Ok(RingBuf::try_from(map)?)
}

impl Probe {
    /// The loss slots the probe keeps, and the kernel's own count of skipped runs.
    pub fn lost(&self, counters: &MissCounters) -> Result<Lost> {
        let map = self
            .ebpf
            .map("LOST")
            .context("eBPF object has no LOST map")?;
        let lost: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        let sum = |slot| -> Result<u64> { Ok(lost.get(&slot, 0)?.iter().sum()) };
        Ok(Lost {
            events: sum(LOST_RINGBUF)?,
            uncounted: sum(LOST_UNCOUNTED)?,
            missed: self.missed(counters)?,
            waits: sum(LOST_WAITS)? + self.work_end_missed(counters)?,
            exits_missed: 0,
        })
    }

    /// `--waits`: work items the kernel did not run the `workqueue_execute_end` program for.
    /// Like a trampoline, it skips a CPU where that program is already active: on a kernel
    /// whose tracepoint programs run preemptibly, a worker preempted inside it (seen once in a
    /// 7.3 guest under lazy preemption: 2 of 3 items that ended on one CPU at once counted).
    fn work_end_missed(&self, counters: &MissCounters) -> Result<u64> {
        if !self.waits || !counters.recursion_misses {
            return Ok(0);
        }
        let prog = self
            .ebpf
            .program("work_end")
            .context("eBPF object has no program work_end")?;
        let fd = prog.fd().context("the work_end program is not loaded")?;
        Ok(bpf_syscall::prog_recursion_misses(fd.as_fd())?)
    }
}

/// The kernel's per-call-site flush counters, into `out`.
pub fn counts(ebpf: &Ebpf, out: &mut Vec<(CountKey, u64)>) -> Result<()> {
    let map = ebpf
        .map("COUNTS")
        .context("eBPF object has no COUNTS map")?;
    let counts: HashMap<_, CountKey, u64> = HashMap::try_from(map)?;
    out.clear();
    for entry in counts.iter() {
        out.push(entry.context("reading the flush counters")?);
    }
    Ok(())
}

/// `--waits`: the kernel's wait figures per call site, and the work items each site waited for.
pub fn waits(
    ebpf: &Ebpf,
    stats: &mut Vec<(CountKey, WaitStats)>,
    waited: &mut Vec<(WaitedKey, u64)>,
) -> Result<()> {
    let map = ebpf
        .map("WAITS_BY_SITE")
        .context("eBPF object has no WAITS_BY_SITE map")?;
    let map: HashMap<_, CountKey, WaitStats> = HashMap::try_from(map)?;
    stats.clear();
    for entry in map.iter() {
        stats.push(entry.context("reading the wait figures")?);
    }
    let map = ebpf
        .map("WAITED")
        .context("eBPF object has no WAITED map")?;
    let map: HashMap<_, WaitedKey, u64> = HashMap::try_from(map)?;
    waited.clear();
    for entry in map.iter() {
        waited.push(entry.context("reading the work items waited for")?);
    }
    Ok(())
}

/// `--waits`: the offending flushes in flight, by thread id, into `flights`.
pub fn in_flight(ebpf: &Ebpf, flights: &mut Vec<(u32, InFlight)>) -> Result<()> {
    let map = ebpf
        .map("INFLIGHT")
        .context("eBPF object has no INFLIGHT map")?;
    let map: HashMap<_, u32, InFlight> = HashMap::try_from(map)?;
    flights.clear();
    for entry in map.iter() {
        match entry {
            Ok(e) => flights.push(e),
            // An entry removed between listing its key and reading it.
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(e).context("reading the flushes in flight"),
        }
    }
    Ok(())
}

/// `--waits`: the work item every worker is running now, by one run of the task iterator.
/// Called only for a stuck flush: it walks every task in the system.
pub fn running_work(ebpf: &mut Ebpf) -> Result<Vec<RunningWork>> {
    use std::io::Read as _;
    let prog: &mut Iter = program(ebpf, "running_work")?;
    let link = prog
        .attach()
        .map_err(|e| explain(e, "running the task iterator"))?;
    let link = prog
        .take_link(link)
        .map_err(|e| explain(e, "running the task iterator"))?;
    let mut file = link
        .into_file()
        .context("running the task iterator: bpf_iter_create")?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .context("reading the task iterator")?;
    Ok(bytes
        .chunks_exact(size_of::<RunningWork>())
        .map(bytemuck::pod_read_unaligned)
        .collect())
}

/// `--waits`: `tid`'s in-flight flush, if it still has one.
pub fn in_flight_of(ebpf: &Ebpf, tid: u32) -> Result<Option<InFlight>> {
    let map = ebpf
        .map("INFLIGHT")
        .context("eBPF object has no INFLIGHT map")?;
    let map: HashMap<_, u32, InFlight> = HashMap::try_from(map)?;
    match map.get(&tid, 0) {
        Ok(f) => Ok(Some(f)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e).context("reading a flush in flight"),
    }
}

/// `--waits`: the ring buffer of reported flushes that returned.
pub fn returns(ebpf: &mut Ebpf) -> Result<RingBuf<MapData>> {
    let map = ebpf
        .take_map("RETURNS")
        .context("eBPF object has no RETURNS map")?;
    Ok(RingBuf::try_from(map)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_failure_is_not_blamed_on_tracing() {
        // Root or not decides the first line; as root (CI) both differ by step.
        let maps = errno_hint(libc::EPERM, Step::Maps).unwrap();
        let prog = errno_hint(libc::EPERM, Step::Program).unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert!(
                maps.contains("BPF map") && maps.contains("ulimit -l"),
                "{maps}"
            );
            assert!(!maps.contains("tracing"), "{maps}");
            assert!(prog.contains("tracing this function"), "{prog}");
        } else {
            assert!(maps.contains("run as root") && prog.contains("run as root"));
        }
    }

    #[test]
    fn errno_is_found_through_the_chain_of_sources() {
        #[derive(Debug)]
        struct Outer(io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("creating map EVENTS")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let err = Outer(io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(errno(&err), Some(libc::EPERM));
        assert_eq!(errno(&Outer(io::Error::other("no errno"))), None);
    }
}
