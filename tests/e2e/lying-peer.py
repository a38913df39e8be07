#!/usr/bin/env python3
"""A lying cluster peer, for tests/e2e/cluster-chaos.sh.

Usage: lying-peer.py PORT SECRET_FILE REGISTRY_URL LOG [DELAY_S]
       lying-peer.py PORT SECRET_FILE REGISTRY_URL LOG --forge-tag NAME:TAG --layer REPO@DIGEST

Listed among every ferry replica's `ferry.cluster.peers` and holding the
cluster's secret, it looks like a healthy replica: `GET /readyz` is 200.
A blob `GET /v2/<name>/blobs/<digest>` (a replica asking the digest's
owner) is answered with a correctly signed answer (`ferry-peer-answer`,
as src/cluster/signature.rs `answer_mac` computes it: HMAC-SHA256 with
the secret over "answer", the request's `ferry-peer-signature`, the
status, `Docker-Content-Digest`, `Content-Length`, `Content-Range`,
`ferry-peer-have` and `ferry-peer-relay` (both empty here), each followed
by "\\n"), the right digest and length, a `206` for a
`Range: bytes=<n>-`, and the real blob's bytes fetched from REGISTRY_URL,
except one byte in the middle, flipped. The answer comes DELAY_S seconds
(default 0) after the request, as an owner's that first waits for its own
upstream: replicas whose clients come a moment apart all ask before any
of them has caught the lie. Anything else (a tag, a HEAD) is
a 503 without a signature, which ferry takes as "go elsewhere".

With --forge-tag it is a forger WITHOUT the cluster's secret instead
(SECRET_FILE holds another one): at start it reads the real manifest of
NAME:TAG and the blob DIGEST of REPO (a layer of a protected repository)
from REGISTRY_URL, and makes a forged manifest: the real one with its
layers replaced by that one layer (its digest and size); it prints
`forged <digest> layer <digest> <size>` on standard output. Then every
`GET` of NAME's manifests (by tag or by the forged digest) is answered at
once with a 200 and the forged manifest (`Content-Type` its media type,
`Docker-Content-Digest` of its bytes, `Content-Length`), and every `GET`
of the blob DIGEST (under any repository; a `Range: bytes=<n>-` gets a
206) with its real bytes; a `HEAD` of either gets the same head, no body.
Each of these answers carries a `ferry-peer-answer` computed as above,
with the forger's own (wrong) secret. Anything else is a 503 without a
signature. The log line of a forged answer ends in ` forged=manifest`
or ` forged=blob`.

Every request is logged to LOG as one line:
`<method> <path> from=<ferry-peer> range=<range> signed=<ok|bad|none>`
(signed: checked with SECRET_FILE's secret; a forger's is not the
cluster's, so its lines say bad). Standard library only.
"""
import argparse
import hashlib
import hmac
import json
import re
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ARGS = argparse.ArgumentParser()
ARGS.add_argument("port", type=int)
ARGS.add_argument("secret_file")
ARGS.add_argument("registry")
ARGS.add_argument("log")
ARGS.add_argument("delay", type=float, nargs="?", default=0.0)
ARGS.add_argument("--forge-tag", metavar="NAME:TAG")
ARGS.add_argument("--layer", metavar="REPO@DIGEST")
ARGS = ARGS.parse_args()
if bool(ARGS.forge_tag) != bool(ARGS.layer):
    sys.exit("--forge-tag and --layer go together")
PORT = ARGS.port
with open(ARGS.secret_file) as f:
    SECRET = f.read().strip().encode()  # ferry trims the secret file
REGISTRY = ARGS.registry.rstrip("/")
LOG = open(ARGS.log, "a", buffering=1)
DELAY = ARGS.delay
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


MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


def forge():
    """(name, tag, manifest bytes, its media type, its digest, layer digest,
    layer bytes): NAME:TAG's real manifest with the protected layer as its
    only layer."""
    name, tag = ARGS.forge_tag.rsplit(":", 1)
    repo, layer = ARGS.layer.split("@", 1)
    req = urllib.request.Request(f"{REGISTRY}/v2/{name}/manifests/{tag}",
                                 headers={"Accept": MANIFEST_TYPES})
    with urllib.request.urlopen(req, timeout=30) as r:
        real = json.loads(r.read())
        media_type = r.headers.get("Content-Type")
    data = real_blob(repo, layer)
    real["layers"] = [{
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": layer,
        "size": len(data),
    }]
    body = json.dumps(real).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    return name, tag, body, real.get("mediaType", media_type), digest, layer, bytes(data)


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
        if FORGED and self.forged():
            return
        self.log()
        self.plain(503)

    def forged(self):
        """A forger's answer, if the request is for the forged tag or the
        protected layer; False otherwise."""
        name, tag, body, media_type, digest, layer, data = FORGED
        m = BLOB.match(self.path)
        if self.path in (f"/v2/{name}/manifests/{tag}", f"/v2/{name}/manifests/{digest}"):
            what, status, content_type, content_range, payload = "manifest", 200, media_type, "", body
            answered = digest
        elif m and m.group(2) == layer:
            what, status, content_type, content_range, payload = "blob", 200, "application/octet-stream", "", data
            answered = layer
            r = RANGE.match(self.headers.get("Range", ""))
            if r and 0 < int(r.group(1)) < len(data):
                start = int(r.group(1))
                status, payload = 206, data[start:]
                content_range = f"bytes {start}-{len(data) - 1}/{len(data)}"
        else:
            return False
        # Signed as an owner signs its answer, with the forger's secret.
        answer = mac(["answer", self.headers.get("ferry-peer-signature", ""), str(status),
                      answered, str(len(payload)), content_range, "", ""])
        self.log(f" status={status} length={len(payload)} forged={what}")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Docker-Content-Digest", answered)
        self.send_header("Content-Length", str(len(payload)))
        if content_range:
            self.send_header("Content-Range", content_range)
        self.send_header("ferry-peer-answer", answer)
        self.end_headers()
        if self.command == "GET":
            try:
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass
        return True

    def do_GET(self):
        if self.path == "/readyz":
            return self.plain(200)
        if FORGED:
            if not self.forged():
                self.log()
                self.plain(503, b"a forger does not serve this\n")
            return
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
                      digest, str(length), content_range, "", ""])
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


FORGED = forge() if ARGS.forge_tag else None
if FORGED:
    print(f"forged {FORGED[4]} layer {FORGED[5]} {len(FORGED[6])}", flush=True)
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
