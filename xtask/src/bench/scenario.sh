# The bench's guest side (xtask/src/bench/mod.rs prepends the parameters: ROUNDS, ITER, HALF1,
# HALF2, SITES, STORM, CONFIGS, FLOORS, BPFTRACE, WAITS_CONFIGS, ITEMS, REPEATS, WAITS_ONLY).
# Writes `<metric> <round> <config> <value>` lines to /tmp/results, emitted as section `results`;
# the helpers (emit, fire, stop_bg, ...) are the harness's (tests/guest/helpers.sh).
# shellcheck shell=sh
# `rec NAME ROUND CONFIG $(...)`: the value's words go to rec unquoted, as before; rec joins them
# with one space, and an empty value leaves the line short, which the host rejects.
# shellcheck disable=SC2046
R=/tmp/results
L=/tmp/log
: > $R
: > $L
rec() { echo "$*" >> $R; }
log() { echo "bench: $*"; echo "$*" >> $L; }
fail() { log "FAILED: $*"; for f in /tmp/out /tmp/err; do [ -f $f ] && tail -n 30 $f >> $L; done; emit log cat $L; emit results cat $R; exit 1; }

# The offending flushes go through the 'pointer' trigger: flush_workqueue(h->wq) with
# h->wq == system_wq, which the kernel does not warn about at run time (6.12 would for others).
load_test_module pointer_wq=system || fail "insmod"

# The bpftrace equivalent of wqflush: the same function, one compare per system_*wq variable
# this kernel has, a count per kernel stack.
pred=
for s in $(system_queues | awk '{ print $3 }'); do
	pred="$pred${pred:+ || }arg0 == *kaddr(\"$s\")"
done
# __flush_workqueue, or flush_workqueue before 5.19.
FN=$(flush_fn)
# arm64 (ARCH, from /init): the stack unwound at the function's entry lacks its caller, which
# only the link register holds (bpftrace's r30; wqflush reads it too), so the key has it first.
key=kstack
[ "${ARCH:-amd64}" = arm64 ] && key='ksym(reg("r30")), kstack'
printf 'BEGIN { printf("bpftrace: live\\n"); }\nkprobe:%s /%s/ { @[%s] = count(); }\n' "$FN" "$pred" "$key" > /tmp/wqflush.bt
log "bpftrace program: $(cat /tmp/wqflush.bt)"
printf 'BEGIN { printf("bpftrace: live\\n"); }\nkfunc:%s { }\n' "$FN" > /tmp/empty-fentry.bt
printf 'BEGIN { printf("bpftrace: live\\n"); }\nkprobe:%s { }\n' "$FN" > /tmp/empty-kprobe.bt
# Room for every call site (the default is 4096 keys).
export BPFTRACE_MAP_KEYS_MAX=65536

