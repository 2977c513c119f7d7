// SPDX-License-Identifier: GPL-2.0
/*
 * wqflush_test: fires workqueue flushes on demand so wqflush can be tested in a VM.
 *
 *   echo "<trigger> <count>" > /proc/wqflush_test   runs <trigger> <count> times, synchronously
 *   cat /proc/wqflush_test                          prints "<trigger> <total fired>" per trigger
 *   cat /proc/wqflush_test_bench                    nanoseconds the last 'bench' run took
 *
 * A few triggers give <count> their own meaning (sites, worker_self, bench; see tests/README.md).
 *
 * Every trigger is its own `static noinline` function ending in barrier(): without it gcc turns
 * the flush into a tail call (or splits a .cold part), and the function would vanish from the
 * stack that wqflush and the oracle symbolize. Add a trigger by writing such a function and
 * adding one line to triggers[].
 */
#ifdef CONFIG_X86
#include <asm/asm.h>	/* ASM_CALL_CONSTRAINT, for the x86-only 'stale' trigger */
#endif
#include <linux/atomic.h>
#include <linux/completion.h>
#include <linux/delay.h>
#include <linux/kernel.h>
#include <linux/kthread.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/sched.h>
#include <linux/seq_file.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/version.h>
#include <linux/workqueue.h>

/*
 * The function every flush passes through: since 5.19 (c4f135d64382) flush_workqueue() is a
 * macro around __flush_workqueue(); before, flush_workqueue() is the exported function itself.
 */
#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 19, 0)
#define WQFLUSH_TEST_FLUSH_FN flush_workqueue
#else
#define WQFLUSH_TEST_FLUSH_FN __flush_workqueue
#endif

/*
 * The module's own queue is per-CPU, as alloc_workqueue(name, 0, 0) always was; 6.17 added
 * WQ_PERCPU to say so, and 7.x warns (a WARN with a stack) when neither it nor WQ_UNBOUND is
 * given.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 17, 0)
#define WQFLUSH_TEST_OWN_FLAGS WQ_PERCPU
#else
#define WQFLUSH_TEST_OWN_FLAGS 0
#endif

/* system_dfl_long_wq ("events_dfl_long") exists since 7.1. */
#define WQFLUSH_TEST_HAVE_DFL_LONG (LINUX_VERSION_CODE >= KERNEL_VERSION(7, 1, 0))

#define WQFLUSH_TEST_NAME "wqflush_test"
#define WQFLUSH_TEST_BENCH_NAME "wqflush_test_bench"
#define WQFLUSH_TEST_MAX_COUNT 100000000L
/* Call sites flushing system_wq in wqflush_test_flush_sites() (= the SITES10000 macro below). */
#define WQFLUSH_TEST_SITES 10000

static char *pointer_wq = "unbound";
module_param(pointer_wq, charp, 0444);
MODULE_PARM_DESC(pointer_wq,
		 "queue flushed by the 'pointer' trigger: unbound, system, long, highpri, freezable, power_efficient, own");

static char *slow_wq_name = "system";
module_param_named(slow_wq, slow_wq_name, charp, 0444);
MODULE_PARM_DESC(slow_wq,
		 "queue the 'slow' trigger's items run on and its flush flushes (same names as pointer_wq)");

static struct workqueue_struct *own_wq;

/*
 * The 'pointer' trigger reads its queue from here with READ_ONCE, so the compiler cannot prove
 * which queue it flushes and emits no "Please avoid flushing system-wide workqueues" warning:
 * the blind spot wqflush exists for.
 */
