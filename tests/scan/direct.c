// A direct call of the flush with a system queue loaded straight into the argument register,
// compiled the way Debian builds its kernels' modules: ftrace's entry hook (`call __fentry__` on
// amd64, two patchable nops on arm64) and, on amd64, returns through `__x86_return_thunk`.
// expect: caller=flush_direct wq=system_long_wq section=text
// shape: flush_direct loads system_long_wq into arg1
// shape: flush_direct calls __flush_workqueue
// shape-amd64: flush_direct calls __fentry__
// shape-amd64: flush_direct jumps __x86_return_thunk
// cflags-amd64: -pg -mfentry -mrecord-mcount -mfunction-return=thunk-extern -mindirect-branch=thunk-extern
// cflags-arm64: -fpatchable-function-entry=2
#include "wq.h"

int flush_direct(void)
{
	__flush_workqueue(system_long_wq);
	other();
	// A value to return keeps other() a call, so the function ends in a return (the thunk).
	return 0;
}
