#!/usr/bin/env bash
# End-to-end test with real parts: CNCF Distribution (Debian's
# docker-registry) as the upstream, skopeo as the client, ferry between
# them, all on loopback.
#
#   1. push two test images (real gzip tar layer + a multi-megabyte random
#      layer): a single-platform one and a two-platform one (an OCI index);
#   2. pull both through ferry (cold) and check every blob's digest;
#   3. stop the registry, wait past ferry's tag TTL (1s here), pull both
#      again by tag (warm, upstream down: stale tags) and check again;
#   4. check every blob in ferry's store against its digest;
#   5. SIGTERM ferry and check it exits 0.
#
# Usage: tests/e2e/run.sh [path/to/ferry]   (default: target/debug/ferry)
set -euo pipefail

cd "$(dirname "$0")/../.."
FERRY=${1:-target/debug/ferry}
WORK=$(mktemp -d)
REG_PID=
FERRY_PID=
passed=0
failed=0

cleanup() {
    [ -n "$FERRY_PID" ] && kill "$FERRY_PID" 2>/dev/null || true
    [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null || true
    if [ -n "${E2E_KEEP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

fail() {
    echo "e2e FAILED: $*" >&2
    for log in "$WORK"/*.log; do
        echo "---- $log (last 30 lines)" >&2
        tail -n 30 "$log" >&2 || true
    done
    failed=$((failed + 1))
    echo "e2e: $passed passed, $failed failed"
    exit 1
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_http() { # url
    for _ in $(seq 1 100); do
        if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# Every file in a skopeo dir: copy except manifests and version is a blob
# named by its sha256.
check_dir() { # dir expected-blobs
    local dir=$1 n=0
    for f in "$dir"/*; do
        case "$(basename "$f")" in *manifest.json|version) continue ;; esac
        local want got
        want=$(basename "$f")
        got=$(sha256sum "$f" | cut -d' ' -f1)
        [ "$want" = "$got" ] || fail "blob $want in $dir hashes to $got"
        n=$((n + 1))
    done
    [ "$n" -eq "$2" ] || fail "$dir holds $n blobs, want $2"
}

[ -x "$FERRY" ] || fail "no ferry binary at $FERRY (run cargo build first)"
command -v skopeo >/dev/null || fail "skopeo is not installed"
command -v docker-registry >/dev/null || fail "docker-registry is not installed"

REG_PORT=$(free_port)
cat > "$WORK/registry.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $WORK/registry-data
http:
  addr: 127.0.0.1:$REG_PORT
YAML
docker-registry serve "$WORK/registry.yml" > "$WORK/registry.log" 2>&1 &
REG_PID=$!
wait_http "http://127.0.0.1:$REG_PORT/v2/" || fail "registry did not start"

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
wait_http "http://127.0.0.1:$FERRY_PORT/v2/" || fail "ferry did not start"

pull() { # image dest [--all]
    skopeo --insecure-policy copy --quiet --src-tls-verify=false ${3:-} \
        "docker://127.0.0.1:$FERRY_PORT/$1" "dir:$2"
}

# 1. Cold pulls through ferry.
pull e2e/app:v1 "$WORK/pull-cold" || fail "cold pull through ferry"
check_dir "$WORK/pull-cold" 3
pull e2e/multi:v1 "$WORK/multi-cold" --all || fail "cold multi-platform pull through ferry"
check_dir "$WORK/multi-cold" 6
passed=$((passed + 1))
echo "e2e: cold pulls through ferry: 3 + 6 blobs (two platforms), digests verified"

# 2. Warm pulls by tag with the upstream stopped and the tag TTL passed.
kill "$REG_PID"; wait "$REG_PID" 2>/dev/null || true; REG_PID=
if curl -fsS -o /dev/null "http://127.0.0.1:$REG_PORT/v2/" 2>/dev/null; then fail "registry still answers"; fi
sleep 2
pull e2e/app:v1 "$WORK/pull-warm" || fail "warm pull with upstream down"
check_dir "$WORK/pull-warm" 3
diff -r "$WORK/pull-cold" "$WORK/pull-warm" > /dev/null || fail "cold and warm pulls differ"
pull e2e/multi:v1 "$WORK/multi-warm" --all || fail "warm multi-platform pull with upstream down"
check_dir "$WORK/multi-warm" 6
diff -r "$WORK/multi-cold" "$WORK/multi-warm" > /dev/null || fail "cold and warm multi-platform pulls differ"
grep -q 'upstream unavailable; serving the stored tag' "$WORK/ferry.log" || fail "ferry did not log the stored-tag fallback"
passed=$((passed + 1))
echo "e2e: warm pulls by tag past the TTL with the upstream stopped: identical, digests verified"

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
passed=$((passed + 1))
echo "e2e: ferry's store holds $stored blobs, each matching its digest"

# 4. SIGTERM: ferry drains and exits 0.
kill -TERM "$FERRY_PID"
if wait "$FERRY_PID"; then FERRY_PID=; else fail "ferry exited non-zero on SIGTERM"; fi
passed=$((passed + 1))
echo "e2e: ferry stopped cleanly on SIGTERM"

echo "e2e: $passed passed, $failed failed"
