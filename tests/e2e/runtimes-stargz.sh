# Lazy pulling in tests/e2e/runtimes.sh (sourced): the stargz snapshotter
# (tests/e2e/stargz/main.go, built with Debian's Go and Debian's
# stargz-snapshotter library) under a containerd of its own, pulling an
# eStargz image made by ctr-remote, once straight from the (throttled)
# registry and once through ferry. Each run reads a file from the FUSE
# mount right after `ctr-remote images rpull` returns, and measures the
# time to that read and the bytes fetched upstream by then.
#
# Both runs turn the snapshotter's prefetch and background fetch off, so
# what it fetches is what the reads ask for.

stop_daemon() { # pid
    kill -TERM "$1" 2> /dev/null || return 0
    for _ in $(seq 1 100); do kill -0 "$1" 2> /dev/null || return 0; sleep 0.1; done
    kill -KILL "$1" 2> /dev/null || true
}

metric() { # exact series name with labels
    curl -fsS "http://$FERRY_ADDR/metrics" | awk -v s="$1" '$1 == s {print $2}' | head -n 1
}

build_sgzd() {
    local gopath="$WORK/gopath"
    mkdir -p "$gopath/src/sgzd"
    cp tests/e2e/stargz/main.go "$gopath/src/sgzd/"
    mkdir -p target
    GO111MODULE=off GOFLAGS= GOPATH="$gopath:/usr/share/gocode" GOCACHE="$PWD/target/go-build" \
        go build -o "$WORK/sgzd" sgzd > "$WORK/go-build.log" 2>&1 \
        || fail "building tests/e2e/stargz: $(tail -n 5 "$WORK/go-build.log")"
}

# library/esgz:1 on "Docker Hub": make-image.py's image (a 48 MiB file in
# one layer) converted to eStargz by ctr-remote in the main containerd.
make_estargz() {
    python3 tests/e2e/make-image.py "$WORK/img-esgz" v1 48 > /dev/null
    push "$WORK/img-esgz" library/esgz-src:1 "$HUB_PORT"
    local src="127.0.0.1:$HUB_PORT/library/esgz-src:1" dst="127.0.0.1:$HUB_PORT/library/esgz:1"
    "${CTR[@]}" images pull --plain-http "$src" > "$WORK/esgz.out" 2>&1 || fail "ctr pull $src: $(cat "$WORK/esgz.out")"
    ctr-remote "${CTR[@]:1}" images convert --estargz --oci "$src" "$dst" > "$WORK/esgz.out" 2>&1 \
        || fail "ctr-remote convert --estargz: $(cat "$WORK/esgz.out")"
    "${CTR[@]}" images push --plain-http "$dst" > "$WORK/esgz.out" 2>&1 || fail "ctr push $dst: $(cat "$WORK/esgz.out")"
    "${CTR[@]}" images rm --sync "$src" "$dst" > /dev/null
    ESGZ_SIZE=$(skopeo inspect --tls-verify=false --raw "docker://$dst" \
        | python3 -c 'import json,sys; m=json.load(sys.stdin); print(sum(l["size"] for l in m["layers"]) + m["config"]["size"])')
    # The first 64 KiB of data/random.bin, from the original layer.
    ESGZ_HEAD=$(python3 - "$WORK/img-esgz" <<'PY'
import hashlib, json, os, sys, tarfile
layout = sys.argv[1]
blob = lambda d: os.path.join(layout, "blobs", "sha256", d.split(":")[1])
index = json.load(open(os.path.join(layout, "index.json")))
manifest = json.load(open(blob(index["manifests"][0]["digest"])))
for layer in manifest["layers"]:
    with tarfile.open(blob(layer["digest"]), "r:gz") as t:
        for m in t:
            if m.name == "data/random.bin":
                print(hashlib.sha256(t.extractfile(m).read(65536)).hexdigest())
                sys.exit(0)
sys.exit("no data/random.bin")
PY
)
}

