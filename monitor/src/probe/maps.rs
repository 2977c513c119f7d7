//! Reading what the kernel side keeps: the ring buffers, the per-site counts, the loss slots and
//! the kernel's miss counters, and `--waits`' maps and task iterator.

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{Iter, RawTracePoint},
};
use monitor_ebpf::{
    CountKey, InFlight, LOST_RINGBUF, LOST_UNCOUNTED, LOST_WAITS, RunningWork, WaitStats, WaitedKey,
};

use std::os::fd::AsFd as _;

use super::{Probe, bpf_syscall, errors::explain, program};
use crate::{kernel::btf::MissCounters, sites::Lost};

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