struct wqflush_test_holder {
	struct workqueue_struct *wq;
	/* system_dfl_long_wq, for the 'dfl_long' trigger (7.1+; NULL before). */
	struct workqueue_struct *dfl_long;
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

/*
 * 'inline': the flush sits in an always-inline helper, as it did in flush_scheduled_work()
 * before 5.19, and a report's source line must show both the helper's line and its caller's.
 */
static __always_inline void wqflush_test_inline_helper(struct workqueue_struct *wq)
{
	flush_workqueue(wq);
}

static noinline void wqflush_test_flush_inline(void)
{
	wqflush_test_inline_helper(READ_ONCE(holder.wq));
	barrier();
}

/*
 * 'stale': a flush whose caller leaves, in the word where a BPF trampoline that calls the flush
 * function (fentry with an fexit beside it) keeps its return value's slot, an address inside
 * the flush function, and holds another function's address in rbp, the register such a
 * trampoline saves right above that slot: what a stack and a register can hold by chance. A
 * probe that takes its call site from anything but the return address the call pushed names
 * the wrong caller (fentry with --waits did on 6.1 and 6.12). With rsp S at the call, the call
 * pushes its return address at S-8, the patched entry call the one into the flush function at
 * S-16, the trampoline rbp at S-24; the slot is S-32.
 */
#ifdef CONFIG_X86
#define WQFLUSH_TEST_STR(x) #x
#define WQFLUSH_TEST_XSTR(x) WQFLUSH_TEST_STR(x)

static noinline void wqflush_test_flush_stale(void)
{
	struct workqueue_struct *wq = READ_ONCE(system_long_wq);
	unsigned long inside = (unsigned long)WQFLUSH_TEST_FLUSH_FN + 0x20;
	unsigned long other = (unsigned long)wqflush_test_flush_long + 1;

	asm volatile("push %%rbp\n\t"
		     "mov %%rdx, %%rbp\n\t"
		     "mov %%rsi, -32(%%rsp)\n\t"
		     "call " WQFLUSH_TEST_XSTR(WQFLUSH_TEST_FLUSH_FN) "\n\t"
		     "pop %%rbp"
		     : "+D" (wq), "+S" (inside), "+d" (other), ASM_CALL_CONSTRAINT
		     :
		     : "rax", "rcx", "r8", "r9", "r10", "r11", "memory", "cc");
	barrier();
}
#endif /* CONFIG_X86: other architectures have no 'stale' trigger (ENOENT) */

/*
 * 'pac': a flush from a function that another called, each keeping a frame: on arm64 with
 * pointer authentication (Debian's kernels, and the test VMs' CPU) both sign the return
 * address they save (paciasp), so everything past the call site on the stack carries a
 * signature in its top bits; the call site must still be this inner function and the next
 * frame the outer one, with addresses stripped of their signatures. The ftrace NOPs come
 * before paciasp, so the return into the inner function arrives unsigned in x30, as any call
 * site does. On x86-64 the same nesting, unsigned.
 */
static noinline void wqflush_test_flush_pac_inner(struct workqueue_struct *wq)
{
	flush_workqueue(wq);
	barrier();
}

static noinline void wqflush_test_flush_pac(void)
{
	wqflush_test_flush_pac_inner(READ_ONCE(system_highpri_wq));
	barrier();
}

/*
 * 'deprecated': flush_workqueue(system_wq) written out. Since 6.18 the macro's compile-time
 * check (and the 6.6 run-time warning) test system_percpu_wq instead, so no kernel check
 * reports this any more; older kernels warn at build time.
 */
static noinline void wqflush_test_flush_deprecated(void)
{
	flush_workqueue(system_wq);
	barrier();
}

/*
 * 'dfl_long': system_dfl_long_wq (7.1+) through a run-time pointer, which no compile-time or
 * run-time kernel check sees.
 */
static noinline void wqflush_test_flush_dfl_long(void)
{
	struct wqflush_test_holder *h = &holder;

	flush_workqueue(READ_ONCE(h->dfl_long));
	barrier();
}

/* 'storm': system_highpri_wq through a pointer, from kthreads sharing CPU 0 (see below). */
static struct workqueue_struct *storm_wq;

static noinline void wqflush_test_flush_storm(void)
{
	flush_workqueue(READ_ONCE(storm_wq));
	barrier();
}

/*
 * 'slow <n>' (n <= WQFLUSH_TEST_SLOW_MAX): n work items on system_wq (the slow_wq parameter
 * picks another) that each sleep 200 ms, then a flush of that queue through a pointer, which
 * waits for them (wqflush --waits).
 */
#define WQFLUSH_TEST_SLOW_MAX 8
#define WQFLUSH_TEST_SLOW_MS 200
static struct workqueue_struct *slow_wq;
static struct work_struct slow_works[WQFLUSH_TEST_SLOW_MAX];

static noinline void wqflush_test_slow_work(struct work_struct *work)
{
	msleep(WQFLUSH_TEST_SLOW_MS);
	barrier();
}

static noinline void wqflush_test_flush_slow(void)
{
	flush_workqueue(READ_ONCE(slow_wq));
	barrier();
}

static noinline void wqflush_test_flush_own(void)
{
	flush_workqueue(own_wq);
	barrier();
}

static noinline void wqflush_test_flush_bench(void)
{
	flush_workqueue(own_wq);
	barrier();
}

/*
 * 'sites': WQFLUSH_TEST_SITES separate calls that flush system_wq, so each has its own return
 * address (func+offset). Each site calls __flush_workqueue(system_wq) (flush_workqueue() before
 * 5.19), which is exactly what
 * flush_workqueue(system_wq) expands to minus its compile-time system-queue check: with the
 * macro, gcc 12 needs minutes for 10000 sites (it evaluates 7 pointer comparisons per site),
 * this way seconds, and no "Please avoid flushing system-wide workqueues" warning per site.
 * The empty asm after each call carries the site number, so no two sites are identical code
 * and gcc cannot merge (cross-jump) them; its memory clobber makes each site reload system_wq
 * and keeps the last call from becoming a tail call. The asm on n hides from gcc that the
 * tests are ordered, so it does not thread 10000 jumps (which is slow to compile). Every
 * branch goes to the one exit: with `if (n > k) { flush }` gcc moved the flushes out of line
 * and objtool crashed (segfault) on the 10000-deep branch nesting.
 */
#define WQFLUSH_TEST_SITE(k)						\
	asm volatile("" : "+r" (n));					\
	if (n <= (k))							\
		goto out;						\
	wqflush_test_pace();						\
	WQFLUSH_TEST_FLUSH_FN(system_wq);				\
	asm volatile("" : : "i" (k) : "memory");
#define WQFLUSH_TEST_SITES10(k)						\
	WQFLUSH_TEST_SITE((k) + 0) WQFLUSH_TEST_SITE((k) + 1)		\
	WQFLUSH_TEST_SITE((k) + 2) WQFLUSH_TEST_SITE((k) + 3)		\
	WQFLUSH_TEST_SITE((k) + 4) WQFLUSH_TEST_SITE((k) + 5)		\
	WQFLUSH_TEST_SITE((k) + 6) WQFLUSH_TEST_SITE((k) + 7)		\
	WQFLUSH_TEST_SITE((k) + 8) WQFLUSH_TEST_SITE((k) + 9)
#define WQFLUSH_TEST_SITES100(k)					\
	WQFLUSH_TEST_SITES10((k) + 0) WQFLUSH_TEST_SITES10((k) + 10)	\
	WQFLUSH_TEST_SITES10((k) + 20) WQFLUSH_TEST_SITES10((k) + 30)	\
	WQFLUSH_TEST_SITES10((k) + 40) WQFLUSH_TEST_SITES10((k) + 50)	\
	WQFLUSH_TEST_SITES10((k) + 60) WQFLUSH_TEST_SITES10((k) + 70)	\
	WQFLUSH_TEST_SITES10((k) + 80) WQFLUSH_TEST_SITES10((k) + 90)
#define WQFLUSH_TEST_SITES1000(k)					\
	WQFLUSH_TEST_SITES100((k) + 0) WQFLUSH_TEST_SITES100((k) + 100)	\
	WQFLUSH_TEST_SITES100((k) + 200) WQFLUSH_TEST_SITES100((k) + 300) \
	WQFLUSH_TEST_SITES100((k) + 400) WQFLUSH_TEST_SITES100((k) + 500) \
	WQFLUSH_TEST_SITES100((k) + 600) WQFLUSH_TEST_SITES100((k) + 700) \
	WQFLUSH_TEST_SITES100((k) + 800) WQFLUSH_TEST_SITES100((k) + 900)
#define WQFLUSH_TEST_SITES10000(k)					\
	WQFLUSH_TEST_SITES1000((k) + 0) WQFLUSH_TEST_SITES1000((k) + 1000) \
	WQFLUSH_TEST_SITES1000((k) + 2000) WQFLUSH_TEST_SITES1000((k) + 3000) \
	WQFLUSH_TEST_SITES1000((k) + 4000) WQFLUSH_TEST_SITES1000((k) + 5000) \
	WQFLUSH_TEST_SITES1000((k) + 6000) WQFLUSH_TEST_SITES1000((k) + 7000) \
	WQFLUSH_TEST_SITES1000((k) + 8000) WQFLUSH_TEST_SITES1000((k) + 9000)

/*
 * 'sites_paced': the same sites with a pause before each flush, so that a monitor can take every
 * first sighting as it happens (a burst overruns a ring buffer). Off unless that trigger runs.
 */
static unsigned int sites_pace_us;

static noinline void wqflush_test_pace(void)
{
	unsigned int us = READ_ONCE(sites_pace_us);

	if (us)
		usleep_range(us, us + us / 2);
}

/* Flushes system_wq once from each of the first n call sites. */
static noinline void wqflush_test_flush_sites(long n)
{
	WQFLUSH_TEST_SITES10000(0)
out:
	barrier();
}

/* 'worker_other': a system_long_wq work item flushes another system queue. */
static noinline void wqflush_test_work_flush_other(struct work_struct *work)
{
	flush_workqueue(system_unbound_wq);
	barrier();
}

/*
 * 'worker_self': a system_long_wq work item flushes system_long_wq, i.e. waits for itself. The
 * kworker never returns; the item is queued at most once per boot and pins the module.
 */
static struct work_struct self_work;
static atomic_t self_queued = ATOMIC_INIT(0);
static atomic_long_t *self_fired;

static noinline void wqflush_test_work_flush_self(struct work_struct *work)
{
	/* Counted before the flush: it never returns. */
	atomic_long_inc(self_fired);
	flush_workqueue(system_long_wq);
	barrier();
}

/*
 * 'abba': the deadlock a system-queue flush makes that no one queue of the caller's shows. The
 * writer takes a mutex, queues a system_highpri_wq work item that needs that mutex, waits until
 * the item runs, then flushes system_highpri_wq (through a pointer): the item waits for the
 * mutex, the flush for the item. The writing task and the kworker block for good; once per boot,
 * and it pins the module. The item started before the flush did.
 */
static DEFINE_MUTEX(abba_lock);
static struct work_struct abba_work;
static DECLARE_COMPLETION(abba_started);
static atomic_t abba_queued = ATOMIC_INIT(0);
static struct workqueue_struct *abba_wq;

static noinline void wqflush_test_abba_work(struct work_struct *work)
{
	complete(&abba_started);
	mutex_lock(&abba_lock);
	mutex_unlock(&abba_lock);
	barrier();
}

static noinline void wqflush_test_flush_abba(void)
{
	flush_workqueue(READ_ONCE(abba_wq));
	barrier();
}

/* 'exit': the module's exit function flushes the 'pointer' queue on unload. */
static bool exit_flush;

/* Duration of the last 'bench' run, for /proc/wqflush_test_bench. */
static atomic64_t bench_ns = ATOMIC64_INIT(0);

struct wqflush_test_trigger {
	const char *name;
	/* Either fire(), run <count> times by run_trigger() ... */
	void (*fire)(void);
	/* ... or run(), which interprets <count> itself and returns the flushes to add or -errno. */
	long (*run)(struct wqflush_test_trigger *t, long count);
	/* Only listed in /proc/wqflush_test once it fired (see show). */
	bool listed_when_fired;
	atomic_long_t fired;
};

static long wqflush_test_run_sites(struct wqflush_test_trigger *t, long count)
{
	if (count < 1 || count > WQFLUSH_TEST_SITES)
		return -EINVAL;
	wqflush_test_flush_sites(count);
	return count;
}

/* 'sites_paced <n>': 'sites <n>' with about 1 ms before each flush. */
static long wqflush_test_run_sites_paced(struct wqflush_test_trigger *t, long count)
{
	long fired;

	WRITE_ONCE(sites_pace_us, 1000);
	fired = wqflush_test_run_sites(t, count);
	WRITE_ONCE(sites_pace_us, 0);
	return fired;
}

static long wqflush_test_run_worker_other(struct wqflush_test_trigger *t, long count)
{
	long i;

	for (i = 0; i < count; i++) {
		struct work_struct work;

		INIT_WORK_ONSTACK(&work, wqflush_test_work_flush_other);
		queue_work(system_long_wq, &work);
		/* Waits for this one item only (not a queue flush). */
		flush_work(&work);
		destroy_work_on_stack(&work);
		atomic_long_inc(&t->fired);
		cond_resched();
	}
	return 0;
}

static long wqflush_test_run_worker_self(struct wqflush_test_trigger *t, long count)
{
	if (count != 1)
		return -EINVAL;
	if (atomic_cmpxchg(&self_queued, 0, 1))
		return -EBUSY;
	/* The work function runs forever: never let the module go away under it. */
	__module_get(THIS_MODULE);
	self_fired = &t->fired;
	INIT_WORK(&self_work, wqflush_test_work_flush_self);
	queue_work(system_long_wq, &self_work);
	/* Not waited for; the work function counts itself. */
	return 0;
}

static long wqflush_test_run_abba(struct wqflush_test_trigger *t, long count)
{
	if (count != 1)
		return -EINVAL;
	if (atomic_cmpxchg(&abba_queued, 0, 1))
		return -EBUSY;
	__module_get(THIS_MODULE);
	mutex_lock(&abba_lock);
	INIT_WORK(&abba_work, wqflush_test_abba_work);
	queue_work(READ_ONCE(abba_wq), &abba_work);
	wait_for_completion(&abba_started);
	/* Counted before the flush: it never returns. */
	atomic_long_inc(&t->fired);
	wqflush_test_flush_abba();
	mutex_unlock(&abba_lock);
	return 0;
}

static long wqflush_test_run_dfl_long(struct wqflush_test_trigger *t, long count)
{
	long i;

	if (!holder.dfl_long)
		return -EOPNOTSUPP;
	for (i = 0; i < count; i++) {
		wqflush_test_flush_dfl_long();
		cond_resched();
	}
	return count;
}

static long wqflush_test_run_exit(struct wqflush_test_trigger *t, long count)
{
	if (count != 1)
		return -EINVAL;
	WRITE_ONCE(exit_flush, true);
	/* Counted now: the flush runs in rmmod, when nothing can read the count any more. */
	return 1;
}

/*
 * 'storm <n>': WQFLUSH_TEST_STORM_THREADS kthreads bound to CPU 0 flush system_highpri_wq n
 * times in all, beside a kthread that keeps CPU 0 busy, so flushers are preempted wherever
 * the kernel can preempt them: inside a preemptible probe program among other places.
 */
#define WQFLUSH_TEST_STORM_THREADS 4

struct wqflush_test_storm {
	struct wqflush_test_trigger *t;
	long flushes;
	struct completion done;
};

static int wqflush_test_storm_flusher(void *data)
{
	struct wqflush_test_storm *s = data;
	long i;

	for (i = 0; i < s->flushes; i++) {
		wqflush_test_flush_storm();
		atomic_long_inc(&s->t->fired);
	}
	complete(&s->done);
	return 0;
}

static int wqflush_test_storm_busy(void *data)
{
	/* cond_resched() is where a non-preemptible kernel lets the flushers run at all. */
	while (!kthread_should_stop())
		cond_resched();
	return 0;
}

static struct task_struct *storm_thread(int (*fn)(void *), void *data, const char *name)
{
	struct task_struct *task = kthread_create(fn, data, "%s", name);

