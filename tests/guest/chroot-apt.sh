#!/bin/sh
# Runs on the host, not in a guest (tests/src/module.rs, add_cross_compiler): installs the
# packages given as arguments into the trixie build chroot $R from the Debian mirror $MIRROR.
# Started in a private mount namespace (unshare --mount): the sources list that names the
# mirror and apt's lists live in a tmpfs that vanishes with it, and nothing stays mounted.
set -e
mount -t proc proc "$R/proc"
mount --bind /etc/resolv.conf "$R/etc/resolv.conf"
mkdir -p "$R/run/vmtest-apt"
mount -t tmpfs tmpfs "$R/run/vmtest-apt"
mkdir -p "$R/run/vmtest-apt/lists/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR trixie main" \
	>"$R/run/vmtest-apt/sources.list"
apt_get() {
	chroot "$R" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
		apt-get -q \
		-o Dir::Etc::SourceList=/run/vmtest-apt/sources.list \
		-o Dir::Etc::SourceParts=/run/vmtest-apt/none \
		-o Dir::State::Lists=/run/vmtest-apt/lists \
		-o Acquire::Languages=none \
		-o APT::Sandbox::User=root \
		"$@"
}
apt_get update
apt_get install -y --no-install-recommends "$@"
apt_get clean
