//! The kernel side of wqflush: one probe on the workqueue flush entry point.
//!
//! The probed function is `__flush_workqueue` (5.19+; `flush_workqueue()` is a macro around it)
//! or `flush_workqueue` itself before; `flush_scheduled_work()` is a macro or wrapper around
//! those and needs no probe of its own. What changed in which kernel, and how each change is
//! handled: `src/kernels.rs`, the project's per-kernel notes.
//!
//! Filtering stays here so a flush of a module's own queue costs a few loads and compares and
//! sends nothing: only a flush whose target equals the value of a `system_*wq` pointer variable
//! (addresses from kallsyms, via user space; values read once, they never change after boot)
//! captures a stack. Where kallsyms has no data
//! symbols (CONFIG_KALLSYMS_ALL=n) user space switches to name mode: `wq->name` is compared with
//! the system queue names, at an offset user space read from BTF (Rust eBPF has no CO-RE).
//! A matching flush is counted in the kernel, per (queue, call site), so counts stay exact however
//! busy the ring buffer or user space is; only a call site's first flush is sent, with its stack.
//! Everything else (symbolizing, dedup, reporting) happens in user space.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The BPF target has no atomic read-modify-write in `core::sync::atomic` (atomic_cas is off for
// it), but LLVM lowers an unused atomic add to BPF's XADD, which every kernel supports.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("monitor-ebpf builds for the BPF target only; it is embedded in the wqflush binary");
}

#[cfg(target_arch = "bpf")]
mod probe {
    use core::ptr::{addr_of, addr_of_mut, read_volatile};

    use aya_ebpf::{
        EbpfContext,
        bindings::BPF_NOEXIST,
        helpers::{
            bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
            bpf_get_smp_processor_id, bpf_get_stack, bpf_ktime_get_ns, bpf_probe_read_kernel,
        },
        macros::{fentry, fexit, kprobe, kretprobe, map, raw_tracepoint},
        maps::{HashMap, PerCpuArray, RingBuf},
        programs::{
            FEntryContext, FExitContext, ProbeContext, RawTracePointContext, RetProbeContext,
        },
    };
    use monitor_ebpf::{
        CountKey, FLAG_BY_NAME, FLAG_RUNNING_KNOWN, FLAG_WORKER, FLAG_WORKER_KNOWN, FlushEvent,
        InFlight, LOST_RINGBUF, LOST_SLOTS, LOST_UNCOUNTED, LOST_WAITS, MAX_FLUSH_RANGES,
        MAX_FLUSH_SLOTS, MAX_FRAMES, MAX_IN_FLIGHT, MAX_QUEUES, MAX_SITES, MAX_WAITED, NAME_LEN,
        NO_QUEUE, Returned, RunningWork, SlotKey, WAIT_BOUNDS_NS, WAIT_BUCKETS, WORKER_CHAIN,
        WaitStats, WaitedKey,
    };

    /// How deep the caller is looked for. The stack starts at the flush function, and its
    /// wrappers (flush_scheduled_work() before 5.19, drain_workqueue()) add at most two frames;
    /// each frame scanned multiplies the paths the verifier walks, so not all MAX_FRAMES are.
    const CALLER_DEPTH: usize = 8;

    /// `PF_WQ_WORKER` from include/linux/sched.h; unchanged since 2.6.36.
    const PF_WQ_WORKER: u32 = 0x20;

    // Read-only globals set by user space before load (`EbpfLoader::set_global`); the verifier
    // sees their values, so the unused mode's code is dead code for it.
    /// Number of valid entries in QUEUE_ADDRS / QUEUE_NAMES.
    #[unsafe(no_mangle)]
    static NR_QUEUES: u32 = 0;
    /// Address of each `system_*wq` pointer variable (address mode).
    #[unsafe(no_mangle)]
    static QUEUE_ADDRS: [u64; MAX_QUEUES] = [0; MAX_QUEUES];
    /// 1: compare names instead of pointers.
    #[unsafe(no_mangle)]
    static MATCH_BY_NAME: u32 = 0;
    /// NUL-terminated name of each system queue (name mode).
    #[unsafe(no_mangle)]
    static QUEUE_NAMES: [[u8; NAME_LEN]; MAX_QUEUES] = [[0; NAME_LEN]; MAX_QUEUES];
    /// offsetof(struct workqueue_struct, name), from BTF.
    #[unsafe(no_mangle)]
    static WQ_NAME_OFFSET: u32 = 0;
    /// offsetof(struct task_struct, flags), from BTF; 0 when unknown.
    #[unsafe(no_mangle)]
    static TASK_FLAGS_OFFSET: u32 = 0;
    /// offsetof(struct task_struct, pid), from BTF (`--waits`: the task iterator's thread ids).
    #[unsafe(no_mangle)]
    static TASK_PID_OFFSET: u32 = 0;

