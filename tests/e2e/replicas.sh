#!/usr/bin/env bash
# Three ferry replicas sharing one cache in a real S3 server (Garage),
# behind nginx, with CNCF Distribution (Debian's docker-registry) as the
# upstream; all on loopback.
#
#   1. nginx hashing on $uri (the digest): 16 clients of one cold 256 MiB
#      blob at once → one upstream fetch in total; every copy verified;
#      the bucket holds the blob under its key, byte for byte;
#   2. nginx round-robin: 16 clients of another cold 256 MiB blob → every
#      copy verified, the bucket holds exactly one correct object for it,
#      no other object appeared, and what one replica fetched another
#      served from the bucket;
#   3. a replica with `redirect: true`: a hit is a 307 to a presigned URL
#      and skopeo pulls the whole image through it.
#
# Usage: tests/e2e/replicas.sh [path/to/ferry]   (default: target/debug/ferry)
# Needs: garage, nginx, docker-registry, skopeo, curl (with --aws-sigv4).
set -euo pipefail

cd "$(dirname "$0")/../.."
FERRY=${1:-target/debug/ferry}
NAME=replicas
WORK=$(mktemp -d)
. tests/e2e/lib.sh
trap e2e_cleanup EXIT

[ -x "$FERRY" ] || fail "no ferry binary at $FERRY (run cargo build first)"
for t in nginx skopeo docker-registry curl; do
    command -v "$t" > /dev/null || fail "$t is not installed"
done
MIB=$((1024 * 1024))

start_registry < /dev/null
start_garage
echo "$NAME: garage at $S3_ENDPOINT, bucket $S3_BUCKET"

# Two images, each with a 256 MiB layer of random bytes.
for img in big big2; do
    python3 tests/e2e/make-image.py "$WORK/$img" v1 256
    skopeo --insecure-policy copy --quiet --dest-tls-verify=false \
        "oci:$WORK/$img:v1" "docker://127.0.0.1:$REG_PORT/e2e/$img:v1" || fail "push $img"
done
largest_blob() { # oci-dir
    echo "sha256:$(ls -S "$1/blobs/sha256" | head -n 1)"
}
BIG=$(largest_blob "$WORK/big")
BIG2=$(largest_blob "$WORK/big2")
BIG_SIZE=$(stat -c %s "$WORK/big/blobs/sha256/${BIG#sha256:}")
echo "$NAME: layers $BIG ($BIG_SIZE bytes) and $BIG2"

PREFIX=replicas
start_replica() { # index [redirect]
    local port
    port=$(free_port)
    cat > "$WORK/ferry-$1.json" <<JSON
{
  "http": {"address": "127.0.0.1", "port": "$port"},
  "storage": {
    "rootDirectory": "$WORK/ferry-$1",
    "storageDriver": {
      "name": "s3", "rootdirectory": "/$PREFIX", "region": "garage",
      "regionendpoint": "$S3_ENDPOINT", "bucket": "$S3_BUCKET",
      "accesskey": "$S3_KEY", "secretkey": "$S3_SECRET",
      "secure": false, "forcepathstyle": true, "redirect": ${2:-false}
    }
  },
  "extensions": {"sync": {"enable": true, "registries": [
    {"urls": ["http://127.0.0.1:$REG_PORT"], "onDemand": true}
  ]}}
}
JSON
    "$FERRY" check-config "$WORK/ferry-$1.json" > /dev/null || fail "ferry check-config"
    RUST_LOG=info "$FERRY" serve --config "$WORK/ferry-$1.json" > "$WORK/ferry-$1.log" 2>&1 &
    PIDS+=("$!")
    wait_port "$port" || fail "ferry replica $1 did not start"
    PORTS+=("$port")
}
PORTS=()
for i in 1 2 3; do start_replica "$i"; done

