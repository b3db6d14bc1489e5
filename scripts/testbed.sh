#!/bin/sh
# testbed.sh - build and remove imdstrace test topologies (network namespaces + cgroups).
#
# POSIX sh (also runs under busybox ash). Everything lives in network namespaces named
# <prefix>-imds, <prefix>-node, <prefix>-podN and in <cgroup2>/<prefix>/; the prefix must match
# imdst-[a-z0-9]+ so nothing else is ever touched. Never configures the root namespace.
#
#   testbed.sh up    --prefix P --hop-limit N [--pods N] [--emulator PATH|none]
#                    [--cgroup-root DIR] [--tokens optional|required]
#                    [--endpoint enabled|disabled] [--rate-limit RPS]
#   testbed.sh emulator --prefix P [--hop-limit N] [--tokens ..] [--endpoint ..]
#                    [--rate-limit RPS] [--emulator PATH]      (restart the emulator)
#   testbed.sh exec  --prefix P (--pod I | --host | --imds) -- CMD [ARGS...]
#   testbed.sh down  --prefix P
#   testbed.sh sweep
#   testbed.sh list
#
# Environment: IP (iproute2 command, default ip), NSENTER (default nsenter, may be
# 'busybox nsenter'), IMDSTRACE_TESTBED_STATE (state root, default /run/imdstrace-testbed),
# IMDS_EMULATOR (emulator used when --emulator is not given), TESTBED_QUIET=1 (no notes).

# A && B || C below is deliberate (B is a test); the sh -c scripts expand in the inner shell.
# IP and NSENTER may be multi-word (e.g. NSENTER='busybox nsenter'), hence unquoted.
# shellcheck disable=SC2015,SC2016,SC2086
set -u

IP=${IP:-ip}
NSENTER=${NSENTER:-nsenter}
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
MAX_PODS=200

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
    sed -n '2,20s/^# \{0,1\}//p' "$0"
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

find_emulator() {
    if [ -n "${IMDS_EMULATOR:-}" ]; then
        echo "$IMDS_EMULATOR"
        return 0
    fi
    _sd=$(cd "$(dirname "$0")" 2>/dev/null && pwd) || _sd=.
    for _c in "$_sd/../build/tests/testbed/imds-emulator" "$_sd/../build/imds-emulator"; do
        if [ -x "$_c" ]; then
            echo "$_c"
            return 0
        fi
    done
    command -v imds-emulator 2>/dev/null
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
    $NSENTER --net="$NETNS_DIR/$_ens" -- "$_emu" "$@" \
        --pidfile "$_s/emulator.pid" --ready-file "$_s/emulator.ready" \
        </dev/null >>"$_s/emulator.log" 2>&1 &
    _bg=$!
    _i=0
    while [ ! -f "$_s/emulator.ready" ]; do
        if ! pid_alive "$_bg"; then
            tail -n 5 "$_s/emulator.log" >&2 2>/dev/null
            die "emulator exited during startup (log: $_s/emulator.log)"
        fi
        _i=$((_i + 1))
        [ $_i -lt 100 ] || die "emulator not ready after 10s (log: $_s/emulator.log)"
        snooze
    done
    note "emulator pid $(cat "$_s/emulator.pid") in netns $_ens (hop limit $(cat "$_s/hop_limit"))"
}

# ---------------------------------------------------------------------------------------------
# state

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
        _i=1
        while [ "$_i" -le "$_n" ]; do
            echo "POD${_i}_NS='$_p-pod$_i'"
            echo "POD${_i}_NETNS_PATH='$NETNS_DIR/$_p-pod$_i'"
            echo "POD${_i}_IP='198.18.1.$((10 + _i))'"
            echo "POD${_i}_IP6='fd00:198:18:1::$((10 + _i))'"
            echo "POD${_i}_VETH='veth$_i'"
            echo "POD${_i}_CGROUP='$_cg/pods/pod$_i'"
            echo "POD${_i}_NAME='pod$_i'"
            _i=$((_i + 1))
        done
    } >"$_s/env.tmp" && mv "$_s/env.tmp" "$_s/env" || die "cannot write $_s/env"
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

