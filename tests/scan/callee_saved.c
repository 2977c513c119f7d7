// The queue is read before another call and flushed after it: the value waits in a callee-saved
// register (rbx / x19...) across the call and reaches the argument register only then.
// expect: caller=flush_saved wq=system_highpri_wq section=text
// shape: flush_saved loads system_highpri_wq into saved
// shape: flush_saved calls other
// shape: flush_saved calls __flush_workqueue
#include "wq.h"

void flush_saved(void)
{
	struct workqueue_struct *wq = system_highpri_wq;

	// other() may change system_highpri_wq: the value read before it is the one flushed.
	other();
	__flush_workqueue(wq);
	other();
}
