# shellcheck shell=sh
# tests/tests/fleet.rs's scenario: the fleet and CI features (ignore list, --kmsg, --metrics)
# under a flood, 10000 call sites and a self-deadlocking work item.
# Sourced by /init after the helpers (helpers.sh, oracle.sh: emit, fire, wqflush_start, ...).

load_test_module || exit 1
ifconfig lo 127.0.0.1 up
printf '# a known caller, silenced\nwqflush_test:wqflush_test_flush_long   # trailing comment\n' > /tmp/ignore
printf 'ok_caller\nbad caller\n' > /tmp/bad-ignore

emit bad_ignore wqflush --ignore /tmp/bad-ignore --duration 1
emit check_ignored wqflush check --ignore /tmp/ignore -- sh -c 'echo "long 1" > /proc/wqflush_test'

wqflush_start fleet wqflush --kmsg --ignore /tmp/ignore --metrics 19100 || exit 1
fire pointer 2
fire long 3
fire worker_other 2
# The flood goes through the pointer: since 6.6 the kernel itself dumps a stack for every
# flush_scheduled_work()/flush_workqueue(system_long_wq) it compiled, which would flood the log.
fire pointer 200000
fire sites 10000
sleep 3
emit metrics wget -q -O - http://127.0.0.1:19100/metrics
emit metrics_404 wget -q -O - http://127.0.0.1:19100/other
fire worker_self
sleep 1
wqflush_stop fleet
emit dmesg dmesg
emit counts cat /proc/wqflush_test
true
