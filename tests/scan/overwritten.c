// Look-alikes: system_wq reaches the first argument register, which is written again before the
// flush. `note_queue()` takes it as its argument; in the second function an empty asm forces it
// into rdi / x0 with nothing in between, and the flush then gets the struct's queue.
// expect: none
// shape: flush_after_note loads system_wq into arg1
// shape: flush_after_note calls note_queue
// shape: flush_after_note calls __flush_workqueue
// shape: flush_overwritten loads system_wq into arg1
// shape: flush_overwritten calls __flush_workqueue
#include "wq.h"

#if defined(__x86_64__)
#define ARG1 "rdi"
#elif defined(__aarch64__)
#define ARG1 "x0"
#endif

struct fixture_dev {
	struct workqueue_struct *wq;
};

void note_queue(struct workqueue_struct *wq);

void flush_after_note(struct fixture_dev *dev)
{
	note_queue(system_wq);
	__flush_workqueue(dev->wq);
	other();
}

void flush_overwritten(struct fixture_dev *dev)
{
	register struct workqueue_struct *arg1 asm(ARG1) = system_wq;

	asm volatile("" : : "r"(arg1));
	__flush_workqueue(dev->wq);
	other();
}
