//! What differs between x86-64 and arm64 at the flush function's entry: where the return
//! address into the caller is, what a trampoline's frame looks like, which addresses are text.
//! Everything else in the programs is the same on both (docs/kernels.md, "arm64").

#[cfg(bpf_target_arch = "aarch64")]
pub(crate) use aarch64::*;
#[cfg(not(bpf_target_arch = "aarch64"))]
pub(crate) use x86_64::*;

#[cfg(not(bpf_target_arch = "aarch64"))]
mod x86_64 {
    use aya_ebpf::{bindings::pt_regs, helpers::bpf_probe_read_kernel};

    /// The return address into the caller at a kprobe or fprobe on the function's first
    /// instruction: the word `call` pushed, at the stack pointer. 0 if unreadable.
    #[inline(always)]
    pub(crate) fn entry_return(regs: *const pt_regs) -> u64 {
        // SAFETY: the context is the kernel's pt_regs; probe_read tolerates any address.
        unsafe { bpf_probe_read_kernel((*regs).rsp as *const u64) }.unwrap_or(0)
    }

    /// The words of a trampoline's frame from the context up, for the flush function's one
    /// argument. In call mode: the argument, the return value's slot if the trampoline calls
    /// the function itself (an fexit or fmod_ret program is attached, any tool's), the saved
    /// rbp, the return address into the flush function (an `ENTRY_RETURNS` value), then the
    /// one into its caller. A trampoline in jmp mode (6.19+, with an fexit program) keeps no
    /// return address into the flush function: the caller's is unwound.
    pub(crate) const TRAMPOLINE_WORDS: usize = 5;

    /// Where the return address into the flush function may be, without and with the
    /// return value's slot; the one into the caller is the next word up.
    pub(crate) const ENTRY_RETURN_AT: [usize; 2] = [2, 3];
    pub(crate) const CALLER_ABOVE_ENTRY_RETURN: usize = 1;

    /// Kernel and module text, and everything else in x86-64's top 2 GiB; stacks, the heap
    /// and the direct map are below it.
    #[inline(always)]
    pub(crate) fn is_text(addr: u64) -> bool {
        addr >= 0xffff_ffff_8000_0000
    }

    /// x86-64 return addresses carry no signature.
    #[inline(always)]
    pub(crate) fn strip(addr: u64) -> u64 {
        addr
    }
}

#[cfg(bpf_target_arch = "aarch64")]
mod aarch64 {
    use aya_ebpf::bindings::pt_regs;

    /// The return address into the caller at a kprobe or fprobe on the function's first
    /// instruction: the link register, x30. The unwound stack at that point skips the caller
    /// (measured on Debian's 6.1, 6.12 and 7.3: it goes from the flush function to the
    /// caller's caller), so this is the only place the caller is.
    #[inline(always)]
    pub(crate) fn entry_return(regs: *const pt_regs) -> u64 {
        // SAFETY: the context is the kernel's user_pt_regs (kprobe) or the pt_regs fprobe
        // builds from its ftrace_regs, which sets x30 to the traced function's link register.
        strip(unsafe { (*regs).regs[30] })
    }

    /// The words of a trampoline's frame from the context up (arch/arm64/net/bpf_jit_comp.c,
    /// prepare_trampoline): the argument; the return value's slot when the trampoline calls
    /// the function (an fexit program is attached); x19 and x20; padding to 16 bytes; then two
    /// frame records, each a saved x29 below a return address: the first holds x30, the
    /// return into the flush function just past its patched `bl` (an `ENTRY_RETURNS` value),
    /// the second x9, where the patched entry put the link register: the return into the
    /// caller. The run context, argument count and the traced function's address (only when
    /// some program asks for it) lie below the context, so the return into the flush
    /// function is at word 4 (fentry only), 5 (with the function's address) or 6 (fexit).
    pub(crate) const TRAMPOLINE_WORDS: usize = 9;

    /// Looked at highest first: with an fexit program, word 4 is padding the trampoline
    /// never writes, and word 6 of an fentry-only frame is the caller's return, which can
    /// never equal the flush function's own entry return.
    pub(crate) const ENTRY_RETURN_AT: [usize; 3] = [6, 5, 4];
    pub(crate) const CALLER_ABOVE_ENTRY_RETURN: usize = 2;

    /// The kernel half of the address space (bit 63 set, linear map excluded): kernel image,
    /// modules and vmalloc. Unlike x86-64 there is no region of text alone; vmalloc'd stacks
    /// share it, so this only rules out user and linear-map addresses, and the call site is
    /// taken only from words whose place in the frame is known.
    #[inline(always)]
    pub(crate) fn is_text(addr: u64) -> bool {
        addr >= 0xffff_8000_0000_0000
    }

    /// A kernel return address without its pointer-authentication code: the kernel's
    /// `ptrauth_strip_kernel_insn_pac` sets the bits above the virtual address size, and every
    /// kernel text address has them set (VA_BITS 48 or 52, text in the top half).
    #[inline(always)]
    pub(crate) fn strip(addr: u64) -> u64 {
        if addr & (1 << 55) != 0 {
            addr | 0xffff_0000_0000_0000
        } else {
            addr
        }
    }
}
