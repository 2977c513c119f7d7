//! Shell code that runs inside the guest: `/init` and the helper functions every scenario can
//! call. See tests/README.md for the interface.

use crate::oracle;

/// The serial port the scenario writes machine-readable output to (fd 3 in scenarios).
pub const DATA_TTY: &str = "/dev/ttyS1";
/// Where the helpers live in the guest; `/init` sources them before the scenario.
pub const HELPERS_PATH: &str = "/lib/vmtest/helpers.sh";
/// Where the scenario given to `build_initramfs` lands in the guest.
pub const SCENARIO_PATH: &str = "/scenario.sh";
/// Line written to the data port after the scenario: `@@EXIT <status>`.
pub const EXIT_MARKER: &str = "@@EXIT ";

/// `/init`: mounts the pseudo file systems, opens the data port once as fd 3 (closing a tty with
/// a signal pending drops unsent output), runs the scenario in a subshell so `exit` in it cannot
/// kill PID 1, reports its status and powers off.
pub const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
exec 3>/dev/ttyS1
echo "vmtest: running scenario on $(uname -r)"
( . /lib/vmtest/helpers.sh; . /scenario.sh )
rc=$?
echo "vmtest: scenario exited with $rc"
echo "@@EXIT $rc" >&3
sync
# Let the UART drain before the power goes.
sleep 0.2
poweroff -f
echo o > /proc/sysrq-trigger
"#;

/// Helper functions for scenarios (the oracle's are appended from [`oracle::GUEST_FUNCTIONS`]).
const HELPERS: &str = r#"
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
	rm -f /tmp/$_ws.ready
	"$@" --json --ready-file /tmp/$_ws.ready >/tmp/$_ws.json 2>/tmp/$_ws.err &
	echo $! > /tmp/$_ws.pid
	wait_for_file /tmp/$_ws.ready 60 || { cat /tmp/$_ws.err >&2; return 1; }
}

# wqflush_stop NAME: stops what wqflush_start NAME started (SIGTERM) and emits its exit status,
# JSON and stderr as sections NAME.status, NAME.json and NAME.err.
wqflush_stop() {
	emit $1.status stop_bg $(cat /tmp/$1.pid) 30
	emit $1.json cat /tmp/$1.json
	emit $1.err cat /tmp/$1.err
}

# system_queues: "<address> <type> <name>" for each of the kernel's system_*wq variables.
system_queues() {
	awk 'NF == 3 && $3 ~ /^system_[a-z0-9_]*wq$/ { print $1, $2, $3 }' /proc/kallsyms | sort -u -k3
}
"#;

/// Contents of [`HELPERS_PATH`].
pub fn helpers() -> String {
    format!("{HELPERS}\n{}", oracle::GUEST_FUNCTIONS)
}

/// A scenario line that waits for `path` (e.g. the monitor's ready file) and aborts the
/// scenario with status 1 after `seconds`.
pub fn wait_for_file(path: &str, seconds: u32) -> String {
    format!("wait_for_file {path} {seconds} || exit 1\n")
}
