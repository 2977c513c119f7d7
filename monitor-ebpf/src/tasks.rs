//! What a task is doing: whether it is a workqueue worker, the work item a worker runs, and the
//! task iterator `--waits` runs when a flush is stuck.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use monitor_ebpf::{RunningWork, WORKER_CHAIN};

use crate::maps::*;

/// `PF_WQ_WORKER` from include/linux/sched.h; unchanged since 2.6.36.
pub(crate) const PF_WQ_WORKER: u32 = 0x20;

/// `task->flags`, unless its offset is unknown or the read failed.
#[inline(always)]
pub(crate) fn task_flags(task: u64) -> Option<u32> {
    let off = global(&TASK_FLAGS_OFFSET);
    if off == 0 {
        return None;
    }
    // SAFETY: probe_read tolerates any address.
    unsafe { bpf_probe_read_kernel((task + u64::from(off)) as *const u32) }.ok()
}

/// `struct bpf_iter__task` (5.8+): what a task iterator program is called with.
#[repr(C)]
pub(crate) struct IterTask {
    meta: *const IterMeta,
    task: u64,
}

/// `struct bpf_iter_meta`: its first member is the seq_file the program writes to.
#[repr(C)]
pub(crate) struct IterMeta {
    seq: *mut core::ffi::c_void,
}

/// `--waits`: a task iterator user space runs only when a flush has been stuck past
/// `--stuck-after`, never on a hot path. It writes one `RunningWork` per worker that is
/// running a work item. That includes items started before the flush, such as one blocked on
/// a lock the flusher holds, and the flusher's own item when a worker flushes its own queue.
/// User space keeps the ones on the stuck flush's queue. aya-ebpf 0.2 has no macro for
/// iterators; the section name is what aya's loader knows them by.
pub(crate) fn write_running(ctx: *mut core::ffi::c_void) -> i32 {
    let ctx = ctx as *const IterTask;
    // SAFETY: the verifier checks these loads against the context's BTF type.
    let (seq, task) = unsafe { ((*(*ctx).meta).seq, (*ctx).task) };
    if task == 0 {
        // The iteration's end: one more call with no task.
        return 0;
    }
    // Only a worker's kthread data is a struct worker.
    if !task_flags(task).is_some_and(|f| f & PF_WQ_WORKER != 0) {
        return 0;
    }
    let Some((wq, function)) = work_of(task) else {
        return 0;
    };
    let off = global(&TASK_PID_OFFSET);
    // SAFETY: probe_read tolerates any address.
    let Ok(tid) = (unsafe { bpf_probe_read_kernel((task + u64::from(off)) as *const u32) }) else {
        return 0;
    };
    let rec = RunningWork {
        tid,
        _pad: 0,
        wq,
        function,
    };
    // SAFETY: the helper copies `size_of::<RunningWork>()` bytes from the record.
    unsafe {
        aya_ebpf::helpers::generated::bpf_seq_write(
            seq.cast(),
            (&rec as *const RunningWork).cast(),
            size_of::<RunningWork>() as u32,
        )
    };
    0
}

/// The queue and function of the work item `task`, a worker, runs; None when it runs none.
#[inline(always)]
pub(crate) fn work_of(task: u64) -> Option<(u64, u64)> {
    let func_off = global(&WORKER_FUNC_OFFSET);
    if func_off == 0 {
        return None;
    }
    let worker = follow(task, 0, 2)?;
    // SAFETY: probe_read tolerates any address.
    let function =
        unsafe { bpf_probe_read_kernel((worker + u64::from(func_off)) as *const u64) }.ok()?;
    Some((follow(worker, 2, WORKER_CHAIN)?, function))
}

/// Follows `WORKER_OFFSETS[from..to]` from `p`; None at a null pointer or unknown offset.
#[inline(always)]
pub(crate) fn follow(mut p: u64, from: usize, to: usize) -> Option<u64> {
    for i in from..to {
        let off = global(&WORKER_OFFSETS[i]);
        // SAFETY: probe_read tolerates any address.
        match unsafe { bpf_probe_read_kernel((p + u64::from(off)) as *const u64) } {
            Ok(next) if off != 0 && next != 0 => p = next,
            _ => return None,
        }
    }
    Some(p)
}
