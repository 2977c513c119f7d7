//! The maps the programs share with user space, and the read-only globals user space sets
//! before loading (`EbpfLoader::set_global`; the verifier sees their values, so an unused
//! mode's code is dead code for it), with the three ways every program touches them.

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use monitor_ebpf::{
    CountKey, FlushEvent, InFlight, LOST_SLOTS, MAX_FLUSH_RANGES, MAX_FLUSH_SLOTS, MAX_IN_FLIGHT,
    MAX_QUEUES, MAX_SITES, MAX_WAITED, NAME_LEN, SlotKey, WORKER_CHAIN, WaitStats, WaitedKey,
};

// Read-only globals set by user space before load (`EbpfLoader::set_global`); the verifier
// sees their values, so the unused mode's code is dead code for it.
/// Number of valid entries in QUEUE_ADDRS / QUEUE_NAMES.
#[unsafe(no_mangle)]
pub(crate) static NR_QUEUES: u32 = 0;

/// Address of each `system_*wq` pointer variable (address mode).
#[unsafe(no_mangle)]
pub(crate) static QUEUE_ADDRS: [u64; MAX_QUEUES] = [0; MAX_QUEUES];

/// 1: compare names instead of pointers.
#[unsafe(no_mangle)]
pub(crate) static MATCH_BY_NAME: u32 = 0;

/// NUL-terminated name of each system queue (name mode).
#[unsafe(no_mangle)]
pub(crate) static QUEUE_NAMES: [[u8; NAME_LEN]; MAX_QUEUES] = [[0; NAME_LEN]; MAX_QUEUES];

/// offsetof(struct workqueue_struct, name), from BTF.
#[unsafe(no_mangle)]
pub(crate) static WQ_NAME_OFFSET: u32 = 0;

/// offsetof(struct task_struct, flags), from BTF; 0 when unknown.
#[unsafe(no_mangle)]
pub(crate) static TASK_FLAGS_OFFSET: u32 = 0;

/// offsetof(struct task_struct, pid), from BTF (`--waits`: the task iterator's thread ids).
#[unsafe(no_mangle)]
pub(crate) static TASK_PID_OFFSET: u32 = 0;

/// The worker -> running workqueue offsets (`WORKER_CHAIN`); zeros when BTF lacks them.
#[unsafe(no_mangle)]
pub(crate) static WORKER_OFFSETS: [u32; WORKER_CHAIN] = [0; WORKER_CHAIN];

/// 1 with `--waits`: offending flushes are tracked until they return. 0 makes all of it dead
/// code for the verifier, so the default pays nothing for it.
#[unsafe(no_mangle)]
pub(crate) static WAITS: u32 = 0;

/// offsetof(struct worker, current_func), from BTF (`--waits`); 0 when unknown.
#[unsafe(no_mangle)]
pub(crate) static WORKER_FUNC_OFFSET: u32 = 0;

/// [start, end) of the flush function and of the wrappers around it (drain_workqueue, ...).
#[unsafe(no_mangle)]
pub(crate) static FLUSH_RANGES: [[u64; 2]; MAX_FLUSH_RANGES] = [[0; 2]; MAX_FLUSH_RANGES];

/// The addresses the call patched into the flush function's entry returns to (start + 5,
/// start + 9 behind an endbr64): a trampoline's frame holds one of them right below the
/// return address into the flush function's caller.
#[unsafe(no_mangle)]
pub(crate) static ENTRY_RETURNS: [u64; 2] = [0; 2];

/// First sightings of a call site, with their stacks.
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Flushes per (queue, call site).
#[map]
pub(crate) static COUNTS: HashMap<CountKey, u64> = HashMap::with_max_entries(MAX_SITES, 0);

/// Losses per CPU (`LOST_*` slots), so nothing is dropped without being counted.
#[map]
pub(crate) static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_SLOTS, 0);

/// A module finished loading: user space re-reads kallsyms at once, so a module that flushes
/// and is unloaded right away is still named (its symbols are gone by the time its flush
/// would otherwise send user space looking for them).
#[map]
pub(crate) static MODULE_LOADS: RingBuf = RingBuf::with_byte_size(4096, 0);

/// `--waits`: offending flushes that have not returned, by thread id.
#[map]
pub(crate) static INFLIGHT: HashMap<u32, InFlight> = HashMap::with_max_entries(MAX_IN_FLIGHT, 0);

/// `--waits`: per queue, which threads' flushes are in flight (slots 0..MAX_FLUSH_SLOTS), so
/// the work-item tracepoint finds them without walking INFLIGHT.
#[map]
pub(crate) static FLUSH_SLOTS: HashMap<SlotKey, u32> =
    HashMap::with_max_entries(MAX_QUEUES as u32 * MAX_FLUSH_SLOTS, 0);

/// `--waits`: how long each call site's flushes waited.
#[map]
pub(crate) static WAITS_BY_SITE: HashMap<CountKey, WaitStats> =
    HashMap::with_max_entries(MAX_SITES, 0);

/// `--waits`: work items that ran on the flushed queue while a flush from a site waited.
#[map]
pub(crate) static WAITED: HashMap<WaitedKey, u64> = HashMap::with_max_entries(MAX_WAITED, 0);

/// `--waits`: a reported (first-sighting) flush returned.
#[map]
pub(crate) static RETURNS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// `--waits`: entries of INFLIGHT. The exit and work-item programs run on every flush and
/// every work item; reading this first is all they cost while no offending flush waits.
/// Updated only by atomic adds whose result is unused: 5.10 has no fetch-atomics.
#[unsafe(no_mangle)]
pub(crate) static mut IN_FLIGHT_NOW: u64 = 0;

/// The event being built: too big for the 512-byte BPF stack.
#[map]
pub(crate) static SCRATCH: PerCpuArray<FlushEvent> = PerCpuArray::with_max_entries(1, 0);

/// The values of the `system_*wq` variables, read on first use. They are assigned once, in
/// workqueue_init_early(), long before anything can load a BPF program, so later flushes
/// compare against this copy instead of calling bpf_probe_read_kernel() per queue: that is
/// most of the probe's cost on the flushes it does not report.
#[unsafe(no_mangle)]
pub(crate) static mut QUEUE_VALUES: [u64; MAX_QUEUES] = [0; MAX_QUEUES];

/// 1 once `QUEUE_VALUES` holds every value.
#[unsafe(no_mangle)]
pub(crate) static mut QUEUE_VALUES_READ: u32 = 0;

#[inline(always)]
pub(crate) fn global<T: Copy>(value: &T) -> T {
    // SAFETY: a plain read of a static; volatile so the compiler does not fold in the
    // placeholder value that user space replaces before load.
    unsafe { read_volatile(addr_of!(*value)) }
}

#[inline(always)]
pub(crate) unsafe fn xadd(at: *mut u64, n: u64) {
    // SAFETY: the caller's pointer is to a map value; the result is unused (BPF XADD).
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            at, n,
        )
    };
}

#[inline(always)]
pub(crate) fn lose(slot: u32) {
    if let Some(n) = LOST.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot.
        unsafe { *n += 1 };
    }
}
