// Look-alikes: the flushed queue comes from a struct field or a function parameter, while the
// same function also loads a system queue for something else (stored into the struct).
// expect: none
// shape: flush_field loads system_long_wq into any
// shape: flush_field calls __flush_workqueue
// shape: flush_param loads system_wq into any
// shape: flush_param jumps __flush_workqueue
#include "wq.h"

struct fixture_dev {
	struct workqueue_struct *wq;
	struct workqueue_struct *fallback;
};

void flush_field(struct fixture_dev *dev)
{
	dev->fallback = system_long_wq;
	__flush_workqueue(dev->wq);
	other();
}

void flush_param(struct workqueue_struct *wq, struct fixture_dev *dev)
{
	dev->fallback = system_wq;
	__flush_workqueue(wq);
}
