#!/usr/bin/env bash
# Load run: 1,000 concurrent connections fetching cached blobs and
# manifests from ferry, then the same files from nginx serving them straight
# from ferry's store on disk, in the same run on the same machine, with wrk.
#
# Prints requests/s, p50/p99 latency, errors and ferry's peak memory, and
# fails if ferry answered anything but 200 or lost a connection.
#
# Usage: scripts/load.sh [path/to/ferry] [seconds]   (default 60 s, or
#        LOAD_SECS; LOAD_CONNS sets the connection count, default 1000;
#        LOAD_MIB the size of the image's random layer, default 1;
#        LOAD_SET which objects: all (default: the manifest and every
#        blob), small (the manifest and blobs under 64 KiB) or large (the
#        random layer alone)).
#        Installs wrk, nginx-light, skopeo, docker-registry with apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY=${1:-target/release/ferry}
SECS=${2:-${LOAD_SECS:-60}}
CONNS=${LOAD_CONNS:-1000}
MIB=${LOAD_MIB:-1}
SET=${LOAD_SET:-all}
NAME=load
WORK=$(mktemp -d)
. tests/e2e/lib.sh
trap e2e_cleanup EXIT
[ -x "$FERRY" ] || fail "no ferry binary at $FERRY"
need=()
for t in wrk:wrk nginx:nginx-light skopeo:skopeo docker-registry:docker-registry; do
    command -v "${t%%:*}" > /dev/null || need+=("${t##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" > /dev/null
fi
service nginx stop > /dev/null 2>&1 || true
service docker-registry stop > /dev/null 2>&1 || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true  # wrk and the servers need more than 1,000 descriptors

start_registry < /dev/null
python3 tests/e2e/make-image.py "$WORK/oci" v1 "$MIB" > /dev/null
skopeo --insecure-policy copy --quiet --dest-tls-verify=false \
    "oci:$WORK/oci:v1" "docker://127.0.0.1:$REG_PORT/load/app:v1" || fail "push"

PORT=$(free_port)
STORE="$WORK/ferry-data"
cat > "$WORK/ferry.json" <<JSON
{
  "http": {"address": "127.0.0.1", "port": "$PORT"},
  "storage": {"rootDirectory": "$STORE"},
  "extensions": {"sync": {"enable": true, "registries": [{"urls": ["http://127.0.0.1:$REG_PORT"]}]}}
}
JSON
RUST_LOG=warn "$FERRY" serve --config "$WORK/ferry.json" > "$WORK/ferry.log" 2>&1 &
FERRY_PID=$!
PIDS+=("$FERRY_PID")
wait_port "$PORT" || fail "ferry did not start"
skopeo --insecure-policy copy --quiet --src-tls-verify=false \
    "docker://127.0.0.1:$PORT/load/app:v1" "dir:$WORK/pull" || fail "warm-up pull"

# The paths: every blob of the image and its manifest, by digest.
paths=()
largest=$(ls -S "$WORK/pull" | head -n 1)
for f in "$WORK/pull"/*; do
    b=$(basename "$f")
    size=$(stat -c %s "$f")
    case "$SET:$b" in
        *:version) ;;
        large:"$largest") paths+=("/v2/load/app/blobs/sha256:$b") ;;
        large:*) ;;
        *:manifest.json) paths+=("/v2/load/app/manifests/sha256:$(sha256sum "$f" | cut -d' ' -f1)") ;;
        small:*) [ "$size" -lt 65536 ] && paths+=("/v2/load/app/blobs/sha256:$b") ;;
        *) paths+=("/v2/load/app/blobs/sha256:$b") ;;
    esac
done
[ ${#paths[@]} -gt 0 ] || fail "no paths for LOAD_SET=$SET"
sizes=""
for p in "${paths[@]}"; do
    sizes="$sizes $(curl -s -o /dev/null -w '%{size_download}' "http://127.0.0.1:$PORT$p")B"
done
{
    echo "paths = {"
    for p in "${paths[@]}"; do echo "  \"$p\","; done
    echo "}"
    echo 'counter = 0'
    echo 'request = function() counter = counter + 1; return wrk.format("GET", paths[(counter % #paths) + 1]) end'
} > "$WORK/paths.lua"
for p in "${paths[@]}"; do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT$p")" = 200 ] || fail "ferry does not serve $p"
done

NGINX_PORT=$(free_port)
cat > "$WORK/nginx.conf" <<NGINX
user root;  # the store lives in a private temp folder
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 8192; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    types { }
    default_type application/octet-stream;
    client_body_temp_path $WORK/nginx-tmp;
    proxy_temp_path $WORK/nginx-tmp;
    fastcgi_temp_path $WORK/nginx-tmp;
    uwsgi_temp_path $WORK/nginx-tmp;
    scgi_temp_path $WORK/nginx-tmp;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location ~ "^/v2/.+/blobs/sha256:([0-9a-f]{2})([0-9a-f]{62})\$" {
            alias $STORE/blobs/sha256/\$1/\$1\$2;
        }
        location ~ "^/v2/.+/manifests/sha256:([0-9a-f]{2})([0-9a-f]{62})\$" {
            alias $STORE/manifests/sha256/\$1/\$1\$2;
        }
    }
}
NGINX
mkdir -p "$WORK/nginx-tmp"
nginx -c "$WORK/nginx.conf" || fail "nginx did not start"
wait_port "$NGINX_PORT" || fail "nginx did not listen"
for p in "${paths[@]}"; do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$NGINX_PORT$p")" = 200 ] || fail "nginx does not serve $p"
done

run_wrk() { # name port
    wrk -t2 -c"$CONNS" -d"${SECS}s" --timeout 60s --latency -s "$WORK/paths.lua" \
        "http://127.0.0.1:$2" > "$WORK/wrk-$1.txt" 2>&1 || fail "wrk against $1"
}
field() { # file pattern column
    grep -E "$2" "$1" | head -1 | awk "{print \$$3}"
}
rss0=$(awk '/VmRSS/ {print $2}' "/proc/$FERRY_PID/status")
# Peak anonymous memory (heap, stacks), sampled: VmHWM also counts the
# pages of mapped blob files, which are the page cache, not ferry's own.
(while kill -0 "$FERRY_PID" 2> /dev/null; do
    awk '/RssAnon/ {print $2}' "/proc/$FERRY_PID/status" 2> /dev/null
    sleep 0.2
done > "$WORK/anon.txt") &
SAMPLER=$!
run_wrk ferry "$PORT"
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$FERRY_PID/status")
kill "$SAMPLER" 2> /dev/null || true
anon=$(sort -n "$WORK/anon.txt" | tail -n 1)
rss1=$(awk '/VmRSS/ {print $2}' "/proc/$FERRY_PID/status")
run_wrk nginx "$NGINX_PORT"

errors() { # file: non-2xx responses + socket errors
    local non2xx sock
    non2xx=$(grep -E 'Non-2xx' "$1" | awk '{print $NF}' || true)
    sock=$(grep -E 'Socket errors' "$1" | sed 's/.*connect \([0-9]*\), read \([0-9]*\), write \([0-9]*\), timeout \([0-9]*\)/\1+\2+\3+\4/' || true)
    echo "$(( ${non2xx:-0} + ${sock:-0} ))"
}
printf '\n%s connections, %s s, LOAD_SET=%s: %s paths of sizes%s, wrk -t2, %s\n\n' \
    "$CONNS" "$SECS" "$SET" "${#paths[@]}" "$sizes" "$(date -u +%Y-%m-%d)"
printf '| | ferry | nginx (same files from disk) |\n|---|---|---|\n'
printf '| requests/s | %s | %s |\n' "$(field "$WORK/wrk-ferry.txt" '^Requests/sec' 2)" "$(field "$WORK/wrk-nginx.txt" '^Requests/sec' 2)"
printf '| p50 latency | %s | %s |\n' "$(field "$WORK/wrk-ferry.txt" '^ +50%' 2)" "$(field "$WORK/wrk-nginx.txt" '^ +50%' 2)"
printf '| p99 latency | %s | %s |\n' "$(field "$WORK/wrk-ferry.txt" '^ +99%' 2)" "$(field "$WORK/wrk-nginx.txt" '^ +99%' 2)"
printf '| errors (non-2xx + socket) | %s | %s |\n' "$(errors "$WORK/wrk-ferry.txt")" "$(errors "$WORK/wrk-nginx.txt")"
printf '| ferry RSS before / peak / after (MiB) | %s / %s / %s | |\n' \
    "$((rss0 / 1024))" "$((hwm / 1024))" "$((rss1 / 1024))"
printf '| ferry peak anonymous memory (MiB) | %s | |\n\n' "$((anon / 1024))"
[ "$(errors "$WORK/wrk-ferry.txt")" = 0 ] || { cat "$WORK/wrk-ferry.txt"; fail "ferry answered errors under load"; }
[ "$anon" -lt $((512 * 1024)) ] || fail "ferry's own memory grew to $((anon / 1024)) MiB"
kill -TERM "$FERRY_PID"
wait "$FERRY_PID" || fail "ferry exited non-zero after the load"
ok "ferry held $CONNS connections for $SECS s with no errors; memory bounded"
finish
