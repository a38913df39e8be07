#!/usr/bin/env bash
# End-to-end test with real parts: CNCF Distribution (Debian's
# docker-registry) as the upstream, skopeo as the client, ferry between
# them, all on loopback.
#
#   1. push two test images (real gzip tar layer + a multi-megabyte random
#      layer): a single-platform one and a two-platform one (an OCI index);
#   2. pull both through ferry (cold) and check every blob's digest; then
#      ask for three ranges of a layer in one GET (curl -r a-b,c-d,-n):
#      a 206 multipart/byteranges whose parts are exactly those bytes;
#   3. stop the registry, wait past ferry's tag TTL (1s here), pull both
#      again by tag (warm, upstream down: stale tags) and check again;
#   4. check every blob in ferry's store against its digest;
#   5. SIGTERM ferry and check it exits 0.
#
# Usage: tests/e2e/run.sh [path/to/ferry]   (default: target/debug/ferry)
set -euo pipefail

cd "$(dirname "$0")/../.."
FERRY=${1:-target/debug/ferry}
NAME=e2e
WORK=$(mktemp -d)
REG_PID=
. tests/e2e/lib.sh
trap e2e_cleanup EXIT

[ -x "$FERRY" ] || fail "no ferry binary at $FERRY (run cargo build first)"
command -v skopeo >/dev/null || fail "skopeo is not installed"
command -v docker-registry >/dev/null || fail "docker-registry is not installed"

start_registry < /dev/null

python3 tests/e2e/make-image.py "$WORK/oci" v1 6
skopeo --insecure-policy copy --quiet --dest-tls-verify=false \
    "oci:$WORK/oci:v1" "docker://127.0.0.1:$REG_PORT/e2e/app:v1" || fail "push to registry"
python3 tests/e2e/make-image.py "$WORK/oci-multi" v1 2 amd64,arm64
skopeo --insecure-policy copy --quiet --all --dest-tls-verify=false \
    "oci:$WORK/oci-multi:v1" "docker://127.0.0.1:$REG_PORT/e2e/multi:v1" || fail "push multi-platform image"

FERRY_PORT=$(free_port)
cat > "$WORK/ferry.json" <<JSON
{
  "http": {"address": "127.0.0.1", "port": "$FERRY_PORT"},
  "storage": {"rootDirectory": "$WORK/ferry-data"},
  "extensions": {"sync": {"enable": true, "registries": [
    {"urls": ["http://127.0.0.1:$REG_PORT"], "onDemand": true, "tagTTL": "1s",
     "maxRetries": 1, "retryDelay": "100ms"}
  ]}}
}
JSON
"$FERRY" check-config "$WORK/ferry.json" > /dev/null || fail "ferry check-config"
RUST_LOG=info "$FERRY" serve --config "$WORK/ferry.json" > "$WORK/ferry.log" 2>&1 &
FERRY_PID=$!
PIDS+=("$FERRY_PID")
wait_port "$FERRY_PORT" || fail "ferry did not start"

pull() { # image dest [--all]
    skopeo --insecure-policy copy --quiet --src-tls-verify=false ${3:-} \
        "docker://127.0.0.1:$FERRY_PORT/$1" "dir:$2"
}

# 1. Cold pulls through ferry.
pull e2e/app:v1 "$WORK/pull-cold" || fail "cold pull through ferry"
check_dir "$WORK/pull-cold" 3
pull e2e/multi:v1 "$WORK/multi-cold" --all || fail "cold multi-platform pull through ferry"
check_dir "$WORK/multi-cold" 6
ok "cold pulls through ferry: 3 + 6 blobs (two platforms), digests verified"

# 1b. Several ranges in one request, as podman's partial pulls ask: curl
# gets a 206 multipart/byteranges whose parts are exactly those bytes.
LAYER=$(ls -S "$WORK/pull-cold" | grep -E '^[0-9a-f]{64}$' | head -n 1)
curl -fsS -D "$WORK/ranges.head" -o "$WORK/ranges.body" -r 0-99,1000-1099,-50 \
    "http://127.0.0.1:$FERRY_PORT/v2/e2e/app/blobs/sha256:$LAYER" || fail "multi-range GET"
python3 - "$WORK/ranges.head" "$WORK/ranges.body" "$WORK/pull-cold/$LAYER" <<'PY' || fail "multi-range answer"
import re, sys
head, body, blob = open(sys.argv[1]).read(), open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read()
assert head.startswith("HTTP/1.1 206"), head
boundary = re.search(r"(?i)content-type: multipart/byteranges; boundary=(\S+)", head).group(1)
parts = body.split(b"\r\n--" + boundary.encode())
assert parts[-1] == b"--\r\n", parts[-1][:40]
size = len(blob)
want = [(0, 99), (1000, 1099), (size - 50, size - 1)]
got = []
for p in parts[1:-1]:
    h, data = p.split(b"\r\n\r\n", 1)
    a, b = map(int, re.search(rb"Content-Range: bytes (\d+)-(\d+)/", h).groups())
    assert data == blob[a:b + 1], (a, b)
    got.append((a, b))
assert got == want, got
PY
ok "several ranges in one GET (curl -r 0-99,1000-1099,-50): 206 multipart/byteranges, 3 parts byte-exact"

# 2. Warm pulls by tag with the upstream stopped and the tag TTL passed.
kill "$REG_PID"; wait "$REG_PID" 2>/dev/null || true
if curl -fsS -o /dev/null "http://127.0.0.1:$REG_PORT/v2/" 2>/dev/null; then fail "registry still answers"; fi
sleep 2
pull e2e/app:v1 "$WORK/pull-warm" || fail "warm pull with upstream down"
check_dir "$WORK/pull-warm" 3
diff -r "$WORK/pull-cold" "$WORK/pull-warm" > /dev/null || fail "cold and warm pulls differ"
pull e2e/multi:v1 "$WORK/multi-warm" --all || fail "warm multi-platform pull with upstream down"
check_dir "$WORK/multi-warm" 6
diff -r "$WORK/multi-cold" "$WORK/multi-warm" > /dev/null || fail "cold and warm multi-platform pulls differ"
grep -q 'upstream unavailable; serving the stored tag' "$WORK/ferry.log" || fail "ferry did not log the stored-tag fallback"
ok "warm pulls by tag past the TTL with the upstream stopped: identical, digests verified"

# 3. Every blob ferry stored matches its digest; no temp files remain.
stored=0
while IFS= read -r f; do
    want=$(basename "$f")
    got=$(sha256sum "$f" | cut -d' ' -f1)
    [ "$want" = "$got" ] || fail "stored blob $f hashes to $got"
    stored=$((stored + 1))
done < <(find "$WORK/ferry-data/blobs" -type f)
want=$(ls "$WORK/pull-cold" "$WORK/multi-cold" | grep -E '^[0-9a-f]{64}$' | sort -u | wc -l)
[ "$stored" -eq "$want" ] || fail "ferry stored $stored blobs, want $want (the distinct blobs pulled)"
[ -z "$(ls -A "$WORK/ferry-data/tmp")" ] || fail "temp files left in the store"
ok "ferry's store holds $stored blobs, each matching its digest"

# 4. SIGTERM: ferry drains and exits 0.
kill -TERM "$FERRY_PID"
wait "$FERRY_PID" || fail "ferry exited non-zero on SIGTERM"
ok "ferry stopped cleanly on SIGTERM"
finish
