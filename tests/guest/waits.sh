# shellcheck shell=sh
# tests/tests/waits.rs's scenario: `slow 3` under `wqflush --waits` with each method, under
# tracefs's record of the work items and of the flush's caller, then without --waits, then the
# text output. With kprobe-multi also without the flag (a session, still opt-in) and with
# --no-waits.
# Sourced by /init after the helpers (helpers.sh, oracle.sh: emit, fire, wqflush_start, ...).
# KPROBE_MULTI (`yes` where the kernel has fprobe) and FENTRY (`fentry`, or `kprobe` where the
# kernel cannot attach fentry) come from the lines the test puts before this file.

load_test_module || exit 1
T=/sys/kernel/tracing
echo 'p:wqf/slow_in wqflush_test_flush_slow' >> $T/kprobe_events || exit 1
echo 'r:wqf/slow_out wqflush_test_flush_slow' >> $T/kprobe_events || exit 1
echo 1 > $T/events/wqf/enable || exit 1
echo 1 > $T/events/workqueue/workqueue_execute_start/enable || exit 1
echo 1 > $T/events/workqueue/workqueue_execute_end/enable || exit 1
echo 1 > $T/tracing_on
# waits NAME CMD...: CMD (wqflush ...) while `slow 3` runs, with the tracefs record of it.
waits() {
	_n=$1
	shift
	echo > $T/trace
	wqflush_start "$_n" "$@" || return 1
	fire slow 3 || return 1
	wqflush_stop "$_n"
	emit "$_n.trace" cat $T/trace
}
if [ "$FENTRY" = fentry ]; then
	waits fentry wqflush --waits --attach fentry || exit 1
fi
waits kprobe wqflush --waits --attach kprobe || exit 1
if [ "$KPROBE_MULTI" = yes ]; then
	waits multi wqflush --waits --attach kprobe-multi || exit 1
	# Every kernel here with fprobe has kprobe sessions (6.10+): still no waits without the flag.
	waits default wqflush --attach kprobe-multi || exit 1
	waits nowaits wqflush --no-waits --attach kprobe-multi || exit 1
fi
waits plain wqflush --attach "$FENTRY" || exit 1
# Text: the "waited" line and the summary's figures.
wqflush --waits --attach "$FENTRY" --duration 6 --ready-file /tmp/text.ready >/tmp/text.out 2>&1 &
echo $! > /tmp/text.pid
wait_for_file /tmp/text.ready 60 || exit 1
fire slow 2 || exit 1
emit text.status wait "$(cat /tmp/text.pid)"
emit text cat /tmp/text.out
true