    /// The worker -> running workqueue offsets (`WORKER_CHAIN`); zeros when BTF lacks them.
    #[unsafe(no_mangle)]
    static WORKER_OFFSETS: [u32; WORKER_CHAIN] = [0; WORKER_CHAIN];

    /// 1 with `--waits`: offending flushes are tracked until they return. 0 makes all of it dead
    /// code for the verifier, so the default pays nothing for it.
    #[unsafe(no_mangle)]
    static WAITS: u32 = 0;
    /// offsetof(struct worker, current_func), from BTF (`--waits`); 0 when unknown.
    #[unsafe(no_mangle)]
    static WORKER_FUNC_OFFSET: u32 = 0;

    /// [start, end) of the flush function and of the wrappers around it (drain_workqueue, ...).
    #[unsafe(no_mangle)]
    static FLUSH_RANGES: [[u64; 2]; MAX_FLUSH_RANGES] = [[0; 2]; MAX_FLUSH_RANGES];

    /// The addresses the call patched into the flush function's entry returns to (start + 5,
    /// start + 9 behind an endbr64): a trampoline's frame holds one of them right below the
    /// return address into the flush function's caller.
    #[unsafe(no_mangle)]
    static ENTRY_RETURNS: [u64; 2] = [0; 2];

    /// First sightings of a call site, with their stacks.
    #[map]
    static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

    /// Flushes per (queue, call site).
    #[map]
    static COUNTS: HashMap<CountKey, u64> = HashMap::with_max_entries(MAX_SITES, 0);

