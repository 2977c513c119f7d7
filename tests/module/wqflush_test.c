// SPDX-License-Identifier: GPL-2.0
/*
 * wqflush_test: fires workqueue flushes on demand so wqflush can be tested in a VM.
 *
 *   echo "<trigger> <count>" > /proc/wqflush_test   runs <trigger> <count> times, synchronously
 *   cat /proc/wqflush_test                          prints "<trigger> <total fired>" per trigger
 *
 * Every trigger is its own `static noinline` function ending in barrier(): without it gcc turns
 * the flush into a tail call (or splits a .cold part), and the function would vanish from the
 * stack that wqflush and the oracle symbolize. Add a trigger by writing such a function and
 * adding one line to triggers[].
 */
#include <linux/atomic.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/sched.h>
#include <linux/seq_file.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/workqueue.h>

#define WQFLUSH_TEST_NAME "wqflush_test"
#define WQFLUSH_TEST_MAX_COUNT 100000000L

static char *pointer_wq = "unbound";
module_param(pointer_wq, charp, 0444);
MODULE_PARM_DESC(pointer_wq,
		 "queue flushed by the 'pointer' trigger: unbound, system, long, highpri, freezable, power_efficient, own");

static struct workqueue_struct *own_wq;

/*
 * The 'pointer' trigger reads its queue from here with READ_ONCE, so the compiler cannot prove
 * which queue it flushes and emits no "Please avoid flushing system-wide workqueues" warning:
 * the blind spot wqflush exists for.
 */
struct wqflush_test_holder {
	struct workqueue_struct *wq;
};
static struct wqflush_test_holder holder;

static noinline void wqflush_test_flush_scheduled(void)
{
	flush_scheduled_work();
	barrier();
}

static noinline void wqflush_test_flush_long(void)
{
	flush_workqueue(system_long_wq);
	barrier();
}

static noinline void wqflush_test_flush_pointer(void)
{
	struct wqflush_test_holder *h = &holder;

	flush_workqueue(READ_ONCE(h->wq));
	barrier();
}

static noinline void wqflush_test_flush_own(void)
{
	flush_workqueue(own_wq);
	barrier();
}

struct wqflush_test_trigger {
	const char *name;
	void (*fire)(void);
	atomic_long_t fired;
};

static struct wqflush_test_trigger triggers[] = {
	{ .name = "scheduled", .fire = wqflush_test_flush_scheduled },
	{ .name = "long", .fire = wqflush_test_flush_long },
	{ .name = "pointer", .fire = wqflush_test_flush_pointer },
	{ .name = "own", .fire = wqflush_test_flush_own },
};

static struct wqflush_test_trigger *find_trigger(const char *name)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(triggers); i++)
		if (!strcmp(triggers[i].name, name))
			return &triggers[i];
	return NULL;
}

static void run_trigger(struct wqflush_test_trigger *t, long count)
{
	long i;

	for (i = 0; i < count; i++) {
		t->fire();
		atomic_long_inc(&t->fired);
		/* Floods of many flushes must not trip the soft-lockup detector. */
		cond_resched();
	}
}

/* Parses "<trigger> [count]"; count defaults to 1. */
static int parse_command(char *buf, struct wqflush_test_trigger **t, long *count)
{
	char *name = strim(buf);
	char *arg = strchr(name, ' ');

	*count = 1;
	if (arg) {
		*arg++ = '\0';
		if (kstrtol(strim(arg), 0, count))
			return -EINVAL;
	}
	if (*count < 0 || *count > WQFLUSH_TEST_MAX_COUNT)
		return -ERANGE;
	*t = find_trigger(name);
	return *t ? 0 : -ENOENT;
}

static ssize_t wqflush_test_write(struct file *file, const char __user *ubuf,
				  size_t len, loff_t *off)
{
	struct wqflush_test_trigger *t;
	char buf[64];
	long count;
	int err;

	if (len >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, len))
		return -EFAULT;
	buf[len] = '\0';
	err = parse_command(buf, &t, &count);
	if (err) {
		pr_warn(WQFLUSH_TEST_NAME ": bad command (%d); want \"<trigger> <count>\"\n", err);
		return err;
	}
	run_trigger(t, count);
	return len;
}

static int wqflush_test_show(struct seq_file *m, void *v)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(triggers); i++)
		seq_printf(m, "%s %ld\n", triggers[i].name,
			   atomic_long_read(&triggers[i].fired));
	return 0;
}

static int wqflush_test_open(struct inode *inode, struct file *file)
{
	return single_open(file, wqflush_test_show, NULL);
}

static const struct proc_ops wqflush_test_ops = {
	.proc_open = wqflush_test_open,
	.proc_read = seq_read,
	.proc_lseek = seq_lseek,
	.proc_release = single_release,
	.proc_write = wqflush_test_write,
};

/* Maps the pointer_wq parameter to a queue at run time (see struct wqflush_test_holder). */
static struct workqueue_struct *queue_by_name(const char *name)
{
	if (!strcmp(name, "unbound"))
		return system_unbound_wq;
	if (!strcmp(name, "system"))
		return system_wq;
	if (!strcmp(name, "long"))
		return system_long_wq;
	if (!strcmp(name, "highpri"))
		return system_highpri_wq;
	if (!strcmp(name, "freezable"))
		return system_freezable_wq;
	if (!strcmp(name, "power_efficient"))
		return system_power_efficient_wq;
	if (!strcmp(name, "own"))
		return own_wq;
	return NULL;
}

static int __init wqflush_test_init(void)
{
	own_wq = alloc_workqueue(WQFLUSH_TEST_NAME, 0, 0);
	if (!own_wq)
		return -ENOMEM;
	WRITE_ONCE(holder.wq, queue_by_name(pointer_wq));
	if (!holder.wq) {
		pr_err(WQFLUSH_TEST_NAME ": unknown pointer_wq=%s\n", pointer_wq);
		destroy_workqueue(own_wq);
		return -EINVAL;
	}
	if (!proc_create(WQFLUSH_TEST_NAME, 0666, NULL, &wqflush_test_ops)) {
		destroy_workqueue(own_wq);
		return -ENOMEM;
	}
	pr_info(WQFLUSH_TEST_NAME ": loaded, pointer_wq=%s\n", pointer_wq);
	return 0;
}

static void __exit wqflush_test_exit(void)
{
	remove_proc_entry(WQFLUSH_TEST_NAME, NULL);
	destroy_workqueue(own_wq);
}

module_init(wqflush_test_init);
module_exit(wqflush_test_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Fires workqueue flushes on demand for wqflush tests");
