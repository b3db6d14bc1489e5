#!/usr/bin/env bash
# End to end, of the testbed itself: every prefix gets the cgroup order the attribution tests
# rely on (kernfs lists a directory's entries by a hash of their names, so the IDs decide it).
#   testbed_layout.sh order   a docker-in-docker pod's container lists before its sandbox, and a
#                             CRI-O pod's conmon scope lists first; for the prefix a CI run once
#                             failed on (no sandbox ID listed before its fixed container ID) and
#                             for this run's random prefixes
source "$(dirname "$0")/lib.sh"
require_root

# first_entry DIR NAME_PATTERN: the first entry of DIR, in readdir order, matching the pattern
first_entry() { ls -f "$1" | grep -E "$2" | head -1; }

# check_order PREFIX KIND...: under PREFIX, the pods KIND... (systemd driver), each nested one's
# container before its sandbox; then as many CRI-O pods (cgroupfs driver), each with conmon first
check_order() {
    local p=$1 i=0 k pod args=()
    shift
    for k in "$@"; do args+=(--pod "$k"); done
    second_testbed_up "$p" 2 "${args[@]}" --kubepods systemd
    for k in "$@"; do
        i=$((i + 1))
        [[ $k == nested ]] || continue
        pod=$(testbed_var "$p" "POD${i}_CGROUP")
        expect_eq "$p pod $i: the docker-in-docker container lists before its sandbox" \
            "$(first_entry "$pod" '^cri-containerd-')" "cri-containerd-$(testbed_var "$p" "POD${i}_CONTAINER_ID").scope"
    done
    "$TESTBED" down --prefix "$p" >/dev/null 2>&1
    args=()
    for k in "$@"; do args+=(--pod vpc); done
    second_testbed_up "$p" 2 "${args[@]}" --kubepods cgroupfs --runtime crio
    for ((i = 1; i <= $#; i++)); do
        pod=$(testbed_var "$p" "POD${i}_CGROUP")
        expect_eq "$p pod $i: CRI-O's conmon lists first" "$(first_entry "$pod" '^crio-' | cut -c1-12)" "crio-conmon-"
    done
    "$TESTBED" down --prefix "$p" >/dev/null 2>&1
}

scenario_order() {
    # the CI run's testbed: attribution's four pods, the nested one third
    check_order imdst-e34346b64 vpc bridge nested
    local n
    for n in 1 2; do check_order "$PREFIX$n" nested nested nested; done
}

SCENARIO=${1:-}
case "${1:-}" in
order) scenario_order ;;
*) echo "usage: $0 order" >&2; exit 2 ;;
esac
finish
