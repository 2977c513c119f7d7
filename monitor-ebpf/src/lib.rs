//! Types shared by the eBPF programs (`src/main.rs`) and user space (`monitor/`).
//!
//! Everything here is `#[repr(C)]` plain data: the kernel writes it, user space reads it as bytes.
#![no_std]

pub mod kernels;

/// Most system workqueue pointer variables the probe compares against. Kernels have 7 (5.x) to
/// 11 (6.17); the rest is headroom for queues added later, found by pattern in kallsyms.
pub const MAX_QUEUES: usize = 16;

/// Kernel stack depth captured per event (the issue asks for at least 32).
pub const MAX_FRAMES: usize = 48;

/// Bytes of `workqueue_struct.name` compared in name mode. WQ_NAME_LEN is 24 before 6.9 and 32
/// since; user space passes the real length read from BTF.
pub const NAME_LEN: usize = 32;

/// `FlushEvent::flags`: the flushing task is a workqueue worker (`PF_WQ_WORKER`).
pub const FLAG_WORKER: u32 = 1 << 0;
/// `FlushEvent::flags`: `FLAG_WORKER` is meaningful (task_struct.flags offset was known from BTF).
pub const FLAG_WORKER_KNOWN: u32 = 1 << 1;
/// `FlushEvent::flags`: matched by workqueue name, not by pointer (no data symbols in kallsyms).
pub const FLAG_BY_NAME: u32 = 1 << 2;
/// `FlushEvent::flags`: `running_*` describe the work item the flushing worker is running.
pub const FLAG_RUNNING_KNOWN: u32 = 1 << 3;

/// `FlushEvent::running_queue` when the running work's queue is no system queue.
pub const NO_QUEUE: u32 = u32::MAX;

/// Offsets (from BTF) of the pointer chain from a worker task to the workqueue of the work item
/// it runs: task_struct.worker_private (5.17+; set_child_tid before) -> struct kthread.data ->
/// struct worker.current_pwq -> struct pool_workqueue.wq.
pub const WORKER_CHAIN: usize = 4;

/// Index into the `LOST` per-CPU array: first sightings the ring buffer had no room for (their
/// flushes are still counted in `COUNTS`).
pub const LOST_RINGBUF: u32 = 0;
/// Index into the `LOST` per-CPU array: flushes not counted because `COUNTS` was full.
pub const LOST_UNCOUNTED: u32 = 1;
/// Index into the `LOST` per-CPU array (`--waits`): offending flushes whose wait was not
/// tracked (all `MAX_FLUSH_SLOTS` of its queue taken, or `INFLIGHT` full), and work items not
/// counted in `WAITED` because it was full.
pub const LOST_WAITS: u32 = 2;
/// Slots in the `LOST` per-CPU array.
pub const LOST_SLOTS: u32 = 3;

/// `--waits`: offending flushes of one queue tracked at the same time (`FLUSH_SLOTS`); the
/// work-item tracepoint looks at each, so it stays small.
pub const MAX_FLUSH_SLOTS: u32 = 4;
/// `--waits`: offending flushes in flight at once, over all queues (`INFLIGHT`).
pub const MAX_IN_FLIGHT: u32 = 4096;
/// `--waits`: (call site, work function) pairs counted in `WAITED`.
pub const MAX_WAITED: u32 = 16384;
/// Buckets of `WaitStats::buckets`: upper bounds 1us, 10us, ... 100s (`WAIT_BOUNDS_NS`), +Inf.
pub const WAIT_BUCKETS: usize = 10;
/// Upper bounds (inclusive) of the finite wait buckets, nanoseconds.
pub const WAIT_BOUNDS_NS: [u64; WAIT_BUCKETS - 1] = [
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
    10_000_000_000,
    100_000_000_000,
];

/// Distinct (queue, call site) pairs the kernel counts; more are counted in `LOST_UNCOUNTED`.
pub const MAX_SITES: u32 = 16384;

/// Address ranges of the flush function and its wrappers; the frame after them is the caller.
pub const MAX_FLUSH_RANGES: usize = 4;

