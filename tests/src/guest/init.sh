#!/bin/busybox sh
# Guest init of the rbufnic QEMU harness (baked into the initramfs; see guest/initramfs.rs).
# Kernel command line: rbn.nonce=<marker nonce> rbn.config=<per-run config under /host>.
# The per-run config sets RBN_VFIO (BDFs to bind to vfio-pci), RBN_KMODS (kernel NIC
# drivers to load afterwards), RBN_HUGEPAGES, RBN_CWD, RBN_CMD (the command's script) and
# exports the command's environment.
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin:/usr/sbin
export HOME=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/hugepages
mount -t tmpfs tmpfs /dev/shm

NONCE=
CONFIG=
for word in $(cat /proc/cmdline); do
	case "$word" in
	rbn.nonce=*) NONCE="${word#rbn.nonce=}" ;;
	rbn.config=*) CONFIG="${word#rbn.config=}" ;;
	esac
done

fail() {
	echo "RBUFNIC $NONCE SETUP-FAILED $*"
	dmesg | tail -n 40
	poweroff -f
	sleep 10
}

# load NAME: insmod NAME and its dependencies, in the order baked into /modules/NAME.order.
load() {
	[ -f "/modules/$1.order" ] || return 1
	for m in $(cat "/modules/$1.order"); do
		[ -d "/sys/module/$m" ] || insmod "/modules/$m.ko" || return 1
	done
}

# bind_vfio BDF: hand the PCI function to vfio-pci, taking it from any driver that has it.
bind_vfio() {
	dev="/sys/bus/pci/devices/$1"
	[ -d "$dev" ] || { echo "no PCI device $1"; return 1; }
	echo vfio-pci >"$dev/driver_override" || return 1
	if [ -e "$dev/driver" ]; then
		echo "$1" >"$dev/driver/unbind" || return 1
	fi
	echo "$1" >/sys/bus/pci/drivers_probe
	[ "$(basename "$(readlink "$dev/driver")")" = vfio-pci ]
}

for m in virtio_pci 9pnet_virtio 9p vfio vfio_iommu_type1 vfio_pci; do
	load "$m" || fail "load module $m"
done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 host0 /host || fail "mount 9p host0 on /host"
[ -f "$CONFIG" ] || fail "read config $CONFIG"
. "$CONFIG" || fail "source config $CONFIG"

for bdf in $RBN_VFIO; do
	bind_vfio "$bdf" || fail "bind $bdf to vfio-pci"
done
for m in $RBN_KMODS; do
	load "$m" || fail "load module $m"
done
if [ "${RBN_HUGEPAGES:-0}" -gt 0 ]; then
	echo "$RBN_HUGEPAGES" >/proc/sys/vm/nr_hugepages
	got=$(cat /proc/sys/vm/nr_hugepages)
	[ "$got" = "$RBN_HUGEPAGES" ] || fail "hugepages: asked for $RBN_HUGEPAGES, got $got"
	mount -t hugetlbfs hugetlbfs /dev/hugepages || fail "mount hugetlbfs"
fi
cd "$RBN_CWD" || fail "cd $RBN_CWD"

echo "RBUFNIC $NONCE BEGIN"
sh "$RBN_CMD" </dev/null
rc=$?
echo "RBUFNIC $NONCE EXIT $rc"
poweroff -f
sleep 10
