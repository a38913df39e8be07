#!/usr/bin/env bash
# Three ferry replicas in one cluster (`ferry.cluster`, no shared bucket),
# with CNCF Distribution (Debian's docker-registry) as the upstream behind
# a throttle (nginx, 64 MB/s per connection, so clients arrive while the
# blob is still coming); all on loopback. One upstream fetch per blob for
# the whole cluster, whatever is in front of it:
#
#   1. nginx round-robin (http, no hashing): 16 clients of one cold
#      256 MiB blob → upstream bytes 1.00x the blob, every copy verified;
#   2. nginx `stream` (L4, `random`): 16 clients of another cold 256 MiB
#      blob → 1.00x;
#   3. no balancer: skopeo pulls one image from each replica at the same
#      moment → upstream bytes 1.00x the image's blobs, and each replica
#      stores every blob it served;
#   4. `ferry prewarm --every-replica` of an image on one replica (refused
#      without the admin token) → the upstream saw each blob once, every
#      replica holds every blob, and a skopeo pull from each replica
#      afterwards asks the upstream for none of them.
#
# Usage: tests/e2e/cluster.sh [path/to/ferry]   (default: target/debug/ferry)
# Needs: nginx with its stream module (libnginx-mod-stream), docker-registry,
# skopeo, curl.
set -euo pipefail

cd "$(dirname "$0")/../.."
FERRY=${1:-target/debug/ferry}
NAME=cluster
WORK=$(mktemp -d)
. tests/e2e/lib.sh
trap e2e_cleanup EXIT

[ -x "$FERRY" ] || fail "no ferry binary at $FERRY (run cargo build first)"
for t in nginx skopeo docker-registry curl; do
    command -v "$t" > /dev/null || fail "$t is not installed"
done
STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
[ -f "$STREAM_MODULE" ] || fail "nginx's stream module is not installed (libnginx-mod-stream)"
MIB=$((1024 * 1024))

start_registry < /dev/null

for img in rr l4; do
    python3 tests/e2e/make-image.py "$WORK/$img" v1 256
    skopeo --insecure-policy copy --quiet --dest-tls-verify=false \
        "oci:$WORK/$img:v1" "docker://127.0.0.1:$REG_PORT/e2e/$img:v1" || fail "push $img"
done
for img in app warm; do
    python3 tests/e2e/make-image.py "$WORK/$img" v1 48
    skopeo --insecure-policy copy --quiet --dest-tls-verify=false \
        "oci:$WORK/$img:v1" "docker://127.0.0.1:$REG_PORT/e2e/$img:v1" || fail "push $img"
done
largest_blob() { # oci-dir
    echo "sha256:$(ls -S "$1/blobs/sha256" | head -n 1)"
}
RR=$(largest_blob "$WORK/rr")
L4=$(largest_blob "$WORK/l4")
# Each layer's own size: gzip makes them differ by a few bytes.
RR_SIZE=$(stat -c %s "$WORK/rr/blobs/sha256/${RR#sha256:}")
L4_SIZE=$(stat -c %s "$WORK/l4/blobs/sha256/${L4#sha256:}")

# Every replica knows every peer's address before it starts.
THROTTLE_PORT=$(free_port)
PORTS=()
for i in 1 2 3; do PORTS+=("$(free_port)"); done
PEERS=$(printf '"127.0.0.1:%s",' "${PORTS[@]}")
PEERS="[${PEERS%,}]"
head -c 32 /dev/urandom | base64 > "$WORK/cluster.secret"
ADMIN_TOKEN=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
echo "$ADMIN_TOKEN" > "$WORK/admin.tokens"
for i in 1 2 3; do
    port=${PORTS[$((i - 1))]}
    cat > "$WORK/ferry-$i.json" <<JSON
{
  "http": {"address": "127.0.0.1", "port": "$port"},
  "storage": {"rootDirectory": "$WORK/ferry-$i"},
  "extensions": {"sync": {"enable": true, "registries": [
    {"urls": ["http://127.0.0.1:$THROTTLE_PORT"], "onDemand": true}
  ]}},
  "ferry": {"adminTokensFile": "$WORK/admin.tokens",
    "cluster": {"peers": $PEERS, "self": "127.0.0.1:$port",
    "secretFile": "$WORK/cluster.secret", "probeInterval": "500ms"}}
}
JSON
    "$FERRY" check-config "$WORK/ferry-$i.json" > "$WORK/check-$i.txt" || fail "ferry check-config"
    grep -q '^cluster: peers' "$WORK/check-$i.txt" || fail "check-config does not print the cluster"
    RUST_LOG=info "$FERRY" serve --config "$WORK/ferry-$i.json" > "$WORK/ferry-$i.log" 2>&1 &
    PIDS+=("$!")
