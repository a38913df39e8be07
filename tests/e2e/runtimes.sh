#!/usr/bin/env bash
# The container runtimes users point at ferry, each configured with the
# text README.md shows (read out of README.md here: a snippet that drifts is
# the snippet tested), pulling through ferry from Debian's docker-registry:
#
#   docker        Docker Engine (dockerd of its own: vfs, no iptables, no
#                 bridge, its own data-root and socket), `registry-mirrors`;
#                 a multi-platform index; pulled again with the upstream
#                 stopped, from ferry's store
#   podman        README's `[[registry.mirror]]` blocks (vfs): an image of
#                 many layers from "Docker Hub", and one from a registry
#                 with a port through its `/local` prefix
#   buildah       `buildah from`, with the same registries.conf
#   containerd    `ctr images pull --hosts-dir` with README's hosts.toml
#                 (ns=docker.io), unpacked, `ctr images check` complete
#   containerd-ns the second registry's hosts.toml (ns=127.0.0.1:port)
#   stargz        lazy pulling: an eStargz image (ctr-remote convert) pulled
#                 with the stargz snapshotter (tests/e2e/stargz, built with
#                 Debian's Go) and a file read from its FUSE mount while the
#                 layer is still arriving; with and without ferry
#   skopeo        inspect (config digest) and list-tags through ferry
#   fallback      ferry answering 503 (its upstream unreachable), then ferry
#                 stopped: containerd and podman pull from the registry
#                 itself, as README says they do
#
# Each line is "<runtime> ok <config digest>": the digest the runtime
# reports equals the upstream's, and ferry's access log shows the runtime's
# requests (its user agent). A runtime that cannot run on this machine
# prints "<runtime> blocked: <reason>".
#
# "Docker Hub" is a local docker-registry behind an nginx throttle (so a
# lazy pull reads files before the layer has arrived); ferry's config says
# it is a mirror of docker.io (`mirrorOf`), so the runtimes' own Docker Hub
# names are used unchanged. Nothing here touches the machine's own Docker,
# containerd or container storage: every daemon has its own config, socket
# and data under $WORK.
#
# Usage: tests/e2e/runtimes.sh [path/to/ferry]   (default: target/debug/ferry)
# Needs (root): docker.io, podman, buildah, containerd, stargz-snapshotter,
# golang-go, golang-github-containerd-stargz-snapshotter-dev, nginx,
# docker-registry, skopeo, curl.
set -euo pipefail

cd "$(dirname "$0")/../.."
FERRY=${1:-target/debug/ferry}
NAME=runtimes
WORK=$(mktemp -d /tmp/ferry-runtimes.XXXXXX)
. tests/e2e/lib.sh
. tests/e2e/runtimes-lib.sh
. tests/e2e/runtimes-stargz.sh
trap runtimes_cleanup EXIT

[ -x "$FERRY" ] || fail "no ferry binary at $FERRY (run cargo build first)"
for t in nginx skopeo docker-registry curl python3; do
    command -v "$t" > /dev/null || fail "$t is not installed"
done

# --- the upstreams, the images and ferry -----------------------------------

start_registry < /dev/null
HUB_PORT=$REG_PORT HUB_PID=$REG_PID
mv "$WORK/registry.yml" "$WORK/hub.yml"
REG2_WORK="$WORK/reg2"
mkdir -p "$REG2_WORK"
WORK_SAVED=$WORK WORK=$REG2_WORK
start_registry < /dev/null
WORK=$WORK_SAVED
REG2_PORT=$REG_PORT

# Docker Hub, throttled to 4 MB/s per connection (nginx lets the first
# second's worth through at once): the small images come at once, the lazy
# pull's 32 MiB layer takes ferry about 8 s.
THROTTLE_PORT=$(free_port)
start_throttle "$THROTTLE_PORT" "$HUB_PORT" 4m

push() { # oci-dir repo:tag port [--all]
    skopeo --insecure-policy copy --quiet --dest-tls-verify=false ${4:-} \
        "oci:$1:v1" "docker://127.0.0.1:$3/$2" || fail "push $2"
}
python3 tests/e2e/make-image.py "$WORK/img-multi" v1 2 amd64,arm64 > /dev/null
push "$WORK/img-multi" library/multi:1 "$HUB_PORT" --all
python3 tests/e2e/make-image.py "$WORK/img-layers" v1 1 amd64 24 > /dev/null
push "$WORK/img-layers" library/layers:1 "$HUB_PORT"
python3 tests/e2e/make-image.py "$WORK/img-alpine" v1 3 > /dev/null
push "$WORK/img-alpine" library/alpine:3 "$HUB_PORT"
python3 tests/e2e/make-image.py "$WORK/img-base" v1 2 > /dev/null
push "$WORK/img-base" library/base:1 "$HUB_PORT"
python3 tests/e2e/make-image.py "$WORK/img-app" v1 2 > /dev/null
push "$WORK/img-app" team/app:1 "$REG2_PORT"

