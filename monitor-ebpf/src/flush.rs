//! An offending flush: counted in the kernel under its call site; a site's first flush also
//! goes to user space with its stack and the flushing task's details.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_NOEXIST, pt_regs},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
};
use monitor_ebpf::{
    CountKey, FLAG_BY_NAME, FLAG_RUNNING_KNOWN, FLAG_WORKER, FLAG_WORKER_KNOWN, FlushEvent,
    LOST_RINGBUF, LOST_UNCOUNTED, MAX_FRAMES, NO_QUEUE, WORKER_CHAIN,
};

use crate::{
    call_site::{call_site, stack},
    maps::*,
    matching::{load_queue_values, queue_name, system_queue},
    tasks::{PF_WQ_WORKER, task_flags},
    waits::track,
};

/// Where the probe was entered from, which says where the return address into the flush
/// function's caller is without unwinding: unwinding 8 frames is 90% of what an offending
/// flush costs (measured on 5.10 with `bpf_stats_enabled`: 13.1 us of 14.4 for fentry, 9.3 of
/// 10.3 for a kprobe, against 1.0-1.3 us for these reads).
#[derive(Clone, Copy)]
pub(crate) enum Entry {
    /// A BPF trampoline, called from the flush function's entry: see `trampoline_return`.
    Trampoline,
    /// A kprobe or fprobe at the flush function's entry: the registers there hold the
    /// return address into the caller (`arch::entry_return`).
    Registers { regs: *const pt_regs },
}

#[inline(always)]
pub(crate) fn on_flush<C: EbpfContext>(ctx: &C, wq: u64, entry: Entry) -> u32 {
    if wq == 0 {
        return 0;
    }
    load_queue_values();
    if let Some(queue) = system_queue(wq) {
        let by_name = if global(&MATCH_BY_NAME) != 0 {
            FLAG_BY_NAME
        } else {
            0
        };
        send(ctx, wq, queue, by_name, entry);
    }
    0
}

/// Counts the flush under its call site; the site's first flush also goes to user space.
#[inline(always)]
pub(crate) fn send<C: EbpfContext>(ctx: &C, wq: u64, queue: u32, flags: u32, entry: Entry) {
    let Some(ev) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot; BPF programs do not nest on a CPU here.
    let ev = unsafe { &mut *ev };
    let key = CountKey {
        queue,
        _pad: 0,
        caller: call_site(ctx, ev, entry),
    };
    let first = !count(&key)
        && match COUNTS.insert(&key, &1, u64::from(BPF_NOEXIST)) {
            Ok(()) => true,
            // Another CPU counted this site's first flush in the meantime.
            Err(_) if count(&key) => false,
            Err(_) => return lose(LOST_UNCOUNTED),
        };
    if global(&WAITS) != 0 {
        track(&key, wq, first);
    }
    if !first {
        return;
    }
    stack(ctx, ev, MAX_FRAMES);
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.time_ns = unsafe { bpf_ktime_get_ns() };
    ev.wq = wq;
    ev.pid = pid_tgid as u32;
    ev.tgid = (pid_tgid >> 32) as u32;
    ev.cpu = unsafe { bpf_get_smp_processor_id() };
    ev.queue = queue;
    ev.flags = flags | worker_flags();
    running(ev);
    ev.caller = key.caller;
    ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    ev.name = queue_name(wq);
    if EVENTS.output::<FlushEvent>(&*ev, 0).is_err() {
        lose(LOST_RINGBUF);
    }
}

/// Adds one to an existing counter; false when the call site has none yet.
#[inline(always)]
pub(crate) fn count(key: &CountKey) -> bool {
    match COUNTS.get_ptr_mut(key) {
        Some(n) => {
            // SAFETY: a map value; the atomic add keeps concurrent CPUs exact.
            unsafe {
                core::intrinsics::atomic_xadd::<
                    u64,
                    u64,
                    { core::intrinsics::AtomicOrdering::Relaxed },
                >(n, 1)
            };
            true
        }
        None => false,
    }
}

/// For a worker, the queue of the work item it runs: flushing that queue waits for itself.
#[inline(always)]
pub(crate) fn running(ev: &mut FlushEvent) {
    ev.running_queue = NO_QUEUE;
    if ev.flags & FLAG_WORKER == 0 {
        return;
    }
    let mut p = unsafe { bpf_get_current_task() };
    for i in 0..WORKER_CHAIN {
        let off = global(&WORKER_OFFSETS[i]);
        // SAFETY: probe_read tolerates any address; a zero offset means "unknown".
        match unsafe { bpf_probe_read_kernel((p + u64::from(off)) as *const u64) } {
            Ok(next) if off != 0 && next != 0 => p = next,
            _ => return,
        }
    }
    ev.running_wq = p;
    ev.running_queue = system_queue(p).unwrap_or(NO_QUEUE);
    ev.running_name = queue_name(p);
    ev.flags |= FLAG_RUNNING_KNOWN;
}

/// Whether the current task is a workqueue worker, if BTF told us where its flags are.
#[inline(always)]
pub(crate) fn worker_flags() -> u32 {
    match task_flags(unsafe { bpf_get_current_task() }) {
        Some(f) if f & PF_WQ_WORKER != 0 => FLAG_WORKER | FLAG_WORKER_KNOWN,
        Some(_) => FLAG_WORKER_KNOWN,
        None => 0,
    }
}
