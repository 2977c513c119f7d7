// A `.constprop` clone: both callers pass `&system_wq`, so gcc clones `drain` as
// `drain.constprop.0` with the load of system_wq inside; the site is reported as `drain`.
// expect: caller=drain wq=system_wq section=text
// shape: drain.constprop.0 loads system_wq into arg1
// shape: drain.constprop.0 calls __flush_workqueue
#include "wq.h"

static noinline void drain(struct workqueue_struct **wqp, int rounds)
{
	for (int i = 0; i < rounds; i++)
		other();
	__flush_workqueue(*wqp);
	other();
}

void drain_a_little(void)
{
	drain(&system_wq, 3);
}

void drain_a_lot(void)
{
	drain(&system_wq, 5);
}
