#!/usr/bin/env bash
# Install everything imdstrace needs to build and test, from Debian packages
# (nothing is downloaded at build time).  Idempotent; root.
#   scripts/setup.sh            build + test dependencies
#   scripts/setup.sh --build    only what builds the imdstrace binary (deploy/Dockerfile's build stage)
#   scripts/setup.sh --matrix   also the kernel-matrix tools for both rows, x86_64 and arm64
#                               (qemu-system-x86/-arm, busybox, the aarch64 cross compiler, ...)
set -euo pipefail

build_pkgs=(
  build-essential cmake pkg-config
  clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev
  libspdlog-dev libfmt-dev libcli11-dev nlohmann-json3-dev libyaml-cpp-dev
  libcpp-httplib-dev libcurl4-openssl-dev
)
pkgs=(
  build-essential cmake pkg-config
  clang llvm                      # BPF target (clang -target bpf)
  libbpf-dev bpftool              # libbpf, skeletons (bpftool gen skeleton)
  libelf-dev zlib1g-dev
  libspdlog-dev libfmt-dev libcli11-dev nlohmann-json3-dev
  libgtest-dev
  libyaml-cpp-dev                 # --pods k8s-api: kubeconfig files
  libcpp-httplib-dev libcurl4-openssl-dev tcpdump   # metrics server, k8s API client, pcap checks
  bpftrace                        # bench/: the per-drop cost of a bpftrace one-liner beside ours
  iproute2 iptables nftables util-linux jq curl   # testbed: ip, tc, nsenter; assertions, metrics scrapes
  mount                           # e2e as the DaemonSet runs: mount --bind (unshare: util-linux)
  python3-yaml                    # tests/deploy: parse the Kubernetes manifests
  libclang-rt-14-dev              # tests/fuzz: libFuzzer, ASan, UBSan runtimes for Debian's clang
  golang-go golang-github-aws-aws-sdk-go-v2-dev   # the real aws-sdk-go-v2 IMDS client (tests/testbed/sdk_client)
  prometheus                      # tests/e2e/fleet.sh (a real Prometheus), promtool (tests/deploy: rules)
  mmdebstrap podman               # tests/e2e/image.sh: the image built from deploy/Dockerfile, no registry
  libcap2-bin                     # capsh: the image run with exactly the DaemonSet's capabilities
)
[ "${1:-}" = "--build" ] && pkgs=("${build_pkgs[@]}")

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (it installs packages with apt-get)" >&2
  exit 1
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "${1:-}" = "--matrix" ]; then
  "$(dirname "$0")/setup-kernel-matrix.sh" --arch all
fi
echo "setup: ok"