# start CONFIG: starts that monitor in the background (PID, output in /tmp/out) and waits
# until it is live; records the time from process start to its ready signal.
start() {
	PID=
	rm -f /tmp/ready /tmp/attach_ns /tmp/attach_ns.tmp /tmp/out /tmp/err
	case $1 in
	none)
		return 0 ;;
	fentry|kprobe|kprobe-multi)
		benchrun /tmp/attach_ns file /tmp/ready -- \
			wqflush --json --attach "$1" --ready-file /tmp/ready >/tmp/out 2>/tmp/err &
		PID=$! ;;
	default|default-waits)
		_waits=
		[ "$1" = default-waits ] && _waits=--waits
		# shellcheck disable=SC2086 # no argument at all without --waits
		benchrun /tmp/attach_ns file /tmp/ready -- \
			wqflush --json --attach auto $_waits --ready-file /tmp/ready >/tmp/out 2>/tmp/err &
		PID=$! ;;
	bpftrace|empty-*)
		_prog=/tmp/wqflush.bt
		[ "$1" = bpftrace ] || _prog=/tmp/$1.bt
		: > /tmp/err
		# benchrun watches /tmp/out for bpftrace's "Attaching" line while bpftrace writes it.
		# shellcheck disable=SC2094
		benchrun /tmp/attach_ns line /tmp/out Attaching -- "$BPFTRACE" "$_prog" >/tmp/out 2>&1 &
		PID=$! ;;
	esac
	wait_for_file /tmp/attach_ns 300 || fail "$1 did not start"
	if [ "$(cat /tmp/attach_ns)" -lt 0 ]; then
		# bpftrace 0.17's kfunc does not attach on every kernel (5.10): that floor's row stays
		# empty rather than failing the bench.
		case $1 in empty-*)
			log "$1 cannot attach here, its row stays empty: $(tail -n 3 /tmp/out | tr '\n' ' ')"
			PID=
			return 1 ;;
		esac
		fail "$1 never got ready"
	fi
	case $1 in fentry|kprobe|kprobe-multi|default*) _wq=1 ;; *) _wq= ;; esac
	if [ -z "$_wq" ]; then
		# "Attaching N probes..." comes before the attach; BEGIN fires once it is done.
		_n=3000
		until grep -q "bpftrace: live" /tmp/out; do
			_n=$((_n - 1))
			# Fails when either is false.
			# shellcheck disable=SC2015
			[ $_n -gt 0 ] && kill -0 "$PID" 2>/dev/null || fail "bpftrace did not go live"
			sleep 0.1
		done
	fi
	rec attach_ns "$ROUND" "$1" $(cat /tmp/attach_ns)
	# What --attach auto chose: the method its attach line names.
	case $1 in default*)
		_m=$(sed -n 's/^wqflush: attached (\([^ ]*\) on .*/\1/p' /tmp/err)
		rec method "$ROUND" "$1" "${_m:-?}" ;;
	esac
}
rss_kb() { awk '/^VmRSS:/ { print $2 }' /proc/$PID/status; }
cpu_ticks() { awk '{ print $14 + $15 }' /proc/$PID/stat; }
stop() {
	[ -n "$PID" ] || return 0
	stop_bg $PID 600
	_rc=$?
	[ $_rc = 0 ] || [ $_rc = 143 ] || fail "$1 exited with $_rc"
}
module_count() { awk -v t="$1" '$1 == t { n = $2 } END { print n + 0 }' /proc/wqflush_test; }
# bpftrace's map at exit: "@[\n stack lines\n]: count" (arm64: "@[caller, \n stack lines\n]:
# count"); sums the stacks through function $1 (count) and counts them (sites).
bt_count() { awk -v f="$1" '/^@\[/ { hit = 0 } index($0, f) { hit = 1 } /^\]: [0-9]+$/ { if (hit) { n += $2; s++ } } END { print n + 0, s + 0 }' /tmp/out; }
# prog_ns_per_run PID: run_time_ns / run_cnt of the program of PID that ran most (the flush
# probe; wqflush's module_load tracepoint and bpftrace's BEGIN barely run).
prog_ns_per_run() {
	for fd in "/proc/$1/fd/"*; do
		case "$(readlink "$fd")" in
		*bpf-prog*) awk '$1 == "run_time_ns:" { t = $2 } $1 == "run_cnt:" { n = $2 } END { print n, t }' "/proc/$1/fdinfo/${fd##*/}" ;;
		esac
	done | sort -n | tail -n 1 | awk '{ print ($1 > 0) ? int($2 / $1) : -1 }'
}
summary() { grep '"type":"summary"' /tmp/out | tail -n 1; }
# counted PHASE FUNC: what the stopped monitor $c counted: wqflush's summary record
# (PHASE_summary), or bpftrace's count and stacks through FUNC (PHASE_bt).
counted() {
	case $c in
	none) ;;
	bpftrace) rec "${1}_bt" "$ROUND" "$c" $(bt_count "$2") ;;
	*)
		_s=$(summary)
		[ -n "$_s" ] || fail "$c printed no summary"
		rec "${1}_summary" "$ROUND" "$c" "$_s" ;;
	esac
}

