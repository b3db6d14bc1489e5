#!/bin/sh
# testbed.sh - build and remove imdstrace test topologies (network namespaces + cgroups).
#
# POSIX sh (also runs under busybox ash). Everything lives in network namespaces named
# <prefix>-imds, <prefix>-node, <prefix>-podN[-c1] and in <cgroup2>/<prefix>/; the prefix must
# match imdst-[a-z0-9]+ so nothing else is ever touched. Never configures the root namespace.
#
#   testbed.sh up    --prefix P --hop-limit N [--pods N] [--pod vpc|eni2|bridge|nested|hostnet ...]
#                    [--kubepods systemd|cgroupfs] [--runtime containerd|crio|docker]
#                    [--pod-logs-dir DIR]
#                    [--emulator PATH|none] [--cgroup-root DIR] [--tokens optional|required]
#                    [--endpoint enabled|disabled] [--rate-limit RPS]
#                    [--policy-drop I] [--no-route I] [--ttl-datapath I] [--ttl-datapath-bin PATH]
#   testbed.sh emulator --prefix P [--hop-limit N] [--tokens ..] [--endpoint ..]
#                    [--rate-limit RPS] [--emulator PATH]      (restart the emulator)
#   testbed.sh exec  --prefix P (--pod I [--container] | --host | --imds) -- CMD [ARGS...]
#   testbed.sh inject   --prefix P (policy-drop|no-route|ttl-datapath) I
#   testbed.sh uninject --prefix P (policy-drop|no-route|ttl-datapath) I
#   testbed.sh down  --prefix P
#   testbed.sh sweep
#   testbed.sh list
#
# Environment: IP (iproute2 command, default ip), NSENTER (default nsenter, may be
# 'busybox nsenter'), IPTABLES / IP6TABLES (default iptables / ip6tables; needed for bridge and
# nested pods and --policy-drop), SS (default ss; down destroys leftover TCP sockets with it),
# IMDSTRACE_TESTBED_STATE (state root, default /run/imdstrace-testbed), IMDS_EMULATOR (emulator
# used when --emulator is not given), TTL_DATAPATH (ttl-datapath binary when
# --ttl-datapath-bin is not given), TESTBED_QUIET=1 (no notes).
# See tests/testbed/README.md for topologies, state files and what each injection does.

# A && B || C below is deliberate (B is a test); the sh -c scripts expand in the inner shell.
# IP, NSENTER and IPTABLES may be multi-word (e.g. NSENTER='busybox nsenter'), hence unquoted.
# shellcheck disable=SC2015,SC2016,SC2086
set -u

IP=${IP:-ip}
NSENTER=${NSENTER:-nsenter}
IPTABLES=${IPTABLES:-iptables}
IP6TABLES=${IP6TABLES:-ip6tables}
SS=${SS:-ss}
STATE_ROOT=${IMDSTRACE_TESTBED_STATE:-/run/imdstrace-testbed}
NETNS_DIR=/run/netns

# fixed addressing (DESIGN.md "Testbed conventions")
IMDS_IP4=169.254.169.254
IMDS_IP6=fd00:ec2::254
IMDS_LINK_IP4=198.18.0.1
NODE_IP4=198.18.0.2
IMDS_LINK_IP6=fd00:198:18::1
NODE_IP6=fd00:198:18::2
POD_GW4=169.254.1.1
POD_GW6=fe80::1
# bridge pods (kindnet / docker style): cbr0 in the node netns, masqueraded
BR_NET4=198.18.64.0/24
BR_GW4=198.18.64.1
BR_NET6=fd00:198:18:64::/64
BR_GW6=fd00:198:18:64::1
# eni2 pods (VPC CNI, secondary ENI): 198.18.2.0/24, routed out of uplink1 by policy routing
# (ip rule from <pod IP> lookup ENI2_TABLE), uplink1 = 198.18.4.2/24 toward the IMDS namespace
ENI2_NET4=198.18.2.0/24
ENI2_LINK_IMDS4=198.18.4.1
ENI2_LINK_NODE4=198.18.4.2
ENI2_TABLE=2
ENI2_RULE_PREF=1536
# inner containers of nested pods: 198.19.I.0/24 and fd00:198:19:I::/64 behind docker0 in the pod
INNER_NET4_ALL=198.19.0.0/16
NODE_NAME=ip-198-18-0-2.ec2.internal
MAX_PODS=200
TTL_DATAPATH_PRIO=1
NO_ROUTE_PREF_BASE=1000

die() {
    echo "testbed: $*" >&2
    exit 1
}

usage_die() {
    echo "testbed: $*" >&2
    echo "testbed: see 'testbed.sh help'" >&2
    exit 2
}

note() {
    [ -n "${TESTBED_QUIET:-}" ] || echo "testbed: $*" >&2
}

usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
}

snooze() {
    sleep 0.1 2>/dev/null || sleep 1
}

is_uint() {
    case ${1:-} in
        '' | *[!0-9]*) return 1 ;;
    esac
    return 0
}

need_root() {
    _uid=$(id -u 2>/dev/null) || die "cannot determine the user id ('id' missing)"
    [ "$_uid" = 0 ] || die "must run as root (network namespaces and cgroups)"
}

need_tools() {
    command -v "${IP%% *}" >/dev/null 2>&1 || die "'$IP' not found: install iproute2 or set IP=/path/to/ip"
    $IP netns list >/dev/null 2>&1 || die "'$IP netns' does not work: need iproute2 (busybox ip lacks netns); set IP=..."
    command -v "${NSENTER%% *}" >/dev/null 2>&1 || die "'$NSENTER' not found: install util-linux or set NSENTER=/path/to/nsenter"
    command -v jq >/dev/null 2>&1 || die "jq not found: install jq (the pod mappings are written with it)"
}

check_prefix() {
    case ${1:-} in
        imdst-*) ;;
        *) usage_die "bad prefix '${1:-}': must match imdst-[a-z0-9]+" ;;
    esac
    _rest=${1#imdst-}
    case $_rest in
        '' | *[!a-z0-9]*) usage_die "bad prefix '$1': must match imdst-[a-z0-9]+" ;;
    esac
    [ ${#1} -le 40 ] || usage_die "bad prefix '$1': longer than 40 characters"
}

# ip in a netns, failing loudly
ipn() {
    _ns=$1
    shift
    $IP -n "$_ns" "$@" || die "command failed: ip -n $_ns $*"
}

# run a command in a netns (nsenter keeps /sys, cgroup2 and bpffs visible)
nsx() {
    _ns=$1
    shift
    $NSENTER --net="$NETNS_DIR/$_ns" -- "$@"
}

# write a sysctl of a netns: /proc/sys/net resolves to the netns of the opener
ns_sysctl() {
    nsx "$1" sh -c 'echo "$2" > "/proc/sys/$1"' sh "$2" "$3" ||
        die "cannot set $2=$3 in netns $1"
}

find_cgroup2() {
    while read -r _dev _mnt _fs _rest; do
        if [ "$_fs" = cgroup2 ]; then
            echo "$_mnt"
            return 0
        fi
    done </proc/self/mounts
    return 1
}

# netns of a prefix, one per line
prefix_netns() {
    $IP netns list 2>/dev/null | while read -r _n _r; do
        case $_n in
            "$1"-imds | "$1"-node | "$1"-pod[0-9]*) echo "$_n" ;;
        esac
    done
}

have_ipv6() {
    [ -d /proc/sys/net/ipv6 ]
}

# ---------------------------------------------------------------------------------------------
# emulator

# start_daemon WHAT NETNS BASE BIN ARGS...: run BIN in NETNS in the background with
# --pidfile BASE.pid --ready-file BASE.ready (log BASE.log), wait until it is ready
start_daemon() {
    _what=$1
    _dns=$2
    _base=$3
    _dbin=$4
    shift 4
    $NSENTER --net="$NETNS_DIR/$_dns" -- "$_dbin" "$@" --pidfile "$_base.pid" --ready-file "$_base.ready" \
        </dev/null >>"$_base.log" 2>&1 &
    _bg=$!
    _wait=0
    while [ ! -f "$_base.ready" ]; do
        if ! pid_alive "$_bg"; then
            tail -n 5 "$_base.log" >&2 2>/dev/null
            die "$_what exited during startup (log: $_base.log)"
        fi
        _wait=$((_wait + 1))
        [ $_wait -lt 100 ] || die "$_what not ready after 10s (log: $_base.log)"
        snooze
    done
}

# find_build_tool NAME: a testbed program in this checkout's build tree, else on PATH
find_build_tool() {
    _sd=$(cd "$(dirname "$0")" 2>/dev/null && pwd) || _sd=.
    for _c in "$_sd/../build/tests/testbed/$1" "$_sd/../build/$1"; do
        if [ -x "$_c" ]; then
            echo "$_c"
            return 0
        fi
    done
    command -v "$1" 2>/dev/null
}

find_emulator() {
    if [ -n "${IMDS_EMULATOR:-}" ]; then
        echo "$IMDS_EMULATOR"
        return 0
    fi
    find_build_tool imds-emulator
}

# true while PID runs (a zombie whose parent has not reaped it yet counts as gone)
pid_alive() {
    kill -0 "$1" 2>/dev/null || return 1
    _st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
    case $_st in Z* | X*) return 1 ;; esac
    return 0
}

# pid of the running emulator of state dir $1, or nothing; verifies the process is ours
emulator_pid() {
    [ -f "$1/emulator.pid" ] || return 1
    _p=$(cat "$1/emulator.pid" 2>/dev/null)
    is_uint "$_p" || return 1
    [ -r "/proc/$_p/cmdline" ] || return 1
    # our emulator was started with --pidfile <state dir>/emulator.pid
    tr '\000' ' ' <"/proc/$_p/cmdline" 2>/dev/null | grep -F -q -- "$1/emulator.pid" || return 1
    echo "$_p"
}

