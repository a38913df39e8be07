# Helpers of tests/e2e/runtimes.sh (sourced after lib.sh): README's
# snippets, the daemons each runtime needs (dockerd, containerd, the stargz
# snapshotter, an nginx throttle), each with its own config, socket and
# data under $WORK, and the checks every runtime's line makes.

CTR=()
DAEMONS=() # pids stopped with SIGTERM first, so they unmount what they mounted

runtimes_cleanup() {
    local p
    for p in "${DAEMONS[@]}"; do kill -TERM "$p" 2> /dev/null || true; done
    for p in "${DAEMONS[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$p" 2> /dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2> /dev/null || true
    done
    # Whatever is still mounted under $WORK (container layers, FUSE), deepest first.
    awk -v w="$WORK" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
        umount "$m" 2> /dev/null || umount -l "$m" 2> /dev/null || true
    done
    e2e_cleanup
}

report() { # runtime details
    printf '%-14s ok %s\n' "$1" "$2"
    passed=$((passed + 1))
}

# A runtime that cannot run here. CI installs every part, so there it fails.
blocked() { # runtime reason
    printf '%-14s blocked: %s\n' "$1" "$2"
    [ -z "${CI:-}" ] || fail "$1 is blocked in CI: $2"
}

# The fenced block after `<!-- runtimes.sh: NAME -->` in README.md, with
# ferry's and the second registry's placeholder addresses made real.
readme_snippet() { # name
    local text
    text=$(awk -v m="<!-- runtimes.sh: $1 -->" '
        $0 == m { found = 1; next }
        found == 1 && /^```/ { found = 2; next }
        found == 2 && /^```/ { exit }
        found == 2 { print }' README.md)
    [ -n "$text" ] || fail "README.md has no snippet marked <!-- runtimes.sh: $1 -->"
    printf '%s\n' "$text" | sed -e "s/ferry\.internal:5000/$FERRY_ADDR/g" -e "s/registry\.local:5000/$REG2_ADDR/g"
}

# The linux/amd64 image config digest, asked of the upstream directly (no
# mirrors: not through ferry).
upstream_config() { # host:port/repo:tag
    local d
    d=$(CONTAINERS_REGISTRIES_CONF="$WORK/no-mirrors.conf" skopeo inspect --tls-verify=false \
        --override-os linux --override-arch amd64 --raw --config "docker://$1" | sha256sum | cut -d' ' -f1) \
        || fail "skopeo inspect --config $1"
    echo "sha256:$d"
}

same() { # runtime want got
    [ "$2" = "$3" ] || fail "$1: the image config digest is $3, the upstream's is $2"
}

# ferry's access log shows the runtime (by its user agent) fetching the
# image's config blob, answered 200.
through_ferry() { # runtime agent-prefix repo config-digest [ns]
    local hits
    hits=$(awk -v p="path=/v2/$3/blobs/$4 " -v a="agent=\"$2" \
        'index($0, p) && index($0, a) && index($0, "status=200")' "$WORK/ferry.log" | wc -l)
    [ "$hits" -ge 1 ] || fail "$1: ferry's access log shows no request for $3's config by agent $2*"
    if [ -n "${5:-}" ]; then
        hits=$(awk -v p="path=/v2/$3/" -v r="registry=\"$5\"" 'index($0, p) && index($0, r)' "$WORK/ferry.log" | wc -l)
        [ "$hits" -ge 1 ] || fail "$1: ferry did not route $3 to $5"
    fi
}

# nginx in front of a registry, limiting each response to RATE per second
# (buffered: limit_rate does nothing to an unbuffered proxy). Logs each
# request with the bytes it sent.
start_throttle() { # port upstream-port rate
    mkdir -p "$WORK/nginx"
    cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 256; }
http {
    access_log $WORK/nginx-access.log;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    server {
        listen 127.0.0.1:$1;
        location / {
            proxy_pass http://127.0.0.1:$2;
            proxy_http_version 1.1;
            proxy_set_header Host \$http_host;
            proxy_max_temp_file_size 0;
            limit_rate $3;
        }
    }
}
NGINX
    nginx -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" || fail "nginx did not start"
    wait_port "$1" || fail "nginx did not listen on $1"
}

wait_socket() { # path what
    for _ in $(seq 1 150); do
        [ -S "$1" ] && return 0
        sleep 0.1
    done
    fail "$2 did not open $1"
}