HASH_PORT=$(free_port)
RR_PORT=$(free_port)
servers=""
for p in "${PORTS[@]}"; do servers="$servers        server 127.0.0.1:$p;"$'\n'; done
mkdir -p "$WORK/nginx-tmp"
cat > "$WORK/nginx.conf" <<NGINX
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
    # One blob's requests all land on one replica: one upstream fetch.
    upstream by_digest {
        hash \$uri consistent;
$servers    }
    upstream round_robin {
$servers    }
    server {
        listen 127.0.0.1:$HASH_PORT;
        location / {
            proxy_pass http://by_digest;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }
    }
    server {
        listen 127.0.0.1:$RR_PORT;
        location / {
            proxy_pass http://round_robin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }
    }
}
NGINX
nginx -c "$WORK/nginx.conf" || fail "nginx did not start"
wait_port "$HASH_PORT" || fail "nginx did not listen"

metric_sum() { # metric name prefix, summed over the three replicas
    local total=0 v
    for p in "${PORTS[@]}"; do
        v=$(curl -fsS "http://127.0.0.1:$p/metrics" | awk -v m="$1" 'index($0, m) == 1 {s += $NF} END {printf "%d", s}')
        total=$((total + v))
    done
    echo "$total"
}

wait_uploads() { # count
    for _ in $(seq 1 600); do
        [ "$(metric_sum ferry_shared_uploads_total)" -ge "$1" ] && return 0
        sleep 0.1
    done
    fail "shared uploads did not reach $1"
}

bucket_object_ok() { # digest
    s3 GET "/$S3_BUCKET/$PREFIX/blobs/sha256/${1#sha256:}" -o "$WORK/object" -f \
        || fail "the bucket has no object for $1"
    [ "sha256:$(sha256sum "$WORK/object" | cut -d' ' -f1)" = "$1" ] \
        || fail "the bucket's object for $1 has wrong bytes"
    rm -f "$WORK/object"
}

blob_keys() { # the blob objects in the bucket
    s3 GET "/$S3_BUCKET?list-type=2&prefix=$PREFIX%2Fblobs%2F" \
        | grep -o '<Key>[^<]*</Key>' | sed 's/<[^>]*>//g' | sort
}

# 1. Hash on the digest: one upstream fetch for 16 clients.
before=$(metric_sum ferry_upstream_bytes_total)
e2e_clients "$HASH_PORT" "$BIG" big hash
fetched=$(( $(metric_sum ferry_upstream_bytes_total) - before ))
ratio=$(python3 -c "print(f'{$fetched / $BIG_SIZE:.3f}')")
echo "$NAME: hash \$uri: 16 clients of $((BIG_SIZE / MIB)) MiB, upstream bytes $fetched = $ratio x the blob"
[ "$fetched" -ge "$BIG_SIZE" ] && [ "$fetched" -lt $((BIG_SIZE + BIG_SIZE / 20)) ] \
    || fail "upstream bytes $fetched for a $BIG_SIZE-byte blob: not one fetch"
wait_uploads 1
bucket_object_ok "$BIG"
ok "hash \$uri: 16 clients, all bytes verified, one upstream fetch ($ratio x), the bucket holds the blob"

# 2. Round-robin: any replica may fetch or read the bucket; nothing wrong
#    or partial is ever published.
uploads_before=$(metric_sum ferry_shared_uploads_total)
before=$(metric_sum ferry_upstream_bytes_total)
e2e_clients "$RR_PORT" "$BIG2" big2 rr
fetched=$(( $(metric_sum ferry_upstream_bytes_total) - before ))
echo "$NAME: round-robin: upstream bytes $fetched = $(python3 -c "print(f'{$fetched / $BIG_SIZE:.2f}')") x the blob (each replica fetches at most once)"
wait_uploads $((uploads_before + 1))
bucket_object_ok "$BIG2"
keys=$(blob_keys)
want=$(printf '%s\n' "$PREFIX/blobs/sha256/${BIG#sha256:}" "$PREFIX/blobs/sha256/${BIG2#sha256:}" | sort)
# The small config/text layers went through no replica: only the two big ones.
[ "$keys" = "$want" ] || fail "the bucket holds other blob objects: $keys"
# Every replica now serves the first blob; the two that never fetched it
# read it from the bucket, not the upstream.
before=$(metric_sum ferry_upstream_bytes_total)
read_before=$(metric_sum ferry_shared_read_bytes_total)
for p in "${PORTS[@]}"; do
    got=$(curl -fsS "http://127.0.0.1:$p/v2/e2e/big/blobs/$BIG" | sha256sum | cut -d' ' -f1)
    [ "sha256:$got" = "$BIG" ] || fail "replica on $p served wrong bytes"
done
[ "$(metric_sum ferry_upstream_bytes_total)" = "$before" ] || fail "a replica went upstream for a blob in the bucket"
read=$(( $(metric_sum ferry_shared_read_bytes_total) - read_before ))
[ "$read" -eq $((2 * BIG_SIZE)) ] || fail "read $read bytes from the bucket, want $((2 * BIG_SIZE))"
ok "round-robin: 16 clients verified; the bucket holds exactly one correct object per blob; 2 replicas read the first blob from the bucket"

# 3. redirect: true → 307 to a presigned URL; skopeo pulls through it.
start_replica 4 true
R=${PORTS[3]}
code=$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' "http://127.0.0.1:$R/v2/e2e/big/blobs/$BIG")
case "$code" in
    "307 $S3_ENDPOINT/"*) ;;
    *) fail "redirect replica answered: $code" ;;
esac
got=$(curl -fsSL "http://127.0.0.1:$R/v2/e2e/big/blobs/$BIG" | sha256sum | cut -d' ' -f1)
[ "sha256:$got" = "$BIG" ] || fail "the presigned URL served wrong bytes"
skopeo --insecure-policy copy --quiet --src-tls-verify=false \
    "docker://127.0.0.1:$R/e2e/big:v1" "dir:$WORK/pull-redirect" || fail "skopeo pull through the redirecting replica"
check_dir "$WORK/pull-redirect" 3
ok "redirect: true: 307 to the bucket ($S3_ENDPOINT), bytes verified, skopeo pulled the image (3 blobs verified)"

finish
