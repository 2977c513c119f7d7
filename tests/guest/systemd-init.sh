#!/bin/bash
# The systemd guest's vmtest.service program, /usr/lib/vmtest/run-scenario
# (tests/src/systemd_guest.rs): the busybox guest's /init (init.sh) minus the mounts, which
# systemd made. The console is ttyS0 (what the unit's own output would not reach: it goes to
# the journal); the scenario runs in bash.
# shellcheck source-path=SCRIPTDIR
exec </dev/null >/dev/ttyS0 2>&1 3>/dev/ttyS1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin HOME=/root
# shellcheck source=run.sh
. /lib/vmtest/run.sh
# -ff: reboot(2) at once, stopping no unit; nothing of the guest is kept.
systemctl poweroff -ff
echo o > /proc/sysrq-trigger
