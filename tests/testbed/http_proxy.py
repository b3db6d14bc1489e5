#!/usr/bin/env python3
"""http_proxy.py: a minimal forwarding HTTP proxy for the testbed, as squid
and most corporate proxies behave: it takes absolute-URI requests
("GET http://host/path", RFC 9112 3.2.2), forwards them with an added
X-Forwarded-For header and relays the answer.  IMDS refuses a token PUT
carrying X-Forwarded-For (403), which is how a proxied pod fails.

It forwards to whatever the URI names (the metadata address, inside a test
namespace), so it refuses to run in PID 1's network namespace.

    http_proxy.py LISTEN_ADDR PORT PIDFILE READYFILE
"""
import http.client
import http.server
import os
import sys
import urllib.parse


def in_root_netns():
    """True unless this is provably a test namespace: not PID 1's, or (where
    PID 1's cannot be read) one of the testbed's named /run/netns/imdst-*."""
    self_ns = os.stat("/proc/self/ns/net")
    try:
        return os.stat("/proc/1/ns/net").st_ino == self_ns.st_ino
    except OSError:
        pass
    for name in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
        if name.startswith("imdst-"):
            st = os.stat(os.path.join("/run/netns", name))
            if (st.st_dev, st.st_ino) == (self_ns.st_dev, self_ns.st_ino):
                return False
    return True


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def relay(self):
        url = urllib.parse.urlsplit(self.path)
        if url.scheme != "http" or not url.hostname:
            self.send_error(400, "absolute URI required")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
        headers["X-Forwarded-For"] = self.client_address[0]
        upstream = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=5)
        try:
            upstream.request(self.command, url.path + ("?" + url.query if url.query else ""), body, headers)
            answer = upstream.getresponse()
            data = answer.read()
        except OSError as e:
            self.send_error(502, str(e))
            return
        finally:
            upstream.close()
        self.send_response(answer.status, answer.reason)
        for k, v in answer.getheaders():
            if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = relay

    def log_message(self, fmt, *args):
        sys.stderr.write("http_proxy: " + fmt % args + "\n")


def main():
    if len(sys.argv) != 5:
        sys.exit("usage: http_proxy.py LISTEN_ADDR PORT PIDFILE READYFILE")
    if in_root_netns():
        sys.exit("http_proxy: refusing to run in PID 1's network namespace: run it inside a test namespace")
    addr, port, pidfile, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    server = http.server.ThreadingHTTPServer((addr, port), Proxy)
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
    open(ready, "w").close()
    server.serve_forever()


if __name__ == "__main__":
    main()
