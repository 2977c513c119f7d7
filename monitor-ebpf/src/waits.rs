//! `--waits`: offending flushes tracked until they return, the work items that ran on the
//! flushed queue meanwhile, and how long each call site's flushes waited.

use core::ptr::{addr_of, addr_of_mut, read_volatile};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns,
    },
};
use monitor_ebpf::{
    CountKey, InFlight, LOST_WAITS, MAX_FLUSH_SLOTS, Returned, SlotKey, WAIT_BOUNDS_NS,
    WAIT_BUCKETS, WaitStats, WaitedKey,
};

use crate::{
    maps::*,
    matching::{load_queue_values, system_queue},
    tasks::work_of,
};

/// `--waits`: records the flush as in flight, holding one of its queue's slots, until the
/// exit program sees it return.
#[inline(always)]
pub(crate) fn track(key: &CountKey, wq: u64, first: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // A flush whose return was never seen (an exit program skipped) must not hold its slot.
    // SAFETY: a copy out of the map value.
    if let Some(stale) = unsafe { INFLIGHT.get(&tid) }.copied() {
        release(tid, &stale);
    }
    let Some(slot) = claim_slot(key.queue, tid) else {
        return lose(LOST_WAITS);
    };
    let flight = InFlight {
        key: *key,
        wq,
        start_ns: unsafe { bpf_ktime_get_ns() },
        tgid: (pid_tgid >> 32) as u32,
        slot,
        first: u32::from(first),
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if INFLIGHT.insert(&tid, &flight, 0).is_err() {
        let _ = FLUSH_SLOTS.remove(&SlotKey {
            queue: key.queue,
            slot,
        });
        return lose(LOST_WAITS);
    }
    add_in_flight(1);
}

/// The first free slot of `queue`; BPF_NOEXIST makes the claim atomic between CPUs.
#[inline(always)]
pub(crate) fn claim_slot(queue: u32, tid: u32) -> Option<u32> {
    for slot in 0..MAX_FLUSH_SLOTS {
        let key = SlotKey { queue, slot };
        if FLUSH_SLOTS
            .insert(&key, &tid, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            return Some(slot);
        }
    }
    None
}

/// Ends the tracking of `tid`'s flush: frees its slot and entry.
#[inline(always)]
pub(crate) fn release(tid: u32, flight: &InFlight) {
    let _ = FLUSH_SLOTS.remove(&SlotKey {
        queue: flight.key.queue,
        slot: flight.slot,
    });
    if INFLIGHT.remove(&tid).is_ok() {
        // Adding u64::MAX subtracts one; only the program that removed the entry does.
        add_in_flight(u64::MAX);
    }
}

#[inline(always)]
pub(crate) fn add_in_flight(n: u64) {
    // SAFETY: this program's global; an atomic add whose result is unused (BPF XADD).
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            core::ptr::addr_of_mut!(IN_FLIGHT_NOW),
            n,
        )
    };
}

#[inline(always)]
pub(crate) fn in_flight() -> u64 {
    // SAFETY: a plain read of this program's global.
    unsafe { read_volatile(addr_of!(IN_FLIGHT_NOW)) }
}

