# shellcheck shell=sh
# tests/tests/all_triggers.rs's scenario: every trigger of the test module in three phases
# (plain, --waits, and --waits without the oracle, ending in the two deadlocks).
# Sourced by /init after the helpers (helpers.sh, oracle.sh: emit, fire, wqflush_start, ...).
# METHOD (the attach method) comes from the line the test puts before this file: one boot per
# method.

load_test_module slow_wq=long || exit 1
oracle_start 32768 || exit 1

# fire_stale: `stale 2` where the module has it: its inline asm is x86-64's (ARCH from /init).
fire_stale() {
	[ "$ARCH" = arm64 ] || fire stale 2
}

# triggers PHASE: every trigger that returns, then four writers at once, then the exit flush
# and flushes from the module loaded again.
triggers() {
	fire scheduled 2 && fire long 1 && fire slow 2 && fire pointer 2 && fire inline 1 &&
		fire long 1 && fire worker_other 2 && fire own 3 && fire sites 3 &&
		fire deprecated 1 && fire slow 1 && fire_stale && fire pac 2 && fire scheduled 1 ||
		return 1
	if grep -q ' system_dfl_long_wq$' /proc/kallsyms; then fire dfl_long 2 || return 1; fi
	fire long 20 & _a=$!
	fire pointer 20 & _b=$!
	fire scheduled 20 & _c=$!
	fire sites 5 & _d=$!
	wait $_a && wait $_b && wait $_c && wait $_d || return 1
	emit "modsyms_$1" grep '\[wqflush_test\]' /proc/kallsyms
	fire exit 1 && rmmod wqflush_test || return 1
	[ "$1" = bare ] || oracle_part "$1"
	load_test_module slow_wq=long || return 1
	fire long 1 && fire inline 1 && fire worker_other 1
}

# has_stuck CALLER: the last phase's output holds a stuck record of CALLER (waits 15 s).
has_stuck() {
	_left=150
	until grep '"type":"stuck"' /tmp/bare.json | grep -q "\"caller\":\"$1\""; do
		_left=$((_left - 1)); [ $_left -gt 0 ] || return 1
		sleep 0.1
	done
}

wqflush_start plain wqflush --attach "$METHOD" || exit 1
oracle_mark plain
triggers plain || exit 1
oracle_mark between
wqflush_stop plain

wqflush_start waits wqflush --attach "$METHOD" --waits || exit 1
oracle_mark waits
triggers waits || exit 1
oracle_mark end
wqflush_stop waits
oracle_stop
oracle_dump

# The oracle's kprobe shares the flush function's entry with wqflush's probe (ftrace calls
# both), which changes what the stack below the entry holds. Without it, as on a user's
# machine: the same triggers, then the reported case, two flushes of system_long_wq that
# wait for slow items and a work item of system_long_wq that flushes it (waits for itself,
# for good), then the writer that deadlocks with a work item (in the background).
wqflush_start bare wqflush --attach "$METHOD" --waits --stuck-after 3s || exit 1
triggers bare || exit 1
fire slow 2 && fire slow 2 && fire worker_self || exit 1
has_stuck wqflush_test_work_flush_self || echo "no stuck record of worker_self" >&2
fire abba &
has_stuck wqflush_test_flush_abba || echo "no stuck record of abba" >&2
wqflush_stop bare