# Context for the attach times: what reading kallsyms alone costs under TCG.
t0=$(benchrun now)
n=$(wc -l < /proc/kallsyms)
t1=$(benchrun now)
rec kallsyms_ns 0 none $((t1 - t0))
log "reading /proc/kallsyms ($n lines) took $(( (t1 - t0) / 1000000 )) ms"
t0=$(benchrun now)
wqflush doctor > /tmp/doctor 2>&1
t1=$(benchrun now)
rec doctor_ns 0 none $((t1 - t0))
log "wqflush doctor (kallsyms, BTF, no load) took $(( (t1 - t0) / 1000000 )) ms"
# kprobe-multi needs fprobe (5.18+, CONFIG_FPROBE; Debian's 5.10 and 6.1 have none): where the
# kernel lacks it, its column stays empty rather than failing the bench.
if ! grep -q "^  kprobe-multi: available" /tmp/doctor; then
	CONFIGS=$(echo "$CONFIGS" | sed 's/kprobe-multi//')
	log "kprobe-multi is not available on this kernel; its column stays empty"
fi

# What --waits adds: its exit program runs on every flush's return and its tracepoint on every
# work item, offending or not. The default method without and with it, beside no probe: flushes
# of the module's own queue, work items one at a time (both timed by the module), and work items
# from both CPUs at once (wall time: the throughput). The goals are a few percent, finer than
# what other guests on the machine do to a run, and their load comes in bursts of seconds: each
# config runs REPEATS times, interleaved with the others, and its fastest run counts (other load
# only ever adds time).
waits_phase() {
	: > /tmp/waits_runs
	_k=0
	while [ $_k -lt "$REPEATS" ]; do
		_k=$((_k + 1))
		for c in $WAITS_CONFIGS; do
			start "$c"
			waits_run >> /tmp/waits_runs
			stop "$c"
			log "round $ROUND $c, run $_k: $(tail -n 3 /tmp/waits_runs | awk '{ printf "%s %s ns; ", $1, $3 }')"
		done
	done
	awk '!(($1, $2) in min) || $3 < min[$1, $2] { min[$1, $2] = $3 }
		END { for (k in min) { split(k, p, SUBSEP); print p[1], p[2], min[k] } }' /tmp/waits_runs |
	while read -r _metric _c _v; do
		rec "$_metric" "$ROUND" "$_c" "$_v"
	done
	for c in $WAITS_CONFIGS; do
		[ "$c" = none ] && continue
		start "$c"
		waits_prog_time
		stop "$c"
	done
}
# waits_prog_time: what monitor $c's programs took, by the kernel's bpf_stats, during ITER
# own-queue flushes and during ITEMS work items: "<run_time_ns> <run_cnt>", summed over its
# programs. Never in a timed run: the statistics add two clock reads to every program run.
waits_prog_time() {
	echo 1 > /proc/sys/kernel/bpf_stats_enabled
	_s0=$(prog_stats $PID)
	fire bench "$ITER" || fail "bench trigger"
	_s1=$(prog_stats $PID)
	taskset -c 0 sh -c "echo 'workitems $ITEMS' > /proc/wqflush_test" || fail "workitems trigger"
	_s2=$(prog_stats $PID)
	echo 0 > /proc/sys/kernel/bpf_stats_enabled
	rec waits_prog_flush "$ROUND" "$c" $(echo "$_s0 $_s1" | awk '{ print $3 - $1, $4 - $2 }')
	rec waits_prog_item "$ROUND" "$c" $(echo "$_s1 $_s2" | awk '{ print $3 - $1, $4 - $2 }')
}
# prog_stats PID: run_time_ns and run_cnt of all of PID's BPF programs together (each program
# once, however many descriptors it has).
prog_stats() {
	for fd in "/proc/$1/fd/"*; do
		case "$(readlink "$fd")" in
		*bpf-prog*) awk '$1 == "prog_id:" { i = $2 } $1 == "run_time_ns:" { t = $2 }
			$1 == "run_cnt:" { n = $2 } END { print i, t, n }' "/proc/$1/fdinfo/${fd##*/}" ;;
		esac
	done | sort -u -k1,1 | awk '{ t += $2; n += $3 } END { print t + 0, n + 0 }'
}
# waits_run: one run of each --waits measurement under monitor $c, "<metric> <config> <ns>" lines.
waits_run() {
	fire bench "$ITER" || fail "bench trigger"
	echo waits_bench_ns "$c" $(cat /proc/wqflush_test_bench)
	# Pinned: a writer moved to the other CPU between runs would queue there (a per-CPU queue).
	taskset -c 0 sh -c "echo 'workitems $ITEMS' > /proc/wqflush_test" || fail "workitems trigger"
	echo workitem_ns "$c" $(cat /proc/wqflush_test_bench)
	both_cpus workitems "$ITEMS" "$ITEMS"
	echo workitems_2cpu_ns "$c" "$_ns"
}
# both_cpus TRIGGER N0 N1: writes "TRIGGER N0" on CPU 0 and "TRIGGER N1" on CPU 1 at once;
# _ns = the wall ns until both returned.
both_cpus() {
	_t0=$(benchrun now)
	taskset -c 0 sh -c "echo '$1 $2' > /proc/wqflush_test" &
	_w0=$!
	taskset -c 1 sh -c "echo '$1 $3' > /proc/wqflush_test" &
	_w1=$!
	wait $_w0 || fail "$1 writer 0"
	wait $_w1 || fail "$1 writer 1"
	_ns=$(( $(benchrun now) - _t0 ))
}

