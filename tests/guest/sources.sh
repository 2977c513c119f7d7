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

# A vmlinux debug file that takes as long to load as the test likes: a FIFO where a -dbg
# package's vmlinux would be, opened by the first source-line lookup, which waits until the
# test writes to it. Meanwhile 2,000 call sites flush (more first sightings than the ring buffer
# holds): the event loop must keep draining it while the reports wait on their own thread.
stalled_debuginfo() {
	_dbg="/usr/lib/debug/boot/vmlinux-$(uname -r)"
	mkdir -p "${_dbg%/*}" && mkfifo "$_dbg" || exit 1
	wqflush_start stall wqflush || exit 1
	fire sites_paced 2000 || exit 1
	sleep 1
	# The stand-in "loads": 300 MB of zeros, which are no ELF file (no lines, no error).
	# (Bounded: a wqflush that never opened it must fail the test, not hang the guest.)
	timeout 60 sh -c "head -c 300000000 /dev/zero >'$_dbg'" 2>/dev/null
	wqflush_stop stall
	rm -f "$_dbg"
}

install_ko "$KO" || exit 1
load_test_module || exit 1
emit doctor wqflush doctor
watch_triggers
if [ "$BUILD" = matching ]; then
	emit text wqflush check -- sh -c 'echo "inline 1" > /proc/wqflush_test'
	emit kmsg wqflush check --kmsg -- sh -c 'echo "inline 1" > /proc/wqflush_test'
	emit dmesg sh -c 'dmesg | grep "WARNING: CPU: .* at wqflush_test_flush_inline"'
	stalled_debuginfo
fi
true
