#!/usr/bin/env bash
# Runs ferry's benches side by side with the two mirrors people use today,
# all against the same throttled fake upstream, in one run:
#
#   - CNCF Distribution in proxy mode (Debian's docker-registry),
#   - an nginx caching mirror (Debian's nginx, proxy_cache + proxy_cache_lock),
#
# each started here on loopback with a config written here, then
# `cargo bench --bench pull` measures direct, ferry, distribution and nginx,
# and scripts/bench-chart.py draws the cold N-client completion times.
#
# Usage: scripts/bench-compare.sh      (as root: installs with apt-get)
# Same knobs as the bench: FERRY_BENCH_SIZE_MIB, FERRY_BENCH_RATE_MBPS,
# FERRY_BENCH_CLIENTS, FERRY_BENCH_SMALL_SECS, FERRY_BENCH_LATE_MS.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v nginx >/dev/null || need+=(nginx-light)
command -v skopeo >/dev/null || need+=(skopeo)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" > /dev/null
fi
# The packages may start their own services on :5000 and :80.
service docker-registry stop > /dev/null 2>&1 || true
service nginx stop > /dev/null 2>&1 || true

WORK=$(mktemp -d)
cleanup() {
    [ -f "$WORK/distribution.pid" ] && kill "$(cat "$WORK/distribution.pid")" 2>/dev/null || true
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
UP_PORT=$(free_port)
DIST_PORT=$(free_port)
NGINX_PORT=$(free_port)

cat > "$WORK/distribution.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $WORK/distribution-data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$DIST_PORT
proxy:
  remoteurl: http://127.0.0.1:$UP_PORT
YAML
mkdir -p "$WORK/nginx-cache" "$WORK/nginx-temp"
cat > "$WORK/nginx.conf" <<CONF
daemon on;
user root;
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    proxy_temp_path $WORK/nginx-temp;
    proxy_cache_path $WORK/nginx-cache levels=1:2 keys_zone=mirror:64m max_size=100g inactive=7d use_temp_path=off;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location /v2/ {
            proxy_pass http://127.0.0.1:$UP_PORT;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache mirror;
            proxy_cache_key \$uri;
            proxy_cache_valid 200 7d;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 1h;
            proxy_cache_lock_age 1h;
            proxy_max_temp_file_size 0;
            proxy_read_timeout 1h;
            proxy_ignore_headers Cache-Control Expires Set-Cookie;
        }
    }
}
CONF
# Started by the bench once its upstream listens (Distribution's proxy
# checks the upstream at start-up).
cat > "$WORK/start-mirrors.sh" <<SH
set -e
docker-registry serve "$WORK/distribution.yml" > "$WORK/distribution.log" 2>&1 &
echo \$! > "$WORK/distribution.pid"
nginx -c "$WORK/nginx.conf" -p "$WORK"
for port in $DIST_PORT $NGINX_PORT; do
    for _ in \$(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/\$port") 2>/dev/null && break; sleep 0.1; done
    (exec 3<>"/dev/tcp/127.0.0.1/\$port") 2>/dev/null || { echo "mirror on port \$port did not start" >&2; tail -20 "$WORK"/*.log >&2; exit 1; }
done
SH

export FERRY_BENCH_UPSTREAM_PORT=$UP_PORT
export FERRY_BENCH_BEFORE="bash $WORK/start-mirrors.sh"
export FERRY_BENCH_MIRRORS="distribution=http://127.0.0.1:$DIST_PORT,nginx=http://127.0.0.1:$NGINX_PORT"
cargo bench --bench pull

if python3 -c 'import matplotlib' 2>/dev/null || pip install -q matplotlib > /dev/null 2>&1; then
    python3 scripts/bench-chart.py target/ferry-bench/pull.json target/ferry-bench/cold-clients.png
else
    echo "matplotlib unavailable: no chart" >&2
fi