stop_emulator() {
    _ep=$(emulator_pid "$1") || {
        rm -f "$1/emulator.pid" "$1/emulator.ready"
        return 0
    }
    kill -TERM "$_ep" 2>/dev/null
    _i=0
    while pid_alive "$_ep" && [ $_i -lt 30 ]; do
        snooze
        _i=$((_i + 1))
    done
    kill -KILL "$_ep" 2>/dev/null
    rm -f "$1/emulator.pid" "$1/emulator.ready"
    return 0
}

# start_emulator STATE_DIR IMDS_NS   (reads the emulator config files in STATE_DIR)
start_emulator() {
    _s=$1
    _ens=$2
    _emu=$(cat "$_s/emulator_path")
    [ "$_emu" = none ] && return 0
    [ -x "$_emu" ] || die "emulator '$_emu' is not executable"
    rm -f "$_s/emulator.pid" "$_s/emulator.ready"
    set -- --hop-limit "$(cat "$_s/hop_limit")" --tokens "$(cat "$_s/tokens")" \
        --endpoint "$(cat "$_s/endpoint")" --rate-limit "$(cat "$_s/rate_limit")" \
        --listen "$IMDS_IP4:80"
    have_ipv6 && set -- "$@" --listen "[$IMDS_IP6]:80"
    start_daemon emulator "$_ens" "$_s/emulator" "$_emu" "$@"
    note "emulator pid $(cat "$_s/emulator.pid") in netns $_ens (hop limit $(cat "$_s/hop_limit"))"
}

# ---------------------------------------------------------------------------------------------
# state


# ---------------------------------------------------------------------------------------------
# per-pod state: <state>/podI/<key>, one value per file

pset() {
    echo "$4" >"$1/pod$2/$3" || die "cannot write $1/pod$2/$3"
}

pget() {
    cat "$1/pod$2/$3" 2>/dev/null
}

# a pod number given on the command line: 1..number of pods of the testbed in state dir $2
check_pod_index() {
    is_uint "$1" && [ "$1" -ge 1 ] || usage_die "bad pod number '$1'"
    [ -d "$2/pod$1" ] || die "no pod $1 in this testbed"
}

# 32-bit string hash in plain sh (no cksum in minimal busybox builds); makes pod UIDs unique
# per prefix
str_hash() {
    _h=5381
    _str=$1
    while [ -n "$_str" ]; do
        _rest=${_str#?}
        _ch=${_str%"$_rest"}
        _h=$(((_h * 33 + $(printf '%d' "'$_ch")) % 4294967296))
        _str=$_rest
    done
    echo "$_h"
}

# hex_id SEED NWORDS: NWORDS*8 pseudo-random hex digits (container IDs), deterministic in SEED
hex_id() {
    _x=$1
    _n=$2
    _o=
    while [ "$_n" -gt 0 ]; do
        _x=$(((_x * 1103515245 + 12345) % 2147483648))
        _a=$((_x >> 15))
        _x=$(((_x * 1103515245 + 12345) % 2147483648))
        _b=$((_x >> 15))
        _o=$_o$(printf '%04x%04x' "$_a" "$_b")
        _n=$((_n - 1))
    done
    echo "$_o"
}

# pod_suffix SEED: 5 characters from Kubernetes' name alphabet (the random part of a pod name)
pod_suffix() {
    _x=$1
    _o=
    _k=0
    while [ $_k -lt 5 ]; do
        _x=$(((_x * 1103515245 + 12345) % 2147483648))
        _o=$_o$(printf '%s' bcdfghjklmnpqrstvwxz2456789 | cut -c$(((_x >> 16) % 27 + 1)))
        _k=$((_k + 1))
    done
    echo "$_o"
}

# iptables / ip6tables in a netns
nf4() {
    _ns=$1
    shift
    nsx "$_ns" $IPTABLES -w "$@" || die "command failed in netns $_ns: $IPTABLES $*"
}

nf6() {
    _ns=$1
    shift
    nsx "$_ns" $IP6TABLES -w "$@" || die "command failed in netns $_ns: $IP6TABLES $*"
}

need_iptables() {
    command -v "${IPTABLES%% *}" >/dev/null 2>&1 ||
        die "$1 needs iptables: install it or set IPTABLES=/path/to/iptables"
}

# IPv6 NAT (ip6tables) available? Bridge pods and inner containers are IPv4-only without it.
have_nat6() {
    command -v "${IP6TABLES%% *}" >/dev/null 2>&1
}

# owned_pid PIDFILE: the PID in PIDFILE if that process runs and was started with PIDFILE on its
# command line (so it is ours); nothing otherwise
owned_pid() {
    [ -f "$1" ] || return 1
    _op=$(cat "$1" 2>/dev/null)
    is_uint "$_op" || return 1
    [ -r "/proc/$_op/cmdline" ] || return 1
    tr '\000' ' ' <"/proc/$_op/cmdline" 2>/dev/null | grep -F -q -- "$1" || return 1
    echo "$_op"
}

# stop_owned PIDFILE [EXTRA FILES...]: TERM, wait up to 3s, KILL; removes the files
stop_owned() {
    _pf=$1
    _sp=$(owned_pid "$_pf") || _sp=
    if [ -n "$_sp" ]; then
        kill -TERM "$_sp" 2>/dev/null
        _w2=0
        while pid_alive "$_sp" && [ $_w2 -lt 30 ]; do
            snooze
            _w2=$((_i + 1))
        done
        kill -KILL "$_sp" 2>/dev/null
    fi
    rm -f "$@"
    return 0
}

find_ttl_datapath() {
    _s=$1
    if [ -f "$_s/ttl_datapath_bin" ]; then
        cat "$_s/ttl_datapath_bin"
        return 0
    fi
    if [ -n "${TTL_DATAPATH:-}" ]; then
        echo "$TTL_DATAPATH"
        return 0
    fi
    _emu=$(cat "$_s/emulator_path" 2>/dev/null)
    if [ -n "$_emu" ] && [ "$_emu" != none ] && [ -x "$(dirname "$_emu")/ttl-datapath" ]; then
        echo "$(dirname "$_emu")/ttl-datapath"
        return 0
    fi
    find_build_tool ttl-datapath
}

# ---------------------------------------------------------------------------------------------
# state files

# env_pod S I: the PODi_* lines of env
env_pod() {
    _s=$1
    _i=$2
    _pd=$_s/pod$_i
    _cgr=$(cat "$_s/cgroup_root")
    if [ ! -d "$_pd" ]; then
        return 0
    fi
    echo "POD${_i}_NS='$(cat "$_pd/netns")'"
    echo "POD${_i}_NETNS_PATH='$NETNS_DIR/$(cat "$_pd/netns")'"
    echo "POD${_i}_IP='$(cat "$_pd/ip4")'"
    echo "POD${_i}_IP6='$(cat "$_pd/ip6")'"
    echo "POD${_i}_VETH='$(cat "$_pd/veth")'"
    echo "POD${_i}_CGROUP='$_cgr$(cat "$_pd/cgroup_rel")'"
    echo "POD${_i}_NAME='$(cat "$_pd/name")'"
    echo "POD${_i}_KIND='$(cat "$_pd/kind")'"
    echo "POD${_i}_NAMESPACE='$(cat "$_pd/namespace")'"
    echo "POD${_i}_UID='$(cat "$_pd/uid")'"
    echo "POD${_i}_QOS='$(cat "$_pd/qos")'"
    echo "POD${_i}_CGROUP_REL='$(cat "$_pd/cgroup_rel")'"
    echo "POD${_i}_CONTAINER_NAME='$(cat "$_pd/container_name")'"
    echo "POD${_i}_CONTAINER_ID='$(cat "$_pd/container_id")'"
    echo "POD${_i}_CONTAINER_CGROUP='$_cgr$(cat "$_pd/container_cgroup_rel")'"
    echo "POD${_i}_CONTAINER_CGROUP_REL='$(cat "$_pd/container_cgroup_rel")'"
    echo "POD${_i}_EXEC_CGROUP='$_cgr$(cat "$_pd/exec_cgroup_rel")'"
    echo "POD${_i}_SANDBOX_CGROUP='$_cgr$(cat "$_pd/sandbox_cgroup_rel")'"
    echo "POD${_i}_SANDBOX_PID='$(cat "$_pd/sandbox_pid")'"
    echo "POD${_i}_IPS='$(cat "$_pd/ips")'"
    echo "POD${_i}_HOPS='$(cat "$_pd/hops")'"
    echo "POD${_i}_REQUIRED_HOP_LIMIT='$(($(cat "$_pd/hops") + 1))'"
    if [ "$(cat "$_pd/kind")" = nested ]; then
        echo "POD${_i}_INNER_NS='$(cat "$_pd/inner_netns")'"
        echo "POD${_i}_INNER_NETNS_PATH='$NETNS_DIR/$(cat "$_pd/inner_netns")'"
        echo "POD${_i}_INNER_IP='$(cat "$_pd/inner_ip4")'"
        echo "POD${_i}_INNER_IP6='$(cat "$_pd/inner_ip6")'"
        echo "POD${_i}_INNER_CGROUP='$_cgr$(cat "$_pd/inner_cgroup_rel")'"
        echo "POD${_i}_INNER_CGROUP_REL='$(cat "$_pd/inner_cgroup_rel")'"
        echo "POD${_i}_INNER_CONTAINER_ID='$(cat "$_pd/inner_container_id")'"
        echo "POD${_i}_INNER_HOPS='$(($(cat "$_pd/hops") + 1))'"
        echo "POD${_i}_INNER_REQUIRED_HOP_LIMIT='$(($(cat "$_pd/hops") + 2))'"
    fi
    _tp=$(owned_pid "$_s/inject/ttl-datapath.$_i.pid") || _tp=
    echo "POD${_i}_TTL_DATAPATH_PID='$_tp'"
    [ -n "$_tp" ] && echo "POD${_i}_TTL_DATAPATH_LOG='$_s/inject/ttl-datapath.$_i.log'"
    return 0
}

# injected failures of one kind: pod numbers, space separated (marker files <what>.<I>)
inject_list() {
    _l=
    for _f in "$1/inject/$2".*; do
        [ -e "$_f" ] || continue
        _n=${_f##*/}
        _n=${_n#"$2".}
        is_uint "$_n" || continue
        _l="$_l $_n"
    done
    echo "${_l# }"
}

write_env() {
    _s=$1
    _p=$(cat "$_s/prefix")
    _cg=$(cat "$_s/cgroup")
    _n=$(cat "$_s/pods")
    {
        echo "# imdstrace testbed $_p (generated by testbed.sh; source it)"
        echo "PREFIX='$_p'"
        echo "STATE_DIR='$_s'"
        echo "IMDS_NS='$_p-imds'"
        echo "NODE_NS='$_p-node'"
        echo "IMDS_NETNS_PATH='$NETNS_DIR/$_p-imds'"
        echo "NODE_NETNS_PATH='$NETNS_DIR/$_p-node'"
        echo "IMDS_IFACE='imds0'"
        echo "NODE_IFACE='uplink0'"
        echo "IMDS_IP='$IMDS_IP4'"
        echo "IMDS_IP6='$IMDS_IP6'"
        echo "IMDS_LINK_IP='$IMDS_LINK_IP4'"
        echo "IMDS_LINK_IP6='$IMDS_LINK_IP6'"
        echo "NODE_IP='$NODE_IP4'"
        echo "NODE_IP6='$NODE_IP6'"
        echo "IPV6='$(cat "$_s/ipv6")'"
        echo "HOP_LIMIT='$(cat "$_s/hop_limit")'"
        echo "TOKENS='$(cat "$_s/tokens")'"
        echo "ENDPOINT='$(cat "$_s/endpoint")'"
        echo "RATE_LIMIT='$(cat "$_s/rate_limit")'"
        echo "EMULATOR='$(cat "$_s/emulator_path")'"
        echo "EMULATOR_PID='$(cat "$_s/emulator.pid" 2>/dev/null)'"
        echo "EMULATOR_LOG='$_s/emulator.log'"
        echo "CGROUP_ROOT='$(cat "$_s/cgroup_root")'"
        echo "CGROUP_DIR='$_cg'"
        echo "CGROUP_REL='/$_p'"
        echo "HOST_CGROUP='$_cg/host'"
        echo "PODS_JSON='$_s/pods.json'"
        echo "PODS='$_n'"
        echo "K8S_PODS_JSON='$_s/k8s-pods.json'"
        echo "NODE_NAME='$NODE_NAME'"
        echo "KUBEPODS='$(cat "$_s/kubepods" 2>/dev/null)'"
        echo "RUNTIME='$(cat "$_s/runtime" 2>/dev/null)'"
        echo "HOST_ROOT='$(cat "$_s/host_root" 2>/dev/null)'"
        echo "POD_LOGS_DIR='$(cat "$_s/pod_logs_dir" 2>/dev/null)'"
        echo "POD_BRIDGE='$(cat "$_s/pod_bridge" 2>/dev/null)'"
        echo "INJECT_POLICY_DROP='$(inject_list "$_s" policy-drop)'"
        echo "INJECT_NO_ROUTE='$(inject_list "$_s" no-route)'"
        echo "INJECT_TTL_DATAPATH='$(inject_list "$_s" ttl-datapath)'"
        _i=1
        while [ "$_i" -le "$_n" ]; do
            env_pod "$_s" "$_i"
            _i=$((_i + 1))
        done
    } >"$_s/env.tmp" && mv "$_s/env.tmp" "$_s/env" || die "cannot write $_s/env"
}

# static pod mapping (imdstrace --pods static:FILE), written by jq so that
# any byte in a name (a quote, a backslash) stays a valid JSON string
write_pods_json() {
    _s=$1
    _n=$(cat "$_s/pods")
    _i=1
    while [ "$_i" -le "$_n" ]; do
        jq -n --arg namespace "$(pget "$_s" $_i namespace)" --arg name "$(pget "$_s" $_i name)" \
            --arg uid "$(pget "$_s" $_i uid)" --argjson ips "[$(pget "$_s" $_i ips)]" \
            --arg cgroup "$(pget "$_s" $_i cgroup_rel)" \
            '{namespace: $namespace, name: $name, uid: $uid, ips: $ips, cgroup: $cgroup}' || exit 1
        _i=$((_i + 1))
    done | jq -s . >"$_s/pods.json" || die "cannot write $_s/pods.json"
}

# the pods as a Kubernetes API stand-in would serve them (jq: names stay valid JSON)
write_k8s_pods_json() {
    _s=$1
    _n=$(cat "$_s/pods")
    _rt=$(cat "$_s/runtime")
    case $_rt in crio) _scheme=cri-o ;; *) _scheme=$_rt ;; esac
    _i=1
    while [ "$_i" -le "$_n" ]; do
        _hn=false
        [ "$(pget "$_s" $_i kind)" = hostnet ] && _hn=true
        _q=$(pget "$_s" $_i qos)
        case $_q in besteffort) _q=BestEffort ;; guaranteed) _q=Guaranteed ;; *) _q=Burstable ;; esac
        # the flat fields first; "ips", "node", "container", "container_id", "cgroup" repeat
        # them in the static-mapping-with-extras form tests/testbed/k8s_api_standin reads
        jq -n --arg namespace "$(pget "$_s" $_i namespace)" --arg name "$(pget "$_s" $_i name)" \
            --arg uid "$(pget "$_s" $_i uid)" --arg node "$NODE_NAME" --argjson hostnet "$_hn" \
            --argjson ips "[$(pget "$_s" $_i ips)]" --arg qos "$_q" --arg cn "$(pget "$_s" $_i container_name)" \
            --arg scheme "$_scheme" --arg cid "$(pget "$_s" $_i container_id)" \
            --arg cgroup "$(pget "$_s" $_i cgroup_rel)" \
            '{namespace: $namespace, name: $name, uid: $uid, nodeName: $node, hostNetwork: $hostnet,
              podIPs: $ips, qosClass: $qos, phase: "Running",
              containers: [{name: $cn, containerID: ($scheme + "://" + $cid)}],
              ips: $ips, node: $node, container: $cn, container_id: $cid, cgroup: $cgroup}' || exit 1
        _i=$((_i + 1))
    done | jq -s . >"$_s/k8s-pods.json" || die "cannot write $_s/k8s-pods.json"
}

