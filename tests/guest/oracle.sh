# shellcheck shell=sh
# The oracle's guest functions (tests/src/oracle.rs), appended to helpers.sh in the guest's
# /lib/vmtest/helpers.sh: a tracefs kprobe event on the flush function, independent of wqflush.
#
# Argument names are derived from the symbol (`system_long_wq` -> `sys_long`, `system_wq` ->
# `sys`) because kprobe argument names are limited to 31 characters and
# `system_freezable_power_efficient_wq` has 35. The symbols come from the guest's own
# /proc/kallsyms so every kernel gets exactly the queues it has.

WQF_TRACING=/sys/kernel/tracing

# oracle_start [BUFFER_KB]: starts recording every call of the flush function (per-CPU buffer
# BUFFER_KB, default 8192; raise it for floods, overruns show up as lost events).
oracle_start() {
	# The flushed queue is the first argument: rdi on amd64, x0 on arm64 (ARCH, from /init).
	if [ "${ARCH:-amd64}" = arm64 ]; then
		_or_def="p:wqf/flush $(flush_fn) wq=%x0"
	else
		_or_def="p:wqf/flush $(flush_fn) wq=%di"
	fi
	# Each queue's value is read at the symbol, or where system_queues gives a location
	# (`func+0x...`) at that location.
	for _or_q in $(system_queues | awk '{ print $3 "=" ($1 ~ /\+|-/ ? $1 : $3) }'); do
		_or_sym=${_or_q%%=*}
		_or_arg=sys${_or_sym#system}
		_or_def="$_or_def ${_or_arg%_wq}=@${_or_q#*=}:x64"
	done
	# arm64: the stack unwound at the flush function's entry skips its caller, which only the
	# link register holds; symbolized, last (the value may hold a space). oracle.rs puts it first.
	if [ "${ARCH:-amd64}" = arm64 ]; then
		_or_def="$_or_def caller=%x30:symbol"
	fi
	echo "${1:-8192}" > $WQF_TRACING/buffer_size_kb
	if ! echo "$_or_def" >> $WQF_TRACING/kprobe_events; then
		echo "oracle: kprobe_events rejected: $_or_def" >&2
		cat $WQF_TRACING/error_log >&2
		return 1
	fi
	# Stack frames with their offset (func+0x9/0x20): tells call sites in one function apart.
	echo 1 > $WQF_TRACING/options/sym-offset
	echo stacktrace > $WQF_TRACING/events/wqf/flush/trigger
	echo 1 > $WQF_TRACING/events/wqf/flush/enable
	echo 1 > $WQF_TRACING/tracing_on
}

# oracle_mark TEXT: a line in the trace; every later event carries TEXT as its `mark` (phases of
# one boot, told apart without stopping the oracle).
oracle_mark() {
	echo "wqf-mark $1" > $WQF_TRACING/trace_marker
}

# oracle_part NAME: emits the trace so far as section oracle-trace-NAME and empties it. tracefs
# names a stack's frames when the trace is read: a module unloaded and loaded again elsewhere
# would have its earlier frames named wrongly, so each load's part is read before the next load
# (`Oracle::from_parts`).
oracle_part() {
	emit "oracle-trace-$1" cat $WQF_TRACING/trace
	echo > $WQF_TRACING/trace
}

oracle_stop() {
	echo 0 > $WQF_TRACING/events/wqf/flush/enable
}

oracle_dump() {
	emit oracle-symbols system_queues
	emit oracle-trace cat $WQF_TRACING/trace
}
