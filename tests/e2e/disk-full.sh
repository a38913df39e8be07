#!/usr/bin/env bash
# End-to-end test of a full store with real parts: ferry's store on a small
# tmpfs (mounted by this script; needs root), Debian's docker-registry as
# upstream, skopeo as client. The first pull fills the store: what does not
# fit is served uncached and the pull still succeeds with correct blobs.
# Then space is freed and the next pull caches the rest.
#
# Usage: tests/e2e/disk-full.sh [path/to/ferry]
set -euo pipefail

cd "$(dirname "$0")/../.."
FERRY=${1:-target/debug/ferry}
NAME=e2e-disk-full
WORK=$(mktemp -d)
. tests/e2e/lib.sh
unmount() {
    # Stop ferry first: a process with files open keeps the mount busy.
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    umount "$WORK/small" 2>/dev/null || umount -l "$WORK/small" 2>/dev/null || true
    e2e_cleanup
}
trap unmount EXIT

[ "$(id -u)" -eq 0 ] || fail "needs root to mount a tmpfs"
mkdir -p "$WORK/small"
mount -t tmpfs -o size=24m tmpfs "$WORK/small" || fail "cannot mount a tmpfs"
# Leave about 14 MiB free: room for one 8 MiB layer, not two.
head -c $((10 << 20)) /dev/zero > "$WORK/small/filler"

start_registry < /dev/null
python3 tests/e2e/make-image.py "$WORK/oci" v1 8 amd64,arm64 > /dev/null
skopeo --insecure-policy copy --quiet --all --dest-tls-verify=false \
    "oci:$WORK/oci:v1" "docker://127.0.0.1:$REG_PORT/big/app:v1" || fail "push"

PORT=$(free_port)
cat > "$WORK/ferry.json" <<JSON
{
  "http": {"address": "127.0.0.1", "port": "$PORT"},
  "storage": {"rootDirectory": "$WORK/small/store"},
  "extensions": {"sync": {"enable": true, "registries": [{"urls": ["http://127.0.0.1:$REG_PORT"]}]}},
  "ferry": {"minFreeSpace": "1MiB"}
}
JSON
RUST_LOG=info "$FERRY" serve --config "$WORK/ferry.json" > "$WORK/ferry.log" 2>&1 &
PIDS+=($!)
wait_port "$PORT" || fail "ferry did not start"

pull() { # dest
    skopeo --insecure-policy copy --quiet --all --src-tls-verify=false \
        "docker://127.0.0.1:$PORT/big/app:v1" "dir:$1"
}
stored_big() {
    find "$WORK/small/store/blobs" -type f -size +1M | wc -l
}

pull "$WORK/pull1" || fail "pull with the store filling up"
check_dir "$WORK/pull1" 6
grep -q "serving blob uncached" "$WORK/ferry.log" || fail "nothing was served uncached"
[ "$(stored_big)" -eq 1 ] || fail "expected one big layer cached, found $(stored_big)"
ok "store full: pull succeeded, 6 blobs verified, one big layer cached, the other served uncached"

rm "$WORK/small/filler"
pull "$WORK/pull2" || fail "pull after space returned"
check_dir "$WORK/pull2" 6
[ "$(stored_big)" -eq 2 ] || fail "caching did not resume: $(stored_big) big layers cached"
curl -fsS "http://127.0.0.1:$PORT/v2/" > /dev/null || fail "ferry is not answering"
ok "space returned: caching resumed, both big layers now stored"
finish
