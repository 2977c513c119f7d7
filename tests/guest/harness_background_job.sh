# shellcheck shell=sh
# tests/tests/harness.rs's guest_helpers_background_job scenario: the background-job pattern
# scenarios use for the monitor (start, wait for a ready file, stop with SIGTERM).
# Sourced by /init after the helpers (helpers.sh: wait_for_file, emit, stop_bg).
sh -c 'sleep 1; touch /tmp/ready; exec sleep 100' &
pid=$!
wait_for_file /tmp/ready 10 || exit 1
emit ready echo ok
stop_bg "$pid" 5
emit stopped echo $?