    /// Losses per CPU (`LOST_*` slots), so nothing is dropped without being counted.
    #[map]
    static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_SLOTS, 0);

    /// A module finished loading: user space re-reads kallsyms at once, so a module that flushes
    /// and is unloaded right away is still named (its symbols are gone by the time its flush
    /// would otherwise send user space looking for them).
    #[map]
    static MODULE_LOADS: RingBuf = RingBuf::with_byte_size(4096, 0);

    /// `--waits`: offending flushes that have not returned, by thread id.
    #[map]
    static INFLIGHT: HashMap<u32, InFlight> = HashMap::with_max_entries(MAX_IN_FLIGHT, 0);

    /// `--waits`: per queue, which threads' flushes are in flight (slots 0..MAX_FLUSH_SLOTS), so
    /// the work-item tracepoint finds them without walking INFLIGHT.
    #[map]
    static FLUSH_SLOTS: HashMap<SlotKey, u32> =
        HashMap::with_max_entries(MAX_QUEUES as u32 * MAX_FLUSH_SLOTS, 0);

    /// `--waits`: how long each call site's flushes waited.
    #[map]
    static WAITS_BY_SITE: HashMap<CountKey, WaitStats> = HashMap::with_max_entries(MAX_SITES, 0);

    /// `--waits`: work items that ran on the flushed queue while a flush from a site waited.
    #[map]
    static WAITED: HashMap<WaitedKey, u64> = HashMap::with_max_entries(MAX_WAITED, 0);

    /// `--waits`: a reported (first-sighting) flush returned.
    #[map]
    static RETURNS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

    /// `--waits`: entries of INFLIGHT. The exit and work-item programs run on every flush and
    /// every work item; reading this first is all they cost while no offending flush waits.
    /// Updated only by atomic adds whose result is unused: 5.10 has no fetch-atomics.
    #[unsafe(no_mangle)]
    static mut IN_FLIGHT_NOW: u64 = 0;

    /// The event being built: too big for the 512-byte BPF stack.
    #[map]
    static SCRATCH: PerCpuArray<FlushEvent> = PerCpuArray::with_max_entries(1, 0);

    #[fentry(function = "__flush_workqueue")]
    pub fn flush_fentry(ctx: FEntryContext) -> u32 {
        on_flush(&ctx, ctx.arg::<u64>(0), Entry::Trampoline)
    }

    /// Also the kprobe-multi program: both get the registers at the probed function's entry.
    #[kprobe]
    pub fn flush_kprobe(ctx: ProbeContext) -> u32 {
        // SAFETY: the context is the kernel's pt_regs.
        let sp = unsafe { (*ctx.regs).rsp };
        on_flush(
            &ctx,
            ctx.arg::<u64>(0).unwrap_or(0),
            Entry::Registers { sp },
        )
    }

    /// Where the probe was entered from, which says where the return address into the flush
    /// function's caller is without unwinding: unwinding 8 frames is 90% of what an offending
    /// flush costs (measured on 5.10 with `bpf_stats_enabled`: 13.1 us of 14.4 for fentry, 9.3 of
    /// 10.3 for a kprobe, against 1.0-1.3 us for these reads).
    #[derive(Clone, Copy)]
    enum Entry {
        /// A BPF trampoline, called from the flush function's entry: see `trampoline_return`.
        Trampoline,
        /// A kprobe or fprobe at the flush function's entry: `sp` points at the return address.
        Registers { sp: u64 },
    }

    /// `module:module_load` fires once the module is in kallsyms, before its init runs.
    #[raw_tracepoint(tracepoint = "module_load")]
    pub fn module_load(_ctx: RawTracePointContext) -> i32 {
        let _ = MODULE_LOADS.output::<u64>(&1, 0);
        0
    }

    #[inline(always)]
    fn global<T: Copy>(value: &T) -> T {
        // SAFETY: a plain read of a static; volatile so the compiler does not fold in the
        // placeholder value that user space replaces before load.
        unsafe { read_volatile(addr_of!(*value)) }
    }

    #[inline(always)]
    fn on_flush<C: EbpfContext>(ctx: &C, wq: u64, entry: Entry) -> u32 {
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

    /// Index of the system queue `wq` is; address mode needs `load_queue_values` first.
    #[inline(always)]
    fn system_queue(wq: u64) -> Option<u32> {
        if global(&MATCH_BY_NAME) != 0 {
            match_by_name(wq)
        } else {
            match_by_address(wq)
        }
    }

    /// The values of the `system_*wq` variables, read on first use. They are assigned once, in
    /// workqueue_init_early(), long before anything can load a BPF program, so later flushes
    /// compare against this copy instead of calling bpf_probe_read_kernel() per queue: that is
    /// most of the probe's cost on the flushes it does not report.
    #[unsafe(no_mangle)]
    static mut QUEUE_VALUES: [u64; MAX_QUEUES] = [0; MAX_QUEUES];
    /// 1 once `QUEUE_VALUES` holds every value.
    #[unsafe(no_mangle)]
    static mut QUEUE_VALUES_READ: u32 = 0;

    /// Address mode: reads the `system_*wq` values on the first flush (or until every read
    /// worked). Kept apart from the lookup, which runs twice for a worker (the flushed queue,
    /// then the one it runs): a second copy of these reads doubled the verifier's work.
    #[inline(always)]
    fn load_queue_values() {
        // SAFETY: plain reads of this program's own globals; racing writers store equal values.
        let read = unsafe { read_volatile(addr_of!(QUEUE_VALUES_READ)) };
        if global(&MATCH_BY_NAME) == 0 && read == 0 {
            read_queue_values(global(&NR_QUEUES) as usize);
        }
    }

    /// Index of the system queue whose pointer variable holds `wq`, from the cached values.
    #[inline(always)]
    fn match_by_address(wq: u64) -> Option<u32> {
        let n = global(&NR_QUEUES) as usize;
        for i in 0..MAX_QUEUES {
            if i >= n {
                break;
            }
            // SAFETY: as above.
            if unsafe { read_volatile(addr_of!(QUEUE_VALUES[i])) } == wq {
                return Some(i as u32);
            }
        }
        None
    }

    /// Fills `QUEUE_VALUES`; marks it complete only if every read worked (else retries next time).
    #[inline(always)]
    fn read_queue_values(n: usize) {
        let mut complete = 1;
        for i in 0..MAX_QUEUES {
            if i >= n {
                break;
            }
            let var = global(&QUEUE_ADDRS[i]) as *const u64;
            // SAFETY: probe_read tolerates any address; the store is to this program's global.
            match unsafe { bpf_probe_read_kernel(var) } {
                Ok(value) => unsafe { QUEUE_VALUES[i] = value },
                Err(_) => complete = 0,
            }
        }
        // SAFETY: as above.
        unsafe { QUEUE_VALUES_READ = complete };
    }

    /// Index of the system queue whose name equals `wq->name`.
    #[inline(always)]
    fn match_by_name(wq: u64) -> Option<u32> {
        let at = wq + u64::from(global(&WQ_NAME_OFFSET));
        // SAFETY: probe_read tolerates any address.
        let name: [u8; NAME_LEN] = unsafe { bpf_probe_read_kernel(at as *const _) }.ok()?;
        let n = global(&NR_QUEUES) as usize;
        for i in 0..MAX_QUEUES {
            if i >= n {
                break;
            }
            if names_equal(&name, &QUEUE_NAMES[i]) {
                return Some(i as u32);
            }
        }
        None
    }

    /// Compares up to and including `want`'s NUL, so bytes past the kernel's (shorter, pre-6.9)
    /// name array are never looked at.
    #[inline(always)]
    fn names_equal(got: &[u8; NAME_LEN], want: &[u8; NAME_LEN]) -> bool {
        for j in 0..NAME_LEN {
            let w = global(&want[j]);
            if got[j] != w {
                return false;
            }
            if w == 0 {
                return true;
            }
        }
        false
    }

    /// Counts the flush under its call site; the site's first flush also goes to user space.
    #[inline(always)]
    fn send<C: EbpfContext>(ctx: &C, wq: u64, queue: u32, flags: u32, entry: Entry) {
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

    /// `--waits`: records the flush as in flight, holding one of its queue's slots, until the
    /// exit program sees it return.
    #[inline(always)]
    fn track(key: &CountKey, wq: u64, first: bool) {
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
    fn claim_slot(queue: u32, tid: u32) -> Option<u32> {
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
    fn release(tid: u32, flight: &InFlight) {
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
    fn add_in_flight(n: u64) {
        // SAFETY: this program's global; an atomic add whose result is unused (BPF XADD).
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                core::ptr::addr_of_mut!(IN_FLIGHT_NOW),
                n,
            )
        };
    }

    #[inline(always)]
    fn in_flight() -> u64 {
        // SAFETY: a plain read of this program's global.
        unsafe { read_volatile(addr_of!(IN_FLIGHT_NOW)) }
    }

    /// `--waits` with fentry: the flush function returned.
    #[fexit(function = "__flush_workqueue")]
    pub fn flush_fexit(_ctx: FExitContext) -> u32 {
        on_flush_exit();
        0
    }

    /// `--waits` with a kprobe or kprobe-multi (linked with BPF_F_KPROBE_MULTI_RETURN).
    #[kretprobe]
    pub fn flush_kretprobe(_ctx: RetProbeContext) -> u32 {
        on_flush_exit();
        0
    }

    /// Every flush returns through here: the calling thread's in-flight entry, if any, gives the
    /// wait. A reported flush's return goes to user space for its "waited" line.
    #[inline(always)]
    fn on_flush_exit() {
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

    /// Adds one wait to its call site's figures.
    #[inline(always)]
    fn record_wait(key: &CountKey, wait_ns: u64) {
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
    fn bucket(ns: u64) -> usize {
        for (i, bound) in WAIT_BOUNDS_NS.iter().enumerate() {
            if ns <= *bound {
                return i;
            }
        }
        WAIT_BUCKETS - 1
    }

    #[inline(always)]
    unsafe fn xadd(at: *mut u64, n: u64) {
        // SAFETY: the caller's pointer is to a map value; the result is unused (BPF XADD).
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                at, n,
            )
        };
    }

    /// `--waits`: a work item finished. While a flush of a system queue is in flight, a work item
    /// of that queue that ran is one the flush (may have) waited for: counted per flushing site.
    #[raw_tracepoint(tracepoint = "workqueue_execute_end")]
    pub fn work_end(_ctx: RawTracePointContext) -> i32 {
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

    /// `struct bpf_iter__task` (5.8+): what a task iterator program is called with.
    #[repr(C)]
    struct IterTask {
        meta: *const IterMeta,
        task: u64,
    }

    /// `struct bpf_iter_meta`: its first member is the seq_file the program writes to.
    #[repr(C)]
    struct IterMeta {
        seq: *mut core::ffi::c_void,
    }

    /// `--waits`: a task iterator user space runs only when a flush has been stuck past
    /// `--stuck-after`, never on a hot path. It writes one `RunningWork` per worker that is
    /// running a work item. That includes items started before the flush, such as one blocked on
    /// a lock the flusher holds, and the flusher's own item when a worker flushes its own queue.
    /// User space keeps the ones on the stuck flush's queue. aya-ebpf 0.2 has no macro for
    /// iterators; the section name is what aya's loader knows them by.
    #[unsafe(no_mangle)]
    #[unsafe(link_section = "iter/task")]
    pub fn running_work(ctx: *mut core::ffi::c_void) -> i32 {
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
        let Ok(tid) = (unsafe { bpf_probe_read_kernel((task + u64::from(off)) as *const u32) })
        else {
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

    /// The queue and function of the work item the current worker runs: worker->current_pwq->wq
    /// and worker->current_func, both still set at workqueue_execute_end.
    #[inline(always)]
    fn current_work() -> Option<(u64, u64)> {
        work_of(unsafe { bpf_get_current_task() })
    }

    /// The queue and function of the work item `task`, a worker, runs; None when it runs none.
    #[inline(always)]
    fn work_of(task: u64) -> Option<(u64, u64)> {
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
    fn follow(mut p: u64, from: usize, to: usize) -> Option<u64> {
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

    #[inline(always)]
    fn count_waited(key: &WaitedKey) {
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

    /// The flush's call site: read off the probe's entry, or, where that is not the caller
    /// (a wrapper such as drain_workqueue() called the flush function), from the innermost
    /// CALLER_DEPTH frames. Only a site's first flush unwinds the whole stack.
    #[inline(always)]
    fn call_site<C: EbpfContext>(ctx: &C, ev: &mut FlushEvent, entry: Entry) -> u64 {
        let direct = match entry {
            Entry::Trampoline => trampoline_return(ctx.as_ptr() as u64),
            // SAFETY: probe_read tolerates any address.
            Entry::Registers { sp } => unsafe { bpf_probe_read_kernel(sp as *const u64) }
                .map(|ret| if is_caller(ret) { ret } else { 0 })
                .unwrap_or(0),
        };
        if direct != 0 {
            return direct;
        }
        stack(ctx, ev, CALLER_DEPTH);
        caller(ev, matches!(entry, Entry::Trampoline))
    }

    /// The words of a trampoline's frame from the context up, for the flush function's one
    /// argument. In call mode: the argument, the return value's slot if the trampoline calls
    /// the function itself (an fexit or fmod_ret program is attached, any tool's), the saved
    /// rbp, the return address into the flush function (an `ENTRY_RETURNS` value), then the
    /// one into its caller. A trampoline in jmp mode (6.19+, with an fexit program) keeps no
    /// return address into the flush function: the caller's is unwound.
    const TRAMPOLINE_WORDS: usize = 5;
    /// Where the return address into the flush function is, without and with the return
    /// value's slot.
    const ENTRY_RETURN_AT: [usize; 2] = [2, 3];

    /// The return address into the flush function's caller, read where the trampoline put it:
    /// above the word that is exactly the flush function's entry return. Only these two
    /// places are looked at, and the return value's slot (stale stack contents until the
    /// function returns) never is: the saved rbp between it and the entry return is a register
    /// value, never an address just past the flush function's patched call. 0 (unwind) in jmp
    /// mode, or when the caller is a wrapper of the flush function.
    #[inline(always)]
    fn trampoline_return(ctx: u64) -> u64 {
        // SAFETY: probe_read tolerates any address.
        let Ok(words) = (unsafe { bpf_probe_read_kernel(ctx as *const [u64; TRAMPOLINE_WORDS]) })
        else {
            return 0;
        };
        for at in ENTRY_RETURN_AT {
            if is_entry_return(words[at]) {
                let ret = words[at + 1];
                return if is_caller(ret) { ret } else { 0 };
            }
        }
        0
    }

    #[inline(always)]
    fn is_entry_return(addr: u64) -> bool {
        let [a, b] = global(&ENTRY_RETURNS);
        addr != 0 && (addr == a || addr == b)
    }

    /// Kernel and module text, and everything else in x86-64's top 2 GiB; stacks, the heap and
    /// the direct map are below it.
    #[inline(always)]
    fn is_text(addr: u64) -> bool {
        addr >= 0xffff_ffff_8000_0000
    }

    /// A return address into text that is not inside the flush function or a wrapper of it.
    #[inline(always)]
    fn is_caller(addr: u64) -> bool {
        is_text(addr) && !in_flush_ranges(addr)
    }

    /// The innermost `frames` return addresses into `ev.stack`; the kernel stops unwinding there.
    #[inline(always)]
    fn stack<C: EbpfContext>(ctx: &C, ev: &mut FlushEvent, frames: usize) {
        let size = (frames.min(MAX_FRAMES) * 8) as u32;
        // SAFETY: the helper writes at most `size` bytes into `ev.stack`.
        ev.stack_bytes =
            unsafe { bpf_get_stack(ctx.as_ptr(), ev.stack.as_mut_ptr().cast(), size, 0) } as i32;
    }

    /// Adds one to an existing counter; false when the call site has none yet.
    #[inline(always)]
    fn count(key: &CountKey) -> bool {
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

    #[inline(always)]
    fn lose(slot: u32) {
        if let Some(n) = LOST.get_ptr_mut(slot) {
            // SAFETY: this CPU's slot.
            unsafe { *n += 1 };
        }
    }

    /// The first frame past the flush function and its wrappers; 0 when there is none within
    /// `CALLER_DEPTH` frames.
    #[inline(always)]
    fn caller(ev: &FlushEvent, trampoline: bool) -> u64 {
        let frames = (ev.stack_bytes.max(0) as usize / 8).min(CALLER_DEPTH);
        let mut inside = false;
        for i in 0..CALLER_DEPTH {
            if i >= frames {
                break;
            }
            let addr = ev.stack[i];
            let flush = in_flush_ranges(addr);
            if inside && !flush {
                return addr;
            }
            inside |= flush;
        }
        // A trampoline in jmp mode (an fexit program on the flush function, 6.19+: 7.3 with
        // --waits) leaves no return address into the flush function: the unwound stack is this
        // program, its trampoline, then the caller.
        if !inside && trampoline && frames > JMP_MODE_CALLER_FRAME {
            return ev.stack[JMP_MODE_CALLER_FRAME];
        }
        0
    }

    /// Where the caller is in the unwound stack when the flush function left no frame (above).
    const JMP_MODE_CALLER_FRAME: usize = 2;

    #[inline(always)]
    fn in_flush_ranges(addr: u64) -> bool {
        for r in 0..MAX_FLUSH_RANGES {
            let [start, end] = global(&FLUSH_RANGES[r]);
            if start <= addr && addr < end {
                return true;
            }
        }
        false
    }

    /// The flushed queue's name, so reports show the kernel's own (names changed across
    /// versions, and queues added later are in no table).
    #[inline(always)]
    fn queue_name(wq: u64) -> [u8; NAME_LEN] {
        let off = global(&WQ_NAME_OFFSET);
        if off == 0 {
            return [0; NAME_LEN];
        }
        // SAFETY: probe_read tolerates any address.
        unsafe { bpf_probe_read_kernel((wq + u64::from(off)) as *const [u8; NAME_LEN]) }
            .unwrap_or([0; NAME_LEN])
    }

    /// For a worker, the queue of the work item it runs: flushing that queue waits for itself.
    #[inline(always)]
    fn running(ev: &mut FlushEvent) {
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
    fn worker_flags() -> u32 {
        match task_flags(unsafe { bpf_get_current_task() }) {
            Some(f) if f & PF_WQ_WORKER != 0 => FLAG_WORKER | FLAG_WORKER_KNOWN,
            Some(_) => FLAG_WORKER_KNOWN,
            None => 0,
        }
    }

    /// `task->flags`, unless its offset is unknown or the read failed.
    #[inline(always)]
    fn task_flags(task: u64) -> Option<u32> {
        let off = global(&TASK_FLAGS_OFFSET);
        if off == 0 {
            return None;
        }
        // SAFETY: probe_read tolerates any address.
        unsafe { bpf_probe_read_kernel((task + u64::from(off)) as *const u32) }.ok()
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    /// GPL-compatible: bpf_probe_read_kernel and bpf_get_stack are GPL-only helpers.
    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
}
