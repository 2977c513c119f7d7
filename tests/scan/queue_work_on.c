// Look-alike (kvm's kvm_irqfd shape): the function loads system_wq and calls the flush, but
// system_wq is queue_work_on()'s second argument and the flush gets another, non-system queue.
// expect: none
// shape: irqfd_shape loads system_wq into arg2
// shape: irqfd_shape loads irqfd_cleanup_wq into arg1
// shape: irqfd_shape calls queue_work_on
// shape: irqfd_shape calls __flush_workqueue
#include "wq.h"

extern struct workqueue_struct *irqfd_cleanup_wq;

struct irqfd {
	int cpu;
	struct work_struct work;
};

int irqfd_shape(struct irqfd *irqfd)
{
	queue_work_on(irqfd->cpu, system_wq, &irqfd->work);
	__flush_workqueue(irqfd_cleanup_wq);
	other();
	return 0;
}
