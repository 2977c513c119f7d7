# shellcheck shell=sh
# tests/tests/hostile.rs's scenario: bad environments (not root, kptr_restrict, no kallsyms, no
# BTF), SIGKILL with every method, twins, another tracer's kretprobe, SIGINT, a full disk,
# a small memlock limit and a module unloaded right after it flushed.
# Sourced by /init after the helpers (helpers.sh, oracle.sh: emit, fire, wqflush_start, ...).

load_test_module || exit 1
probes() { grep -cw "$(flush_fn)" /sys/kernel/debug/kprobes/list /sys/kernel/tracing/enabled_functions; true; }

# Not root: an unprivileged user.
echo 'nobody:x:65534:65534:nobody:/:/bin/sh' >> /etc/passwd
emit unprivileged su nobody -s /bin/sh -c 'wqflush --duration 1'
emit unprivileged_doctor su nobody -s /bin/sh -c 'wqflush doctor'
emit root_doctor wqflush doctor

# kernel.kptr_restrict=2: kallsyms addresses are 0 even for root.
echo 2 > /proc/sys/kernel/kptr_restrict
emit kptr_restrict wqflush --duration 1
echo 0 > /proc/sys/kernel/kptr_restrict

# /proc/kallsyms unreadable (here: empty).
mount --bind /dev/null /proc/kallsyms
emit no_kallsyms wqflush --duration 1
umount /proc/kallsyms

# No kernel BTF: fentry and name matching impossible, kprobe still works.
mount --bind /dev/null /sys/kernel/btf/vmlinux
emit no_btf_fentry wqflush --attach fentry --duration 1
emit no_btf_name wqflush --match name --duration 1
wqflush_start no_btf wqflush || exit 1
fire long 1
wqflush_stop no_btf
umount /sys/kernel/btf/vmlinux

# SIGKILL leaves no probe attached, for every method the kernel offers.
emit probes_before probes
# Where fentry cannot attach (Debian's arm64 6.1), what a user who asks for it is told.
emit fentry_attempt wqflush --attach fentry --duration 1
methods="kprobe"
wqflush doctor >/tmp/doctor.txt
grep -q "fentry: available" /tmp/doctor.txt && methods="fentry $methods"
grep -q "kprobe-multi: available" /tmp/doctor.txt && methods="$methods kprobe-multi"
emit methods echo "$methods"
for m in $methods; do
	wqflush_start "kill_$m" wqflush --attach "$m" || exit 1
	emit "probes_live_$m" probes
	kill -KILL "$(cat "/tmp/kill_$m.pid")"; sleep 1
	emit "probes_after_$m" probes
done

# Two instances at once both report.
wqflush_start twin_a wqflush || exit 1
wqflush_start twin_b wqflush --attach kprobe || exit 1
fire long 2
wqflush_stop twin_a
wqflush_stop twin_b

# Beside another tracer's return probe on the flush function (here a second wqflush's kretprobe,
# attached first): the fentry instance names the caller, or says why it cannot.
if grep -q "fentry: available" /tmp/doctor.txt; then
	wqflush_start kret_a wqflush --attach kprobe --waits || exit 1
	wqflush_start kret_b wqflush --attach fentry || exit 1
	fire long 1
	wqflush_stop kret_b
	wqflush_stop kret_a
fi

# SIGINT prints the summary too (wqflush handles it even where a shell ignored it).
wqflush_start sigint wqflush || exit 1
fire pointer 3
kill -INT "$(cat /tmp/sigint.pid)"
wqflush_stop sigint

# A full disk on the JSON sink: an error message and exit 1.
wqflush --json --ready-file /tmp/full.ready >/dev/full 2>/tmp/full.err &
full=$!
wait_for_file /tmp/full.ready 60 || exit 1
fire long 1
emit full.status stop_bg $full 20
emit full.err cat /tmp/full.err

# Before 5.11 BPF maps are charged to RLIMIT_MEMLOCK (64 KiB by default there): wqflush must
# still attach and report under that limit.
# shellcheck disable=SC2016 # the inner shell's $(ulimit -l)
emit memlock sh -c 'ulimit -l 64 && echo "memlock: $(ulimit -l)" &&
	exec wqflush check --json -- sh -c "echo long 1 > /proc/wqflush_test"'

# A module loaded after wqflush started (it re-reads kallsyms on the module_load tracepoint),
# that flushes and is unloaded right away, is still named: its symbols were read at its load
# and are kept after it went. Its exit function flushes too ('exit'): it must be named as the
# kernel names it, not by its alias cleanup_module. The re-read must have reached the module's
# lines first: they come last in /proc/kallsyms, which takes 1.5 s to read on 7.x under TCG.
rmmod wqflush_test || exit 1
wqflush_start unload wqflush || exit 1
insmod /lib/wqflush_test.ko || exit 1
sleep 4
fire long 1 && fire exit 1 && rmmod wqflush_test
wqflush_stop unload
true