	if (IS_ERR(task))
		return task;
	kthread_bind(task, 0);
	wake_up_process(task);
	return task;
}

static long wqflush_test_run_storm(struct wqflush_test_trigger *t, long count)
{
	static struct wqflush_test_storm storms[WQFLUSH_TEST_STORM_THREADS];
	struct task_struct *busy;
	int i, started = 0;

	if (count < WQFLUSH_TEST_STORM_THREADS)
		return -EINVAL;
	busy = storm_thread(wqflush_test_storm_busy, NULL, "wqflush_busy");
	if (IS_ERR(busy))
		return PTR_ERR(busy);
	for (i = 0; i < WQFLUSH_TEST_STORM_THREADS; i++) {
		struct wqflush_test_storm *s = &storms[i];

		s->t = t;
		s->flushes = count / WQFLUSH_TEST_STORM_THREADS +
			(i < count % WQFLUSH_TEST_STORM_THREADS);
		init_completion(&s->done);
		if (IS_ERR(storm_thread(wqflush_test_storm_flusher, s, "wqflush_storm")))
			break;
		started++;
	}
	for (i = 0; i < started; i++)
		wait_for_completion(&storms[i].done);
	kthread_stop(busy);
	/* The flushers counted themselves. */
	return started == WQFLUSH_TEST_STORM_THREADS ? 0 : -ENOMEM;
}

static long wqflush_test_run_slow(struct wqflush_test_trigger *t, long count)
{
	long i;

	if (count < 1 || count > WQFLUSH_TEST_SLOW_MAX)
		return -EINVAL;
	for (i = 0; i < count; i++) {
		INIT_WORK(&slow_works[i], wqflush_test_slow_work);
		queue_work(READ_ONCE(slow_wq), &slow_works[i]);
	}
	wqflush_test_flush_slow();
	/* One flush, however many work items it waited for. */
	return 1;
}

static long wqflush_test_run_bench(struct wqflush_test_trigger *t, long count)
{
	u64 start = ktime_get_ns();
	long i;

	for (i = 0; i < count; i++) {
		wqflush_test_flush_bench();
		cond_resched();
	}
	atomic64_set(&bench_ns, ktime_get_ns() - start);
	return count;
}

/*
 * 'workitems <n>': the cost of one work item, which `wqflush --waits` adds a program run to
 * (its workqueue_execute_end tracepoint). The item does nothing, so what is timed is the
 * workqueue's own path: queue_work(), a kworker running it, flush_work() waking the writer.
 */
static noinline void wqflush_test_workitem(struct work_struct *work)
{
	barrier();
}

/*
 * Queues one item on own_wq and waits for it with flush_work() (which is no queue flush, so the
 * flush probe never runs), n times; the time goes to /proc/wqflush_test_bench like 'bench'.
 * Each writer has its own item on its stack, so two writers can run at once (throughput).
 */
static long wqflush_test_run_workitems(struct wqflush_test_trigger *t, long count)
{
	struct work_struct work;
	u64 start = ktime_get_ns();
	long i;

	INIT_WORK_ONSTACK(&work, wqflush_test_workitem);
	for (i = 0; i < count; i++) {
		queue_work(own_wq, &work);
		flush_work(&work);
		cond_resched();
	}
	destroy_work_on_stack(&work);
	atomic64_set(&bench_ns, ktime_get_ns() - start);
	return count;
}

/*
 * The first four are always listed; the later ones only once they fired, so a read-out of a
 * boot that uses only the original triggers is unchanged.
 */
static struct wqflush_test_trigger triggers[] = {
	{ .name = "scheduled", .fire = wqflush_test_flush_scheduled },
	{ .name = "long", .fire = wqflush_test_flush_long },
	{ .name = "pointer", .fire = wqflush_test_flush_pointer },
	{ .name = "own", .fire = wqflush_test_flush_own },
	{ .name = "sites", .run = wqflush_test_run_sites, .listed_when_fired = true },
	{ .name = "worker_other", .run = wqflush_test_run_worker_other,
	  .listed_when_fired = true },
	{ .name = "worker_self", .run = wqflush_test_run_worker_self,
	  .listed_when_fired = true },
	{ .name = "bench", .run = wqflush_test_run_bench, .listed_when_fired = true },
	{ .name = "deprecated", .fire = wqflush_test_flush_deprecated,
	  .listed_when_fired = true },
	{ .name = "dfl_long", .run = wqflush_test_run_dfl_long, .listed_when_fired = true },
	{ .name = "exit", .run = wqflush_test_run_exit, .listed_when_fired = true },
	{ .name = "storm", .run = wqflush_test_run_storm, .listed_when_fired = true },
	{ .name = "sites_paced", .run = wqflush_test_run_sites_paced,
	  .listed_when_fired = true },
	{ .name = "slow", .run = wqflush_test_run_slow, .listed_when_fired = true },
	{ .name = "abba", .run = wqflush_test_run_abba, .listed_when_fired = true },
	{ .name = "inline", .fire = wqflush_test_flush_inline, .listed_when_fired = true },
	{ .name = "pac", .fire = wqflush_test_flush_pac, .listed_when_fired = true },
#ifdef CONFIG_X86
	{ .name = "stale", .fire = wqflush_test_flush_stale, .listed_when_fired = true },
#endif
	{ .name = "workitems", .run = wqflush_test_run_workitems, .listed_when_fired = true },
};

static struct wqflush_test_trigger *find_trigger(const char *name)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(triggers); i++)
		if (!strcmp(triggers[i].name, name))
			return &triggers[i];
	return NULL;
}

