// Queues kept in static variables of the module (5.10's flush_workqueue). `fixture_wq` is only
// ever assigned a system queue, so its flush is a site reported `via` it; `mixed_wq` is assigned
// either a system queue or the module's own queue, so its flush is not one. Both live in `.bss`
// and gcc refers to them as offsets from the section, not by name.
// expect: caller=module_var_exit wq=system_unbound_wq section=exit via=fixture_wq
// shape: module_var_exit calls flush_workqueue
// shape: module_var_exit_mixed calls flush_workqueue
// shape: module_var_init loads system_unbound_wq into any
// shape: module_var_init loads system_wq into any
// shape: module_var_init calls alloc_workqueue
#include "wq.h"

static struct workqueue_struct *fixture_wq;
static struct workqueue_struct *mixed_wq;
extern int fixture_own_queue;

__init int module_var_init(void)
{
	fixture_wq = system_unbound_wq;
	if (fixture_own_queue)
		mixed_wq = alloc_workqueue("fixture", 0, 0);
	else
		mixed_wq = system_wq;
	return mixed_wq ? 0 : -12;
}

int fixture_kick(struct work_struct *work)
{
	// Reading the variables is no assignment: both stay as they are.
	return queue_work_on(-1, fixture_wq, work) + queue_work_on(-1, mixed_wq, work);
}

__exit void module_var_exit(void)
{
	flush_workqueue(fixture_wq);
	other();
}

void module_var_exit_mixed(void)
{
	flush_workqueue(mixed_wq);
	other();
}
