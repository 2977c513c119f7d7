#!/bin/busybox sh
# The busybox guest's /init (tests/src/guest.rs, tests/README.md "Guest interface"): mounts the
# pseudo file systems, opens the data port once as fd 3 (closing a tty with a signal pending
# drops unsent output), runs the scenario (run.sh) and powers off.
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
exec 3>/dev/ttyS1
# shellcheck source=run.sh
. /lib/vmtest/run.sh
poweroff -f
echo o > /proc/sysrq-trigger
