#!/usr/bin/env bash
# Chaos run with real parts: skopeo pulls images through ferry from
# Debian's docker-registry while, at random moments, ferry is killed with
# SIGKILL and restarted, and the upstream registry is stopped and started
# again. Every round starts 1-3 concurrent pulls, waits a random moment,
# strikes (or not), and lets the pulls end.
#
# It checks what must hold whatever happens:
#   - a pull that reports success got every blob with the right digest;
#   - after the last round, `ferry scrub` finds nothing damaged in the store
#     and no temp file is left once ferry ran again;
#   - with everything up again, every image pulls completely and correctly
#     (nothing that was reported stored is lost or corrupt).
#
# Usage: scripts/chaos.sh [path/to/ferry] [rounds]   (default: 12 rounds,
#        or CHAOS_ROUNDS; needs skopeo and docker-registry). Seeded by
#        CHAOS_SEED (default: the time), printed so a failure can be replayed.
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY=${1:-target/debug/ferry}
ROUNDS=${2:-${CHAOS_ROUNDS:-12}}
SEED=${CHAOS_SEED:-$(date +%s)}
RANDOM=$SEED
NAME=chaos
WORK=$(mktemp -d)
. tests/e2e/lib.sh
trap e2e_cleanup EXIT
[ -x "$FERRY" ] || fail "no ferry binary at $FERRY"
echo "chaos: seed $SEED, $ROUNDS rounds"

start_registry < /dev/null
IMAGES=(chaos/a:v1 chaos/b:v1 chaos/c:v1)
BLOBS=(3 3 3)
for i in 0 1 2; do
    python3 tests/e2e/make-image.py "$WORK/oci-$i" v1 $((32 + 32 * i)) > /dev/null
    skopeo --insecure-policy copy --quiet --dest-tls-verify=false \
        "oci:$WORK/oci-$i:v1" "docker://127.0.0.1:$REG_PORT/${IMAGES[$i]}" || fail "push ${IMAGES[$i]}"
done

restart_registry() {
    docker-registry serve "$WORK/registry.yml" >> "$WORK/registry.log" 2>&1 &
    REG_PID=$!
    PIDS+=("$REG_PID")
    wait_port "$REG_PORT" || fail "registry did not restart"
}

FERRY_PORT=$(free_port)
cat > "$WORK/ferry.json" <<JSON
{
  "http": {"address": "127.0.0.1", "port": "$FERRY_PORT"},
  "storage": {"rootDirectory": "$WORK/ferry-data"},
  "extensions": {"sync": {"enable": true, "registries": [
    {"urls": ["http://127.0.0.1:$REG_PORT"], "tagTTL": "1s", "maxRetries": 2, "retryDelay": "100ms"}
  ]}},
  "ferry": {"idleReadTimeout": "3s", "absentTTL": "0s"}
}
JSON
FERRY_PID=
start_ferry() {
    RUST_LOG=info "$FERRY" serve --config "$WORK/ferry.json" >> "$WORK/ferry.log" 2>&1 &
    FERRY_PID=$!
    PIDS+=("$FERRY_PID")
    wait_port "$FERRY_PORT" || fail "ferry did not start"
}

pull() { # image dest
    timeout 60 skopeo --insecure-policy copy --quiet --src-tls-verify=false \
        --retry-times 0 "docker://127.0.0.1:$FERRY_PORT/$1" "dir:$2" > /dev/null 2>&1
}

start_ferry
succeeded=0
interrupted=0
kills=0
outages=0
for round in $(seq 1 "$ROUNDS"); do
    n=$((1 + RANDOM % 3))
    jobs_=()
    dests=()
    for j in $(seq 1 "$n"); do
        i=$((RANDOM % 3))
        dest="$WORK/pull-$round-$j-$i"
        pull "${IMAGES[$i]}" "$dest" &
        jobs_+=($!)
        dests+=("$dest:$i")
    done
    # Strike while the pulls are moving (they take a fraction of a second).
    sleep "0.0$((RANDOM % 10))"
    case $((RANDOM % 3)) in
        0)
            kill -9 "$FERRY_PID" 2>/dev/null || true
            wait "$FERRY_PID" 2>/dev/null || true
            kills=$((kills + 1))
            start_ferry
            ;;
        1)
            kill "$REG_PID" 2>/dev/null || true
            wait "$REG_PID" 2>/dev/null || true
            outages=$((outages + 1))
            sleep "0.$((RANDOM % 10))"
            restart_registry
            ;;
        *) ;;
    esac
    for k in "${!jobs_[@]}"; do
        d=${dests[$k]%:*}
        i=${dests[$k]##*:}
        if wait "${jobs_[$k]}"; then
            check_dir "$d" "${BLOBS[$i]}"
            succeeded=$((succeeded + 1))
        else
            interrupted=$((interrupted + 1))
        fi
    done
done
ok "$ROUNDS rounds ($kills SIGKILLs of ferry, $outages upstream outages): $succeeded pulls succeeded with every digest right, $interrupted interrupted"

kill -TERM "$FERRY_PID"
wait "$FERRY_PID" || fail "ferry exited non-zero on SIGTERM"
"$FERRY" scrub --config "$WORK/ferry.json" > "$WORK/scrub.txt" 2>&1 \
    || fail "scrub found damage: $(cat "$WORK/scrub.txt")"
ok "$(grep scrubbed "$WORK/scrub.txt")"

start_ferry
for i in 0 1 2; do
    pull "${IMAGES[$i]}" "$WORK/final-$i" || fail "final pull of ${IMAGES[$i]}"
    check_dir "$WORK/final-$i" "${BLOBS[$i]}"
done
[ -z "$(ls -A "$WORK/ferry-data/tmp" | grep -v '^readyz-' || true)" ] || fail "temp files left in the store"
ok "after the chaos every image pulls completely with the right digests; no temp files left"
finish
