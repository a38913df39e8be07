#!/usr/bin/env python3
"""A streaming blob client for tests/e2e/cluster-chaos.sh.

Usage: chaos-client.py URL DIGEST GIVEUP_S [range|scratch]

GETs URL (a blob), hashing the body as it reads it (nothing is kept), and
checks it against DIGEST. The first attempt gives up on a connection that
stalls: no response head, or no byte, for GIVEUP_S seconds. After an error
(a broken or short body, a status other than 200, a stall) it retries
ONCE, through the same URL (the balancer):

  range   (default) from where it is: `Range: bytes=<n>-`, hashing on; the
          answer must be a 206 starting at n (a 200 is read past n bytes);
  scratch from byte 0 with a fresh hash (for an answer whose bytes already
          read may be wrong: the client cannot tell which).

The retry is not given up on a stall (there is no third attempt); it fails
after 60 s without a byte. It starts at once, or after CHAOS_RETRY_DELAY
seconds (environment; default 0). Prints one JSON object:

  ok          the final bytes hash to DIGEST and were complete
  sha_ok      the final hash matched
  wrong       attempts that ended cleanly (all of Content-Length, no error)
              with bytes that do not hash to DIGEST: a wrong image taken
  ttfb_ms     from the first request to the first byte of the body
  max_gap_ms  the longest time between two received chunks, a retry's
              gap included (from the last byte before the error to the
              first byte of the retry)
  stall_ms    max(ttfb_ms, max_gap_ms)
  retried     whether the retry was needed; errors: what went wrong, with
              the replica that answered (nginx's X-Ferry-Replica) if any
Standard library only (http.client, hashlib, time).
"""
import hashlib
import http.client
import json
import os
import sys
import time
import urllib.parse

URL, DIGEST, GIVEUP = sys.argv[1], sys.argv[2], float(sys.argv[3])
MODE = sys.argv[4] if len(sys.argv) > 4 else "range"
RETRY_GIVEUP = 60.0
RETRY_DELAY = float(os.environ.get("CHAOS_RETRY_DELAY", "0"))
u = urllib.parse.urlsplit(URL)

state = {
    "hash": hashlib.sha256(),
    "got": 0,  # bytes hashed
    "t0": time.monotonic(),
    "last": None,  # when the last chunk came
    "ttfb": None,
    "gap": 0.0,
}
errors = []
wrong = 0


class Failed(Exception):
    pass


def chunk(data):
    now = time.monotonic()
    if state["ttfb"] is None:
        state["ttfb"] = now - state["t0"]
    if state["last"] is not None:
        state["gap"] = max(state["gap"], now - state["last"])
    state["last"] = now
    state["hash"].update(data)
    state["got"] += len(data)


def attempt(start, giveup):
    """One GET from byte `start`; returns True when the body ended cleanly."""
    global wrong
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=giveup)
    via = "?"
    try:
        headers = {"Range": f"bytes={start}-"} if start else {}
        conn.request("GET", u.path, headers=headers)
        resp = conn.getresponse()
        via = resp.getheader("X-Ferry-Replica", "?")
        skip = 0
        if start and resp.status == 206:
            cr = resp.getheader("Content-Range", "")
            if not cr.startswith(f"bytes {start}-"):
                raise Failed(f"206 with Content-Range {cr!r} for bytes={start}-")
        elif resp.status == 200:
            skip = start  # a 200 to a Range: the whole blob again
        else:
            body = resp.read(2000)
            raise Failed(f"status {resp.status}: {body[:300]!r}")
        while True:
            data = resp.read1(1 << 20)
            if not data:
                if resp.length:  # short: the connection ended early
                    raise Failed(f"body ended {resp.length} bytes short at byte {state['got']}")
                break
            if skip:
                n = min(skip, len(data))
                skip -= n
                data = data[n:]
                if not data:
                    continue
            chunk(data)
        if "sha256:" + state["hash"].hexdigest() != DIGEST:
            wrong += 1
            raise Failed(f"complete answer of {state['got']} bytes with another digest")
        return True
    except (OSError, http.client.HTTPException, Failed) as e:
        kind = "stalled" if isinstance(e, TimeoutError) else type(e).__name__
        errors.append(f"{kind} at byte {state['got']} (from {start}, via {via}): {e}")
        return False
    finally:
        conn.close()


ok = attempt(0, GIVEUP)
retried = not ok
if not ok:
    time.sleep(RETRY_DELAY)
    if MODE == "scratch":
        state["hash"] = hashlib.sha256()
        state["got"] = 0
    ok = attempt(state["got"], RETRY_GIVEUP)
sha_ok = "sha256:" + state["hash"].hexdigest() == DIGEST
now = time.monotonic()
ttfb = state["ttfb"] if state["ttfb"] is not None else now - state["t0"]
if not ok and state["last"] is not None:
    # A client that never got its last bytes stalled until it gave up.
    state["gap"] = max(state["gap"], now - state["last"])
print(json.dumps({
    "ok": bool(ok and sha_ok),
    "sha_ok": sha_ok,
    "wrong": wrong,
    "ttfb_ms": round(ttfb * 1000),
    "max_gap_ms": round(state["gap"] * 1000),
    "stall_ms": round(max(ttfb, state["gap"]) * 1000),
    "retried": retried,
    "bytes": state["got"],
    "took_ms": round((now - state["t0"]) * 1000),
    "errors": errors,
}))
