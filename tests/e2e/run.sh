#!/usr/bin/env bash
# End-to-end test with real parts: CNCF Distribution (Debian's
# docker-registry) as the upstream, skopeo as the client, ferry between
# them, all on loopback.
#
#   1. push a test image (real gzip tar layer + a multi-megabyte random
#      layer) to the registry with skopeo;
#   2. pull it through ferry (cold) and check every blob's digest;
#   3. stop the registry, pull again through ferry (warm, upstream down)
#      and check every blob again;
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

# Every file in a skopeo dir: copy except manifest.json/version is a blob
# named by its sha256.
check_dir() { # dir
    local dir=$1 n=0
    for f in "$dir"/*; do
        case "$(basename "$f")" in manifest.json|version) continue ;; esac
        local want got
        want=$(basename "$f")
        got=$(sha256sum "$f" | cut -d' ' -f1)
        [ "$want" = "$got" ] || fail "blob $want in $dir hashes to $got"
        n=$((n + 1))
    done
    [ "$n" -eq 3 ] || fail "$dir holds $n blobs, want 3 (config + 2 layers)"
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

FERRY_PORT=$(free_port)
RUST_LOG=info "$FERRY" serve --listen "127.0.0.1:$FERRY_PORT" --storage "$WORK/ferry-data" \
    --upstream "http://127.0.0.1:$REG_PORT" > "$WORK/ferry.log" 2>&1 &
FERRY_PID=$!
wait_http "http://127.0.0.1:$FERRY_PORT/v2/" || fail "ferry did not start"

# 1. Cold pull through ferry.
skopeo --insecure-policy copy --quiet --src-tls-verify=false \
    "docker://127.0.0.1:$FERRY_PORT/e2e/app:v1" "dir:$WORK/pull-cold" || fail "cold pull through ferry"
check_dir "$WORK/pull-cold"
passed=$((passed + 1))
echo "e2e: cold pull through ferry: 3 blobs, digests verified"

# 2. Warm pull with the upstream stopped.
kill "$REG_PID"; wait "$REG_PID" 2>/dev/null || true; REG_PID=
if curl -fsS -o /dev/null "http://127.0.0.1:$REG_PORT/v2/" 2>/dev/null; then fail "registry still answers"; fi
skopeo --insecure-policy copy --quiet --src-tls-verify=false \
    "docker://127.0.0.1:$FERRY_PORT/e2e/app:v1" "dir:$WORK/pull-warm" || fail "warm pull with upstream down"
check_dir "$WORK/pull-warm"
diff -r "$WORK/pull-cold" "$WORK/pull-warm" > /dev/null || fail "cold and warm pulls differ"
grep -q 'upstream unavailable; serving the stored tag' "$WORK/ferry.log" || fail "ferry did not log the stored-tag fallback"
passed=$((passed + 1))
echo "e2e: warm pull with the upstream stopped: identical, digests verified"

# 3. Every blob ferry stored matches its digest; no temp files remain.
stored=0
while IFS= read -r f; do
    want=$(basename "$f")
    got=$(sha256sum "$f" | cut -d' ' -f1)
    [ "$want" = "$got" ] || fail "stored blob $f hashes to $got"
    stored=$((stored + 1))
done < <(find "$WORK/ferry-data/blobs" -type f)
[ "$stored" -eq 3 ] || fail "ferry stored $stored blobs, want 3"
[ -z "$(ls -A "$WORK/ferry-data/tmp")" ] || fail "temp files left in the store"
passed=$((passed + 1))
echo "e2e: ferry's store holds $stored blobs, each matching its digest"

# 4. SIGTERM: ferry drains and exits 0.
kill -TERM "$FERRY_PID"
if wait "$FERRY_PID"; then FERRY_PID=; else fail "ferry exited non-zero on SIGTERM"; fi
passed=$((passed + 1))
echo "e2e: ferry stopped cleanly on SIGTERM"

echo "e2e: $passed passed, $failed failed"