FERRY_PORT=$(free_port)
cat > "$WORK/ferry.json" <<JSON
{
  "http": {"address": "127.0.0.1", "port": "$FERRY_PORT"},
  "storage": {"rootDirectory": "$WORK/ferry-data"},
  "log": {"level": "info"},
  "extensions": {"sync": {"enable": true, "registries": [
    {"urls": ["http://127.0.0.1:$REG2_PORT"], "content": [{"prefix": "**", "destination": "/local"}],
     "maxRetries": 1, "retryDelay": "100ms"},
    {"urls": ["http://127.0.0.1:$THROTTLE_PORT"], "mirrorOf": "docker.io",
     "maxRetries": 1, "retryDelay": "100ms"}
  ]}}
}
JSON
"$FERRY" check-config "$WORK/ferry.json" > "$WORK/check-config.txt" || fail "ferry check-config"
"$FERRY" serve --config "$WORK/ferry.json" > "$WORK/ferry.log" 2>&1 &
FERRY_PID=$!
PIDS+=("$FERRY_PID")
wait_port "$FERRY_PORT" || fail "ferry did not start"
FERRY_ADDR=127.0.0.1:$FERRY_PORT
REG2_ADDR=127.0.0.1:$REG2_PORT

# --- skopeo ------------------------------------------------------------------

skopeo_line() {
    local want got tags
    want=$(upstream_config "127.0.0.1:$HUB_PORT/library/multi:1")
    got=$(skopeo inspect --tls-verify=false --raw --config "docker://$FERRY_ADDR/library/multi:1" \
        | sha256sum | cut -d' ' -f1) || fail "skopeo inspect --config through ferry"
    skopeo inspect --tls-verify=false "docker://$FERRY_ADDR/library/multi:1" > "$WORK/skopeo-inspect.json" \
        || fail "skopeo inspect through ferry"
    grep -q '"Architecture": "amd64"' "$WORK/skopeo-inspect.json" || fail "skopeo inspect: $(cat "$WORK/skopeo-inspect.json")"
    tags=$(skopeo list-tags --tls-verify=false "docker://$FERRY_ADDR/library/multi") \
        || fail "skopeo list-tags through ferry"
    echo "$tags" | grep -q '"1"' || fail "skopeo list-tags: $tags"
    same "skopeo" "$want" "sha256:$got"
    through_ferry skopeo 'skopeo/' library/multi "$want"
    report skopeo "sha256:$got (inspect, inspect --config, list-tags)"
}

# --- podman and buildah ------------------------------------------------------

# README's two registries.conf snippets, one file.
{
    readme_snippet podman
    echo
    readme_snippet podman-port
} > "$WORK/registries.conf"
: > "$WORK/no-mirrors.conf"

# podman of its own (vfs, its own dirs) with a registries.conf, for a minute at most.
podman_with() { # registries.conf args...
    timeout 60 env CONTAINERS_REGISTRIES_CONF="$1" podman --root "$WORK/podman/root" --runroot "$WORK/podman/run" \
        --tmpdir "$WORK/podman/tmp" --storage-driver vfs --cgroup-manager cgroupfs --events-backend file "${@:2}"
}

podman_line() {
    command -v podman > /dev/null || { blocked podman "podman is not installed"; return; }
    local p=(podman_with "$WORK/registries.conf")
    local want got
    want=$(upstream_config "127.0.0.1:$HUB_PORT/library/layers:1")
    "${p[@]}" pull -q docker.io/library/layers:1 > "$WORK/podman.out" 2>&1 \
        || fail "podman pull docker.io/library/layers:1: $(cat "$WORK/podman.out")"
    got=sha256:$("${p[@]}" image inspect -f '{{.Id}}' docker.io/library/layers:1)
    same podman "$want" "$got"
    through_ferry podman 'containers/' library/layers "$want"
    # A registry with a port, through README's /local prefix.
    local want2 got2
    want2=$(upstream_config "$REG2_ADDR/team/app:1")
    "${p[@]}" pull -q "$REG2_ADDR/team/app:1" > "$WORK/podman.out" 2>&1 \
        || fail "podman pull $REG2_ADDR/team/app:1: $(cat "$WORK/podman.out")"
    got2=sha256:$("${p[@]}" image inspect -f '{{.Id}}' "$REG2_ADDR/team/app:1")
    same podman "$want2" "$got2"
    through_ferry podman 'containers/' local/team/app "$want2"
    report podman "$got (26 layers; and $REG2_ADDR/team/app:1 through /local)"
}

