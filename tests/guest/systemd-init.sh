#!/bin/bash
# The systemd guest's vmtest.service program, /usr/lib/vmtest/run-scenario
# (tests/src/systemd_guest.rs): the busybox guest's /init (init.sh) minus the mounts, which
# systemd made. Output goes to the architecture's console (what the unit's own output would not
# reach: it goes to the journal), fd 3 to its data channel; the scenario runs in bash.
# shellcheck source-path=SCRIPTDIR
# ARCH, CONSOLE, DATA_TTY (and an empty PRELOAD), written by the harness (guest::arch_vars).
# shellcheck source=/dev/null
. /lib/vmtest/arch.sh
exec </dev/null >"$CONSOLE" 2>&1
# A virtio console (arm64's data channel) opens once its driver has set the port up: try in a
# subshell first (a failed `exec 3>` ends the script), and only on the device node.
left=100
until [ -c "$DATA_TTY" ] && (exec 3>"$DATA_TTY") 2>/dev/null || [ "$left" -le 0 ]; do
	left=$((left - 1))
	sleep 0.1
done
exec 3>"$DATA_TTY"
# hvc sets its terminal mode anew on every open: raw once, on the descriptor that stays open.
case $DATA_TTY in
/dev/hvc*) stty raw -echo <&3 ;;
esac
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin HOME=/root
# shellcheck source=run.sh
. /lib/vmtest/run.sh
# -ff: reboot(2) at once, stopping no unit; nothing of the guest is kept.
systemctl poweroff -ff
echo o > /proc/sysrq-trigger
