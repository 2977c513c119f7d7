//! `--waits` through a kprobe session (6.10+, CONFIG_FPROBE): the entry program itself decides,
//! by its return value, whether the link runs it again at the flush's return, so only an
//! offending flush pays for the wait tracking (monitor-ebpf's `flush_session`); elsewhere an exit
//! program runs on every flush's return and about doubles what every flush costs. Waits stay
//! `--waits`' choice either way until the session meets its cost goal (`WaitsVia::choose`).

use std::{ffi::CString, os::fd::AsFd as _, sync::OnceLock};

use aya_obj::generated::{bpf_insn, bpf_prog_type};

use super::{bpf_syscall, kprobe_multi};

/// Whether this kernel can link a kprobe session to `function`, found once by a trial: a
/// two-instruction program loaded for a session and linked, with a symbol count past the
/// kernel's limit. A kernel without sessions refuses the attach type (EINVAL) before it looks
/// at the count, one without fprobe says EOPNOTSUPP; one with sessions gets as far as the count
/// (E2BIG) and stops there, before touching ftrace, so the trial costs no code patching.
pub fn available(function: &str) -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| trial(function))
}

fn trial(function: &str) -> bool {
    let insns = return_zero();
    let load = bpf_syscall::ProgLoad {
        prog_type: bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32,
        expected_attach_type: kprobe_multi::BPF_TRACE_KPROBE_SESSION,
        insns: &insns,
        license: c"GPL",
        name: "session_trial",
    };
    let Ok(prog) = bpf_syscall::prog_load(&load) else {
        return false;
    };
    let Ok(name) = CString::new(function) else {
        return false;
    };
    let syms = [name.as_ptr()];
    // SAFETY: a kernel with sessions refuses the count (E2BIG) before reading any symbol; one
    // without refuses the attach type before that. Neither reads past `syms`.
    let attached = unsafe {
        bpf_syscall::kprobe_multi_link_raw(
            prog.as_fd(),
            &syms,
            TRIAL_COUNT,
            kprobe_multi::BPF_TRACE_KPROBE_SESSION,
            0,
        )
    };
    // Ok cannot happen (the count is refused); were it to, the session attached, so it works.
    match attached {
        Ok(_link) => true,
        Err(e) => e.raw_os_error() == Some(libc::E2BIG),
    }
}

/// Past MAX_KPROBE_MULTI_CNT (1 << 20; the limit is older than sessions, and checked before
/// any symbol is read).
const TRIAL_COUNT: u32 = (1 << 20) + 1;

/// `r0 = 0; exit`.
fn return_zero() -> [bpf_insn; 2] {
    // SAFETY: bpf_insn is plain integers (and bitfields of them), valid when zero.
    let mut insns: [bpf_insn; 2] = unsafe { std::mem::zeroed() };
    insns[0].code = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm 0
    insns[1].code = 0x95; // BPF_JMP | BPF_EXIT
    insns
}