/// Key of the in-kernel per-call-site counters (`COUNTS` hash map).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct CountKey {
    /// Index of the system queue in the table user space passed in.
    pub queue: u32,
    pub _pad: u32,
    /// Return address in the caller: the first frame past the flush function and its
    /// wrappers, 0 when the stack could not be read.
    pub caller: u64,
}

/// One flush of a system workqueue, sent through the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FlushEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, nanoseconds.
    pub time_ns: u64,
    /// The `struct workqueue_struct *` being flushed.
    pub wq: u64,
    /// Thread id (the kernel's pid).
    pub pid: u32,
    /// Process id (the kernel's tgid).
    pub tgid: u32,
    pub cpu: u32,
    /// Index of the matched system queue in the table user space passed in.
    pub queue: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Bytes of `stack` that `bpf_get_stack` filled, or its negative errno.
    pub stack_bytes: i32,
    /// The call site this flush is counted under (`CountKey::caller`).
    pub caller: u64,
    pub comm: [u8; 16],
    /// `wq->name`, NUL-terminated, when user space knew its offset (from BTF); else zeros.
    pub name: [u8; NAME_LEN],
    /// For a worker: the queue of the work item it is running (`FLAG_RUNNING_KNOWN`).
    pub running_wq: u64,
    /// Index of that queue in the system queue table, or `NO_QUEUE`.
    pub running_queue: u32,
    pub _pad: u32,
    pub running_name: [u8; NAME_LEN],
    /// Kernel return addresses, innermost first.
    pub stack: [u64; MAX_FRAMES],
}

/// `--waits`: an offending flush that has not returned yet (`INFLIGHT`, by thread id). Kept in a
/// map user space can read, for telling flushes that are stuck.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct InFlight {
    pub key: CountKey,
    /// The `struct workqueue_struct *` being flushed.
    pub wq: u64,
    /// `bpf_ktime_get_ns()` at the flush's entry.
    pub start_ns: u64,
    pub tgid: u32,
    /// The slot of `FLUSH_SLOTS` this flush holds for its queue.
    pub slot: u32,
    /// 1 when this was the call site's first sighting (its return is reported).
    pub first: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}

/// `--waits`: a work item a worker is running, as the `running_work` task iterator writes it;
/// what a stuck flush of its queue waits for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct RunningWork {
    /// The worker's thread id.
    pub tid: u32,
    pub _pad: u32,
    /// `worker->current_pwq->wq`: the queue the work item was queued on.
    pub wq: u64,
    /// `worker->current_func`.
    pub function: u64,
}

/// `--waits`: key of `FLUSH_SLOTS`: which flushes of a queue are in flight (value: thread id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SlotKey {
    pub queue: u32,
    pub slot: u32,
}

/// `--waits`: how long the offending flushes of a call site waited (`WAITS_BY_SITE`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct WaitStats {
    /// Flushes that returned.
    pub waits: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    /// Per bucket (not cumulative): waits up to `WAIT_BOUNDS_NS[i]`, the last one above all.
    pub buckets: [u64; WAIT_BUCKETS],
}

/// `--waits`: key of `WAITED`: a work function that ran on the flushed queue while a flush from
/// `site` waited.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct WaitedKey {
    pub site: CountKey,
    /// `worker->current_func` at `workqueue_execute_end`.
    pub function: u64,
}

/// `--waits`: a call site's first reported flush returned (`RETURNS` ring buffer).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Returned {
    pub key: CountKey,
    pub wait_ns: u64,
    pub tid: u32,
    pub _pad: u32,
}

// SAFETY: aya's own marker for map keys: CountKey is bytemuck::Pod (above), which proves it is
// repr(C) plain data without padding, valid for any bytes.
#[cfg(feature = "user")]
unsafe impl aya::Pod for CountKey {}
// SAFETY: as for CountKey: bytemuck::Pod proves these are plain data without padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for WaitStats {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for WaitedKey {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for InFlight {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for SlotKey {}
