# shellcheck shell=sh
# tests/tests/storm.rs's scenario: a same-CPU storm of STORM flushes under `--attach auto`,
# `--attach fentry` and the unit's capabilities, with the kernel's own statistics of each
# program wqflush loads.
# Sourced by /init after the helpers (helpers.sh, oracle.sh: emit, fire, wqflush_start, ...).
# STORM (flushes per storm) and SETPRIV (where util-linux's setpriv is in the guest) come from
# the lines the test puts before this file.

load_test_module || exit 1
echo 1 > /proc/sys/kernel/bpf_stats_enabled || exit 1
# Debian's default: perf events only with CAP_SYS_ADMIN.
echo 3 > /proc/sys/kernel/perf_event_paranoid || exit 1
emit preempt sh -c 'cat /sys/kernel/debug/sched/preempt 2>/dev/null || uname -v'
storm_count() { awk '$1 == "storm" { n = $2 } END { print n + 0 }' /proc/wqflush_test; }
# fdinfo of every BPF program wqflush holds: the kernel's run_cnt and recursion_misses.
progs() {
	for fd in "/proc/$1/fd/"*; do
		case "$(readlink "$fd")" in
		*bpf-prog*) echo "fd ${fd##*/}"; cat "/proc/$1/fdinfo/${fd##*/}" ;;
		esac
	done
}
# /tmp/unit CMD...: CMD with the capabilities of dist/wqflush.service, as uid 0: no
# CAP_SYS_ADMIN (util-linux's setpriv; busybox's has no --bounding-set). A script that execs, so
# a background job's $! is the monitor's pid. (Only $SETPRIV expands in the here-document.)
cat > /tmp/unit <<UNIT
#!/bin/sh
# LimitMEMLOCK=infinity: without CAP_SYS_RESOURCE wqflush cannot raise it for 5.10's maps.
ulimit -l unlimited
# LimitRTPRIO=1: the counter reads run SCHED_FIFO without CAP_SYS_NICE.
ulimit -r 1
exec $SETPRIV --inh-caps=-all,+bpf,+perfmon,+syslog --ambient-caps=-all,+bpf,+perfmon,+syslog \\
	--bounding-set=-all,+bpf,+perfmon,+syslog "\$@"
UNIT
chmod +x /tmp/unit
# storm NAME CMD...: CMD (wqflush ...) during one storm; a CMD that never gets live leaves its
# status and stderr.
storm() {
	_n=$1
	if ! wqflush_start "$@"; then
		emit "$_n.status" wait "$(cat "/tmp/$_n.pid")"
		emit "$_n.err" cat "/tmp/$_n.err"
		return 0
	fi
	_pid=$(cat "/tmp/$_n.pid")
	emit "$_n.caps" grep ^CapEff "/proc/$_pid/status"
	_before=$(storm_count)
	fire storm "$STORM" || return 1
	emit "$_n.fired" echo $(( $(storm_count) - _before ))
	emit "$_n.progs" progs "$_pid"
	wqflush_stop "$_n"
}
storm auto wqflush || exit 1
storm fentry wqflush --attach fentry || exit 1
storm unit /tmp/unit wqflush || exit 1
emit unit_kprobe /tmp/unit wqflush --attach kprobe --duration 1
true
