//! The flush's call site, the key of every count: read off the probe's entry where the kernel
//! put it, unwound where it cannot be read with certainty.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_stack, bpf_probe_read_kernel},
};
use monitor_ebpf::{FlushEvent, MAX_FLUSH_RANGES, MAX_FRAMES};

use crate::{
    arch::{self, CALLER_ABOVE_ENTRY_RETURN, ENTRY_RETURN_AT, TRAMPOLINE_WORDS},
    flush::Entry,
    maps::*,
};

/// How deep the caller is looked for. The stack starts at the flush function, and its
/// wrappers (flush_scheduled_work() before 5.19, drain_workqueue()) add at most two frames;
/// each frame scanned multiplies the paths the verifier walks, so not all MAX_FRAMES are.
pub(crate) const CALLER_DEPTH: usize = 8;

/// The flush's call site: read off the probe's entry, or, where that is not the caller
/// (a wrapper such as drain_workqueue() called the flush function), from the innermost
/// CALLER_DEPTH frames. Only a site's first flush unwinds the whole stack.
#[inline(always)]
pub(crate) fn call_site<C: EbpfContext>(ctx: &C, ev: &mut FlushEvent, entry: Entry) -> u64 {
    let direct = match entry {
        Entry::Trampoline => trampoline_return(ctx.as_ptr() as u64),
        Entry::Registers { regs } => {
            let ret = arch::entry_return(regs);
            if is_caller(ret) { ret } else { 0 }
        }
    };
    if direct != 0 {
        return direct;
    }
    stack(ctx, ev, CALLER_DEPTH);
    caller(ev, matches!(entry, Entry::Trampoline))
}

/// The return address into the flush function's caller, read where the trampoline put it
/// (`arch::TRAMPOLINE_WORDS`): above the word that is exactly the flush function's entry
/// return. Only the places that word can be are looked at, and never a slot the trampoline
/// leaves unwritten at entry (the return value's, padding) as the caller: what lies between
/// such a slot and the caller's return is a register value, never an address just past the
/// flush function's patched call. 0 (unwind) in x86's jmp mode, or when the caller is a
/// wrapper of the flush function.
#[inline(always)]
pub(crate) fn trampoline_return(ctx: u64) -> u64 {
    // SAFETY: probe_read tolerates any address.
    let Ok(words) = (unsafe { bpf_probe_read_kernel(ctx as *const [u64; TRAMPOLINE_WORDS]) })
    else {
        return 0;
    };
    for at in ENTRY_RETURN_AT {
        if is_entry_return(words[at]) {
            let ret = arch::strip(words[at + CALLER_ABOVE_ENTRY_RETURN]);
            return if is_caller(ret) { ret } else { 0 };
        }
    }
    0
}

#[inline(always)]
pub(crate) fn is_entry_return(addr: u64) -> bool {
    let [a, b] = global(&ENTRY_RETURNS);
    addr != 0 && (addr == a || addr == b)
}

/// A return address into text that is not inside the flush function or a wrapper of it.
#[inline(always)]
pub(crate) fn is_caller(addr: u64) -> bool {
    arch::is_text(addr) && !in_flush_ranges(addr)
}

/// The innermost `frames` return addresses into `ev.stack`; the kernel stops unwinding there.
#[inline(always)]
pub(crate) fn stack<C: EbpfContext>(ctx: &C, ev: &mut FlushEvent, frames: usize) {
    let size = (frames.min(MAX_FRAMES) * 8) as u32;
    // SAFETY: the helper writes at most `size` bytes into `ev.stack`.
    ev.stack_bytes =
        unsafe { bpf_get_stack(ctx.as_ptr(), ev.stack.as_mut_ptr().cast(), size, 0) } as i32;
}

/// The first frame past the flush function and its wrappers; 0 when there is none within
/// `CALLER_DEPTH` frames.
#[inline(always)]
pub(crate) fn caller(ev: &FlushEvent, trampoline: bool) -> u64 {
    let frames = (ev.stack_bytes.max(0) as usize / 8).min(CALLER_DEPTH);
    let mut inside = false;
    for i in 0..CALLER_DEPTH {
        if i >= frames {
            break;
        }
        let addr = arch::strip(ev.stack[i]);
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
        return arch::strip(ev.stack[JMP_MODE_CALLER_FRAME]);
    }
    0
}

/// Where the caller is in the unwound stack when the flush function left no frame (above).
pub(crate) const JMP_MODE_CALLER_FRAME: usize = 2;

#[inline(always)]
pub(crate) fn in_flush_ranges(addr: u64) -> bool {
    for r in 0..MAX_FLUSH_RANGES {
        let [start, end] = global(&FLUSH_RANGES[r]);
        if start <= addr && addr < end {
            return true;
        }
    }
    false
}