# <host-root>/var/log/pods and var/log/containers, as the kubelet lays them out.  With
# --pod-logs-dir DIR (the kubelet's podLogsDir), the pod directories are under DIR instead, the
# links point there, there is no var/log/pods, and var/lib/kubelet/config.yaml says so.
write_hostroot() {
    _s=$1
    _hr=$2
    _n=$(cat "$_s/pods")
    _pl=$(cat "$_s/pod_logs_dir")
    mkdir -p "$_hr$_pl" "$_hr/var/log/containers" "$_hr/sys/fs" || die "cannot create $_hr"
    if [ "$_pl" != /var/log/pods ]; then
        mkdir -p "$_hr/var/lib/kubelet" || die "cannot create $_hr/var/lib/kubelet"
        printf 'apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupDriver: %s\npodLogsDir: "%s"\n' \
            "$(cat "$_s/kubepods")" "$_pl" >"$_hr/var/lib/kubelet/config.yaml" || die "cannot write the kubelet config"
    fi
    # the node's /proc and cgroup2 mount, for a tracer given --host-root
    ln -s /proc "$_hr/proc" || die "cannot create $_hr/proc"
    ln -s "$(cat "$_s/cgroup_root")" "$_hr/sys/fs/cgroup" || die "cannot create $_hr/sys/fs/cgroup"
    _ts=$(date -u +%Y-%m-%dT%H:%M:%S.000000000Z 2>/dev/null) || _ts=2026-01-01T00:00:00.000000000Z
    _i=1
    while [ "$_i" -le "$_n" ]; do
        _kns=$(pget "$_s" $_i namespace)
        _nm=$(pget "$_s" $_i name)
        _uid=$(pget "$_s" $_i uid)
        _cn=$(pget "$_s" $_i container_name)
        _cid=$(pget "$_s" $_i container_id)
        _d=$_hr$_pl/${_kns}_${_nm}_${_uid}/$_cn
        mkdir -p "$_d" || die "cannot create $_d"
        echo "$_ts stderr F imdstrace testbed: container $_cn of $_kns/$_nm started" >"$_d/0.log"
        # absolute target, as on a node (resolve it below --host-root, do not follow it blindly)
        ln -s "$_pl/${_kns}_${_nm}_${_uid}/$_cn/0.log" \
            "$_hr/var/log/containers/${_nm}_${_kns}_${_cn}-${_cid}.log" || die "cannot create a log symlink"
        _i=$((_i + 1))
    done
}

# ---------------------------------------------------------------------------------------------
# pods

# first_listed DIR NAME...: the NAME a readdir of a directory holding them all returns first.
# kernfs orders a cgroup directory's entries by a hash of their names, so the order is the
# names' own: tried in a scratch cgroup below DIR.
first_listed() {
    _fd=$1/order-$$
    shift
    mkdir "$_fd" || return 1
    for _fn in "$@"; do mkdir "$_fd/$_fn" || { rmdir "$_fd"/* "$_fd" 2>/dev/null; return 1; }; done
    # readdir order is the point (a glob or ls would sort; busybox ls has no -f): find walks
    # a directory in readdir order, GNU's and busybox's alike
    _first=$(find "$_fd" -mindepth 1 -maxdepth 1 -type d | while read -r _p; do
        _e=${_p##*/}
        for _fn in "$@"; do [ "$_e" = "$_fn" ] && { echo "$_e"; exit 0; }; done
    done)
    for _fn in "$@"; do rmdir "$_fd/$_fn"; done
    rmdir "$_fd"
    echo "$_first"
}

# scope_name S ID [conmon]: the cgroup of a container (or of CRI-O's conmon for it) in this
# testbed's layout and runtime
scope_name() {
    case $(cat "$1/kubepods"):$(cat "$1/runtime"):${3:-} in
        systemd:containerd:) echo "cri-containerd-$2.scope" ;;
        systemd:crio:) echo "crio-$2.scope" ;;
        systemd:crio:conmon) echo "crio-conmon-$2.scope" ;;
        systemd:docker:) echo "docker-$2.scope" ;;
        cgroupfs:crio:) echo "crio-$2" ;;
        cgroupfs:crio:conmon) echo "crio-conmon-$2" ;;
        cgroupfs:*:) echo "$2" ;;
        *) echo sandbox ;;
    esac
}

