# shellcheck shell=sh
# Runs the scenario and reports how it ended: the part of /init (init.sh) and of the systemd
# guest's vmtest.service program (systemd-init.sh) between their set-up and their power-off,
# sourced by both from /lib/vmtest/run.sh (guest::RUN_PATH). Fd 3 is the data port.
# shellcheck source-path=SCRIPTDIR
echo "vmtest: running scenario on $(uname -r)"
echo "vmtest: uptime at scenario start: $(cut -d' ' -f1 /proc/uptime) s"
# In a subshell, so `exit` in the scenario cannot end the caller (PID 1 in the busybox guest).
(
	# shellcheck source=helpers.sh
	. /lib/vmtest/helpers.sh
	# The test's scenario (tests/guest/<test>.sh after the test's variables).
	# shellcheck source=/dev/null
	. /scenario.sh
)
rc=$?
echo "vmtest: scenario exited with $rc"
echo "@@EXIT $rc" >&3
sync
# Let the UART drain before the power goes.
sleep 0.2
