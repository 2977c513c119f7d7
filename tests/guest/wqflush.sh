# shellcheck shell=sh
# tests/tests/wqflush.rs's scenario: three watch windows (fentry, kprobe, matching by name),
# each firing its triggers, then `wqflush check`'s exit codes and `--scan`'s list of the test
# module's static sites, all under the oracle.
# Sourced by /init after the helpers (helpers.sh, oracle.sh: emit, fire, wqflush_start, ...).
# FIRE_FENTRY, FIRE_KPROBE and FIRE_NAME, what each window fires on this kernel
# ("TRIGGER:COUNT ..."), and FENTRY (`fentry`, or `kprobe` where the kernel cannot attach
# fentry: Debian's arm64 6.1) come from the lines the test puts before this file.

# fire_all "TRIGGER:COUNT ...": fires each trigger COUNT times, in order.
fire_all() {
	for _f in $1; do
		fire "${_f%:*}" "${_f#*:}"
	done
}

load_test_module || exit 1
oracle_start || exit 1

wqflush_start fentry wqflush --attach "$FENTRY" || exit 1
fire_all "$FIRE_FENTRY"
wqflush_stop fentry

wqflush_start kprobe wqflush --attach kprobe || exit 1
fire_all "$FIRE_KPROBE"
wqflush_stop kprobe

wqflush_start name wqflush --attach "$FENTRY" --match name || exit 1
fire_all "$FIRE_NAME"
wqflush_stop name

# --scan finds a loaded module's file in the module tree, where `make modules_install` puts it.
mkdir -p "/lib/modules/$(uname -r)/extra" && cp /lib/wqflush_test.ko "/lib/modules/$(uname -r)/extra/"
emit check_flush wqflush check --scan --json -- sh -c 'echo "long 1" > /proc/wqflush_test'
emit check_scan_text wqflush check --scan -- true
emit check_clean wqflush check -- sh -c 'echo "own 2" > /proc/wqflush_test'
emit check_failed wqflush check -- false
emit check_missing wqflush check -- /no/such/command

oracle_stop
emit counts cat /proc/wqflush_test
emit release cat /proc/sys/kernel/osrelease
emit srcversion cat /sys/module/wqflush_test/srcversion
oracle_dump