# plan_ids S I KIND: the IDs of the pod's container and sandbox.  A real node's cgroup order
# is whatever the IDs hash to; the testbed picks the order that tells a tracer that takes "the
# first process in the pod's cgroup tree" from one that takes the pod's own: with CRI-O, a
# conmon scope (the host's network namespace) lists first; for a docker-in-docker pod, its
# container lists before the sandbox (and inside it, docker/ before init/).  Each try draws
# both IDs: with one of them fixed, a name that hashes to either end of kernfs's order makes
# the wanted order rare or impossible (a prefix whose container always listed first: 200
# sandbox IDs, none listed before it).
plan_ids() {
    _s=$1
    _i=$2
    _seed=$(str_hash "$(cat "$_s/prefix")")
    _rt=$(cat "$_s/runtime")
    _try=0
    while :; do
        _cid=$(hex_id $(((_seed + _i * 7919 + _try * 13) % 2147483648)) 8)
        _sid=$(hex_id $(((_seed + _i * 3571 + _try * 7) % 2147483648)) 8)
        [ -n "$(cat "$_s/kubepods")" ] || break
        if [ "$_rt" = crio ]; then
            _f=$(first_listed "$(cat "$_s/cgroup")" "$(scope_name "$_s" "$_sid")" "$(scope_name "$_s" "$_sid" conmon)" \
                "$(scope_name "$_s" "$_cid")" "$(scope_name "$_s" "$_cid" conmon)") || die "cannot try cgroup names"
            case $_f in crio-conmon-*) break ;; esac
        elif [ "$3" = nested ]; then
            _f=$(first_listed "$(cat "$_s/cgroup")" "$(scope_name "$_s" "$_sid")" "$(scope_name "$_s" "$_cid")") ||
                die "cannot try cgroup names"
            [ "$_f" = "$(scope_name "$_s" "$_cid")" ] && break
        else
            break
        fi
        _try=$((_try + 1))
        [ $_try -lt 64 ] || die "no container and sandbox IDs found that list in the wanted order"
    done
    pset "$_s" $_i container_id "$_cid"
    pset "$_s" $_i sandbox_id "$_sid"
}

# plan_pod S I KIND KIND_ORDINAL: names, IDs, addresses and cgroups of pod I (no side effects
# beyond <state>/podI/)
plan_pod() {
    _s=$1
    _i=$2
    _kind=$3
    _k=$4
    _p=$(cat "$_s/prefix")
    _layout=$(cat "$_s/kubepods")
    _rt=$(cat "$_s/runtime")
    _v6=$(cat "$_s/ipv6")
    _nat6=$(cat "$_s/nat6")
    mkdir "$_s/pod$_i" || die "cannot create $_s/pod$_i"
    _seed=$(str_hash "$_p")
    _uid=$(printf '%08x-%04x-4000-8000-%012x' "$_seed" "$_i" "$_i")
    pset "$_s" $_i kind "$_kind"
    pset "$_s" $_i uid "$_uid"
    plan_ids "$_s" "$_i" "$_kind"
    _cid=$(pget "$_s" $_i container_id)
    pset "$_s" $_i qos burstable
    case $_kind in
        vpc) _kns=kube-system _base=aws-load-balancer-controller-6b7f9c _sfx=x2x9q _cn=controller ;;
        eni2) _kns=default _base=api-7f9b4c _sfx=m2n8p _cn=api ;;
        bridge) _kns=default _base=web-5d8f _sfx=abcde _cn=web ;;
        nested) _kns=ci _base=dind-runner-7c9d _sfx=qwert _cn=dind ;;
        hostnet) _kns=kube-system _base=kube-proxy _sfx=hn4kq _cn=kube-proxy ;;
    esac
    [ "$_k" -gt 1 ] && _sfx=$(pod_suffix $(((_seed + _i * 104729) % 2147483648)))
    if [ -n "$_layout" ]; then
        pset "$_s" $_i namespace "$_kns"
        pset "$_s" $_i name "$_base-$_sfx"
    else
        pset "$_s" $_i namespace testbed
        pset "$_s" $_i name "pod$_i"
    fi
    pset "$_s" $_i container_name "$_cn"

    # cgroups, relative to the cgroup2 mount
    case $_rt in
        containerd) _scope=cri-containerd-$_cid.scope _cgfs=$_cid ;;
        crio) _scope=crio-$_cid.scope _cgfs=crio-$_cid ;;
        docker) _scope=docker-$_cid.scope _cgfs=$_cid ;;
    esac
    case $_layout in
        systemd)
            _uidu=$(echo "$_uid" | tr - _)
            _pcg=/$_p/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod$_uidu.slice
            _ccg=$_pcg/$_scope
            ;;
        cgroupfs)
            _pcg=/$_p/kubepods/burstable/pod$_uid
            _ccg=$_pcg/$_cgfs
            ;;
        *)
            _pcg=/$_p/pods/pod$_i
            _ccg=$_pcg
            ;;
    esac
    pset "$_s" $_i cgroup_rel "$_pcg"
    pset "$_s" $_i container_cgroup_rel "$_ccg"
    pset "$_s" $_i exec_cgroup_rel "$_ccg"
    pset "$_s" $_i sandbox_cgroup_rel "$_pcg/$(scope_name "$_s" "$(pget "$_s" $_i sandbox_id)")"

    # network
    _hmac=$(printf '02:00:c6:12:%02x:%02x' $((_i / 256)) $((_i % 256)))
    _pmac=$(printf '02:00:c6:13:%02x:%02x' $((_i / 256)) $((_i % 256)))
    pset "$_s" $_i node_mac "$_hmac"
    pset "$_s" $_i pod_mac "$_pmac"
    case $_kind in
        eni2)
            _ip4=198.18.2.$((10 + _i))
            _ip6=
            _netns=$_p-pod$_i
            _veth=veth$_i
            _hops=1
            ;;
        vpc | nested)
            _ip4=198.18.1.$((10 + _i))
            _ip6=fd00:198:18:1::$((10 + _i))
            _netns=$_p-pod$_i
            _veth=veth$_i
            _hops=1
            ;;
        bridge)
            _ip4=198.18.64.$((10 + _i))
            _ip6=fd00:198:18:64::$((10 + _i))
            [ "$_nat6" = 1 ] || _ip6=
            _netns=$_p-pod$_i
            _veth=veth$_i
            _hops=1
            ;;
        hostnet)
            _ip4=$NODE_IP4
            _ip6=$NODE_IP6
            _netns=$_p-node
            _veth=
            _hops=0
            ;;
    esac
    [ "$_v6" = 1 ] || [ "$_kind" = vpc ] || _ip6=
    [ "$_kind" = eni2 ] && _ip6=
    pset "$_s" $_i ip4 "$_ip4"
    pset "$_s" $_i ip6 "$_ip6"
    _ips="\"$_ip4\""
    [ "$_v6" = 1 ] && [ -n "$_ip6" ] && _ips="$_ips,\"$_ip6\""
    pset "$_s" $_i ips "$_ips"
    pset "$_s" $_i netns "$_netns"
    pset "$_s" $_i veth "$_veth"
    pset "$_s" $_i hops "$_hops"
    if [ "$_kind" = nested ]; then
        _icid=$(hex_id $(((_seed + _i * 15485863) % 2147483648)) 8)
        pset "$_s" $_i inner_netns "$_p-pod$_i-c1"
        pset "$_s" $_i inner_ip4 "198.19.$_i.2"
        _iip6=
        [ "$_v6" = 1 ] && [ "$_nat6" = 1 ] && _iip6=fd00:198:19:$_i::2
        pset "$_s" $_i inner_ip6 "$_iip6"
        pset "$_s" $_i inner_container_id "$_icid"
        # docker-in-docker as moby's dind entrypoint sets it up: the container's own processes
        # moved to <container>/init, dockerd's containers in <container>/docker/<id> (the
        # container's cgroup namespace root)
        if [ -n "$_layout" ]; then
            pset "$_s" $_i inner_cgroup_rel "$_ccg/docker/$_icid"
            pset "$_s" $_i exec_cgroup_rel "$_ccg/init"
        else
            pset "$_s" $_i inner_cgroup_rel "$_ccg/c1"
        fi
    fi
}

# VPC-CNI style netns: /32 on eth0, gateway 169.254.1.1 with a static neighbour entry, host side
# veth without address, /32 host route on the node
setup_vpc_netns() {
    _s=$1
    _i=$2
    _v6=$(cat "$_s/ipv6")
    _nn=$(cat "$_s/prefix")-node
    _pns=$(pget "$_s" $_i netns)
    _veth=$(pget "$_s" $_i veth)
    _ip4=$(pget "$_s" $_i ip4)
    _ip6=$(pget "$_s" $_i ip6)
    _hmac=$(pget "$_s" $_i node_mac)
    _pmac=$(pget "$_s" $_i pod_mac)
    $IP netns add "$_pns" || die "cannot create netns $_pns"
    ipn "$_pns" link set lo up
    if [ "$_v6" = 1 ]; then
        ns_sysctl "$_pns" net/ipv6/conf/all/accept_dad 0
        ns_sysctl "$_pns" net/ipv6/conf/default/accept_dad 0
    fi
    ipn "$_nn" link add "$_veth" address "$_hmac" type veth peer name eth0 address "$_pmac" netns "$_pns"
    ipn "$_nn" link set "$_veth" up
    ipn "$_pns" addr add "$_ip4/32" dev eth0
    ipn "$_pns" link set eth0 up
    ipn "$_pns" route add "$POD_GW4" dev eth0 scope link
    ipn "$_pns" route add default via "$POD_GW4" dev eth0
    ipn "$_pns" neigh add "$POD_GW4" lladdr "$_hmac" dev eth0 nud permanent
    ipn "$_nn" route add "$_ip4/32" dev "$_veth" scope link
    if [ "$_v6" = 1 ] && [ -n "$_ip6" ]; then
        ipn "$_nn" addr add "$POD_GW6/64" dev "$_veth" nodad
        ipn "$_pns" addr add "$_ip6/128" dev eth0 nodad
        ipn "$_pns" -6 route add default via "$POD_GW6" dev eth0
        ipn "$_nn" -6 route add "$_ip6/128" dev "$_veth"
    fi
}