static int run_trigger(struct wqflush_test_trigger *t, long count)
{
	long i;

	if (t->run) {
		long fired = t->run(t, count);

		if (fired < 0)
			return fired;
		atomic_long_add(fired, &t->fired);
		return 0;
	}
	for (i = 0; i < count; i++) {
		t->fire();
		atomic_long_inc(&t->fired);
		/* Floods of many flushes must not trip the soft-lockup detector. */
		cond_resched();
	}
	return 0;
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
	err = run_trigger(t, count);
	if (err) {
		pr_warn(WQFLUSH_TEST_NAME ": %s %ld failed (%d)\n", t->name, count, err);
		return err;
	}
	return len;
}

static int wqflush_test_show(struct seq_file *m, void *v)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(triggers); i++) {
		long fired = atomic_long_read(&triggers[i].fired);

		if (fired || !triggers[i].listed_when_fired)
			seq_printf(m, "%s %ld\n", triggers[i].name, fired);
	}
	return 0;
}

static int wqflush_test_bench_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%llu\n", (unsigned long long)atomic64_read(&bench_ns));
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
	own_wq = alloc_workqueue(WQFLUSH_TEST_NAME, WQFLUSH_TEST_OWN_FLAGS, 0);
	if (!own_wq)
		return -ENOMEM;
	WRITE_ONCE(holder.wq, queue_by_name(pointer_wq));
	WRITE_ONCE(storm_wq, system_highpri_wq);
	WRITE_ONCE(slow_wq, queue_by_name(slow_wq_name));
	WRITE_ONCE(abba_wq, system_highpri_wq);
