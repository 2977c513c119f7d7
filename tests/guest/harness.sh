# shellcheck shell=sh
# tests/tests/harness.rs's module_and_oracle scenario: the four original triggers under the
# oracle, and the module's counts.
# Sourced by /init after the helpers (helpers.sh, oracle.sh: emit, fire, wqflush_start, ...).

load_test_module || exit 1
oracle_start || exit 1
echo "scheduled 3" > /proc/wqflush_test
echo "long 2" > /proc/wqflush_test
echo "pointer 4" > /proc/wqflush_test
echo "own 5" > /proc/wqflush_test
oracle_stop
emit counts cat /proc/wqflush_test
oracle_dump
