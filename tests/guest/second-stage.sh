#!/bin/sh
# rdinit= of the boot that finishes a foreign systemd guest root (tests/src/systemd_stage2.rs):
# the root debootstrap --foreign made on the host is this initramfs; this runs its second stage
# on the guest's own CPU, then writes the finished tree as a tar onto the raw virtio disk
# (/dev/vda) for the host to unpack, and powers off. The harness puts the virtio_blk module (when
# the kernel builds it as one) beside this script; the script's directory is left out of the tar.
# The script's lines on the console tell the host how it went.
# shellcheck shell=sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
here=/vmtest-second-stage
fail() {
	echo "vmtest: second stage failed: $*"
	echo o >/proc/sysrq-trigger
	sleep 60
	exit 1
}
echo "vmtest: debootstrap second stage on $(uname -r)"
/debootstrap/debootstrap --second-stage || fail "debootstrap --second-stage"
mount -t proc proc /proc || fail "mounting /proc"
mount -t sysfs sysfs /sys || fail "mounting /sys"
for ko in "$here"/*.ko; do
	[ -e "$ko" ] || continue
	insmod "$ko" || fail "insmod $ko"
done
# The disk's node, on a devtmpfs of its own: the tree's /dev keeps debootstrap's static nodes.
mount -t devtmpfs devtmpfs /mnt || fail "mounting devtmpfs"
left=100
until [ -b /mnt/vda ] || [ "$left" -le 0 ]; do
	left=$((left - 1))
	sleep 0.1
done
rm -f /var/cache/apt/archives/*.deb
# Only the root's own file system: /proc, /sys and /mnt are mount points, packed empty.
tar -C / --one-file-system --numeric-owner --exclude=."$here" -cf /mnt/vda . ||
	fail "writing the tree to /mnt/vda"
sync
echo "vmtest: second stage done"
umount /mnt
echo o >/proc/sysrq-trigger
sleep 60