# a second ENI, once: uplink1 in the node, imds1 in the IMDS namespace, a routing table that
# sends everything out of it (as the VPC CNI sets up a secondary ENI's table)
setup_node_eni2() {
    _s=$1
    [ -f "$_s/eni2" ] && return 0
    _p=$(cat "$_s/prefix")
    ipn "$_p-imds" link add imds1 type veth peer name uplink1 netns "$_p-node"
    ipn "$_p-imds" addr add "$ENI2_LINK_IMDS4/24" dev imds1
    ipn "$_p-imds" link set imds1 up
    ipn "$_p-imds" route add "$ENI2_NET4" via "$ENI2_LINK_NODE4" dev imds1
    ipn "$_p-node" addr add "$ENI2_LINK_NODE4/24" dev uplink1
    ipn "$_p-node" link set uplink1 up
    ipn "$_p-node" route add default via "$ENI2_LINK_IMDS4" dev uplink1 table "$ENI2_TABLE"
    echo 1 >"$_s/eni2"
}

# the node's cbr0 bridge and its masquerading, once
setup_node_bridge() {
    _s=$1
    [ -f "$_s/pod_bridge" ] && return 0
    _p=$(cat "$_s/prefix")
    _nn=$_p-node
    need_iptables "a bridge pod"
    ipn "$_nn" link add cbr0 address 02:00:c6:12:ff:01 type bridge
    ipn "$_nn" addr add "$BR_GW4/24" dev cbr0
    ipn "$_nn" link set cbr0 up
    # pods leave with the node's address: IMDS has no route back to 198.18.64.0/24
    nf4 "$_nn" -t nat -A POSTROUTING -s "$BR_NET4" -o uplink0 -j MASQUERADE
    ipn "$_p-imds" route add unreachable "$BR_NET4"
    if [ "$(cat "$_s/ipv6")" = 1 ] && [ "$(cat "$_s/nat6")" = 1 ]; then
        ipn "$_nn" addr add "$BR_GW6/64" dev cbr0 nodad
        nf6 "$_nn" -t nat -A POSTROUTING -s "$BR_NET6" -o uplink0 -j MASQUERADE
        # (the IMDS netns has no IPv6 route to fd00:198:18:64::/64 at all)
    fi
    echo cbr0 >"$_s/pod_bridge"
}

# kindnet / docker style: veth on the node's bridge, /24 from the bridge subnet, masquerade
setup_bridge_netns() {
    _s=$1
    _i=$2
    setup_node_bridge "$_s"
    _v6=$(cat "$_s/ipv6")
    _nn=$(cat "$_s/prefix")-node
    _pns=$(pget "$_s" $_i netns)
    _veth=$(pget "$_s" $_i veth)
    _ip6=$(pget "$_s" $_i ip6)
    $IP netns add "$_pns" || die "cannot create netns $_pns"
    ipn "$_pns" link set lo up
    if [ "$_v6" = 1 ]; then
        ns_sysctl "$_pns" net/ipv6/conf/all/accept_dad 0
        ns_sysctl "$_pns" net/ipv6/conf/default/accept_dad 0
    fi
    ipn "$_nn" link add "$_veth" address "$(pget "$_s" $_i node_mac)" type veth peer name eth0 \
        address "$(pget "$_s" $_i pod_mac)" netns "$_pns"
    ipn "$_nn" link set "$_veth" master cbr0
    ipn "$_nn" link set "$_veth" up
    ipn "$_pns" addr add "$(pget "$_s" $_i ip4)/24" dev eth0
    ipn "$_pns" link set eth0 up
    ipn "$_pns" route add default via "$BR_GW4" dev eth0
    if [ -n "$_ip6" ]; then
        ipn "$_pns" addr add "$_ip6/64" dev eth0 nodad
        ipn "$_pns" -6 route add default via "$BR_GW6" dev eth0
    fi
}

# docker-in-docker: the pod netns forwards to a docker0 bridge with an inner container netns
# behind it and masquerades it (2 hops from the uplink)
setup_nested_inner() {
    _s=$1
    _i=$2
    _p=$(cat "$_s/prefix")
    _v6=$(cat "$_s/ipv6")
    _pns=$(pget "$_s" $_i netns)
    _cns=$(pget "$_s" $_i inner_netns)
    _iip6=$(pget "$_s" $_i inner_ip6)
    _net=198.19.$_i
    need_iptables "a nested pod"
    ns_sysctl "$_pns" net/ipv4/ip_forward 1
    ns_sysctl "$_pns" net/ipv4/conf/all/rp_filter 0
    ns_sysctl "$_pns" net/ipv4/conf/default/rp_filter 0
    [ "$_v6" = 1 ] && ns_sysctl "$_pns" net/ipv6/conf/all/forwarding 1
    ipn "$_pns" link add docker0 address "$(printf '02:42:c6:13:%02x:01' "$_i")" type bridge
    ipn "$_pns" addr add "$_net.1/24" dev docker0
    ipn "$_pns" link set docker0 up
    $IP netns add "$_cns" || die "cannot create netns $_cns"
    ipn "$_cns" link set lo up
    if [ "$_v6" = 1 ]; then
        ns_sysctl "$_cns" net/ipv6/conf/all/accept_dad 0
        ns_sysctl "$_cns" net/ipv6/conf/default/accept_dad 0
    fi
    ipn "$_pns" link add vethc1 type veth peer name eth0 address "$(printf '02:42:c6:13:%02x:02' "$_i")" netns "$_cns"
    ipn "$_pns" link set vethc1 master docker0
    ipn "$_pns" link set vethc1 up
    ipn "$_cns" addr add "$_net.2/24" dev eth0
    ipn "$_cns" link set eth0 up
    ipn "$_cns" route add default via "$_net.1" dev eth0
    nf4 "$_pns" -t nat -A POSTROUTING -s "$_net.0/24" -o eth0 -j MASQUERADE
    if [ -n "$_iip6" ]; then
        ipn "$_pns" addr add "fd00:198:19:$_i::1/64" dev docker0 nodad
        ipn "$_cns" addr add "$_iip6/64" dev eth0 nodad
        ipn "$_cns" -6 route add default via "fd00:198:19:$_i::1" dev eth0
        nf6 "$_pns" -t nat -A POSTROUTING -s "fd00:198:19:$_i::/64" -o eth0 -j MASQUERADE
    fi
    if [ ! -f "$_s/inner_unreachable" ]; then
        # the node and IMDS know nothing of the inner networks: only masquerading gets replies back
        ipn "$_p-imds" route add unreachable "$INNER_NET4_ALL"
        : >"$_s/inner_unreachable"
    fi
}

setup_pod() {
    _s=$1
    _i=$2
    _cgr=$(cat "$_s/cgroup_root")
    case $(pget "$_s" $_i kind) in
        vpc) setup_vpc_netns "$_s" "$_i" ;;
        eni2)
            setup_node_eni2 "$_s"
            setup_vpc_netns "$_s" "$_i"
            # the VPC CNI's rules for a pod on a secondary ENI: its traffic leaves by that ENI's table
            ipn "$(cat "$_s/prefix")-node" rule add from "$(pget "$_s" $_i ip4)" lookup "$ENI2_TABLE" pref "$ENI2_RULE_PREF"
            ;;
        bridge) setup_bridge_netns "$_s" "$_i" ;;
        nested)
            setup_vpc_netns "$_s" "$_i"
            setup_nested_inner "$_s" "$_i"
            ;;
        hostnet) ;;
    esac
    mkdir -p "$_cgr$(pget "$_s" $_i container_cgroup_rel)" ||
        die "cannot create cgroup $_cgr$(pget "$_s" $_i container_cgroup_rel)"
    start_sandbox "$_s" "$_i"
    if [ -f "$_s/pod$_i/inner_cgroup_rel" ]; then
        mkdir -p "$_cgr$(pget "$_s" $_i inner_cgroup_rel)" ||
            die "cannot create cgroup $_cgr$(pget "$_s" $_i inner_cgroup_rel)"
        start_nested_processes "$_s" "$_i"
    fi
}

# The pod sandbox, as every real pod has one (the pause container): a process that only holds
# the pod's network namespace, in its own cgroup below the pod's.  It is what tells a tracer
# that the pod's namespace is part of this node even when the pod's clients live in nested
# namespaces (docker-in-docker).  Ended by 'down' with everything in the testbed's cgroups.
start_sandbox() {
    _s=$1
    _i=$2
    _cgr=$(cat "$_s/cgroup_root")
    _sbcg=$_cgr$(pget "$_s" $_i sandbox_cgroup_rel)
    mkdir -p "$_sbcg" || die "cannot create cgroup $_sbcg"
    hold_netns "$(pget "$_s" $_i netns)" "$_sbcg" sandbox
    pset "$_s" $_i sandbox_pid "$_held"
    if [ "$(cat "$_s/runtime")" = crio ] && [ -n "$(cat "$_s/kubepods")" ]; then
        # CRI-O with conmon_cgroup = "pod" (OpenShift): a conmon per container, in the pod's
        # cgroup beside it, in the node's network namespace
        for _id in "$(pget "$_s" $_i sandbox_id)" "$(pget "$_s" $_i container_id)"; do
            _ccm=$_cgr$(pget "$_s" $_i cgroup_rel)/$(scope_name "$_s" "$_id" conmon)
            mkdir -p "$_ccm" || die "cannot create cgroup $_ccm"
            hold_netns "$(cat "$_s/prefix")-node" "$_ccm" conmon
        done
    fi
}

# hold_netns NETNS CGROUP WHAT: a process that only sleeps, in NETNS and CGROUP (sets _held).
# Ended by 'down' with everything in the testbed's cgroups.
hold_netns() {
    # shellcheck disable=SC2016
    $NSENTER --net="$NETNS_DIR/$1" -- sh -c 'echo $$ >"$1/cgroup.procs" && exec sleep 2147483647' \
        "$3" "$2" </dev/null >/dev/null 2>&1 &
    _held=$!
}

