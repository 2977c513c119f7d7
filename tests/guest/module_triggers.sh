# shellcheck shell=sh
# tests/tests/module_triggers.rs's scenario: the test module's extra triggers (sites,
# worker_other, bench, their errors) under the oracle, then worker_self, which deadlocks its
# kworker for good and so comes last.
# Sourced by /init after the helpers (helpers.sh, oracle.sh: emit, fire, wqflush_start, ...).

load_test_module || exit 1
# Unprobed first: the oracle's kprobe and stack traces cost time.
echo "bench 1000" > /proc/wqflush_test || exit 1
emit bench_plain cat /proc/wqflush_test_bench
oracle_start || exit 1
echo "sites 300" > /proc/wqflush_test || exit 1
echo "worker_other 2" > /proc/wqflush_test || exit 1
# Few under the oracle: each traced flush adds a stack to the trace the guest must dump.
echo "bench 100" > /proc/wqflush_test || exit 1
emit bench_oracle cat /proc/wqflush_test_bench
emit sites_0 sh -c 'echo "sites 0" > /proc/wqflush_test'
emit sites_10001 sh -c 'echo "sites 10001" > /proc/wqflush_test'
emit worker_self_2 sh -c 'echo "worker_self 2" > /proc/wqflush_test'
emit counts_before cat /proc/wqflush_test

# Last: deadlocks a system_long_wq kworker for good. The work item counts itself before it
# flushes, so wait for "worker_self 1", then give the kprobe's trace a moment.
echo worker_self > /proc/wqflush_test || exit 1
_left=100
until grep -qx "worker_self 1" /proc/wqflush_test; do
	[ $_left -gt 0 ] || { echo "worker_self never ran" >&2; exit 1; }
	_left=$((_left - 1))
	sleep 0.1
done
sleep 0.5
emit worker_self_again sh -c 'echo worker_self > /proc/wqflush_test'
emit rmmod rmmod wqflush_test
emit still_loaded grep -c "^wqflush_test " /proc/modules
# shellcheck disable=SC2016 # $p is the inner shell's.
emit stuck sh -c 'for p in /proc/[0-9]*; do
	case "$(cat $p/comm 2>/dev/null)" in kworker/*) ;; *) continue ;; esac
	grep -q wqflush_test_work_flush_self $p/stack 2>/dev/null && echo "${p#/proc/} $(cat $p/comm) $(grep ^State: $p/status)"
done; true'
oracle_stop
emit counts cat /proc/wqflush_test
oracle_dump
