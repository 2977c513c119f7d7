# shellcheck shell=sh
# tests/tests/sources.rs's scenario: the test module's .ko installed where a distribution's
# module would be, then every trigger's flush recorded with its source line.
# Sourced by /init after the helpers (helpers.sh, oracle.sh: emit, fire, wqflush_start, ...).
# From the lines the test puts before this file: KO, the .ko to install (the loaded module's
# own build, or a stale one rebuilt after a one-line change), and BUILD, `matching` or `stale`
# (the text and --kmsg output are checked with the matching build only).

install_ko() {
	mkdir -p "/lib/modules/$(uname -r)/extra" && cp "$1" "/lib/modules/$(uname -r)/extra/wqflush_test.ko"
}
watch_triggers() {
	wqflush_start w wqflush || exit 1
	for t in scheduled long pointer inline; do fire $t || exit 1; done
	# After the first sightings: what resolving their lines left in memory, once wqflush's
	# once-a-second tick has handed freed start-up buffers back.
	sleep 2
	emit rss grep VmRSS "/proc/$(cat /tmp/w.pid)/status"
	wqflush_stop w
}

install_ko "$KO" || exit 1
load_test_module || exit 1
emit doctor wqflush doctor
watch_triggers
if [ "$BUILD" = matching ]; then
	emit text wqflush check -- sh -c 'echo "inline 1" > /proc/wqflush_test'
	emit kmsg wqflush check --kmsg -- sh -c 'echo "inline 1" > /proc/wqflush_test'
	emit dmesg sh -c 'dmesg | grep "WARNING: CPU: .* at wqflush_test_flush_inline"'
fi
true
