#!/usr/bin/env bash
# Record the request heads aws-sdk-go-v2's IMDS client really sends, byte
# for byte (what tests/unit/sdk_request_test.cpp is made from).
#
# Runs in a network namespace it creates (imdst-sdkcap-*, removed on exit)
# where 169.254.169.254 is on lo and a tiny recorder answers like IMDS;
# nothing leaves that namespace.
#   capture.sh IMDS_SDK_CLIENT OUTDIR      (writes OUTDIR/put.bin, OUTDIR/get.bin)
set -euo pipefail
client=$1 out=$2
mkdir -p "$out"
ns=imdst-sdkcap-$$
ip netns add "$ns"
trap 'ip netns del "$ns"' EXIT
in_ns() { nsenter --net="/run/netns/$ns" "$@"; }
in_ns ip link set lo up
in_ns ip addr add 169.254.169.254/32 dev lo
in_ns python3 - "$out" <<'PY' &
import socket, sys
out = sys.argv[1]
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("169.254.169.254", 80)); s.listen(4); s.settimeout(10)
for _ in range(2):
    c, _ = s.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = c.recv(4096)
        if not chunk: break
        head += chunk
    name = "put" if head.startswith(b"PUT ") else "get"
    open(f"{out}/{name}.bin", "wb").write(head)
    body = b"AQAEAFakeSdkT0ken_recorded_by_capture.sh==" if name == "put" else b"i-0123456789abcdef0"
    extra = b"X-Aws-Ec2-Metadata-Token-Ttl-Seconds: 21600\r\n" if name == "put" else b""
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" + extra +
              b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    c.close()
PY
server=$!
sleep 0.5
in_ns "$client" instance-id
wait "$server"
