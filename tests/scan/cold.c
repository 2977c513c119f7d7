// A `.cold` split: the unlikely error path, flush included, goes to `flush_cold_path.cold` in
// `.text.unlikely`; the site is reported as `flush_cold_path`. aarch64 gcc splits only when
// asked (`-freorder-blocks-and-partition`, on by default for x86-64).
// expect: caller=flush_cold_path wq=system_long_wq section=text
// shape: flush_cold_path.cold calls __flush_workqueue
// shape: flush_cold_path.cold loads system_long_wq into arg1
// cflags-arm64: -freorder-blocks-and-partition
#include "wq.h"

extern int fixture_state;
void __attribute__((cold)) report_error(int err);

int flush_cold_path(int err)
{
	if (__builtin_expect(err < 0, 0)) {
		report_error(err);
		__flush_workqueue(system_long_wq);
		report_error(err + 1);
		return -1;
	}
	other();
	fixture_state = err;
	return 0;
}