buildah_line() {
    command -v buildah > /dev/null || { blocked buildah "buildah is not installed"; return; }
    local b=(env CONTAINERS_REGISTRIES_CONF="$WORK/registries.conf" buildah --root "$WORK/buildah/root" --runroot "$WORK/buildah/run" --storage-driver vfs)
    local want got
    want=$(upstream_config "127.0.0.1:$HUB_PORT/library/base:1")
    timeout 60 "${b[@]}" from --quiet --name work docker.io/library/base:1 > "$WORK/buildah.out" 2>&1 \
        || fail "buildah from docker.io/library/base:1: $(cat "$WORK/buildah.out")"
    got=sha256:$("${b[@]}" inspect -f '{{.FromImageID}}' work)
    same buildah "$want" "$got"
    through_ferry buildah 'Buildah/' library/base "$want"
    "${b[@]}" rm work > /dev/null
    report buildah "$got (buildah from)"
}

# --- containerd --------------------------------------------------------------

containerd_lines() {
    if ! command -v containerd > /dev/null; then
        blocked containerd "containerd is not installed"
        blocked containerd-ns "containerd is not installed"
        return
    fi
    start_containerd
    MAIN_CTR=("${CTR[@]}") MAIN_HOSTS_DIR=$HOSTS_DIR
    readme_snippet containerd > "$(hosts_file docker.io)"
    readme_snippet containerd-other > "$(hosts_file "$REG2_ADDR")"
    local want got
    want=$(upstream_config "127.0.0.1:$HUB_PORT/library/alpine:3")
    ctr_pull docker.io/library/alpine:3
    got=$(ctr_config docker.io/library/alpine:3)
    same containerd "$want" "$got"
    through_ferry containerd 'containerd/' library/alpine "$want"
    grep -q 'path=/v2/library/alpine/manifests/3 status=200' "$WORK/ferry.log" \
        || fail "containerd: no manifest request answered by ferry"
    report containerd "$got (ns=docker.io, unpacked, check complete)"

    want=$(upstream_config "$REG2_ADDR/team/app:1")
    ctr_pull "$REG2_ADDR/team/app:1"
    got=$(ctr_config "$REG2_ADDR/team/app:1")
    same containerd-ns "$want" "$got"
    through_ferry containerd-ns 'containerd/' team/app "$want" "$REG2_ADDR"
    report containerd-ns "$got (ns=$REG2_ADDR, unpacked, check complete)"
}

# --- ferry configure containerd ----------------------------------------------