#if WQFLUSH_TEST_HAVE_DFL_LONG
	WRITE_ONCE(holder.dfl_long, system_dfl_long_wq);
#endif
	if (!holder.wq || !slow_wq) {
		pr_err(WQFLUSH_TEST_NAME ": unknown pointer_wq=%s or slow_wq=%s\n", pointer_wq,
		       slow_wq_name);
		destroy_workqueue(own_wq);
		return -EINVAL;
	}
	if (!proc_create(WQFLUSH_TEST_NAME, 0666, NULL, &wqflush_test_ops)) {
		destroy_workqueue(own_wq);
		return -ENOMEM;
	}
	if (!proc_create_single(WQFLUSH_TEST_BENCH_NAME, 0444, NULL, wqflush_test_bench_show)) {
		remove_proc_entry(WQFLUSH_TEST_NAME, NULL);
		destroy_workqueue(own_wq);
		return -ENOMEM;
	}
	pr_info(WQFLUSH_TEST_NAME ": loaded, pointer_wq=%s\n", pointer_wq);
	return 0;
}

/*
 * Never runs after 'worker_self' or 'abba': they hold a module reference for good. After 'exit'
 * it flushes a system queue first, as many drivers' exit functions did: module_exit() makes
 * cleanup_module an alias of this function, and a report must name this one.
 */
static void __exit wqflush_test_exit(void)
{
	if (READ_ONCE(exit_flush))
		flush_workqueue(READ_ONCE(holder.wq));
	remove_proc_entry(WQFLUSH_TEST_BENCH_NAME, NULL);
	remove_proc_entry(WQFLUSH_TEST_NAME, NULL);
	destroy_workqueue(own_wq);
}

module_init(wqflush_test_init);
module_exit(wqflush_test_exit);
MODULE_LICENSE("GPL");
/* Gives the module /sys/module/wqflush_test/{version,srcversion}: wqflush's JSON carries both. */
MODULE_VERSION("1.0-test");
MODULE_DESCRIPTION("Fires workqueue flushes on demand for wqflush tests");