# Warm-up, not recorded: on 7.3 the first runs after boot were up to 1.5x slower than later ones
# (code TCG had not translated yet, or the boot's own work), and the first config, no probe, paid.
c=none
waits_run > /tmp/warmup
log "warm-up: $(awk '{ printf "%s %s ns; ", $1, $3 }' /tmp/warmup)"

ROUND=0
# ROUNDS is mod.rs's parameter, not a misspelt ROUND.
# shellcheck disable=SC2153
while [ $ROUND -lt "$ROUNDS" ]; do
	ROUND=$((ROUND + 1))
	waits_phase
	[ "$WAITS_ONLY" = 1 ] && continue
	# Non-offending path: flushes of the module's own queue, timed by the module.
	for c in $CONFIGS $FLOORS; do
		start "$c" || continue
		if [ -n "$PID" ]; then
			sleep 1
			rec rss_attach_kb "$ROUND" "$c" $(rss_kb)
		fi
		fire bench "$ITER" || fail "bench trigger"
		rec bench_ns "$ROUND" "$c" $(cat /proc/wqflush_test_bench)
		stop "$c"
		log "round $ROUND $c: bench done"
	done
	# Start-up end to end, as a CI loop pays it: `wqflush check -- true` attaches, runs nothing,
	# prints its summary and exits.
	for c in $CONFIGS; do
		case $c in fentry|kprobe|kprobe-multi) ;; *) continue ;; esac
		# Only a method that went live this round (start fails the bench otherwise).
		grep -q "^attach_ns $ROUND $c " $R || continue
		t0=$(benchrun now)
		wqflush check --attach "$c" -- true >/tmp/out 2>/tmp/err
		_rc=$?
		t1=$(benchrun now)
		# 3: something in the guest flushed a system queue meanwhile; still a whole run.
		[ $_rc = 0 ] || [ $_rc = 3 ] || fail "$c: check -- true exited $_rc"
		rec check_ns "$ROUND" "$c" $((t1 - t0))
	done
	# Offending path: flush_workqueue(system_wq) from both CPUs at once.
	for c in $CONFIGS; do
		start "$c"
		before=$(module_count pointer)
		[ -n "$PID" ] && ticks0=$(cpu_ticks)
		both_cpus pointer "$HALF1" "$HALF2"
		rec flood_ns "$ROUND" "$c" "$_ns"
		rec flood_module "$ROUND" "$c" $(( $(module_count pointer) - before ))
		if [ -n "$PID" ]; then
			rec flood_cpu_ticks "$ROUND" "$c" $(( $(cpu_ticks) - ticks0 ))
		fi
		stop "$c"
		counted flood wqflush_test_flush_pointer
		log "round $ROUND $c: flood done"
	done
	# Memory: RSS once every one of SITES distinct call sites has been reported.
	for c in $CONFIGS; do
		[ "$c" = none ] && continue
		start "$c"
		fire sites "$SITES" || fail "sites trigger"
		if [ "$c" != bpftrace ]; then
			# Steady: every site's first-sighting record written, or no new one for 3 s (the
			# ring buffer drops first sightings in a burst; their flushes are still counted).
			_last=-1
			_same=0
			while :; do
				_n=$(grep -c '"type":"flush"' /tmp/out)
				[ "$_n" -ge "$SITES" ] && break
				if [ "$_n" = "$_last" ]; then
					_same=$((_same + 1))
					[ $_same -ge 30 ] && break
				else
					_same=0
				fi
				_last=$_n
				sleep 0.1
			done
			rec sites_records "$ROUND" "$c" "$_n"
		fi
		sleep 1
		rec rss_sites_kb "$ROUND" "$c" $(rss_kb)
		stop "$c"
		case $c in
		fentry|kprobe|kprobe-multi)
			# The summary names all sites (megabytes): only its numbers go to the results.
			summary > /tmp/summary
			rec sites_summary_sites "$ROUND" "$c" $(grep -o '"caller":"wqflush_test_flush_sites"' /tmp/summary | wc -l)
			rec sites_lost "$ROUND" "$c" $(grep -o '"lost":[0-9]*' /tmp/summary | tail -n 1 | cut -d: -f2) ;;
		bpftrace)
			rec sites_bt "$ROUND" "$c" $(bt_count wqflush_test_flush_sites) ;;
		esac
		log "round $ROUND $c: sites done"
	done
	# Exactness: a storm of flushes from kthreads sharing CPU 0 with a busy one. The kernel's
	# own statistics run beside it (never in the timed phases: they add two clock reads a run):
	# the probe program's time per run, where the offending path's cost goes.
	for c in $CONFIGS; do
		[ "$c" = none ] && continue
		start "$c"
		echo 1 > /proc/sys/kernel/bpf_stats_enabled
		before=$(module_count storm)
		fire storm "$STORM" || fail "storm trigger"
		rec storm_module "$ROUND" "$c" $(( $(module_count storm) - before ))
		rec storm_prog_ns "$ROUND" "$c" $(prog_ns_per_run "$PID")
		echo 0 > /proc/sys/kernel/bpf_stats_enabled
		stop "$c"
		counted storm wqflush_test_flush_storm
		log "round $ROUND $c: storm done"
	done
	# Memory when every first sighting streams live: the same sites, one every ~1 ms.
	for c in $CONFIGS; do
		case $c in none|bpftrace) continue ;; esac
		start "$c"
		fire sites_paced "$SITES" || fail "sites_paced trigger"
		sleep 2
		rec paced_records "$ROUND" "$c" $(grep -c '"type":"flush"' /tmp/out)
		rec rss_paced_kb "$ROUND" "$c" $(rss_kb)
		stop "$c"
		rec paced_lost "$ROUND" "$c" $(summary | grep -o '"lost":[0-9]*' | tail -n 1 | cut -d: -f2)
		log "round $ROUND $c: paced sites done"
	done
	# The same while vmlinux's debug info loads: the first source-line lookup waits on a FIFO
	# where a -dbg vmlinux would be, until a 300 MB stand-in is fed to it after the last site.
	dbg="/usr/lib/debug/boot/vmlinux-$(uname -r)"
	for c in $CONFIGS; do
		case $c in none|bpftrace) continue ;; esac
		{ mkdir -p "${dbg%/*}" && mkfifo "$dbg"; } || fail "mkfifo"
		start "$c"
		fire sites_paced "$SITES" || fail "sites_paced trigger"
		timeout 120 sh -c "head -c 300000000 /dev/zero >'$dbg'" 2>/dev/null
		sleep 2
		rec stalled_records "$ROUND" "$c" $(grep -c '"type":"flush"' /tmp/out)
		stop "$c"
		rm -f "$dbg"
		rec stalled_lost "$ROUND" "$c" $(summary | grep -o '"lost":[0-9]*' | tail -n 1 | cut -d: -f2)
		log "round $ROUND $c: paced sites behind a loading debug file done"
	done
done
emit log cat $L
emit results cat $R
