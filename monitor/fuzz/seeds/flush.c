/* The seed objects of the `scan` fuzz target (fuzz_targets/scan.rs), which mutates them: the shapes
 * `wqflush scan` follows, kept small. Rebuilt with:
 *   gcc -O2 -fno-pic -mcmodel=kernel -mno-red-zone -fno-asynchronous-unwind-tables -c flush.c -o flush_x86_64.o
 *   aarch64-linux-gnu-gcc -O2 -fno-pic -fno-asynchronous-unwind-tables -mbranch-protection=pac-ret -c flush.c -o flush_aarch64.o
 */
struct workqueue_struct;
extern struct workqueue_struct *system_wq, *system_long_wq, *system_unbound_wq;
void __flush_workqueue(struct workqueue_struct *wq);
void other(int);

static struct workqueue_struct *held;

__attribute__((section(".init.text"))) int init(void)
{
	held = system_unbound_wq;
	return 0;
}

__attribute__((section(".exit.text"))) void leave(void)
{
	__flush_workqueue(held);
}

void direct(void)
{
	__flush_workqueue(system_long_wq);
}

void kept(int n)
{
	struct workqueue_struct *wq = system_wq;

	other(n);
	if (__builtin_expect(n > 3, 0)) {
		other(n + 1);
		__flush_workqueue(wq);
	}
	other(n + 2);
}