# A docker-in-docker pod's long-lived processes (moby's layout): dockerd in <container>/init
# in the pod's network namespace, an inner container in <container>/docker/<id> in its own.
start_nested_processes() {
    _s=$1
    _i=$2
    _cgr=$(cat "$_s/cgroup_root")
    [ "$(pget "$_s" $_i exec_cgroup_rel)" != "$(pget "$_s" $_i container_cgroup_rel)" ] || return 0
    mkdir -p "$_cgr$(pget "$_s" $_i exec_cgroup_rel)" || die "cannot create cgroup $_cgr$(pget "$_s" $_i exec_cgroup_rel)"
    hold_netns "$(pget "$_s" $_i netns)" "$_cgr$(pget "$_s" $_i exec_cgroup_rel)" dockerd
    hold_netns "$(pget "$_s" $_i inner_netns)" "$_cgr$(pget "$_s" $_i inner_cgroup_rel)" inner
}

# ---------------------------------------------------------------------------------------------
# failure injections (state: <state>/inject/<what>.<I>[.pid|.log|.ready])

inject_policy_drop() {
    _s=$1
    _i=$2
    _on=$3
    _nn=$(cat "$_s/prefix")-node
    _kind=$(pget "$_s" $_i kind)
    [ "$_kind" != hostnet ] || die "policy-drop: pod $_i is host-network: its traffic never crosses FORWARD"
    need_iptables "policy-drop"
    _m="imdstrace-testbed policy-drop pod$_i"
    _ip6=$(pget "$_s" $_i ip6)
    if [ "$_on" = on ]; then
        [ -f "$_s/inject/policy-drop.$_i" ] && return 0
        nf4 "$_nn" -I FORWARD -s "$(pget "$_s" $_i ip4)/32" -d "$IMDS_IP4/32" -m comment --comment "$_m" -j DROP
        if [ "$(cat "$_s/ipv6")" = 1 ] && [ -n "$_ip6" ] && have_nat6; then
            nf6 "$_nn" -I FORWARD -s "$_ip6/128" -d "$IMDS_IP6/128" -m comment --comment "$_m" -j DROP
            echo 6 >"$_s/inject/policy-drop.$_i.v6"
        fi
        : >"$_s/inject/policy-drop.$_i"
    else
        [ -f "$_s/inject/policy-drop.$_i" ] || return 0
        nf4 "$_nn" -D FORWARD -s "$(pget "$_s" $_i ip4)/32" -d "$IMDS_IP4/32" -m comment --comment "$_m" -j DROP
        if [ -f "$_s/inject/policy-drop.$_i.v6" ]; then
            nf6 "$_nn" -D FORWARD -s "$_ip6/128" -d "$IMDS_IP6/128" -m comment --comment "$_m" -j DROP
        fi
        rm -f "$_s/inject/policy-drop.$_i" "$_s/inject/policy-drop.$_i.v6"
    fi
}

# policy routing: traffic from the pod to IMDS hits an 'unreachable' rule on the node
inject_no_route() {
    _s=$1
    _i=$2
    _on=$3
    _nn=$(cat "$_s/prefix")-node
    [ "$(pget "$_s" $_i kind)" != hostnet ] ||
        die "no-route: pod $_i is host-network (use a pod with its own netns)"
    _pref=$((NO_ROUTE_PREF_BASE + _i))
    _ip6=$(pget "$_s" $_i ip6)
    if [ "$_on" = on ]; then
        [ -f "$_s/inject/no-route.$_i" ] && return 0
        ipn "$_nn" rule add pref "$_pref" from "$(pget "$_s" $_i ip4)" to "$IMDS_IP4" unreachable
        if [ "$(cat "$_s/ipv6")" = 1 ] && [ -n "$_ip6" ]; then
            ipn "$_nn" -6 rule add pref "$_pref" from "$_ip6" to "$IMDS_IP6" unreachable
        fi
        : >"$_s/inject/no-route.$_i"
    else
        [ -f "$_s/inject/no-route.$_i" ] || return 0
        ipn "$_nn" rule del pref "$_pref"
        if [ "$(cat "$_s/ipv6")" = 1 ] && [ -n "$_ip6" ]; then
            ipn "$_nn" -6 rule del pref "$_pref"
        fi
        rm -f "$_s/inject/no-route.$_i"
    fi
}

