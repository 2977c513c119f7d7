# shellcheck shell=sh
# tests/tests/stuck.rs's scenario: the two deadlocks (worker_self, then abba) under
# `wqflush --waits --stuck-after 3s`, when each stuck record first shows, and the tasks in D.
# Sourced by /init after the helpers (helpers.sh, oracle.sh: emit, fire, wqflush_start, ...).
# METHOD (the attach method) comes from the line the test puts before this file: one boot per
# method.

load_test_module || exit 1
wqflush_start w wqflush --waits --stuck-after 3s --attach "$METHOD" || exit 1
_t0=$(cut -d' ' -f1 /proc/uptime)
echo worker_self > /proc/wqflush_test || exit 1
# abba only once the self flush is seen: on one CPU, a second flush while the first flusher is
# preempted inside its fentry program is skipped by the kernel (counted in "missed"; the storm
# tests own that), and this test is about the stuck report.
_left=50
until grep '"type":"flush"' /tmp/w.json | grep -q '"caller":"wqflush_test_work_flush_self"'; do
	_left=$((_left - 1)); [ $_left -gt 0 ] || break
	sleep 0.1
done
_t1=$(cut -d' ' -f1 /proc/uptime)
# The writer blocks for good: in the background.
echo abba > /proc/wqflush_test &
emit abba_pid echo $!
_left=150
_self=none; _abba=none
# has CALLER: wqflush's output holds a stuck record of CALLER.
has() { grep '"type":"stuck"' /tmp/w.json | grep -q "\"caller\":\"$1\""; }
while [ $_left -gt 0 ]; do
	_now=$(cut -d' ' -f1 /proc/uptime)
	[ "$_self" = none ] && has wqflush_test_work_flush_self && _self=$_now
	[ "$_abba" = none ] && has wqflush_test_flush_abba && _abba=$_now
	[ "$_self" != none ] && [ "$_abba" != none ] && break
	_left=$((_left - 1))
	sleep 0.1
done
emit times echo "$_t0 $_self $_t1 $_abba"
# The oracle, the kernel's own view of every task in D: its comm (a kworker's says "+queue"
# while it runs a work item of that queue) and the module's functions on its stack.
# shellcheck disable=SC2016 # $p is the inner shell's.
emit blocked sh -c 'for p in /proc/[0-9]*; do
	grep -q "^State:.D" $p/status 2>/dev/null || continue
	echo "${p#/proc/} $(cat $p/comm) $(grep -o "wqflush_test_[a-z_]*" $p/stack 2>/dev/null | tr "\n" " ")"
done; true'
wqflush_stop w
true