# containerd of its own (no CRI), optionally with the stargz snapshotter as
# a proxy plugin. Sets CTR (the ctr command line for it).
start_containerd() { # [dir] [stargz-socket]
    local dir=${1:-$WORK/containerd}
    mkdir -p "$dir"
    cat > "$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
TOML
    if [ -n "${2:-}" ]; then
        printf '[proxy_plugins.stargz]\n  type = "snapshot"\n  address = "%s"\n' "$2" >> "$dir/config.toml"
    fi
    containerd --config "$dir/config.toml" > "$dir/containerd.log" 2>&1 &
    DAEMONS+=("$!")
    wait_socket "$dir/containerd.sock" containerd
    CTR=(ctr -a "$dir/containerd.sock")
    HOSTS_DIR="$dir/certs.d"
    for _ in $(seq 1 50); do "${CTR[@]}" version > /dev/null 2>&1 && return 0; sleep 0.1; done
    fail "containerd does not answer on $dir/containerd.sock"
}

hosts_file() { # registry host
    mkdir -p "$HOSTS_DIR/$1"
    echo "$HOSTS_DIR/$1/hosts.toml"
}

ctr_pull() { # ref
    timeout 60 "${CTR[@]}" images pull --hosts-dir "$HOSTS_DIR" "$1" > "$WORK/ctr.out" 2>&1 \
        || fail "ctr images pull $1: $(tail -n 5 "$WORK/ctr.out")"
    grep -q '^unpacking linux/amd64 sha256:' "$WORK/ctr.out" && grep -q '^done: ' "$WORK/ctr.out" \
        || fail "ctr images pull $1 did not unpack: $(tail -n 5 "$WORK/ctr.out")"
    # REF TYPE DIGEST STATUS SIZE UNPACKED: "complete (n/n)" and "true".
    "${CTR[@]}" images check "name==$1" > "$WORK/ctr-check.out"
    awk 'NR == 2 && $4 == "complete" && $NF == "true"' "$WORK/ctr-check.out" | grep -q . \
        || fail "ctr images check $1: $(cat "$WORK/ctr-check.out")"
}

# The linux/amd64 config digest of an image containerd holds.
ctr_config() { # ref
    local target
    target=$("${CTR[@]}" images ls "name==$1" | awk 'NR == 2 {print $3}')
    [ -n "$target" ] || fail "containerd has no image $1"
    python3 - "$target" "${CTR[@]}" <<'PY'
import json, subprocess, sys
digest, ctr = sys.argv[1], sys.argv[2:]
def get(d):
    return json.loads(subprocess.run(ctr + ["content", "get", d], check=True, capture_output=True).stdout)
doc = get(digest)
if "manifests" in doc:
    doc = get(next(m["digest"] for m in doc["manifests"]
                   if m.get("platform", {}).get("architecture") == "amd64"))
print(doc["config"]["digest"])
PY
}

# dockerd of its own: README's daemon.json plus what keeps it off the
# machine's own Docker (vfs, no iptables, no bridge, its own dirs and
# socket). Sets DOCKER (the client command line for it).
start_dockerd() {
    local dir="$WORK/docker"
    mkdir -p "$dir/data" "$dir/exec" "$dir/client"
    readme_snippet docker > "$dir/readme.json"
    python3 - "$dir" "${MAIN_CTR:+$WORK/containerd/containerd.sock}" > "$dir/daemon.json" <<'PY'
import json, sys
d = sys.argv[1]
cfg = json.load(open(f"{d}/readme.json"))
cfg.update({
    "storage-driver": "vfs", "iptables": False, "ip6tables": False, "bridge": "none",
    "ip-masq": False, "ip-forward": False,
    "data-root": f"{d}/data", "exec-root": f"{d}/exec", "pidfile": f"{d}/docker.pid",
    "hosts": [f"unix://{d}/docker.sock"],
})
# The test's own containerd, when there is one: else dockerd would use the
# machine's, if one runs, rather than start its own.
if len(sys.argv) > 2 and sys.argv[2]:
    cfg["containerd"] = sys.argv[2]
print(json.dumps(cfg, indent=2))
PY
    dockerd --config-file "$dir/daemon.json" > "$dir/dockerd.log" 2>&1 &
    DAEMONS+=("$!")
    wait_socket "$dir/docker.sock" dockerd
    # Debian's client (the machine may have a newer one first in PATH).
    local client=/usr/bin/docker
    [ -x "$client" ] || client=docker
    DOCKER=(env DOCKER_CONFIG="$dir/client" "$client" -H "unix://$dir/docker.sock")
    for _ in $(seq 1 100); do "${DOCKER[@]}" info > "$dir/info.txt" 2>&1 && break; sleep 0.1; done
    awk '/Registry Mirrors:/ {m = 1; next} m && /^ [^ ]/ {m = 0} m' "$dir/info.txt" | grep -qF "http://$FERRY_ADDR/" \
        || fail "docker info does not list ferry under Registry Mirrors: $(cat "$dir/info.txt")"
}
