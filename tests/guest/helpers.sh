# shellcheck shell=sh
# Helper functions for the guest scenarios (tests/README.md "Guest interface"): /init sources
# them, with the oracle's (oracle.sh) appended, from /lib/vmtest/helpers.sh before the scenario.
# They run in busybox sh and, in the systemd guest, in bash: POSIX sh only.

# emit NAME CMD...: runs CMD with its stdout and stderr framed on the data port as
#   @@BEGIN NAME / ... / @@END NAME <status>   (read back with VmRun::section).
emit() {
	_emit_name=$1
	shift
	echo "@@BEGIN $_emit_name" >&3
	"$@" >&3 2>&1
	_emit_rc=$?
	echo "@@END $_emit_name $_emit_rc" >&3
	return $_emit_rc
}

# wait_for_file PATH [SECONDS]: polls every 0.1 s until PATH exists; fails after SECONDS
# (default 30), e.g. for the file `wqflush --ready-file` creates once its probe is live.
wait_for_file() {
	_wff_left=$(( ${2:-30} * 10 ))
	while [ ! -e "$1" ]; do
		if [ "$_wff_left" -le 0 ]; then
			echo "vmtest: timed out waiting for $1" >&2
			return 1
		fi
		_wff_left=$((_wff_left - 1))
		sleep 0.1
	done
}

# stop_bg PID [SECONDS]: stops a background job with SIGTERM and waits for it. busybox sh
# starts `&` jobs with SIGINT ignored, so SIGINT would not stop them; they must handle SIGTERM.
stop_bg() {
	# A job that already exited cannot be signalled; `wait` still gives its status.
	kill -TERM "$1" 2>/dev/null
	_sb_left=$(( ${2:-10} * 10 ))
	while kill -0 "$1" 2>/dev/null && [ "$_sb_left" -gt 0 ]; do
		_sb_left=$((_sb_left - 1))
		sleep 0.1
	done
	wait "$1"
}

# flush_fn: the function every workqueue flush passes through on this kernel:
# __flush_workqueue since 5.19, flush_workqueue (the exported function itself) before.
flush_fn() {
	if awk '$3 == "__flush_workqueue" && NF == 3 { f = 1; exit } END { exit !f }' /proc/kallsyms; then
		echo __flush_workqueue
	else
		echo flush_workqueue
	fi
}

# load_test_module [PARAMS...]: insmods the wqflush_test module copied to /lib/wqflush_test.ko.
load_test_module() {
	insmod /lib/wqflush_test.ko "$@"
}

# fire TRIGGER [COUNT]: runs one of the test module's triggers (tests/README.md).
fire() {
	echo "$1 ${2:-1}" > /proc/wqflush_test
}

# wqflush_start NAME CMD...: runs `CMD --json --ready-file ...` (CMD: wqflush and its options, or
# a wrapper that execs it) in the background, stdout in /tmp/NAME.json, stderr in
# /tmp/NAME.err, pid in /tmp/NAME.pid; returns once the probe is live, or fails with wqflush's
# stderr when it never gets there.
wqflush_start() {
	_ws=$1
	shift
	rm -f "/tmp/$_ws.ready"
	"$@" --json --ready-file "/tmp/$_ws.ready" >"/tmp/$_ws.json" 2>"/tmp/$_ws.err" &
	echo $! > "/tmp/$_ws.pid"
	wait_for_file "/tmp/$_ws.ready" 60 || { cat "/tmp/$_ws.err" >&2; return 1; }
}

# wqflush_stop NAME: stops what wqflush_start NAME started (SIGTERM) and emits its exit status,
# JSON and stderr as sections NAME.status, NAME.json and NAME.err.
wqflush_stop() {
	emit "$1.status" stop_bg "$(cat "/tmp/$1.pid")" 30
	emit "$1.json" cat "/tmp/$1.json"
	emit "$1.err" cat "/tmp/$1.err"
}

# system_queues: "<address> <type> <name>" for each of the kernel's system_*wq variables. Where
# kallsyms has no data symbols (Debian's arm64 6.1 lacks CONFIG_KALLSYMS_ALL), the harness's
# list from the image's export table, /lib/vmtest/system-queues, whose <address> is a kprobe
# fetch location relative to the flush function (`__flush_workqueue+0x1c04d48`;
# oracle::queue_locations).
system_queues() {
	if [ -e /lib/vmtest/system-queues ]; then
		cat /lib/vmtest/system-queues
		return
	fi
	awk 'NF == 3 && $3 ~ /^system_[a-z0-9_]*wq$/ { print $1, $2, $3 }' /proc/kallsyms | sort -u -k3
}