# A hosts directory written only by `ferry configure containerd` from
# ferry's own config (a file someone else wrote in it stays as it is):
# --dry-run writes nothing, a second run changes nothing, and containerd
# pulls the second registry's new image through ferry with it (and from
# the registry itself once ferry is stopped: fallback_line).
CONFIGURED=$WORK/certs.d-configured
configure_line() {
    [ -n "${MAIN_CTR:-}" ] || { blocked configure "containerd is not installed"; return; }
    local snapshot before want got
    # A registry ferry does not route, configured by someone else.
    mkdir -p "$CONFIGURED/quay.io"
    printf 'server = "https://quay.io"\n' > "$CONFIGURED/quay.io/hosts.toml"
    snapshot() { (cd "$CONFIGURED" && find . -type f | sort | xargs sha256sum); }
    before=$(snapshot)
    local configure=("$FERRY" configure containerd --config "$WORK/ferry.json" --hosts-dir "$CONFIGURED" --mirror "http://$FERRY_ADDR")
    "${configure[@]}" --dry-run > "$WORK/configure-dry.txt" || fail "configure --dry-run: $(cat "$WORK/configure-dry.txt")"
    [ "$(snapshot)" = "$before" ] || fail "configure --dry-run changed the hosts directory"
    grep -q "^would create .*/$REG2_ADDR/hosts.toml" "$WORK/configure-dry.txt" || fail "configure --dry-run: $(cat "$WORK/configure-dry.txt")"
    "${configure[@]}" > "$WORK/configure-1.txt" || fail "configure: $(cat "$WORK/configure-1.txt")"
    [ "$(cat "$CONFIGURED/quay.io/hosts.toml")" = 'server = "https://quay.io"' ] || fail "configure changed a file it did not write"
    grep -q "^server = \"http://$REG2_ADDR\"" "$CONFIGURED/$REG2_ADDR/hosts.toml" || fail "configure: no server line: $(cat "$CONFIGURED/$REG2_ADDR/hosts.toml")"
    before=$(snapshot)
    "${configure[@]}" > "$WORK/configure-2.txt" || fail "configure (again): $(cat "$WORK/configure-2.txt")"
    [ "$(snapshot)" = "$before" ] || fail "a second configure changed the hosts directory"
    grep -q "nothing to change" "$WORK/configure-2.txt" || fail "configure (again): $(cat "$WORK/configure-2.txt")"
    # containerd's own default config does not read certs.d: told which
    # lines to add (exit 1); with them added, it does (exit 0).
    containerd config default > "$WORK/containerd-default.toml"
    if "${configure[@]}" --containerd-config "$WORK/containerd-default.toml" > "$WORK/configure-check.txt"; then
        fail "configure accepted containerd's default config (config_path = \"\")"
    fi
    grep -q "config_path = \"$CONFIGURED\"" "$WORK/configure-check.txt" || fail "configure --containerd-config: $(cat "$WORK/configure-check.txt")"
    sed -i "s|config_path = \"\"|config_path = \"$CONFIGURED\"|" "$WORK/containerd-default.toml"
    "${configure[@]}" --containerd-config "$WORK/containerd-default.toml" > "$WORK/configure-check.txt" \
        || fail "configure --containerd-config with config_path set: $(cat "$WORK/configure-check.txt")"
    # A new image, pulled with nothing but these files.
    python3 tests/e2e/make-image.py "$WORK/img-configured" v1 2 > /dev/null
    push "$WORK/img-configured" team/configured:1 "$REG2_PORT"
    rm -rf "$WORK/img-configured"
    want=$(upstream_config "$REG2_ADDR/team/configured:1")
    local hosts=$HOSTS_DIR
    CTR=("${MAIN_CTR[@]}")
    HOSTS_DIR=$CONFIGURED
    ctr_pull "$REG2_ADDR/team/configured:1"
    HOSTS_DIR=$hosts
    got=$(ctr_config "$REG2_ADDR/team/configured:1")
    same configure "$want" "$got"
    through_ferry configure 'containerd/' team/configured "$want" "$REG2_ADDR"
    report configure "$got (hosts.toml only from ferry configure containerd; --dry-run and a second run changed nothing; containerd's default config told the line to add)"
}

# --- Docker Engine -----------------------------------------------------------

docker_line() {
    command -v dockerd > /dev/null || { blocked docker "dockerd is not installed (docker.io)"; return; }
    start_dockerd
    local want got
    want=$(upstream_config "127.0.0.1:$HUB_PORT/library/multi:1")
    timeout 60 "${DOCKER[@]}" pull -q multi:1 > "$WORK/docker.out" 2>&1 \
        || fail "docker pull multi:1: $(cat "$WORK/docker.out")"
    got=$("${DOCKER[@]}" image inspect -f '{{.Id}}' multi:1)
    same docker "$want" "$got"
    through_ferry docker 'docker/' library/multi "$want"
    # Again with the upstream stopped: from ferry's store.
    "${DOCKER[@]}" rmi -f multi:1 > /dev/null
    kill "$HUB_PID"
    wait "$HUB_PID" 2> /dev/null || true
    if curl -fsS -o /dev/null "http://127.0.0.1:$HUB_PORT/v2/" 2> /dev/null; then fail "registry still answers"; fi
    timeout 60 "${DOCKER[@]}" pull -q multi:1 > "$WORK/docker.out" 2>&1 \
        || fail "docker pull multi:1 with the upstream stopped: $(cat "$WORK/docker.out")"
    got=$("${DOCKER[@]}" image inspect -f '{{.Id}}' multi:1)
    same "docker (upstream stopped)" "$want" "$got"
    report docker "$got (registry-mirrors, multi-platform index; again with the upstream stopped)"
}

# --- ferry failing, ferry down: the runtimes go to the registry itself -------