write_pods_json() {
    _s=$1
    _p=$(cat "$_s/prefix")
    _n=$(cat "$_s/pods")
    _crc=$(str_hash "$_p")
    {
        echo '['
        _i=1
        while [ "$_i" -le "$_n" ]; do
            _uid=$(printf '%08x-%04x-4000-8000-%012x' "$_crc" "$_i" "$_i")
            _ips="\"198.18.1.$((10 + _i))\""
            [ "$(cat "$_s/ipv6")" = 1 ] && _ips="$_ips,\"fd00:198:18:1::$((10 + _i))\""
            _sep=,
            [ "$_i" -eq "$_n" ] && _sep=
            printf '  {"namespace":"testbed","name":"pod%d","uid":"%s","ips":[%s],"cgroup":"/%s/pods/pod%d"}%s\n' \
                "$_i" "$_uid" "$_ips" "$_p" "$_i" "$_sep"
            _i=$((_i + 1))
        done
        echo ']'
    } >"$_s/pods.json" || die "cannot write $_s/pods.json"
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
    prefix='' hop='' pods=1 emu='' cgroot='' tokens=optional endpoint=enabled rate=0
    while [ $# -gt 0 ]; do
        case $1 in
            --prefix | --hop-limit | --pods | --emulator | --cgroup-root | --tokens | --endpoint | --rate-limit)
                [ $# -ge 2 ] || usage_die "$1 needs a value"
                case $1 in
                    --prefix) prefix=$2 ;;
                    --hop-limit) hop=$2 ;;
                    --pods) pods=$2 ;;
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
    is_uint "$pods" && [ "$pods" -ge 1 ] && [ "$pods" -le $MAX_PODS ] || usage_die "up: --pods must be 1..$MAX_PODS"
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

    mkdir -p "$s" || die "cannot create $s"
    echo "$prefix" >"$s/prefix"
    echo "$pods" >"$s/pods"
    echo "$hop" >"$s/hop_limit"
    echo "$tokens" >"$s/tokens"
    echo "$endpoint" >"$s/endpoint"
    echo "$rate" >"$s/rate_limit"
    echo "$emu" >"$s/emulator_path"
    echo "$cgroot" >"$s/cgroup_root"
    echo "$cg" >"$s/cgroup"
    v6=0
    have_ipv6 && v6=1
    echo "$v6" >"$s/ipv6"

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
    mkdir "$cg" "$cg/pods" "$cg/host" || die "cannot create cgroup $cg"

    # pods, VPC-CNI style: /32 on eth0, gateway 169.254.1.1 with a static neighbour entry,
    # host side veth without address, /32 host route on the node
    i=1
    while [ $i -le "$pods" ]; do
        ns=$prefix-pod$i
        veth=veth$i
        ip4=198.18.1.$((10 + i))
        ip6=fd00:198:18:1::$((10 + i))
        hmac=$(printf '02:00:c6:12:%02x:%02x' $((i / 256)) $((i % 256)))
        pmac=$(printf '02:00:c6:13:%02x:%02x' $((i / 256)) $((i % 256)))
        $IP netns add "$ns" || die "cannot create netns $ns"
        ipn "$ns" link set lo up
        if [ $v6 = 1 ]; then
            ns_sysctl "$ns" net/ipv6/conf/all/accept_dad 0
            ns_sysctl "$ns" net/ipv6/conf/default/accept_dad 0
        fi
        ipn "$ns_node" link add "$veth" address "$hmac" type veth peer name eth0 address "$pmac" netns "$ns"
        ipn "$ns_node" link set "$veth" up
        ipn "$ns" addr add "$ip4/32" dev eth0
        ipn "$ns" link set eth0 up
        ipn "$ns" route add "$POD_GW4" dev eth0 scope link
        ipn "$ns" route add default via "$POD_GW4" dev eth0
        ipn "$ns" neigh add "$POD_GW4" lladdr "$hmac" dev eth0 nud permanent
        ipn "$ns_node" route add "$ip4/32" dev "$veth" scope link
        if [ $v6 = 1 ]; then
            ipn "$ns_node" addr add "$POD_GW6/64" dev "$veth" nodad
            ipn "$ns" addr add "$ip6/128" dev eth0 nodad
            ipn "$ns" -6 route add default via "$POD_GW6" dev eth0
            ipn "$ns_node" -6 route add "$ip6/128" dev "$veth"
        fi
        mkdir "$cg/pods/pod$i" || die "cannot create cgroup $cg/pods/pod$i"
        i=$((i + 1))
    done

    write_pods_json "$s"
    start_emulator "$s" "$ns_imds"
    write_env "$s"

    trap - EXIT INT TERM
    UP_PREFIX=
    note "up: $prefix ($pods pod(s), hop limit $hop, tokens $tokens); state in $s"
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
    prefix='' where=''
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
    [ $# -gt 0 ] || usage_die "exec: missing command after --"
    need_root
    command -v "${NSENTER%% *}" >/dev/null 2>&1 || die "'$NSENTER' not found: install util-linux or set NSENTER=/path/to/nsenter"
    s=$STATE_ROOT/$prefix
    [ -f "$s/cgroup" ] || die "testbed $prefix is not up"
    cg=$(cat "$s/cgroup")
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
            ns=$prefix-$where
            cgdir=$cg/pods/$where
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

# ---------------------------------------------------------------------------------------------
# down / sweep

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

    # 1. the emulator (verified by its command line)
    [ -d "$_s" ] && stop_emulator "$_s"

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
    emulator) cmd_emulator "$@" ;;
    sweep) cmd_sweep "$@" ;;
    list) cmd_list "$@" ;;
    help | -h | --help) usage ;;
    *) usage_die "unknown command '$cmd'" ;;
esac
