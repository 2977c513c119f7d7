// Tail calls: the flush is the function's last statement, so gcc ends the function with a jump
// to it (`jmp` / `b`) instead of a call. The second function calls something first, so it has a
// frame; on arm64 it is built with pointer authentication (`-mbranch-protection=pac-ret`, as
// Debian's arm64 kernels are): the return address is authenticated before the jump.
// expect: caller=flush_tail wq=system_wq section=text
// expect: caller=flush_tail_after_call wq=system_unbound_wq section=text
// shape: flush_tail jumps __flush_workqueue
// shape: flush_tail_after_call calls other
// shape: flush_tail_after_call jumps __flush_workqueue
// shape-arm64: flush_tail_after_call has paciasp
// shape-arm64: flush_tail_after_call has autiasp
// cflags-arm64: -mbranch-protection=pac-ret
#include "wq.h"

void flush_tail(void)
{
	__flush_workqueue(system_wq);
}

void flush_tail_after_call(void)
{
	other();
	__flush_workqueue(system_unbound_wq);
}
