#!/bin/busybox sh
# The busybox guest's /init (tests/src/guest.rs, tests/README.md "Guest interface"): mounts the
# pseudo file systems, loads the modules the data channel needs, opens it once as fd 3 (closing
# a tty with a signal pending drops unsent output), runs the scenario (run.sh) and powers off.
# busybox's ash, checked as POSIX sh.
# shellcheck shell=sh source-path=SCRIPTDIR
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
# ARCH, DATA_TTY and PRELOAD, written by the harness (guest::arch_vars).
# shellcheck source=/dev/null
. /lib/vmtest/arch.sh
for _m in $PRELOAD; do
	insmod "$_m" || echo "vmtest: insmod $_m failed" >&2
done
# A virtio console (arm64's data channel) can be opened once its driver has set the port up,
# which may be after its device node appeared (6.1: "No such device"). A failed `exec 3>` would
# end this shell, so try the open in a subshell first, and only on the device node: `>` on a
# missing one would create a plain file.
_left=100
until [ -c "$DATA_TTY" ] && (exec 3>"$DATA_TTY") 2>/dev/null || [ "$_left" -le 0 ]; do
	_left=$((_left - 1))
	sleep 0.1
done
exec 3>"$DATA_TTY"
# hvc sets its terminal mode anew on every open: set raw mode once, on the descriptor that stays
# open, so the data arrives as written.
case $DATA_TTY in
/dev/hvc*) stty raw -echo <&3 ;;
esac
# shellcheck source=run.sh
. /lib/vmtest/run.sh
poweroff -f
echo o > /proc/sysrq-trigger
