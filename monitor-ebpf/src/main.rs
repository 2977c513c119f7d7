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
//!
//! This file holds the programs' entry points, each a few lines; what they do is in one module
//! per concern: `maps` (the maps and user space's globals), `matching` (is it a system queue),
//! `flush` (count and report an offending flush), `call_site` (where it was called from),
//! `waits` (`--waits`: in-flight flushes, their waits, the work items they waited for) and
//! `tasks` (workers, and the task iterator of the stuck report).
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
mod arch;
#[cfg(target_arch = "bpf")]
mod call_site;
#[cfg(target_arch = "bpf")]
mod flush;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod matching;
#[cfg(target_arch = "bpf")]
mod tasks;
#[cfg(target_arch = "bpf")]
mod waits;
#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        macros::{fentry, fexit, kprobe, kretprobe, raw_tracepoint},
        programs::{
            FEntryContext, FExitContext, ProbeContext, RawTracePointContext, RetProbeContext,
        },
    };

    use crate::{
        flush::{Entry, on_flush},
        maps::MODULE_LOADS,
        tasks,
        waits::{self, on_flush_exit},
    };

    #[fentry(function = "__flush_workqueue")]
    pub fn flush_fentry(ctx: FEntryContext) -> u32 {
        on_flush(&ctx, ctx.arg::<u64>(0), Entry::Trampoline)
    }

    /// Also the kprobe-multi program: both get the registers at the probed function's entry.
    #[kprobe]
    pub fn flush_kprobe(ctx: ProbeContext) -> u32 {
        let regs = ctx.regs.cast_const();
        on_flush(
            &ctx,
            ctx.arg::<u64>(0).unwrap_or(0),
            Entry::Registers { regs },
        )
    }

    /// `--waits` through a kprobe session (6.10+): one program on one kprobe-multi link, run at
    /// the flush's entry and, only where the entry run returned 0, again at its return. The
    /// entry run asks for the return run only for a flush it tracks (an offending one), so every
    /// other flush runs it once, as without `--waits`; the verifier holds a session program
    /// to 0 or 1. See `waits::tracked_here` for how the return run is told apart. Not through
    /// `#[kprobe]`: that macro's wrapper returns 0 whatever the function returns, which would
    /// ask for a return run on every flush.
    #[unsafe(no_mangle)]
    #[unsafe(link_section = "kprobe")]
    pub fn flush_session(ctx: *mut core::ffi::c_void) -> u32 {
        if waits::tracked_here() {
            on_flush_exit();
            return 0;
        }
        let ctx = ProbeContext::new(ctx);
        let regs = ctx.regs.cast_const();
        on_flush(
            &ctx,
            ctx.arg::<u64>(0).unwrap_or(0),
            Entry::Registers { regs },
        );
        u32::from(!waits::tracked_here())
    }

    /// `module:module_load` fires once the module is in kallsyms, before its init runs.
    #[raw_tracepoint(tracepoint = "module_load")]
    pub fn module_load(_ctx: RawTracePointContext) -> i32 {
        let _ = MODULE_LOADS.output::<u64>(&1, 0);
        0
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

    /// `--waits`: a work item finished (see `waits::on_work_end`).
    #[raw_tracepoint(tracepoint = "workqueue_execute_end")]
    pub fn work_end(_ctx: RawTracePointContext) -> i32 {
        waits::on_work_end()
    }

    /// `--waits`: the task iterator run when a flush is stuck (see `tasks::write_running`). aya-ebpf
    /// 0.2 has no macro for iterators; the section name is what aya's loader knows them by.
    #[unsafe(no_mangle)]
    #[unsafe(link_section = "iter/task")]
    pub fn running_work(ctx: *mut core::ffi::c_void) -> i32 {
        tasks::write_running(ctx)
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