# a Cilium-like datapath at the uplink's tc ingress for the pod (ttl-datapath, background)
inject_ttl_datapath() {
    _s=$1
    _i=$2
    _on=$3
    _nn=$(cat "$_s/prefix")-node
    _b=$_s/inject/ttl-datapath.$_i
    if [ "$_on" != on ]; then
        stop_owned "$_b.pid" "$_b.pid" "$_b.ready" "$_b"
        return 0
    fi
    owned_pid "$_b.pid" >/dev/null && return 0
    case $(pget "$_s" $_i kind) in
        vpc | nested) ;;
        *) die "ttl-datapath: pod $_i is $(pget "$_s" $_i kind); only vpc and nested pods (routed /32, no NAT on the node) are supported" ;;
    esac
    _bin=$(find_ttl_datapath "$_s") || _bin=
    [ -n "$_bin" ] && [ -x "$_bin" ] ||
        die "ttl-datapath binary not found: build the ttl-datapath target, pass --ttl-datapath-bin PATH or set TTL_DATAPATH"
    case $_bin in /*) ;; *) _bin=$(cd "$(dirname "$_bin")" && pwd)/$(basename "$_bin") ;; esac
    echo "$_bin" >"$_s/ttl_datapath_bin"
    set -- --iface uplink0 --to-iface "$(pget "$_s" $_i veth)" --dst-mac "$(pget "$_s" $_i pod_mac)" \
        --src-mac "$(pget "$_s" $_i node_mac)" --pod-ip4 "$(pget "$_s" $_i ip4)" \
        --prio "$TTL_DATAPATH_PRIO" --handle "$_i"
    [ "$(cat "$_s/ipv6")" = 1 ] && set -- "$@" --pod-ip6 "$(pget "$_s" $_i ip6)"
    rm -f "$_b.pid" "$_b.ready"
    start_daemon ttl-datapath "$_nn" "$_b" "$_bin" "$@"
    : >"$_b"
    note "ttl-datapath pid $(cat "$_b.pid") on uplink0 ingress for pod $_i"
}

inject() {
    _s=$1
    _what=$2
    _i=$3
    _on=$4
    mkdir -p "$_s/inject" || die "cannot create $_s/inject"
    case $_what in
        policy-drop) inject_policy_drop "$_s" "$_i" "$_on" ;;
        no-route) inject_no_route "$_s" "$_i" "$_on" ;;
        ttl-datapath) inject_ttl_datapath "$_s" "$_i" "$_on" ;;
        *) usage_die "unknown injection '$_what' (policy-drop, no-route, ttl-datapath)" ;;
    esac
}

cmd_inject() {
    _on=$1
    shift
    prefix='' what='' idx=''
    while [ $# -gt 0 ]; do
        case $1 in
            --prefix)
                [ $# -ge 2 ] || usage_die "--prefix needs a value"
                prefix=$2
                shift 2
                ;;
            -*) usage_die "inject: unknown argument '$1'" ;;
            *)
                if [ -z "$what" ]; then
                    what=$1
                elif [ -z "$idx" ]; then
                    idx=$1
                else
                    usage_die "inject: too many arguments"
                fi
                shift
                ;;
        esac
    done
    [ -n "$prefix" ] || usage_die "inject: --prefix is required"
    check_prefix "$prefix"
    [ -n "$what" ] && [ -n "$idx" ] || usage_die "inject: need WHAT and a pod number (e.g. policy-drop 1)"
    need_root
    need_tools
    s=$STATE_ROOT/$prefix
    [ -f "$s/env" ] || die "testbed $prefix is not up"
    check_pod_index "$idx" "$s"
    inject "$s" "$what" "$idx" "$_on"
    write_env "$s"
}

# ---------------------------------------------------------------------------------------------
# up

UP_PREFIX=
up_cleanup() {
    _rc=$?
    trap - EXIT INT TERM
    if [ "$_rc" -ne 0 ] && [ -n "$UP_PREFIX" ]; then
        echo "testbed: up failed, removing partial testbed $UP_PREFIX" >&2
        do_down "$UP_PREFIX" >/dev/null 2>&1
    fi
    exit "$_rc"
}

cmd_up() {
    prefix='' hop='' emu='' cgroot='' tokens=optional endpoint=enabled rate=0
    kinds='' layout='' runtime=containerd injects='' tdbin='' podlogs=/var/log/pods
    while [ $# -gt 0 ]; do
        case $1 in
            --prefix | --hop-limit | --pods | --emulator | --cgroup-root | --tokens | --endpoint | --rate-limit | \
                --pod | --kubepods | --runtime | --policy-drop | --no-route | --ttl-datapath | --ttl-datapath-bin | \
                --pod-logs-dir)
                [ $# -ge 2 ] || usage_die "$1 needs a value"
                case $1 in
                    --prefix) prefix=$2 ;;
                    --hop-limit) hop=$2 ;;
                    --pods)
                        is_uint "$2" && [ "$2" -ge 1 ] && [ "$2" -le $MAX_PODS ] || usage_die "up: --pods must be 1..$MAX_PODS"
                        _j=0
                        while [ $_j -lt "$2" ]; do
                            kinds="$kinds vpc"
                            _j=$((_j + 1))
                        done
                        ;;
                    --pod)
                        case $2 in vpc | eni2 | bridge | nested | hostnet) ;; *) usage_die "up: --pod vpc|eni2|bridge|nested|hostnet" ;; esac
                        kinds="$kinds $2"
                        ;;
                    --kubepods)
                        case $2 in systemd | cgroupfs) ;; *) usage_die "up: --kubepods systemd|cgroupfs" ;; esac
                        layout=$2
                        ;;
                    --runtime)
                        case $2 in containerd | crio | docker) ;; *) usage_die "up: --runtime containerd|crio|docker" ;; esac
                        runtime=$2
                        ;;
                    --policy-drop | --no-route | --ttl-datapath)
                        is_uint "$2" && [ "$2" -ge 1 ] || usage_die "up: $1 needs a pod number"
                        injects="$injects ${1#--}:$2"
                        ;;
                    --ttl-datapath-bin) tdbin=$2 ;;
                    --pod-logs-dir)
                        case $2 in /*) ;; *) usage_die "up: --pod-logs-dir must be absolute" ;; esac
                        case $2 in *[!a-zA-Z0-9/_.-]* | */../* | */..) usage_die "up: --pod-logs-dir: plain path components only" ;; esac
                        podlogs=${2%/}
                        ;;
                    --emulator) emu=$2 ;;
                    --cgroup-root) cgroot=$2 ;;
                    --tokens) tokens=$2 ;;
                    --endpoint) endpoint=$2 ;;
                    --rate-limit) rate=$2 ;;
                esac
                shift 2
                ;;
            *) usage_die "up: unknown argument '$1'" ;;
        esac
    done
    [ -n "$prefix" ] || usage_die "up: --prefix is required"
    check_prefix "$prefix"
    [ -n "$hop" ] || usage_die "up: --hop-limit is required"
    is_uint "$hop" && [ "$hop" -ge 1 ] && [ "$hop" -le 255 ] || usage_die "up: --hop-limit must be 1..255"
    [ -n "$kinds" ] || kinds=vpc
    pods=0
    for _k in $kinds; do pods=$((pods + 1)); done
    [ "$pods" -le $MAX_PODS ] || usage_die "up: at most $MAX_PODS pods"
    for _x in $injects; do
        [ "${_x#*:}" -le "$pods" ] || usage_die "up: --${_x%%:*} ${_x#*:}: there are only $pods pod(s)"
    done
    case $tokens in optional | required) ;; *) usage_die "up: --tokens optional|required" ;; esac
    case $endpoint in enabled | disabled) ;; *) usage_die "up: --endpoint enabled|disabled" ;; esac
    case $rate in '' | *[!0-9.]*) usage_die "up: --rate-limit must be a number" ;; esac
    need_root
    need_tools

    if [ -z "$emu" ]; then
        emu=$(find_emulator) || emu=
        [ -n "$emu" ] || die "imds-emulator not found: pass --emulator PATH (or --emulator none)"
    fi
    if [ "$emu" != none ]; then
        [ -x "$emu" ] || die "emulator '$emu' is not executable"
        case $emu in /*) ;; *) emu=$(cd "$(dirname "$emu")" && pwd)/$(basename "$emu") ;; esac
    fi
    if [ -n "$tdbin" ]; then
        [ -x "$tdbin" ] || die "ttl-datapath '$tdbin' is not executable"
        case $tdbin in /*) ;; *) tdbin=$(cd "$(dirname "$tdbin")" && pwd)/$(basename "$tdbin") ;; esac
    fi

    if [ -z "$cgroot" ]; then
        cgroot=$(find_cgroup2) || die "no cgroup2 mount in /proc/self/mounts (mount -t cgroup2 none DIR, or --cgroup-root DIR)"
    fi
    [ -d "$cgroot" ] && [ -f "$cgroot/cgroup.procs" ] || die "'$cgroot' is not a cgroup2 mount"
    cgroot=${cgroot%/}

    s=$STATE_ROOT/$prefix
    cg=$cgroot/$prefix
    [ ! -e "$s" ] || die "testbed $prefix exists already (testbed.sh down --prefix $prefix)"
    [ -z "$(prefix_netns "$prefix")" ] || die "network namespaces of $prefix exist already (testbed.sh down --prefix $prefix)"
    [ ! -e "$cg" ] || die "cgroup $cg exists already (testbed.sh down --prefix $prefix)"

    UP_PREFIX=$prefix
    trap up_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    mkdir -p "$s" "$s/inject" || die "cannot create $s"
    echo "$prefix" >"$s/prefix"
    echo "$pods" >"$s/pods"
    echo "$hop" >"$s/hop_limit"
    echo "$tokens" >"$s/tokens"
    echo "$endpoint" >"$s/endpoint"
    echo "$rate" >"$s/rate_limit"
    echo "$emu" >"$s/emulator_path"
    echo "$cgroot" >"$s/cgroup_root"
    echo "$cg" >"$s/cgroup"
    echo "$layout" >"$s/kubepods"
    echo "$runtime" >"$s/runtime"
    echo "$podlogs" >"$s/pod_logs_dir"
    [ -n "$tdbin" ] && echo "$tdbin" >"$s/ttl_datapath_bin"
    v6=0
    have_ipv6 && v6=1
    echo "$v6" >"$s/ipv6"
    nat6=0
    [ $v6 = 1 ] && have_nat6 && nat6=1
    echo "$nat6" >"$s/nat6"

    ns_imds=$prefix-imds
    ns_node=$prefix-node

    # namespaces
    for ns in "$ns_imds" "$ns_node"; do
        $IP netns add "$ns" || die "cannot create netns $ns"
        ipn "$ns" link set lo up
        if [ $v6 = 1 ]; then
            ns_sysctl "$ns" net/ipv6/conf/all/accept_dad 0
            ns_sysctl "$ns" net/ipv6/conf/default/accept_dad 0
        fi
    done
    ns_sysctl "$ns_node" net/ipv4/ip_forward 1
    ns_sysctl "$ns_node" net/ipv4/conf/all/rp_filter 0
    ns_sysctl "$ns_node" net/ipv4/conf/default/rp_filter 0
    [ $v6 = 1 ] && ns_sysctl "$ns_node" net/ipv6/conf/all/forwarding 1

    # IMDS <-> node link
    ipn "$ns_imds" link add imds0 type veth peer name uplink0 netns "$ns_node"
    ipn "$ns_imds" addr add "$IMDS_LINK_IP4/24" dev imds0
    ipn "$ns_imds" addr add "$IMDS_IP4/32" dev imds0
    ipn "$ns_imds" link set imds0 up
    ipn "$ns_imds" route add 198.18.0.0/15 via "$NODE_IP4" dev imds0
    ipn "$ns_node" addr add "$NODE_IP4/24" dev uplink0
    ipn "$ns_node" link set uplink0 up
    ipn "$ns_node" route add "$IMDS_IP4/32" via "$IMDS_LINK_IP4" dev uplink0
    if [ $v6 = 1 ]; then
        ipn "$ns_imds" addr add "$IMDS_LINK_IP6/64" dev imds0 nodad
        ipn "$ns_imds" addr add "$IMDS_IP6/128" dev imds0 nodad
        ipn "$ns_imds" -6 route add fd00:198:18:1::/64 via "$NODE_IP6" dev imds0
        ipn "$ns_node" addr add "$NODE_IP6/64" dev uplink0 nodad
        ipn "$ns_node" -6 route add "$IMDS_IP6/128" via "$IMDS_LINK_IP6" dev uplink0
    fi

    # cgroups
    mkdir "$cg" "$cg/host" || die "cannot create cgroup $cg"
    [ -z "$layout" ] && { mkdir "$cg/pods" || die "cannot create cgroup $cg/pods"; }

    # pods: plan (names, addresses, cgroups), then build
    i=1
    nvpc=0 nbridge=0 nnested=0 nhostnet=0
    for kind in $kinds; do
        case $kind in
            vpc | eni2) nvpc=$((nvpc + 1)) k=$nvpc ;;
            bridge) nbridge=$((nbridge + 1)) k=$nbridge ;;
            nested) nnested=$((nnested + 1)) k=$nnested ;;
            hostnet) nhostnet=$((nhostnet + 1)) k=$nhostnet ;;
        esac
        plan_pod "$s" "$i" "$kind" "$k"
        setup_pod "$s" "$i"
        i=$((i + 1))
    done

    write_pods_json "$s"
    write_k8s_pods_json "$s"
    if [ -n "$layout" ]; then
        echo "$s/hostroot" >"$s/host_root"
        write_hostroot "$s" "$s/hostroot"
    fi
    start_emulator "$s" "$ns_imds"
    for _x in $injects; do
        inject "$s" "${_x%%:*}" "${_x#*:}" on
    done
    write_env "$s"

    trap - EXIT INT TERM
    UP_PREFIX=
    note "up: $prefix ($pods pod(s):$kinds, hop limit $hop, tokens $tokens${layout:+, kubepods $layout}); state in $s"
    return 0
}

# ---------------------------------------------------------------------------------------------
# emulator restart

cmd_emulator() {
    prefix='' hop='' tokens='' endpoint='' rate='' emu=''
    while [ $# -gt 0 ]; do
        case $1 in
            --prefix | --hop-limit | --tokens | --endpoint | --rate-limit | --emulator)
                [ $# -ge 2 ] || usage_die "$1 needs a value"
                case $1 in
                    --prefix) prefix=$2 ;;
                    --hop-limit) hop=$2 ;;
                    --tokens) tokens=$2 ;;
                    --endpoint) endpoint=$2 ;;
                    --rate-limit) rate=$2 ;;
                    --emulator) emu=$2 ;;
                esac
                shift 2
                ;;
            *) usage_die "emulator: unknown argument '$1'" ;;
        esac
    done
    [ -n "$prefix" ] || usage_die "emulator: --prefix is required"
    check_prefix "$prefix"
    need_root
    need_tools
    s=$STATE_ROOT/$prefix
    [ -f "$s/prefix" ] || die "testbed $prefix is not up"
    if [ -n "$hop" ]; then
        is_uint "$hop" && [ "$hop" -ge 1 ] && [ "$hop" -le 255 ] || usage_die "--hop-limit must be 1..255"
        echo "$hop" >"$s/hop_limit"
    fi
    if [ -n "$tokens" ]; then
        case $tokens in optional | required) ;; *) usage_die "--tokens optional|required" ;; esac
        echo "$tokens" >"$s/tokens"
    fi
    if [ -n "$endpoint" ]; then
        case $endpoint in enabled | disabled) ;; *) usage_die "--endpoint enabled|disabled" ;; esac
        echo "$endpoint" >"$s/endpoint"
    fi
    if [ -n "$rate" ]; then
        case $rate in *[!0-9.]*) usage_die "--rate-limit must be a number" ;; esac
        echo "$rate" >"$s/rate_limit"
    fi
    if [ -n "$emu" ]; then
        if [ "$emu" != none ]; then
            [ -x "$emu" ] || die "emulator '$emu' is not executable"
            case $emu in /*) ;; *) emu=$(cd "$(dirname "$emu")" && pwd)/$(basename "$emu") ;; esac
        fi
        echo "$emu" >"$s/emulator_path"
    fi
    stop_emulator "$s"
    start_emulator "$s" "$prefix-imds"
    write_env "$s"
}

# ---------------------------------------------------------------------------------------------
# exec


cmd_exec() {
    prefix='' where='' container=''
    while [ $# -gt 0 ]; do
        case $1 in
            --prefix)
                [ $# -ge 2 ] || usage_die "--prefix needs a value"
                prefix=$2
                shift 2
                ;;
            --pod)
                [ $# -ge 2 ] || usage_die "--pod needs a value"
                is_uint "$2" && [ "$2" -ge 1 ] || usage_die "--pod must be a pod number (1..N)"
                where=pod$2
                shift 2
                ;;
            --container)
                container=1
                shift
                ;;
            --host | --node)
                where=host
                shift
                ;;
            --imds)
                where=imds
                shift
                ;;
            --)
                shift
                break
                ;;
            *) usage_die "exec: unknown argument '$1' (command goes after --)" ;;
        esac
    done
    [ -n "$prefix" ] || usage_die "exec: --prefix is required"
    check_prefix "$prefix"
    [ -n "$where" ] || usage_die "exec: one of --pod I, --host, --imds is required"
    [ -z "$container" ] || case $where in pod*) ;; *) usage_die "exec: --container goes with --pod I" ;; esac
    [ $# -gt 0 ] || usage_die "exec: missing command after --"
    need_root
    command -v "${NSENTER%% *}" >/dev/null 2>&1 || die "'$NSENTER' not found: install util-linux or set NSENTER=/path/to/nsenter"
    s=$STATE_ROOT/$prefix
    [ -f "$s/cgroup" ] || die "testbed $prefix is not up"
    cg=$(cat "$s/cgroup")
    cgr=$(cat "$s/cgroup_root")
    case $where in
        host)
            ns=$prefix-node
            cgdir=$cg/host
            ;;
        imds)
            ns=$prefix-imds
            cgdir=
            ;;
        pod*)
            idx=${where#pod}
            if [ -d "$s/$where" ]; then
                if [ -n "$container" ]; then
                    [ "$(pget "$s" "$idx" kind)" = nested ] ||
                        die "pod $idx is a $(pget "$s" "$idx" kind) pod: --container needs a nested pod"
                    ns=$(pget "$s" "$idx" inner_netns)
                    cgdir=$cgr$(pget "$s" "$idx" inner_cgroup_rel)
                else
                    ns=$(pget "$s" "$idx" netns)
                    cgdir=$cgr$(pget "$s" "$idx" exec_cgroup_rel)
                fi
            else
                # no such pod (or a testbed from an older testbed.sh)
                [ -z "$container" ] || die "no nested pod $idx"
                ns=$prefix-$where
                cgdir=$cg/pods/$where
            fi
            ;;
    esac
    [ -e "$NETNS_DIR/$ns" ] || die "no netns $ns (pod out of range?)"
    if [ -n "$cgdir" ]; then
        [ -d "$cgdir" ] || die "no cgroup $cgdir"
        # move this shell into the cgroup, then exec: the command inherits it
        echo $$ >"$cgdir/cgroup.procs" || die "cannot join cgroup $cgdir"
    fi
    exec $NSENTER --net="$NETNS_DIR/$ns" -- "$@"
}

kill_pids() {
    # kill_pids SIGNAL PID...
    _sig=$1
    shift
    for _pid in "$@"; do
        is_uint "$_pid" || continue
        [ "$_pid" -gt 1 ] || continue
        [ "$_pid" = $$ ] && continue
        kill "-$_sig" "$_pid" 2>/dev/null
    done
}

cgroup_procs() {
    # all PIDs in the cgroup subtree $1
    find "$1" -name cgroup.procs -type f 2>/dev/null | while read -r _f; do
        cat "$_f" 2>/dev/null
    done
}

do_down() {
    _p=$1
    _s=$STATE_ROOT/$_p

    # 1. the emulator and ttl-datapath loaders (verified by their command lines)
    if [ -d "$_s" ]; then
        stop_emulator "$_s"
        for _pf in "$_s"/inject/ttl-datapath.*.pid; do
            [ -f "$_pf" ] && stop_owned "$_pf" "$_pf"
        done
    fi

    # 2. processes still inside our network namespaces (tests' leftovers)
    _nss=$(prefix_netns "$_p")
    for _sig in TERM KILL; do
        _any=
        for _ns in $_nss; do
            _pids=$($IP netns pids "$_ns" 2>/dev/null)
            [ -n "$_pids" ] || continue
            _any=1
            # shellcheck disable=SC2086
            kill_pids "$_sig" $_pids
        done
        [ -z "$_any" ] && break
        _i=0
        while [ $_i -lt 10 ]; do
            _left=
            for _ns in $_nss; do
                [ -n "$($IP netns pids "$_ns" 2>/dev/null)" ] && _left=1
            done
            [ -z "$_left" ] && break
            snooze
            _i=$((_i + 1))
        done
    done

    # 2b. TCP sockets the killed processes left behind (FIN-WAIT/LAST-ACK orphans retransmitting
    #     requests and TTL-limited responses) hold their netns alive for minutes after
    #     'ip netns delete', and their retransmissions, dropped as the topology dies, would show
    #     up in the next test's kernel-wide drop tracing: destroy them (ss -K, INET_DIAG_DESTROY)
    if command -v "${SS%% *}" >/dev/null 2>&1; then
        for _ns in $_nss; do
            $NSENTER --net="$NETNS_DIR/$_ns" -- $SS -K -t -a >/dev/null 2>&1
        done
    fi

    # 3. cgroups: kill what is left in them, then remove bottom-up
    _cg=
    [ -f "$_s/cgroup" ] && _cg=$(cat "$_s/cgroup")
    if [ -z "$_cg" ]; then
        _root=$(find_cgroup2) && _cg=$_root/$_p
    fi
    if [ -n "$_cg" ] && [ "${_cg##*/}" = "$_p" ] && [ -d "$_cg" ]; then
        _i=0
        while [ -d "$_cg" ] && [ $_i -lt 30 ]; do
            if [ -f "$_cg/cgroup.kill" ]; then
                echo 1 >"$_cg/cgroup.kill" 2>/dev/null
            else
                # shellcheck disable=SC2046
                kill_pids KILL $(cgroup_procs "$_cg")
            fi
            find "$_cg" -depth -type d -exec rmdir {} \; 2>/dev/null
            [ -d "$_cg" ] && snooze
            _i=$((_i + 1))
        done
        [ -d "$_cg" ] && echo "testbed: warning: could not remove cgroup $_cg" >&2
    fi

    # 4. network namespaces (deleting them removes the veths)
    for _ns in $_nss; do
        $IP netns delete "$_ns" 2>/dev/null || echo "testbed: warning: could not delete netns $_ns" >&2
    done

    # 5. state
    [ -d "$_s" ] && rm -rf "$_s"
    return 0
}