# One lazy pull of docker.io/library/esgz:1 with the registry mirror at
# $2 (README's snapshotter and containerd snippets, pointed there). Sets
# FIRST_READ_MS, CONFIG, and what was fetched upstream when the read
# returned: READ_FERRY (ferry's upstream byte counter then) and READ_DIRECT
# (the bytes of the throttle's finished esgz requests since this run began).
lazy_run() { # name mirror-host:port
    local dir="$WORK/stargz-$1" lines
    lines=$(wc -l < "$WORK/nginx-access.log")
    mkdir -p "$dir"
    {
        printf 'noprefetch = true\nno_background_fetch = true\nno_prometheus = true\n\n'
        readme_snippet stargz | sed "s/$FERRY_ADDR/$2/g"
    } > "$dir/sgzd.toml"
    "$WORK/sgzd" -address "$dir/sgzd.sock" -root "$dir/root" -config "$dir/sgzd.toml" > "$dir/sgzd.log" 2>&1 &
    local sgzd=$!
    DAEMONS+=("$sgzd")
    wait_socket "$dir/sgzd.sock" "the stargz snapshotter"
    start_containerd "$dir/containerd" "$dir/sgzd.sock"
    local containerd=${DAEMONS[-1]}
    readme_snippet containerd | sed "s/$FERRY_ADDR/$2/g" > "$(hosts_file docker.io)"

    local t0 t1 mnt got
    t0=$(date +%s%N)
    timeout 60 ctr-remote "${CTR[@]:1}" images rpull --hosts-dir "$HOSTS_DIR" docker.io/library/esgz:1 \
        > "$dir/rpull.out" 2>&1 || fail "stargz ($1): rpull: $(tail -n 5 "$dir/rpull.out")"
    mnt=$(awk -v r="$dir/root" 'index($2, r) == 1 && $3 ~ /^fuse/ {print $2}' /proc/mounts \
        | while read -r m; do if [ -f "$m/data/random.bin" ]; then echo "$m"; fi; done | head -n 1)
    [ -n "$mnt" ] || fail "stargz ($1): no FUSE mount holds data/random.bin: $(grep fuse /proc/mounts)"
    got=$(head -c 65536 "$mnt/data/random.bin" | sha256sum | cut -d' ' -f1)
    t1=$(date +%s%N)
    READ_FERRY=$(metric "$UPSTREAM_SERIES")
    [ -n "$READ_FERRY" ] || fail "stargz: ferry's /metrics has no $UPSTREAM_SERIES"
    READ_DIRECT=$(throttle_bytes_since "$lines")
    [ "$got" = "$ESGZ_HEAD" ] || fail "stargz ($1): data/random.bin read from the mount differs from the image's"
    FIRST_READ_MS=$(((t1 - t0) / 1000000))
    CONFIG=$(ctr_config docker.io/library/esgz:1)
    stop_daemon "$containerd"
    stop_daemon "$sgzd"
}

# The bytes nginx (the throttle) sent for library/esgz's blobs in the log
# lines after line $1.
throttle_bytes_since() { # line
    tail -n "+$(($1 + 1))" "$WORK/nginx-access.log" | awk '$7 ~ /^\/v2\/library\/esgz\/blobs\// {s += $10} END {print s + 0}'
}

stargz_line() {
    [ -e /dev/fuse ] || { blocked stargz "/dev/fuse is missing"; return; }
    command -v ctr-remote > /dev/null || { blocked stargz "ctr-remote is not installed (stargz-snapshotter)"; return; }
    command -v go > /dev/null || { blocked stargz "go is not installed (golang-go), needed to build tests/e2e/stargz"; return; }
    [ -d /usr/share/gocode/src/github.com/containerd/stargz-snapshotter ] \
        || { blocked stargz "golang-github-containerd-stargz-snapshotter-dev is not installed"; return; }
    [ "${#CTR[@]}" -gt 0 ] || { blocked stargz "containerd is not installed"; return; }
    build_sgzd
    make_estargz
    local want direct_ms direct_bytes before at_read after
    want=$(upstream_config "127.0.0.1:$HUB_PORT/library/esgz:1")
    UPSTREAM_SERIES="ferry_upstream_bytes_total{registry=\"127.0.0.1:$THROTTLE_PORT\"}"

    lazy_run direct "127.0.0.1:$THROTTLE_PORT"
    direct_ms=$FIRST_READ_MS
    direct_bytes=$READ_DIRECT
    same "stargz (direct)" "$want" "$CONFIG"

    before=$(metric "$UPSTREAM_SERIES")
    [ -n "$before" ] || fail "stargz: ferry's /metrics has no $UPSTREAM_SERIES"
    lazy_run ferry "$FERRY_ADDR"
    at_read=$((READ_FERRY - before))
    same stargz "$want" "$CONFIG"
    [ "$(awk '/path=\/v2\/library\/esgz\/blobs\// && /status=206/' "$WORK/ferry.log" | wc -l)" -ge 1 ] \
        || fail "stargz: ferry's access log shows no ranged blob request"
    [ "$at_read" -lt "$ESGZ_SIZE" ] \
        || fail "stargz: ferry had fetched $at_read bytes of $ESGZ_SIZE by the first read: not lazy"
    # ferry's one download of the layer finishes on its own.
    local idle=
    for _ in $(seq 1 450); do
        if [ "$(metric ferry_inflight_fetches)" = "0" ]; then idle=1; break; fi
        sleep 0.1
    done
    [ -n "$idle" ] || fail "stargz: ferry's download of the layer did not finish in 45 s"
    after=$(( $(metric "$UPSTREAM_SERIES") - before ))
    # The image once, plus the far ranges passed through and the manifest.
    [ "$after" -ge "$ESGZ_SIZE" ] && [ "$after" -le $((ESGZ_SIZE + (1 << 20))) ] \
        || fail "stargz: ferry fetched $after bytes upstream for an image of $ESGZ_SIZE"
    report stargz "$CONFIG (first file read $FIRST_READ_MS ms through ferry, $direct_ms ms direct; upstream bytes by then $at_read through ferry, $direct_bytes direct; ferry's whole download $after bytes for an image of $ESGZ_SIZE = $(python3 -c "print(f'{$after / $ESGZ_SIZE:.2f}')")x)"
}