/// Every flush returns through here: the calling thread's in-flight entry, if any, gives the
/// wait. A reported flush's return goes to user space for its "waited" line.
#[inline(always)]
pub(crate) fn on_flush_exit() {
    if in_flight() == 0 {
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: a copy out of the map value.
    let Some(flight) = (unsafe { INFLIGHT.get(&tid) }).copied() else {
        return;
    };
    let wait_ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(flight.start_ns);
    record_wait(&flight.key, wait_ns);
    release(tid, &flight);
    if flight.first != 0 {
        let returned = Returned {
            key: flight.key,
            wait_ns,
            tid,
            _pad: 0,
        };
        let _ = RETURNS.output::<Returned>(&returned, 0);
    }
}

/// Whether the current thread has an offending flush in flight. In a kprobe session this tells
/// the return run from an entry run without the `bpf_session_is_return` kfunc (aya-ebpf 0.2
/// cannot call kfuncs): the entry run returns 0, asking for a return run, only once it has
/// created this thread's INFLIGHT entry, and only that return run removes it. A flush cannot
/// start on a thread still inside one, and a session's return run follows every entry run
/// that returned 0. The global counter makes it one load for a flush while none is in flight.
#[inline(always)]
pub(crate) fn tracked_here() -> bool {
    if in_flight() == 0 {
        return false;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: only whether the entry exists is read.
    unsafe { INFLIGHT.get(&tid) }.is_some()
}

/// Adds one wait to its call site's figures.
#[inline(always)]
pub(crate) fn record_wait(key: &CountKey, wait_ns: u64) {
    let mut stats = WAITS_BY_SITE.get_ptr_mut(key);
    if stats.is_none() {
        let _ = WAITS_BY_SITE.insert(key, &WaitStats::default(), u64::from(BPF_NOEXIST));
        stats = WAITS_BY_SITE.get_ptr_mut(key);
    }
    let Some(stats) = stats else {
        return lose(LOST_WAITS);
    };
    // SAFETY: a map value; atomic adds keep concurrent CPUs exact.
    unsafe {
        xadd(addr_of_mut!((*stats).waits), 1);
        xadd(addr_of_mut!((*stats).total_ns), wait_ns);
        // get_mut: an index the compiler cannot prove in range would leave a panic path.
        if let Some(b) = (*stats).buckets.get_mut(bucket(wait_ns)) {
            xadd(b, 1);
        }
        // No compare-and-swap before 5.12: two CPUs racing may keep the smaller maximum.
        if wait_ns > read_volatile(addr_of!((*stats).max_ns)) {
            (*stats).max_ns = wait_ns;
        }
    }
}

/// Index of the histogram bucket of `ns` (the last one is +Inf).
#[inline(always)]
pub(crate) fn bucket(ns: u64) -> usize {
    for (i, bound) in WAIT_BOUNDS_NS.iter().enumerate() {
        if ns <= *bound {
            return i;
        }
    }
    WAIT_BUCKETS - 1
}

/// `--waits`: a work item finished. While a flush of a system queue is in flight, a work item
/// of that queue that ran is one the flush (may have) waited for: counted per flushing site.
pub(crate) fn on_work_end() -> i32 {
    if in_flight() == 0 {
        return 0;
    }
    let Some((wq, function)) = current_work() else {
        return 0;
    };
    load_queue_values();
    let Some(queue) = system_queue(wq) else {
        return 0;
    };
    for slot in 0..MAX_FLUSH_SLOTS {
        // SAFETY: copies out of map values.
        let Some(tid) = (unsafe { FLUSH_SLOTS.get(&SlotKey { queue, slot }) }).copied() else {
            continue;
        };
        if let Some(flight) = unsafe { INFLIGHT.get(&tid) } {
            count_waited(&WaitedKey {
                site: flight.key,
                function,
            });
        }
    }
    0
}

#[inline(always)]
pub(crate) fn count_waited(key: &WaitedKey) {
    if let Some(n) = WAITED.get_ptr_mut(key) {
        // SAFETY: a map value.
        return unsafe { xadd(n, 1) };
    }
    if WAITED.insert(key, &1, u64::from(BPF_NOEXIST)).is_ok() {
        return;
    }
    match WAITED.get_ptr_mut(key) {
        // SAFETY: as above; another CPU inserted it meanwhile.
        Some(n) => unsafe { xadd(n, 1) },
        None => lose(LOST_WAITS),
    }
}

/// The queue and function of the work item the current worker runs: worker->current_pwq->wq
/// and worker->current_func, both still set at workqueue_execute_end.
#[inline(always)]
pub(crate) fn current_work() -> Option<(u64, u64)> {
    work_of(unsafe { bpf_get_current_task() })
}