cmd_down() {
    prefix=
    while [ $# -gt 0 ]; do
        case $1 in
            --prefix)
                [ $# -ge 2 ] || usage_die "--prefix needs a value"
                prefix=$2
                shift 2
                ;;
            *) usage_die "down: unknown argument '$1'" ;;
        esac
    done
    [ -n "$prefix" ] || usage_die "down: --prefix is required"
    check_prefix "$prefix"
    need_root
    need_tools
    do_down "$prefix"
    note "down: $prefix"
}

# every prefix with something left: state dirs, netns, cgroup dirs
all_prefixes() {
    {
        if [ -d "$STATE_ROOT" ]; then
            for _d in "$STATE_ROOT"/imdst-*; do
                [ -d "$_d" ] && echo "${_d##*/}"
            done
        fi
        $IP netns list 2>/dev/null | while read -r _n _r; do
            case $_n in
                imdst-*-*)
                    _rest=${_n#imdst-}
                    echo "imdst-${_rest%%-*}"
                    ;;
            esac
        done
        if _root=$(find_cgroup2); then
            for _d in "$_root"/imdst-*; do
                [ -d "$_d" ] && echo "${_d##*/}"
            done
        fi
    } | sort -u | while read -r _c; do
        case $_c in
            imdst-*) ;;
            *) continue ;;
        esac
        _r=${_c#imdst-}
        case $_r in '' | *[!a-z0-9]*) continue ;; esac
        echo "$_c"
    done
}

cmd_sweep() {
    [ $# -eq 0 ] || usage_die "sweep takes no arguments"
    need_root
    need_tools
    for _x in $(all_prefixes); do
        do_down "$_x"
        note "swept $_x"
    done
    return 0
}

cmd_list() {
    need_root
    need_tools
    for _x in $(all_prefixes); do
        _st=partial
        [ -f "$STATE_ROOT/$_x/env" ] && _st=up
        _ep=$(emulator_pid "$STATE_ROOT/$_x") || _ep=none
        echo "$_x $_st emulator=$_ep"
    done
}

# ---------------------------------------------------------------------------------------------

[ $# -gt 0 ] || {
    usage >&2
    exit 2
}
cmd=$1
shift
case $cmd in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    exec) cmd_exec "$@" ;;
    inject) cmd_inject on "$@" ;;
    uninject) cmd_inject off "$@" ;;
    emulator) cmd_emulator "$@" ;;
    sweep) cmd_sweep "$@" ;;
    list) cmd_list "$@" ;;
    help | -h | --help) usage ;;
    *) usage_die "unknown command '$cmd'" ;;
esac
