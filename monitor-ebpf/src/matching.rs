//! Whether a flushed queue is a system queue: by the values of the `system_*wq` variables
//! (read once, they never change after boot), or by name where kallsyms lists no data symbols.

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::helpers::bpf_probe_read_kernel;
use monitor_ebpf::{MAX_QUEUES, NAME_LEN};

use crate::maps::*;

/// Index of the system queue `wq` is; address mode needs `load_queue_values` first.
#[inline(always)]
pub(crate) fn system_queue(wq: u64) -> Option<u32> {
    if global(&MATCH_BY_NAME) != 0 {
        match_by_name(wq)
    } else {
        match_by_address(wq)
    }
}

/// Address mode: reads the `system_*wq` values on the first flush (or until every read
/// worked). Kept apart from the lookup, which runs twice for a worker (the flushed queue,
/// then the one it runs): a second copy of these reads doubled the verifier's work.
#[inline(always)]
pub(crate) fn load_queue_values() {
    // SAFETY: plain reads of this program's own globals; racing writers store equal values.
    let read = unsafe { read_volatile(addr_of!(QUEUE_VALUES_READ)) };
    if global(&MATCH_BY_NAME) == 0 && read == 0 {
        read_queue_values(global(&NR_QUEUES) as usize);
    }
}

/// Index of the system queue whose pointer variable holds `wq`, from the cached values.
#[inline(always)]
pub(crate) fn match_by_address(wq: u64) -> Option<u32> {
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
pub(crate) fn read_queue_values(n: usize) {
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
pub(crate) fn match_by_name(wq: u64) -> Option<u32> {
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
pub(crate) fn names_equal(got: &[u8; NAME_LEN], want: &[u8; NAME_LEN]) -> bool {
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

/// The flushed queue's name, so reports show the kernel's own (names changed across
/// versions, and queues added later are in no table).
#[inline(always)]
pub(crate) fn queue_name(wq: u64) -> [u8; NAME_LEN] {
    let off = global(&WQ_NAME_OFFSET);
    if off == 0 {
        return [0; NAME_LEN];
    }
    // SAFETY: probe_read tolerates any address.
    unsafe { bpf_probe_read_kernel((wq + u64::from(off)) as *const [u8; NAME_LEN]) }
        .unwrap_or([0; NAME_LEN])
}
