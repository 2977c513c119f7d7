// The kernel's workqueue declarations the fixtures need, written out by hand: the fixtures build
// without kernel headers, so each `.c` here compiles with a bare gcc for amd64 and arm64.
#ifndef WQFLUSH_SCAN_FIXTURE_WQ_H
#define WQFLUSH_SCAN_FIXTURE_WQ_H

struct workqueue_struct;
struct work_struct {
	long data[4];
};

// The kernel-global queues (kernel/workqueue.c exports them).
extern struct workqueue_struct *system_wq, *system_highpri_wq, *system_long_wq,
	*system_unbound_wq, *system_freezable_wq, *system_power_efficient_wq,
	*system_freezable_power_efficient_wq;

// 6.1 and later: `flush_workqueue()` is a macro around this function.
void __flush_workqueue(struct workqueue_struct *wq);
// 5.10: the function itself.
void flush_workqueue(struct workqueue_struct *wq);

struct workqueue_struct *alloc_workqueue(const char *fmt, unsigned int flags, int max_active,
					 ...);
int queue_work_on(int cpu, struct workqueue_struct *wq, struct work_struct *work);

// As the kernel defines them: both cold, each in its own section.
#define __init __attribute__((section(".init.text"), cold))
#define __exit __attribute__((section(".exit.text"), used, cold))
#define noinline __attribute__((noinline))

// Some other function of the module: a call the compiler cannot see through.
void other(void);

#endif