done
for p in "${PORTS[@]}"; do wait_port "$p" || fail "ferry replica on $p did not start"; done

metric() { # port metric-name-prefix → the sum of its lines
    curl -fsS "http://127.0.0.1:$1/metrics" | awk -v m="$2" 'index($0, m) == 1 {s += $NF} END {printf "%d", s}'
}
metric_sum() { # metric-name-prefix, summed over the three replicas
    local total=0 p
    for p in "${PORTS[@]}"; do total=$((total + $(metric "$p" "$1"))); done
    echo "$total"
}
# Each replica sees its two peers ready before any client comes.
for p in "${PORTS[@]}"; do
    for _ in $(seq 1 100); do
        [ "$(metric "$p" ferry_cluster_peers_live)" = 2 ] && continue 2
        sleep 0.1
    done
    fail "replica on $p does not see its peers"
done

L7_PORT=$(free_port)
L4_PORT=$(free_port)
servers=""
for p in "${PORTS[@]}"; do servers="$servers        server 127.0.0.1:$p;"$'\n'; done
mkdir -p "$WORK/nginx-tmp"
cat > "$WORK/nginx.conf" <<NGINX
load_module $STREAM_MODULE;
user root;  # the work folder is private
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx-tmp;
    proxy_temp_path $WORK/nginx-tmp;
    fastcgi_temp_path $WORK/nginx-tmp;
    uwsgi_temp_path $WORK/nginx-tmp;
    scgi_temp_path $WORK/nginx-tmp;
    upstream round_robin {
$servers    }
    # The upstream registry, throttled; what it was asked is logged.
    server {
        listen 127.0.0.1:$THROTTLE_PORT;
        access_log $WORK/upstream-access.log;
        location / {
            proxy_pass http://127.0.0.1:$REG_PORT;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            # Buffered (limit_rate does nothing to an unbuffered proxy), in
            # memory only, so the registry is read no faster than sent.
            proxy_max_temp_file_size 0;
            limit_rate 64m;
        }
    }
    server {
        listen 127.0.0.1:$L7_PORT;
        location / {
            proxy_pass http://round_robin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }
    }
}
stream {
    upstream l4 {
        random;
$servers    }
    server {
        listen 127.0.0.1:$L4_PORT;
        proxy_pass l4;
    }
}
NGINX
nginx -c "$WORK/nginx.conf" || fail "nginx did not start"
wait_port "$L7_PORT" || fail "nginx did not listen"
wait_port "$L4_PORT" || fail "nginx did not listen on its stream port"
wait_port "$THROTTLE_PORT" || fail "nginx did not listen on its throttle port"

one_fetch() { # label digest size
    local before fetched ratio
    before=$(metric_sum ferry_upstream_bytes_total)
    started=$(date +%s%N)
    e2e_clients "$PORT" "$2" "$IMAGE" "$1"
    took_ms=$(( ($(date +%s%N) - started) / 1000000 ))
    fetched=$(( $(metric_sum ferry_upstream_bytes_total) - before ))
    ratio=$(python3 -c "print(f'{$fetched / $3:.3f}')")
    echo "$NAME: $1: 16 clients of $(($3 / MIB)) MiB in $took_ms ms, upstream bytes $fetched = $ratio x the blob; from peers $(metric_sum ferry_cluster_peer_bytes_total) bytes so far"
    # At 64 MB/s the blob cannot come in less than about 4 s: the clients
    # really did arrive while it was still coming.
    [ "$took_ms" -ge 3000 ] || fail "$1: done in $took_ms ms: the throttle did not throttle"
    [ "$fetched" -ge "$3" ] && [ "$fetched" -lt $(($3 + $3 / 100)) ] \
        || fail "$1: upstream bytes $fetched for a $3-byte blob: not one fetch"
    ok "$1: 16 clients over three replicas, all bytes verified, one upstream fetch ($ratio x)"
}

PORT=$L7_PORT IMAGE=rr one_fetch "round-robin (nginx http)" "$RR" "$RR_SIZE"
PORT=$L4_PORT IMAGE=l4 one_fetch "L4 random (nginx stream)" "$L4" "$L4_SIZE"

