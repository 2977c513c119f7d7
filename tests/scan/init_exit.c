// Module init and exit functions (`__init` in `.init.text`, `__exit` in `.exit.text`), each
// flushing another system queue; the exit function ends with a tail jump to the flush.
// expect: caller=fixture_init wq=system_freezable_wq section=init
// expect: caller=fixture_exit wq=system_power_efficient_wq section=exit
// shape: fixture_init calls __flush_workqueue
// shape: fixture_exit jumps __flush_workqueue
#include "wq.h"

int register_something(void);

__init int fixture_init(void)
{
	__flush_workqueue(system_freezable_wq);
	return register_something();
}

__exit void fixture_exit(void)
{
	other();
	__flush_workqueue(system_power_efficient_wq);
}
