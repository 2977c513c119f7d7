// Three flush calls in one function with two queues: two sites, system_wq's with two calls.
// expect: caller=flush_many wq=system_wq section=text calls=2
// expect: caller=flush_many wq=system_long_wq section=text calls=1
// shape: flush_many calls __flush_workqueue
// shape: flush_many loads system_wq into arg1
// shape: flush_many loads system_long_wq into arg1
#include "wq.h"

void flush_many(void)
{
	__flush_workqueue(system_wq);
	other();
	__flush_workqueue(system_long_wq);
	other();
	__flush_workqueue(system_wq);
	other();
}
