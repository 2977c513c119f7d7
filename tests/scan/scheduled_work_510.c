// 5.10's headers: `flush_scheduled_work()` is a static inline around the exported
// `flush_workqueue()`, so a module's call of it compiles to a flush of system_wq in the caller.
// expect: caller=driver_remove wq=system_wq section=text
// shape: driver_remove loads system_wq into arg1
// shape: driver_remove calls flush_workqueue
#include "wq.h"

// As include/linux/workqueue.h of 5.10 has it.
static inline void flush_scheduled_work(void)
{
	flush_workqueue(system_wq);
}

void driver_remove(void)
{
	other();
	flush_scheduled_work();
	other();
}
