# Shared helpers for the end-to-end scripts (sourced, not run).
# Each script sets NAME (its log prefix) and WORK (its scratch folder).

PIDS=()
passed=0
failed=0

# Stops what the script started (its PIDS, and an nginx that wrote
# $WORK/nginx.pid), then removes $WORK, the pid file with it.
e2e_cleanup() {
    if [ -f "$WORK/nginx.pid" ]; then kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true; fi
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ -n "${E2E_KEEP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK" 2>/dev/null || true; fi
}

fail() {
    echo "$NAME FAILED: $*" >&2
    for log in "$WORK"/*.log; do
        [ -f "$log" ] || continue
        echo "---- $log (last 30 lines)" >&2
        tail -n 30 "$log" >&2 || true
    done
    failed=$((failed + 1))
    echo "$NAME: $passed passed, $failed failed"
    exit 1
}

ok() { # message
    passed=$((passed + 1))
    echo "$NAME: $*"
}

finish() {
    echo "$NAME: $passed passed, $failed failed"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # port
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# Starts Debian's docker-registry on a free port with storage in $WORK;
# extra YAML (auth, tls) may follow on standard input. Sets REG_PORT.
start_registry() {
    REG_PORT=$(free_port)
    {
        printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\n' "$WORK/registry-data"
        printf 'http:\n  addr: 127.0.0.1:%s\n' "$REG_PORT"
        cat
    } > "$WORK/registry.yml"
    docker-registry serve "$WORK/registry.yml" > "$WORK/registry.log" 2>&1 &
    REG_PID=$!
    PIDS+=("$REG_PID")
    wait_port "$REG_PORT" || fail "registry did not start"
}

# 16 concurrent downloads of one blob, each hashed as it arrives and checked
# against its digest. Nothing is written to disk: 16 copies of a 256 MiB
# blob would be 4 GiB of a CI machine's disk.
e2e_clients() { # port digest image tag
    local port=$1 digest=$2 image=$3 tag=$4 pids=() i
    for i in $(seq 1 16); do
        (set -o pipefail; curl -fsS "http://127.0.0.1:$port/v2/e2e/$image/blobs/$digest" | sha256sum > "$WORK/$tag-$i.sum") &
        pids+=("$!")
    done
    for i in "${!pids[@]}"; do wait "${pids[$i]}" || fail "$tag client $((i + 1)) failed"; done
    for i in $(seq 1 16); do
        [ "sha256:$(cut -d' ' -f1 "$WORK/$tag-$i.sum")" = "$digest" ] || fail "$tag client $i got wrong bytes"
        rm -f "$WORK/$tag-$i.sum"
    done
}

# Checks every blob of a skopeo dir: copy against its name; expects $2.
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

# Starts Garage (a real S3 server) on free loopback ports with its data in
# $WORK/garage: one node, a layout of 1 GB, one bucket and one key made
# with its CLI. Sets S3_ENDPOINT, S3_BUCKET, S3_KEY, S3_SECRET and GARAGE
# (the CLI with its config).
start_garage() {
    command -v garage > /dev/null || fail "garage is not installed (cargo install garage --locked)"
    local dir="$WORK/garage" s3 rpc admin
    mkdir -p "$dir"
    s3=$(free_port); rpc=$(free_port); admin=$(free_port)
    cat > "$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(openssl rand -hex 32)"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin"
TOML
    GARAGE="garage -c $dir/garage.toml"
    RUST_LOG=warn garage -c "$dir/garage.toml" server > "$WORK/garage.log" 2>&1 &
    PIDS+=("$!")
    wait_port "$s3" || fail "garage did not start"
    local node=""
    for _ in $(seq 1 50); do
        node=$($GARAGE status 2>/dev/null | grep -oE '^[0-9a-f]{16}' | head -n 1 || true)
        [ -n "$node" ] && break
        sleep 0.2
    done
    [ -n "$node" ] || fail "garage status shows no node"
    $GARAGE layout assign -z dc1 -c 1G "$node" > /dev/null || fail "garage layout assign"
    $GARAGE layout apply --version 1 > /dev/null || fail "garage layout apply"
    S3_BUCKET=ferry
    $GARAGE bucket create "$S3_BUCKET" > /dev/null || fail "garage bucket create"
    local key
    key=$($GARAGE key create ferry-key) || fail "garage key create"
    S3_KEY=$(echo "$key" | awk -F': *' '/Key ID/ {print $2; exit}')
    S3_SECRET=$(echo "$key" | awk -F': *' '/Secret key/ {print $2; exit}')
    [ -n "$S3_KEY" ] && [ -n "$S3_SECRET" ] || fail "cannot read the key from: $key"
    $GARAGE bucket allow --read --write --owner "$S3_BUCKET" --key ferry-key > /dev/null \
        || fail "garage bucket allow"
    S3_ENDPOINT="http://127.0.0.1:$s3"
}

# An S3 request signed with the test key (curl's SigV4): s3 GET /bucket/key...
s3() { # method path [curl args...]
    local method=$1 path=$2
    shift 2
    curl -sS -X "$method" --aws-sigv4 "aws:amz:garage:s3" --user "$S3_KEY:$S3_SECRET" \
        -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" \
        "$S3_ENDPOINT$path" "$@"
}
