#!/usr/bin/env python3
"""A lying cluster peer, for tests/e2e/cluster-chaos.sh.

Usage: lying-peer.py PORT SECRET_FILE REGISTRY_URL LOG [DELAY_S]

Listed among every ferry replica's `ferry.cluster.peers` and holding the
cluster's secret, it looks like a healthy replica: `GET /readyz` is 200.
A blob `GET /v2/<name>/blobs/<digest>` (a replica asking the digest's
owner) is answered with a correctly signed answer (`ferry-peer-answer`,
as src/cluster/signature.rs `answer_mac` computes it: HMAC-SHA256 with
the secret over "answer", the request's `ferry-peer-signature`, the
status, `Docker-Content-Digest`, `Content-Length`, `Content-Range` and
`ferry-peer-have` (empty here), each followed by "\\n"), the right digest and length, a `206` for a
`Range: bytes=<n>-`, and the real blob's bytes fetched from REGISTRY_URL,
except one byte in the middle, flipped. The answer comes DELAY_S seconds
(default 0) after the request, as an owner's that first waits for its own
upstream: replicas whose clients come a moment apart all ask before any
of them has caught the lie. Anything else (a tag, a HEAD) is
a 503 without a signature, which ferry takes as "go elsewhere".

Every request is logged to LOG as one line:
`<method> <path> from=<ferry-peer> range=<range> signed=<ok|bad|none>`.
Standard library only.
"""
import hashlib
import hmac
import re
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
with open(sys.argv[2]) as f:
    SECRET = f.read().strip().encode()  # ferry trims the secret file
REGISTRY = sys.argv[3].rstrip("/")
LOG = open(sys.argv[4], "a", buffering=1)
DELAY = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
LOG_LOCK = threading.Lock()

BLOB = re.compile(r"^/v2/(.+)/blobs/(sha256:[0-9a-f]{64})$")
RANGE = re.compile(r"^bytes=(\d+)-$")

blobs = {}  # digest -> the real bytes
blobs_lock = threading.Lock()


def real_blob(name, digest):
    with blobs_lock:
        if digest in blobs:
            return blobs[digest]
    with urllib.request.urlopen(f"{REGISTRY}/v2/{name}/blobs/{digest}", timeout=60) as r:
        data = r.read()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest, "registry sent other bytes"
    with blobs_lock:
        blobs[digest] = data
    return data


def mac(parts):
    m = hmac.new(SECRET, digestmod=hashlib.sha256)
    for p in parts:
        m.update(p.encode())
        m.update(b"\n")
    return m.hexdigest()


def request_signed(method, path, h):
    """Checks the request's signature as src/cluster/signature.rs `mac`
    does (sender, method, path, repo, client, time, nonce), for the log."""
    sig = h.get("ferry-peer-signature")
    if sig is None:
        return "none"
    parts = [h.get("ferry-peer", ""), method, path, h.get("ferry-peer-repo", ""),
             h.get("ferry-peer-client", ""), h.get("ferry-peer-time", ""),
             h.get("ferry-peer-nonce", "")]
    return "ok" if hmac.compare_digest(mac(parts), sig) else "bad"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def log(self, extra=""):
        h = self.headers
        line = (f"{self.command} {self.path} from={h.get('ferry-peer', '-')} "
                f"range={h.get('Range', '-')} signed={request_signed(self.command, self.path, h)}{extra}")
        with LOG_LOCK:
            LOG.write(line + "\n")

    def plain(self, status, body=b""):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.log()
        self.plain(503)

    def do_GET(self):
        if self.path == "/readyz":
            return self.plain(200)
        m = BLOB.match(self.path)
        if not m:
            self.log()
            return self.plain(503, b"a liar does not serve this\n")
        name, digest = m.group(1), m.group(2)
        time.sleep(DELAY)
        try:
            data = bytearray(real_blob(name, digest))
        except Exception as e:  # noqa: BLE001 - anything: not served
            self.log(f" error={e!r}")
            return self.plain(503)
        # The lie: one byte in the middle of the blob, flipped.
        data[len(data) // 2] ^= 0x01
        size = len(data)
        start, status, content_range = 0, 200, ""
        r = RANGE.match(self.headers.get("Range", ""))
        if r and 0 < int(r.group(1)) < size:
            start, status = int(r.group(1)), 206
            content_range = f"bytes {start}-{size - 1}/{size}"
        length = size - start
        answer = mac(["answer", self.headers.get("ferry-peer-signature", ""), str(status),
                      digest, str(length), content_range, ""])
        self.log(f" status={status} length={length}")
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Docker-Content-Digest", digest)
        self.send_header("Content-Length", str(length))
        if content_range:
            self.send_header("Content-Range", content_range)
        self.send_header("ferry-peer-answer", answer)
        self.end_headers()
        view = memoryview(data)[start:]
        try:
            for i in range(0, len(view), 256 * 1024):
                self.wfile.write(view[i:i + 256 * 1024])
        except (BrokenPipeError, ConnectionResetError):
            pass


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
