#!/bin/busybox sh
# PID 1 of the kernel-matrix guest (copied to /init by scripts/kernel-matrix.sh).
# Mounts what imdstrace needs, loads modules, runs /scenario.sh, prints the result marker the
# host greps for, powers off. Runs under busybox sh: unqualified names here are busybox applets.
# The scenario itself runs under dash/bash, where PATH finds the real ip, tc and nsenter.

bb=/bin/busybox
$bb mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1

$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mkdir -p /dev/pts /dev/shm
$bb mount -t devpts devpts /dev/pts 2>/dev/null
$bb mount -t tmpfs -o mode=0755 tmpfs /run
$bb mount -t tmpfs -o mode=1777 tmpfs /tmp
$bb mount -t tmpfs tmpfs /dev/shm
$bb mount -t cgroup2 cgroup2 /sys/fs/cgroup
$bb mount -t bpf bpf /sys/fs/bpf
$bb mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null ||
	echo "guest: tracefs not mounted"
$bb mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
$bb mkdir -p /run/netns /var/tmp
$bb hostname -F /etc/hostname 2>/dev/null

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin
export HOME=/root TERM=dumb LANG=C.UTF-8
# Where the project's files are in the guest (see tests/kernel/README.md).
export BUILD_DIR=/build REPO_DIR=/repo IMDSTRACE=/usr/bin/imdstrace
export KERNEL_MATRIX=1 IP=/usr/sbin/ip TC=/usr/sbin/tc NSENTER=/usr/bin/nsenter
[ -x /usr/bin/imds-emulator ] && export IMDS_EMULATOR=/usr/bin/imds-emulator

finish() {
	echo "IMDSTRACE-MATRIX-RESULT: $1"
	$bb sync
	$bb poweroff -f
	# poweroff failed: make PID 1 exit, the kernel panics, panic=-1 + -no-reboot ends qemu.
	exit 1
}

/usr/sbin/ip link set lo up || finish "FAIL rc=90 (lo)"

echo "guest: kernel $($bb uname -r)"
t0=$($bb cut -d' ' -f1 /proc/uptime)
mods_failed=""
for m in $($bb cat /etc/kernel-matrix/modules 2>/dev/null); do
	$bb modprobe "$m" 2>/dev/null || mods_failed="$mods_failed $m"
done
t1=$($bb cut -d' ' -f1 /proc/uptime)
echo "guest: modules loaded ($t0 s -> $t1 s since boot)${mods_failed:+, FAILED:$mods_failed}"
[ -z "$mods_failed" ] || finish "FAIL rc=91 (modprobe:$mods_failed)"

# BPF sanity, independent of the scenario: the program types imdstrace uses, and (when the
# host could compile it) a tp_btf program with a CO-RE relocation plus a cgroup_skb program,
# loaded and attached for real.
if [ -x /usr/sbin/bpftool ]; then
	probe=$(/usr/sbin/bpftool feature probe kernel 2>/dev/null |
		$bb grep -E "eBPF program_type (tracing|cgroup_skb|sched_cls|raw_tracepoint) |map_type ringbuf ")
	echo "$probe" | $bb sed 's/^/guest: bpftool: /'
	for t in tracing cgroup_skb sched_cls; do
		echo "$probe" | $bb grep -q "program_type $t is available" ||
			finish "FAIL rc=92 (program type $t unavailable)"
	done
	obj=/usr/lib/kernel-matrix/probe.bpf.o
	if [ -f "$obj" ]; then
		$bb mkdir -p /sys/fs/bpf/km /sys/fs/bpf/kmmaps
		/usr/sbin/bpftool prog loadall "$obj" /sys/fs/bpf/km pinmaps /sys/fs/bpf/kmmaps ||
			finish "FAIL rc=93 (loading $obj: tp_btf/cgroup_skb/tc)"
		/usr/sbin/bpftool cgroup attach /sys/fs/cgroup egress pinned /sys/fs/bpf/km/km_cgroup_egress ||
			finish "FAIL rc=93 (cgroup_skb attach)"
		/usr/sbin/bpftool cgroup detach /sys/fs/cgroup egress pinned /sys/fs/bpf/km/km_cgroup_egress
		echo "guest: probe.bpf.o: tp_btf/kfree_skb (CO-RE skb->len), cgroup_skb/egress, tc loaded; cgroup_skb attached to /sys/fs/cgroup"
		$bb rm -rf /sys/fs/bpf/km /sys/fs/bpf/kmmaps
	fi
fi
[ -r /sys/kernel/btf/vmlinux ] || finish "FAIL rc=94 (no /sys/kernel/btf/vmlinux)"

guest_timeout=200
for arg in $($bb cat /proc/cmdline); do
	case "$arg" in imdstrace.guest_timeout=*) guest_timeout=${arg#*=} ;; esac
done

cd /
# The scenario runs as a child with its own watchdog: a hang still yields a marker. The
# deadline counts from boot, like the host's qemu timeout (which is 30 s longer): booting,
# modules and the BPF probe take tens of seconds under TCG, arm64 most.
/bin/sh /scenario.sh &
scenario=$!
left=$((guest_timeout - $($bb cut -d. -f1 /proc/uptime)))
[ "$left" -ge 10 ] || left=10
(
	$bb sleep "$left"
	echo "guest: scenario still running ${guest_timeout} s after boot, killing it"
	$bb kill -KILL "$scenario" 2>/dev/null
) &
watchdog=$!
wait "$scenario"
rc=$?
$bb kill "$watchdog" 2>/dev/null
t2=$($bb cut -d' ' -f1 /proc/uptime)
echo "guest: scenario exited rc=$rc at $t2 s since boot"

if [ "$rc" -eq 0 ]; then
	finish PASS
else
	finish "FAIL rc=$rc"
fi
