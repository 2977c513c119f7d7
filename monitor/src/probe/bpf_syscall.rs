//! The few `bpf(2)` commands aya 0.14 does not wrap: loading a program for a kprobe-multi link,
//! creating that link, and reading the kernel's own counters of a program or link.
//!
//! The attribute layouts are aya-obj's bindings of the kernel UAPI (`linux/bpf.h`), so nothing
//! here restates the ABI by hand. A zeroed attribute union is passed whole: the kernel accepts
//! a larger union than it knows as long as the unknown tail is zero.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_link_info, bpf_prog_info};

/// `bpf(cmd, attr)`; returns the syscall's non-negative result.
fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: attr is a valid, fully initialised bpf_attr of the size passed; the kernel reads
    // (and for some commands writes) within it and within the buffers it points to, which the
    // callers keep alive across the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>() as libc::c_long,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

/// A zeroed attribute union (every field of it is plain data, valid when zero).
fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a C union of integers and arrays of integers.
    unsafe { std::mem::zeroed() }
}

/// `bpf()` returned a new file descriptor; take ownership of it.
fn owned(ret: i64) -> OwnedFd {
    // SAFETY: a successful BPF_PROG_LOAD / BPF_LINK_CREATE returns a new fd that nothing else
    // owns.
    unsafe { OwnedFd::from_raw_fd(ret as i32) }
}

/// What BPF_PROG_LOAD needs besides the program type.
pub struct ProgLoad<'a> {
    pub prog_type: u32,
    pub expected_attach_type: u32,
    pub insns: &'a [aya_obj::generated::bpf_insn],
    pub license: &'a std::ffi::CStr,
    pub name: &'a str,
}

/// Loads a program; on failure returns the errno and the verifier's log.
pub fn prog_load(p: &ProgLoad<'_>) -> Result<OwnedFd, (io::Error, String)> {
    let mut log = vec![0u8; 1 << 20];
    let mut attr = zeroed_attr();
    // SAFETY: writing plain integers into the union's BPF_PROG_LOAD member.
    let u = unsafe { &mut attr.__bindgen_anon_3 };
    u.prog_type = p.prog_type;
    u.expected_attach_type = p.expected_attach_type;
    u.insn_cnt = p.insns.len() as u32;
    u.insns = p.insns.as_ptr() as u64;
    u.license = p.license.as_ptr() as u64;
    for (dst, src) in u.prog_name.iter_mut().zip(p.name.bytes().take(15)) {
        *dst = src as libc::c_char;
    }
    let first = bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr);
    let Err(first) = first else {
        return first.map(owned).map_err(|e| (e, String::new()));
    };
    // Again with the verifier's log, which is only worth its cost when loading failed.
    // SAFETY: as above.
    let u = unsafe { &mut attr.__bindgen_anon_3 };
    u.log_level = 1;
    u.log_size = log.len() as u32;
    u.log_buf = log.as_mut_ptr() as u64;
    match bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(owned(fd)),
        Err(_) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err((first, String::from_utf8_lossy(&log[..end]).into_owned()))
        }
    }
}

/// A kprobe-multi link of `prog` on the functions named in `symbols` (`return_probe`: on their
/// return instead).
pub fn kprobe_multi_link(
    prog: BorrowedFd<'_>,
    symbols: &[&std::ffi::CStr],
    return_probe: bool,
) -> io::Result<OwnedFd> {
    let syms: Vec<*const libc::c_char> = symbols.iter().map(|s| s.as_ptr()).collect();
    let mut attr = zeroed_attr();
    // SAFETY: writing plain integers into the union's BPF_LINK_CREATE member.
    let l = unsafe { &mut attr.link_create };
    l.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    l.attach_type = aya_obj::generated::bpf_attach_type::BPF_TRACE_KPROBE_MULTI as u32;
    // SAFETY: as above.
    let k = unsafe { &mut l.__bindgen_anon_3.kprobe_multi };
    k.cnt = syms.len() as u32;
    k.syms = syms.as_ptr() as u64;
    if return_probe {
        k.flags = aya_obj::generated::BPF_F_KPROBE_MULTI_RETURN;
    }
    bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr).map(owned)
}

/// Why the kernel refuses a kprobe-multi link of `prog` with flags it does not know (a feature
/// probe: it checks them before looking up any function, so nothing is attached or searched).
pub fn kprobe_multi_link_refusal(prog: BorrowedFd<'_>) -> io::Error {
    let name = c"wqflush_feature_probe";
    let syms = [name.as_ptr()];
    let mut attr = zeroed_attr();
    // SAFETY: writing plain integers into the union's BPF_LINK_CREATE member.
    let l = unsafe { &mut attr.link_create };
    l.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    l.attach_type = aya_obj::generated::bpf_attach_type::BPF_TRACE_KPROBE_MULTI as u32;
    // SAFETY: as above.
    let k = unsafe { &mut l.__bindgen_anon_3.kprobe_multi };
    k.cnt = 1;
    k.syms = syms.as_ptr() as u64;
    k.flags = 1 << 31;
    match bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr) {
        // Refused after all: no link can have come of it, but close it if one did.
        Ok(fd) => {
            drop(owned(fd));
            io::Error::other("a kprobe-multi link with unknown flags was accepted")
        }
        Err(e) => e,
    }
}

/// BPF_OBJ_GET_INFO_BY_FD into `info`. Older kernels fill a shorter prefix; whether a field is
/// reported at all is for the caller to know (`btf::Counters`), not guessed from the length.
fn obj_info<T>(fd: BorrowedFd<'_>, info: &mut T) -> io::Result<()> {
    let mut attr = zeroed_attr();
    // SAFETY: writing plain integers into the union's info member; `info` outlives the call
    // and is as long as info_len says.
    let i = unsafe { &mut attr.info };
    i.bpf_fd = fd.as_raw_fd() as u32;
    i.info_len = size_of::<T>() as u32;
    i.info = info as *mut T as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(drop)
}

/// A program's `recursion_misses`: runs the kernel skipped because a BPF program was already
/// active on that CPU.
pub fn prog_recursion_misses(prog: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: bpf_prog_info is plain integers, valid when zero.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    obj_info(prog, &mut info)?;
    Ok(info.recursion_misses)
}

/// Probe hits a kprobe-multi link could not run the program for (`kprobe_multi.missed`).
pub fn kprobe_multi_missed(link: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: bpf_link_info is plain integers, valid when zero.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    obj_info(link, &mut info)?;
    // SAFETY: plain integers; the kernel writes the member of the link's type.
    Ok(unsafe { info.__bindgen_anon_1.kprobe_multi.missed })
}