# 3. No balancer: one skopeo per replica, at the same moment.
app_bytes=0
for f in "$WORK"/app/blobs/sha256/*; do
    # The image's blobs: its layers and config (the index and manifest are
    # manifests, fetched by each replica on its own).
    grep -q "$(basename "$f")" "$WORK/app/index.json" && continue
    app_bytes=$((app_bytes + $(stat -c %s "$f")))
done
before=$(metric_sum ferry_upstream_bytes_total)
pids=()
for i in 1 2 3; do
    skopeo --insecure-policy copy --quiet --src-tls-verify=false \
        "docker://127.0.0.1:${PORTS[$((i - 1))]}/e2e/app:v1" "dir:$WORK/pull-$i" &
    pids+=("$!")
done
for i in "${!pids[@]}"; do wait "${pids[$i]}" || fail "skopeo through replica $((i + 1)) failed"; done
for i in 1 2 3; do check_dir "$WORK/pull-$i" 3; done
fetched=$(( $(metric_sum ferry_upstream_bytes_total) - before ))
ratio=$(python3 -c "print(f'{$fetched / $app_bytes:.3f}')")
echo "$NAME: no balancer: three skopeo pulls at once, upstream bytes $fetched for $app_bytes bytes of layers and config = $ratio x"
[ "$fetched" -lt $((app_bytes + app_bytes / 50)) ] || fail "no balancer: $ratio x the image's blobs came upstream"
for i in 1 2 3; do
    for f in "$WORK/pull-$i"/*; do
        b=$(basename "$f")
        [ ${#b} = 64 ] || continue
        [ -n "$(find "$WORK/ferry-$i/blobs" -name "$b" -print -quit)" ] \
            || fail "replica $i did not store blob $b it served"
    done
done
ok "no balancer: three skopeo pulls at once, one upstream fetch per blob ($ratio x), every replica stores what it served"

# 4. ferry prewarm, then a pull from each replica.
upstream_gets() { # digest → GETs of it the upstream answered
    grep -c "\"GET /v2/e2e/warm/blobs/$1 HTTP" "$WORK/upstream-access.log" || true
}
# Its layers and config, but not what it shares with e2e/app (the same
# config), which is stored already.
WARM_BLOBS=()
warm_all=0
for f in "$WORK"/warm/blobs/sha256/*; do
    grep -q "$(basename "$f")" "$WORK/warm/index.json" && continue
    warm_all=$((warm_all + 1))
    [ -e "$WORK/app/blobs/sha256/$(basename "$f")" ] && continue
    WARM_BLOBS+=("sha256:$(basename "$f")")
done
[ "${#WARM_BLOBS[@]}" -ge 2 ] || fail "e2e/warm has ${#WARM_BLOBS[@]} blobs of its own"

code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{"images": ["e2e/warm:v1"]}' \
    "http://127.0.0.1:${PORTS[0]}/ferry/v1/prewarm")
[ "$code" = 401 ] || fail "prewarm without a token: $code, not 401"
if "$FERRY" prewarm --server "http://127.0.0.1:${PORTS[0]}" --token "not-the-admin-token-0000" e2e/warm:v1 \
    > "$WORK/prewarm-refused.txt" 2>&1; then
    fail "ferry prewarm with a wrong token succeeded"
fi
grep -q "401" "$WORK/prewarm-refused.txt" || fail "ferry prewarm with a wrong token: $(cat "$WORK/prewarm-refused.txt")"
for b in "${WARM_BLOBS[@]}"; do
    [ "$(upstream_gets "$b")" = 0 ] || fail "the upstream was asked for $b before the prewarm"
done
FERRY_ADMIN_TOKEN=$ADMIN_TOKEN "$FERRY" prewarm --server "http://127.0.0.1:${PORTS[1]}" --every-replica e2e/warm:v1 \
    > "$WORK/prewarm.txt" 2> "$WORK/prewarm.err" || fail "ferry prewarm: $(cat "$WORK/prewarm.txt" "$WORK/prewarm.err")"
grep -q ": done: $warm_all of $warm_all blobs" "$WORK/prewarm.txt" || fail "ferry prewarm: $(cat "$WORK/prewarm.txt")"
for b in "${WARM_BLOBS[@]}"; do
    [ "$(upstream_gets "$b")" = 1 ] || fail "the prewarm asked the upstream for $b $(upstream_gets "$b") times"
done
# --every-replica: each replica holds every blob before any client asks.
for i in 1 2 3; do
    for b in "${WARM_BLOBS[@]}"; do
        [ -n "$(find "$WORK/ferry-$i/blobs" -name "${b#sha256:}" -print -quit)" ] \
            || fail "after the prewarm, replica $i does not hold $b"
    done
done
for i in 1 2 3; do
    skopeo --insecure-policy copy --quiet --src-tls-verify=false \
        "docker://127.0.0.1:${PORTS[$((i - 1))]}/e2e/warm:v1" "dir:$WORK/warm-$i" || fail "skopeo through replica $i after the prewarm"
    check_dir "$WORK/warm-$i" 3
done
for b in "${WARM_BLOBS[@]}"; do
    [ "$(upstream_gets "$b")" = 1 ] || fail "after the prewarm, clients' pulls asked the upstream for $b"
done
ok "prewarm --every-replica: refused without the admin token; $(head -n 1 "$WORK/prewarm.txt"); the upstream saw each of its ${#WARM_BLOBS[@]} blobs once, every replica held them all, and a pull from each replica afterwards asked it for none"

finish
