# shellcheck shell=bash
# tests/tests/systemd.rs's scenario, in the systemd guest (bash, Debian's tools): the package
# installs, its unit attaches, Prometheus scrapes it with the shipped configuration, then stop,
# SIGKILL and restart, and `dpkg -r`, each followed by what is left in the kernel.
# Sourced by the guest's vmtest.service program after the helpers (helpers.sh, oracle.sh).
# DEB (the package's path in the guest) comes from the line the test puts before this file.

# wait_attached N: until wqflush's journal says "attached" N times (once per start), 120 s.
wait_attached() {
	for _i in $(seq 240); do
		_n=$(journalctl -u wqflush -o cat --no-pager | grep -c '^wqflush: attached')
		[ "$_n" -ge "$1" ] && return 0
		sleep 0.5
	done
	echo "wqflush never attached:" >&2
	journalctl -u wqflush --no-pager >&2
	return 1
}
# wait_metric TEXT: until the metrics endpoint serves a line containing TEXT, 60 s.
wait_metric() {
	for _i in $(seq 120); do
		curl -s http://127.0.0.1:19100/metrics | grep -qF "$1" && return 0
		sleep 0.5
	done
	return 1
}
# bpf_state: what of wqflush's could still be in the kernel: BPF programs of the types it loads
# (kprobe 2, raw_tracepoint 17, tracing 26) that any process holds (systemd holds cgroup
# programs of its own), anything pinned in bpffs, and ftrace hooks or kprobes on the flush
# function (kprobe-multi, fentry trampolines and ftrace kprobes all show in enabled_functions).
bpf_state() {
	_fn=$(flush_fn)
	_progs=0
	# /proc/N/fd/N: no blanks to split on; a `while read` loop in a pipe would lose _progs.
	# shellcheck disable=SC2044
	for _fd in $(find /proc/[0-9]*/fd -lname anon_inode:bpf-prog 2>/dev/null); do
		_proc=${_fd%/fd/*}
		if grep -Eq '^prog_type:[[:space:]]+(2|17|26)$' "$_proc/fdinfo/${_fd##*/}" 2>/dev/null; then
			echo "held: $_fd ($(cat "$_proc/comm"))"
			_progs=$((_progs + 1))
		fi
	done
	echo "programs $_progs"
	echo "pinned $(find /sys/fs/bpf -mindepth 1 2>/dev/null | wc -l)"
	echo "ftrace $(grep -c "^$_fn " /sys/kernel/tracing/enabled_functions)"
	echo "kprobes $(grep -c " $_fn+" /sys/kernel/debug/kprobes/list 2>/dev/null)"
}
show() { systemctl show wqflush -p LoadState,ActiveState,SubState,ExecMainStatus,NRestarts; }
# prom_wait QUERY: until the Prometheus query has a result, 60 s.
prom_wait() {
	for _i in $(seq 120); do
		curl -s http://127.0.0.1:9090/api/v1/query --data-urlencode "query=$1" | grep -q '"result":\[{' && return 0
		sleep 0.5
	done
	echo "no result for $1" >&2
	return 1
}
# prom QUERY: the query's JSON answer.
prom() { curl -sS http://127.0.0.1:9090/api/v1/query --data-urlencode "query=$1"; echo; }
emit mounts grep -E ' (bpf|tracefs|debugfs) ' /proc/mounts
emit install dpkg -i "$DEB" || exit 1
emit enable systemctl enable --now wqflush
wait_attached 1 || exit 1
emit show.running show
emit bpf.running bpf_state
load_test_module || exit 1
fire pointer 3 || exit 1
fire long 2 || exit 1
wait_metric 'caller="wqflush_test_flush_long",module="wqflush_test"} 2'
emit status systemctl status wqflush --no-pager
emit journal.running journalctl -u wqflush -o cat --no-pager
emit metrics curl -sS http://127.0.0.1:19100/metrics
emit security systemd-analyze security wqflush --no-pager
# A real Prometheus scrapes the service with the shipped configuration and alert rules, checked
# by promtool as shipped, then run with 1 s intervals so the test need not wait 30 s.
ex=/usr/share/doc/wqflush/examples
emit promtool.config promtool check config $ex/prometheus.yml
emit promtool.rules promtool check rules $ex/wqflush.rules.yml
{ printf 'global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n'
  sed 's/scrape_interval: 30s/scrape_interval: 1s/' $ex/prometheus.yml; } > /etc/prometheus/prometheus.yml
cp $ex/wqflush.rules.yml /etc/prometheus/
systemctl start prometheus
prom_wait 'count(wqflush_flushes_total) == 2' || exit 1
# A counter's first sample is where increase() starts: flushes after it are what it sees.
fire pointer 4 || exit 1
prom_wait 'wqflush_flushes_total{caller="wqflush_test_flush_pointer"} == 7' || exit 1
# increase() extrapolates past the samples it has (up to 1.6 intervals in all): 10 s of 1 s
# samples after the flushes keep that well under one flush in 4.
sleep 10
emit promql.increase prom 'increase(wqflush_flushes_total[5m])'
emit promql.total prom 'wqflush_flushes_total'
prom_wait 'ALERTS{alertname="SystemWorkqueueFlushed",alertstate="firing"}' || exit 1
emit alerts curl -sS http://127.0.0.1:9090/api/v1/alerts
systemctl stop prometheus
emit stop systemctl stop wqflush
emit show.stopped show
emit journal.stopped journalctl -u wqflush -o cat --no-pager
emit bpf.stopped bpf_state
# Killed, it comes back (Restart=on-failure; RestartSec shortened by a drop-in), and the killed
# instance leaves nothing behind: the kernel drops its links with its file descriptors.
mkdir -p /etc/systemd/system/wqflush.service.d
printf '[Service]\nRestartSec=1s\n' > /etc/systemd/system/wqflush.service.d/test.conf
systemctl daemon-reload
systemctl start wqflush
wait_attached 2 || exit 1
emit bpf.restarted bpf_state
emit pid.before systemctl show -p MainPID --value wqflush
emit kill systemctl kill -s SIGKILL wqflush
wait_attached 3 || exit 1
emit show.killed show
emit pid.after systemctl show -p MainPID --value wqflush
emit bpf.killed bpf_state
# Removing the package while the service runs must stop it (the package's prerm).
emit remove dpkg -r wqflush
emit bpf.removed bpf_state
emit show.removed show
emit failed systemctl --failed --no-legend --plain --no-pager
true