# containerd and podman pull a new image of the second registry; ferry
# cannot give it to them, so they must get it from the registry itself.
pull_around() { # repo:tag why
    local want pulled=()
    python3 tests/e2e/make-image.py "$WORK/img-around" v1 1 > /dev/null
    push "$WORK/img-around" "$1" "$REG2_PORT"
    rm -rf "$WORK/img-around"
    want=$(upstream_config "$REG2_ADDR/$1")
    if [ -n "${MAIN_CTR:-}" ]; then
        CTR=("${MAIN_CTR[@]}") HOSTS_DIR=$MAIN_HOSTS_DIR
        ctr_pull "$REG2_ADDR/$1"
        same "containerd ($2)" "$want" "$(ctr_config "$REG2_ADDR/$1")"
        pulled+=(containerd)
    fi
    if command -v podman > /dev/null; then
        # README's blocks, with the test registry's plain HTTP allowed (a
        # real registry.local:5000 would have TLS).
        local conf="$WORK/registries-around.conf"
        sed "/^location = \"$REG2_ADDR\"\$/a insecure = true" "$WORK/registries.conf" > "$conf"
        podman_with "$conf" pull -q "$REG2_ADDR/$1" > "$WORK/podman.out" 2>&1 \
            || fail "podman pull ($2): $(cat "$WORK/podman.out")"
        same "podman ($2)" "$want" "sha256:$(podman_with "$conf" image inspect -f '{{.Id}}' "$REG2_ADDR/$1")"
        pulled+=(podman)
    fi
    AROUND=$(echo "${pulled[*]:-nothing}" | sed 's/ / and /g')
}

fallback_line() {
    kill -TERM "$FERRY_PID"
    wait "$FERRY_PID" || fail "ferry exited non-zero on SIGTERM"
    # 1. ferry answers, but its upstream cannot be reached: 503s, which the
    #    runtimes take as "try the next host" (containerd too, for blobs).
    cat > "$WORK/ferry-cut-off.json" <<JSON
{
  "http": {"address": "127.0.0.1", "port": "$FERRY_PORT"},
  "storage": {"rootDirectory": "$WORK/ferry-data"},
  "extensions": {"sync": {"enable": true, "registries": [
    {"urls": ["http://127.0.0.1:1"], "mirrorOf": "$REG2_ADDR", "maxRetries": 0,
     "content": [{"prefix": "**", "destination": "/local"}]}
  ]}}
}
JSON
    "$FERRY" serve --config "$WORK/ferry-cut-off.json" > "$WORK/ferry-cut-off.log" 2>&1 &
    FERRY_PID=$!
    PIDS+=("$FERRY_PID")
    wait_port "$FERRY_PORT" || fail "ferry (cut off) did not start"
    pull_around team/cut-off:1 "ferry's upstream unreachable"
    local agent refused
    for agent in ${MAIN_CTR:+containerd/} $(command -v podman > /dev/null && echo containers/); do
        refused=$(awk -v a="agent=\"$agent" '/path=\/v2\/(local\/)?team\/cut-off\// && /status=503/ && index($0, a)' \
            "$WORK/ferry-cut-off.log" | wc -l)
        [ "$refused" -ge 1 ] || fail "ferry (cut off) answered no request of $agent* with 503"
    done
    local cut_off=$AROUND
    kill -TERM "$FERRY_PID"
    wait "$FERRY_PID" || fail "ferry exited non-zero on SIGTERM"
    # 2. ferry stopped: connections refused.
    if curl -fsS -o /dev/null "http://$FERRY_ADDR/v2/" 2> /dev/null; then fail "ferry still answers"; fi
    pull_around team/ferry-down:1 "ferry down"
    if [ -d "$CONFIGURED/$REG2_ADDR" ]; then
        # The hosts ferry configure wrote keep the registry as server.
        python3 tests/e2e/make-image.py "$WORK/img-down" v1 1 > /dev/null
        push "$WORK/img-down" team/down-configured:1 "$REG2_PORT"
        rm -rf "$WORK/img-down"
        CTR=("${MAIN_CTR[@]}")
        HOSTS_DIR=$CONFIGURED
        ctr_pull "$REG2_ADDR/team/down-configured:1"
        same "configure (ferry down)" "$(upstream_config "$REG2_ADDR/team/down-configured:1")" \
            "$(ctr_config "$REG2_ADDR/team/down-configured:1")"
        AROUND="$AROUND and containerd with ferry configure's hosts"
    fi
    printf '%-14s %s\n' fallback "ferry answering 503 (its upstream cut off): $cut_off pulled from the registry itself; ferry stopped: $AROUND pulled from the registry itself"
}

skopeo_line
podman_line
buildah_line
containerd_lines
configure_line
stargz_line
docker_line

# ferry answered no request with a 5xx.
if grep -E 'status=5[0-9][0-9]' "$WORK/ferry.log" > "$WORK/5xx.txt"; then
    fail "ferry answered 5xx: $(head -n 3 "$WORK/5xx.txt")"
fi
fallback_line
finish
