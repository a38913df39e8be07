#!/usr/bin/env bash
# Chaos in a ferry cluster: three real `ferry serve` replicas
# (`ferry.cluster`, probeInterval 500ms) behind nginx round-robin, CNCF
# Distribution (Debian's docker-registry) as the upstream behind an nginx
# throttle (`limit_rate 32m` per connection, so a 256 MiB layer takes ~8 s);
# all on loopback. Each case prints one line: clients correct (n/n),
# upstream bytes per blob (the summed ferry_upstream_bytes_total delta of
# the replicas over the blob's size; a killed or frozen replica counts with
# its last scraped value, taken just before the signal, so the ratio may
# read a little under 1.000x), and the longest stall a client saw (max of
# its time to first byte and its largest gap between two received chunks,
# a retry's gap included); then what the other replicas logged after the
# signal (when they left the owner out, where their transfer from it broke,
# whom they asked next), as times after the signal.
#
#   1. SIGKILL of the digest's owner (rendezvous hashing, computed here as
#      src/cluster/rendezvous.rs does) once it has 1/3 of a cold 256 MiB
#      layer that 12 clients stream through nginx: all 12 verified,
#      upstream <= 1.15x, longest stall <= 3000 ms. The killed replica is
#      restarted (same config, same port) for what follows.
#   2. SIGSTOP of the owner at 1/3 of another cold 256 MiB layer (SIGCONT
#      once the clients are done): the same targets.
#   3. A lying peer (tests/e2e/lying-peer.py) listed among every replica's
#      peers and holding the secret: it answers /readyz and signs its blob
#      answers correctly, 1.5 s after the request (as an owner that waits
#      for its upstream: every replica asks it before any has caught the
#      lie), with one byte flipped. 12 clients of a cold 8 MiB layer the
#      liar owns (among the four peers): all end with the right bytes, no
#      client takes a wrong image (an answer that ends cleanly with bytes
#      of another digest), every replica that asked the liar counts
#      ferry_cluster_peer_failures_total{reason="lied"} >= 1; then a second
#      cold layer the liar owns, at once: all 12 right, and no replica that
#      caught the liar asks it again (the liar's own log; a replica that
#      never asked it has not caught it). Upstream bytes and stall are
#      printed, not targets, here. The liar is removed afterwards (replicas
#      restarted without it): it would own a quarter of what case 4 asks.
#   4. A rolling config change: two registries (two docker-registry
#      instances; a registry is identified by its URL's host:port) each hold
#      e2e/same:v1, different images. Every replica lists [r1, r2]; then
#      replica 2 is restarted with [r2, r1]. The tag's manifest and the
#      blobs it names, pulled through each replica directly, before and
#      (three rounds) after: each answer must be the image that replica's
#      own config routes to; wrong images: 0.
#   5. A forger without the secret: the replicas get client access control
#      (`http.accessControl`: e2e/secret/** readable by the user of a
#      `ferry.accessTokens` token only, e2e/public/** by anonymous clients)
#      and registry 1 only; registry 1 holds e2e/secret/app:v1 (its 1 MiB
#      layer L is the protected blob) and e2e/public/app:v1. The forger
#      (tests/e2e/lying-peer.py --forge-tag, holding ANOTHER secret) is
#      listed among every replica's peers, answers /readyz, and owns (its
#      port and L are picked so) the tag key of e2e/public/app:v1 and L's
#      digest. To every GET of that tag it answers 200 with a manifest that
#      lists L as its layer (right media type, Docker-Content-Digest,
#      Content-Length), to every GET of L L's real bytes, each signed with
#      its own secret. An anonymous client (curl) GETs the manifest of
#      e2e/public/app:v1 through each replica (cold: each asks the forger),
#      then, once the forger is back in every ring, GETs L under
#      e2e/public/app (cold: each asks the forger for L); then an
#      authenticated client reads e2e/secret/app:v1 and L through each
#      replica (the setup works: 3/3, and L is now stored everywhere,
#      linked to e2e/secret/app), and the anonymous client does both again,
#      warm. Targets: protected blobs readable (an anonymous 2xx with L's
#      bytes under e2e/public/app) 0, every such GET refused (401, 403 or
#      404), forged manifests served 0 (every manifest is the upstream's
#      real one), anonymous GETs of L under e2e/secret/app 401, and every
#      replica the forger sent a forged answer (its log) counts
#      ferry_cluster_peer_failures_total{peer=<forger>,reason="unsigned"}
#      >= 1 (a replica that never asked it is reported as such); at least
#      one replica asked it for the tag. Last, so nothing after it needs
#      the forger or access control removed.
#
# The clients (tests/e2e/chaos-client.py) hash as they read and retry ONCE
# after an error: in cases 1 and 2 with `Range: bytes=<n>-` from where they
# are (a client whose replica was killed sees its body cut; one whose
# replica is frozen gives up after 2 s without a byte, its first request
# included); in case 3 from scratch (the bytes already read may be the
# flipped ones: a client cannot tell which). The retry goes through nginx
# again. nginx stands in for a balancer with readiness checks (as a
# Kubernetes Service has): open-source nginx has no active health checks,
# and a frozen replica still accepts connections (the kernel does), so a
# loop here probes each replica's /readyz every 100 ms and reloads nginx
# with `down` on the ones that fail; otherwise a retry would be sent back
# to the frozen replica one time in three. CHAOS_RETRY_DELAY=<s> (environment)
# makes the clients pause that long before their retry (default: none).
#
# Usage: tests/e2e/cluster-chaos.sh [path/to/ferry]   (default: target/debug/ferry)
# E2E_KEEP=1 keeps the work folder (logs: ferry-<i>.log, lying-peer.log,
# forger.log, lb.log, <case>-<i>.json for every client).
# Needs: nginx, docker-registry, skopeo, curl, python3.
set -euo pipefail

cd "$(dirname "$0")/../.."
FERRY=${1:-target/debug/ferry}
NAME=cluster-chaos
WORK=$(mktemp -d)
. tests/e2e/lib.sh
declare -A RPID=()
chaos_cleanup() {
    # A frozen replica takes no SIGTERM until it runs again.
    for p in "${RPID[@]}"; do kill -CONT "$p" 2>/dev/null || true; done
    e2e_cleanup
}
trap chaos_cleanup EXIT
SECONDS=0

[ -x "$FERRY" ] || fail "no ferry binary at $FERRY (run cargo build first)"
for t in nginx skopeo docker-registry curl python3; do
    command -v "$t" > /dev/null || fail "$t is not installed"
done
MIB=$((1024 * 1024))
GIVEUP=2       # a client gives up a connection that sends nothing this long (s)
STALL_MAX=3000 # ms
RATIO_MAX=115  # percent of the blob

# ---------------------------------------------------------------- upstreams
start_registry < /dev/null
REG1_PORT=$REG_PORT
mkdir -p "$WORK/r2"
WORK="$WORK/r2" start_registry < /dev/null # its own storage
REG2_PORT=$REG_PORT

THROTTLE_PORT=$(free_port)
L7_PORT=$(free_port)
LIAR_PORT=$(free_port)
PORTS=()
for i in 1 2 3; do PORTS+=("$(free_port)"); done
port_of() { echo "${PORTS[$(($1 - 1))]}"; }
R1="http://127.0.0.1:$THROTTLE_PORT" # registry 1, throttled
R2="http://127.0.0.1:$REG2_PORT"     # registry 2 (case 4 only)

push() { # oci-dir registry-port name
    skopeo --insecure-policy copy --quiet --dest-tls-verify=false \
        "oci:$1:v1" "docker://127.0.0.1:$2/e2e/$3:v1" || fail "push $3"
}
largest_blob() { # oci-dir
    echo "sha256:$(ls -S "$1/blobs/sha256" | head -n 1)"
}
blob_size() { # oci-dir digest
    stat -c %s "$1/blobs/sha256/${2#sha256:}"
}
# The peer that owns `key` among `peers`: rendezvous hashing exactly as
# src/cluster/rendezvous.rs (weight = first 8 bytes, big-endian, of
# SHA-256(peer || 0 || key); the highest weight wins, then the higher name)
# with a blob's key its digest, a tag's `tag <registry> <name>:<tag>`
# (src/cluster/key.rs).
owner_of() { # key peer...
    python3 - "$@" <<'PY'
import hashlib, sys
key, peers = sys.argv[1].encode(), sys.argv[2:]
def weight(p):
    return int.from_bytes(hashlib.sha256(p.encode() + b"\0" + key).digest()[:8], "big")
print(max(peers, key=lambda p: (weight(p), p)))
PY
}
replica_of() { # host:port → replica number (0: none)
    local i
    for i in 1 2 3; do [ "$1" = "127.0.0.1:$(port_of "$i")" ] && { echo "$i"; return; }; done
    echo 0
}

echo "$NAME: making images"
for img in kill stop; do
    python3 tests/e2e/make-image.py "$WORK/$img" v1 256 > /dev/null &
    PIDS+=("$!")
done
make_pids=("${PIDS[@]: -2}")
# Case 3: two 8 MiB layers owned by the liar among the four peers.
FOUR=("127.0.0.1:${PORTS[0]}" "127.0.0.1:${PORTS[1]}" "127.0.0.1:${PORTS[2]}" "127.0.0.1:$LIAR_PORT")
for img in lie-a lie-b; do
    for try in $(seq 1 40); do
        rm -rf "$WORK/$img"
        python3 tests/e2e/make-image.py "$WORK/$img" v1 8 > /dev/null
        [ "$(owner_of "$(largest_blob "$WORK/$img")" "${FOUR[@]}")" = "127.0.0.1:$LIAR_PORT" ] && break
        [ "$try" -lt 40 ] || fail "no layer owned by the liar in 40 tries"
    done
done
python3 tests/e2e/make-image.py "$WORK/same-r1" v1 1 > /dev/null
python3 tests/e2e/make-image.py "$WORK/same-r2" v1 1 > /dev/null
# Case 5: a forger's port that makes it the owner (among the three
# replicas and itself) of the tag e2e/public/app:v1 at registry 1 (a
# tag's key: `tag <registry host:port> <upstream name>:<tag>`,
# src/cluster/key.rs), and a protected layer it owns too (so a cold fill of
# that layer asks it as well).
TAG_KEY="tag 127.0.0.1:$THROTTLE_PORT e2e/public/app:v1"
# (free_port again and again gives the port it just freed: random free
# ports are tried here, skipping the ones already handed out.)
FORGER_PORT=$(python3 - "$TAG_KEY" "${PORTS[@]}" $THROTTLE_PORT $L7_PORT $LIAR_PORT $REG1_PORT $REG2_PORT <<'PY'
import hashlib, random, socket, sys
key, replicas, taken = sys.argv[1].encode(), sys.argv[2:5], set(sys.argv[2:])
def weight(p):
    return int.from_bytes(hashlib.sha256(p.encode() + b"\0" + key).digest()[:8], "big")
for _ in range(1000):
    port = random.randint(20000, 32000)  # below the ephemeral range
    if str(port) in taken:
        continue
    me = f"127.0.0.1:{port}"
    peers = [f"127.0.0.1:{r}" for r in replicas] + [me]
    if max(peers, key=lambda p: (weight(p), p)) != me:
        continue
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
    except OSError:
        continue
    print(port)
    break
PY
)
[ -n "$FORGER_PORT" ] || fail "no free port makes the forger own the tag"
FORGER="127.0.0.1:$FORGER_PORT"
FORGE_FOUR=("127.0.0.1:${PORTS[0]}" "127.0.0.1:${PORTS[1]}" "127.0.0.1:${PORTS[2]}" "$FORGER")
[ "$(owner_of "$TAG_KEY" "${FORGE_FOUR[@]}")" = "$FORGER" ] || fail "the forger's port does not own the tag"
for try in $(seq 1 40); do
    rm -rf "$WORK/secret"
    python3 tests/e2e/make-image.py "$WORK/secret" v1 1 > /dev/null
    [ "$(owner_of "$(largest_blob "$WORK/secret")" "${FORGE_FOUR[@]}")" = "$FORGER" ] && break
    [ "$try" -lt 40 ] || fail "no protected layer owned by the forger in 40 tries"
done
python3 tests/e2e/make-image.py "$WORK/public" v1 1 > /dev/null
for p in "${make_pids[@]}"; do wait "$p" || fail "make-image failed"; done
for img in kill stop lie-a lie-b; do push "$WORK/$img" "$REG1_PORT" "$img"; done
push "$WORK/same-r1" "$REG1_PORT" same
push "$WORK/same-r2" "$REG2_PORT" same
push "$WORK/secret" "$REG1_PORT" secret/app
push "$WORK/public" "$REG1_PORT" public/app

# ---------------------------------------------------------------- nginx
# The round-robin upstream is an include that the readiness loop rewrites.
write_upstreams() { # down replica numbers, space separated
    local i
    for i in 1 2 3; do
        case " $1 " in
        *" $i "*) echo "server 127.0.0.1:$(port_of "$i") down;" ;;
        *) echo "server 127.0.0.1:$(port_of "$i");" ;;
        esac
    done > "$WORK/upstreams.tmp"
    mv "$WORK/upstreams.tmp" "$WORK/upstreams.conf"
}
write_upstreams ""
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
    upstream round_robin {
        include $WORK/upstreams.conf;
    }
    # Registry 1, throttled.
    server {
        listen 127.0.0.1:$THROTTLE_PORT;
        location / {
            proxy_pass http://127.0.0.1:$REG1_PORT;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            # Buffered (limit_rate does nothing to an unbuffered proxy), in
            # memory only, so the registry is read no faster than sent.
            proxy_max_temp_file_size 0;
            limit_rate 32m;
        }
    }
    # The replicas, round-robin (no hashing).
    server {
        listen 127.0.0.1:$L7_PORT;
        location / {
            proxy_pass http://round_robin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
            # Which replica answered, for the clients' error notes.
            add_header X-Ferry-Replica \$upstream_addr always;
        }
    }
}
NGINX
nginx -c "$WORK/nginx.conf" || fail "nginx did not start"
wait_port "$L7_PORT" || fail "nginx did not listen"
wait_port "$THROTTLE_PORT" || fail "nginx did not listen on its throttle port"

# The balancer's readiness checks: a replica whose /readyz does not answer
# 200 within 0.5 s is `down` in nginx until it does again (never all). The
# three are probed at once, so a frozen one is seen within ~0.6 s even on
# a loaded machine (probed one after another, a cycle took up to 1.5 s
# there, and a client's retry 2 s after its replica froze could still be
# sent back to it: a 4.6 s stall in one CI run).
lb_watch() {
    set +e
    local down="" now i
    while :; do
        now=""
        for i in 1 2 3; do
            curl -s -o /dev/null -m 0.5 -w '%{http_code}' \
                "http://127.0.0.1:$(port_of "$i")/readyz" > "$WORK/ready-$i" &
        done
        wait
        for i in 1 2 3; do
            [ "$(cat "$WORK/ready-$i")" = 200 ] || now="$now $i"
        done
        [ "$(echo $now | wc -w)" -ge 3 ] && now=""
        if [ "$now" != "$down" ]; then
            write_upstreams "$now"
            nginx -c "$WORK/nginx.conf" -s reload 2>> "$WORK/lb.log"
            echo "$(date +%T.%N) down:[$now]" >> "$WORK/lb.log"
            down=$now
        fi
        sleep 0.1
    done
}

# ---------------------------------------------------------------- replicas
head -c 32 /dev/urandom | base64 > "$WORK/cluster.secret"
write_config() { # replica peers-json registries-json [http-members ferry-members]
    local port
    port=$(port_of "$1")
    cat > "$WORK/ferry-$1.json" <<JSON
{
  "http": {"address": "127.0.0.1", "port": "$port"${4:+, $4}},
  "storage": {"rootDirectory": "$WORK/ferry-$1"},
  "extensions": {"sync": {"enable": true, "registries": $3}},
  "ferry": {${5:+$5, }"cluster": {"peers": $2, "self": "127.0.0.1:$port",
    "secretFile": "$WORK/cluster.secret", "probeInterval": "500ms"}}
}
JSON
    "$FERRY" check-config "$WORK/ferry-$1.json" > "$WORK/check-$1.txt" || fail "ferry check-config of replica $1"
}
start_replica() { # i
    echo "==== $(date +%T.%N) start" >> "$WORK/ferry-$1.log"
    RUST_LOG=info "$FERRY" serve --config "$WORK/ferry-$1.json" >> "$WORK/ferry-$1.log" 2>&1 &
    RPID[$1]=$!
    PIDS+=("$!")
    disown "$!" # no "Killed" notice from bash when case 1 kills it
    wait_port "$(port_of "$1")" || fail "replica $1 did not start"
}
stop_replica() { # i
    local pid=${RPID[$1]}
    kill -CONT "$pid" 2> /dev/null || true
    kill "$pid" 2> /dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2> /dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2> /dev/null || true
}
metric() { # port name-prefix [substring] → the sum of its lines
    curl -fsS -m 3 "http://127.0.0.1:$1/metrics" \
        | awk -v m="$2" -v s="${3:-}" 'index($0, m) == 1 && index($0, s) > 0 {t += $NF} END {printf "%d", t}'
}
held_ms() { # port → ms its upstream downloads waited for the peers they feed
    curl -fsS -m 3 "http://127.0.0.1:$1/metrics" \
        | awk 'index($0, "ferry_cluster_held_for_peers_seconds_total") == 1 {t += $NF} END {printf "%d", t * 1000}'
}
wait_live() { # expected-live-peers [replica...]
    local want=$1 i
    shift
    for i in "${@:-1 2 3}"; do
        for _ in $(seq 1 300); do
            [ "$(metric "$(port_of "$i")" ferry_cluster_peers_live || true)" = "$want" ] && continue 2
            sleep 0.1
        done
        fail "replica $i does not see $want live peers"
    done
}
THREE=$(printf '"127.0.0.1:%s",' "${PORTS[@]}")
THREE="[${THREE%,}]"
WITH_LIAR="[${THREE#[}"
WITH_LIAR="${WITH_LIAR%]},\"127.0.0.1:$LIAR_PORT\"]"
R1_R2="[{\"urls\": [\"$R1\"], \"onDemand\": true}, {\"urls\": [\"$R2\"], \"onDemand\": true}]"
R2_R1="[{\"urls\": [\"$R2\"], \"onDemand\": true}, {\"urls\": [\"$R1\"], \"onDemand\": true}]"

for i in 1 2 3; do write_config "$i" "$THREE" "$R1_R2"; done
grep -q '^cluster: peers' "$WORK/check-1.txt" || fail "check-config does not print the cluster"
for i in 1 2 3; do start_replica "$i"; done
wait_live 2 1 2 3
lb_watch &
PIDS+=("$!")
echo "$NAME: set up in ${SECONDS}s (replicas on ${PORTS[*]}, nginx round-robin on $L7_PORT)"

# ---------------------------------------------------------------- helpers
scrape_all() { # → UP[i] for the replicas in $@
    local i
    for i in "$@"; do UP[$i]=$(metric "$(port_of "$i")" ferry_upstream_bytes_total); done
}
sum_metric() { # name-prefix [substring] over replicas $LIVE
    local t=0 i
    for i in $LIVE; do t=$((t + $(metric "$(port_of "$i")" "$1" "${2:-}"))); done
    echo "$t"
}
start_clients() { # tag url digest mode → CPIDS
    local i
    CPIDS=()
    for i in $(seq 1 12); do
        python3 tests/e2e/chaos-client.py "$2" "$3" "$GIVEUP" "$4" > "$WORK/$1-$i.json" 2> "$WORK/$1-$i.err" &
        CPIDS+=("$!")
    done
}
clients_running() {
    local p
    for p in "${CPIDS[@]}"; do kill -0 "$p" 2> /dev/null && return 0; done
    return 1
}
wait_clients() {
    local p
    for p in "${CPIDS[@]}"; do wait "$p" || true; done
}
# Sets CORRECT WRONG RETRIED STALL from the clients' JSON; each client that
# met an error gets a note in $WORK/<tag>-notes.txt, and the ones that did
# not end right are printed.
summarize() { # tag
    local out
    out=$(python3 - "$WORK" "$1" <<'PY'
import json, sys
work, tag = sys.argv[1], sys.argv[2]
correct = wrong = retried = stall = 0
notes = []
for i in range(1, 13):
    try:
        r = json.load(open(f"{work}/{tag}-{i}.json"))
    except Exception as e:  # a client that crashed counts as wrong
        notes.append(f"client {i}: no result ({e})")
        continue
    correct += r["ok"]
    wrong += r["wrong"]
    retried += r["retried"]
    stall = max(stall, r["stall_ms"])
    if r["errors"] or not r["ok"]:
        notes.append(f"client {i}: ok={r['ok']} ttfb={r['ttfb_ms']}ms gap={r['max_gap_ms']}ms "
                     f"took={r['took_ms']}ms {'; '.join(r['errors'])}")
print(correct, wrong, retried, stall)
for n in notes:
    print("   ", n)
PY
)
    read -r CORRECT WRONG RETRIED STALL <<< "$(head -n 1 <<< "$out")"
    tail -n +2 <<< "$out" > "$WORK/$1-notes.txt"
}
# What the other replicas did after the owner got its signal at `since`
# (epoch seconds), from their logs: one line per replica.
timeline() { # since owner-addr digest owner-replica
    python3 - "$1" "$2" "$3" "$4" "$WORK" <<'PY'
import datetime, sys
since, owner, digest, victim, work = float(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
events = [
    ("cluster peer not ready; left out", owner, "probe left the owner out"),
    ("cluster peer failed a fill", owner, "a failed fill left the owner out"),
    ("peer transfer broke", digest, "transfer from the owner broke"),
    ("asking its next owner", digest, "asked the next owner"),
    ("peer did not answer", digest, "peer did not answer"),
    ("blob fetched and stored", digest, "stored"),
    ("peer sent bytes that are not the blob", digest, "caught the lie"),
    ("peer did not serve the blob", digest, "its owner did not serve it"),
]
for i in "123":
    if i == victim:
        continue
    seen = []
    for line in open(f"{work}/ferry-{i}.log", errors="replace"):
        if not line.startswith("20"):
            continue
        try:
            t = datetime.datetime.strptime(line[:26], "%Y-%m-%dT%H:%M:%S.%f")
        except ValueError:
            continue
        t = t.replace(tzinfo=datetime.timezone.utc).timestamp() - since
        if not -0.5 <= t <= 60:
            continue
        for text, key, what in events:
            if text in line and key in line:
                extra = ""
                if "next=" in line:
                    extra = " " + line.split("next=")[1].split()[0]
                if " received=" in line:
                    extra = f" at {int(line.split(' received=')[1].split()[0]) / 2**20:.1f} MiB"
                if " status=" in line and "ferry::http" not in line:
                    extra = " (" + line.split(" status=")[1].split()[0] + ")"
                seen.append(f"+{t:.2f}s {what}{extra}")
    print(f"    replica {i}: " + (", ".join(seen) or "nothing logged"))
PY
}
ratio() { # bytes size
    awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'
}
verdict() { # case misses
    if [ -z "$2" ]; then
        ok "$1: passed"
    else
        failed=$((failed + 1))
        echo "$NAME FAILED: $1:$2" >&2
    fi
}
declare -A UP=()

# ---------------------------------------------------------------- cases 1, 2
# A cold 256 MiB layer, 12 clients through nginx; at 1/3 of it the owner
# gets `signal`. Prints the case's line and checks its targets.
owner_chaos() { # case-label image signal
    local label=$1 img=$2 sig=$3 digest size owner o i before last fetched handovers misses=""
    digest=$(largest_blob "$WORK/$img")
    size=$(blob_size "$WORK/$img" "$digest")
    owner=$(owner_of "$digest" "127.0.0.1:${PORTS[0]}" "127.0.0.1:${PORTS[1]}" "127.0.0.1:${PORTS[2]}")
    o=$(replica_of "$owner")
    LIVE="1 2 3"
    scrape_all 1 2 3
    declare -A before=()
    for i in 1 2 3; do before[$i]=${UP[$i]}; done
    handovers=$(sum_metric ferry_cluster_handovers_total)
    local held
    held=$(held_ms "$(port_of "$o")")
    start_clients "$img" "http://127.0.0.1:$L7_PORT/v2/e2e/$img/blobs/$digest" "$digest" range
    while :; do
        last=$(metric "$(port_of "$o")" ferry_upstream_bytes_total)
        [ $((last - before[$o])) -ge $((size / 3)) ] && break
        clients_running || { wait_clients; fail "$label: the clients were done before the owner had 1/3 of the blob"; }
        sleep 0.1
    done
    held=$(($(held_ms "$(port_of "$o")") - held))
    kill "-$sig" "${RPID[$o]}"
    local at=$(((last - before[$o]) * 100 / size)) since
    since=$(date +%s.%N)
    echo "$NAME: $label: SIG$sig to replica $o (owner of $digest) at $at% of the blob ($(((last - before[$o]) / MIB)) MiB; it had waited $held ms in all for its peers to come within its lead), $(date -u +%T.%3N) UTC"
    wait_clients
    LIVE=$(for i in 1 2 3; do [ "$i" = "$o" ] || echo "$i"; done | xargs)
    # shellcheck disable=SC2086
    scrape_all $LIVE
    UP[$o]=$last
    fetched=0
    for i in 1 2 3; do fetched=$((fetched + UP[$i] - before[$i])); done
    handovers=$(($(sum_metric ferry_cluster_handovers_total) - handovers))
    summarize "$img"
    echo "$NAME: $label: clients correct $CORRECT/12, upstream $(ratio "$fetched" "$size")x the blob ($fetched bytes for $size), longest stall $STALL ms (retried $RETRIED, wrong images $WRONG, handovers $handovers)"
    grep "ok=False" "$WORK/$img-notes.txt" || true
    timeline "$since" "$owner" "$digest" "$o"
    [ "$CORRECT" = 12 ] || misses="$misses clients correct $CORRECT/12;"
    [ "$WRONG" = 0 ] || misses="$misses $WRONG wrong images;"
    [ "$fetched" -le $((size * RATIO_MAX / 100)) ] || misses="$misses upstream $(ratio "$fetched" "$size")x > 1.15x;"
    [ "$STALL" -le "$STALL_MAX" ] || misses="$misses longest stall $STALL ms > $STALL_MAX ms;"
    VICTIM=$o
    MISSES=$misses
}

owner_chaos "case 1 (SIGKILL of the owner)" kill KILL
start_replica "$VICTIM"
wait_live 2 1 2 3
verdict "case 1 (SIGKILL of the owner)" "$MISSES"

owner_chaos "case 2 (SIGSTOP of the owner)" stop STOP
kill -CONT "${RPID[$VICTIM]}"
# Not counted above: what the owner fetches once it runs again (its
# download, deserted by its clients and peers, may go on as an orphan).
frozen_at=${UP[$VICTIM]}
resumed=$frozen_at
stable=0
for _ in $(seq 1 30); do # until it brought nothing for 1 s
    sleep 0.5
    now=$(metric "$(port_of "$VICTIM")" ferry_upstream_bytes_total || echo "$resumed")
    if [ "$now" = "$resumed" ]; then stable=$((stable + 1)); else stable=0; fi
    resumed=$now
    [ "$stable" -lt 2 ] || break
done
echo "$NAME: case 2: after SIGCONT the owner fetched $((resumed - frozen_at)) more upstream bytes ($(ratio "$((resumed - frozen_at))" "$(blob_size "$WORK/stop" "$(largest_blob "$WORK/stop")")")x the blob; not counted above)"
verdict "case 2 (SIGSTOP of the owner)" "$MISSES"

# ---------------------------------------------------------------- case 3
label="case 3 (a lying peer)"
for i in 1 2 3; do stop_replica "$i"; done
python3 tests/e2e/lying-peer.py "$LIAR_PORT" "$WORK/cluster.secret" "http://127.0.0.1:$REG1_PORT" "$WORK/lying-peer.log" 1.5 \
    > "$WORK/lying-peer.out" 2>&1 &
PIDS+=("$!")
wait_port "$LIAR_PORT" || fail "the lying peer did not start"
for i in 1 2 3; do write_config "$i" "$WITH_LIAR" "$R1_R2"; done
for i in 1 2 3; do start_replica "$i"; done
wait_live 3 1 2 3
LIE_A=$(largest_blob "$WORK/lie-a")
LIE_B=$(largest_blob "$WORK/lie-b")
size_a=$(blob_size "$WORK/lie-a" "$LIE_A")
LIVE="1 2 3"
up=$(sum_metric ferry_upstream_bytes_total)
since=$(date +%s.%N)
start_clients lie-a "http://127.0.0.1:$L7_PORT/v2/e2e/lie-a/blobs/$LIE_A" "$LIE_A" scratch
wait_clients
a_done=$SECONDS
fetched=$(($(sum_metric ferry_upstream_bytes_total) - up))
summarize lie-a
echo "$NAME: $label: clients correct $CORRECT/12, upstream $(ratio "$fetched" "$size_a")x the blob, longest stall $STALL ms (retried $RETRIED, wrong images $WRONG)"
grep "ok=False" "$WORK/lie-a-notes.txt" || true
timeline "$since" "127.0.0.1:$LIAR_PORT" "$LIE_A" 0
misses=""
[ "$CORRECT" = 12 ] || misses="$misses clients correct $CORRECT/12;"
[ "$WRONG" = 0 ] || misses="$misses $WRONG wrong images;"
askers=$(grep -F "$LIE_A" "$WORK/lying-peer.log" | grep -o 'from=[^ ]*' | sort -u | sed 's/from=//' | xargs || true)
[ -n "$askers" ] || misses="$misses nobody asked the liar for the layer it owns;"
lied=""
for a in $askers; do
    i=$(replica_of "$a")
    n=$(metric "$(port_of "$i")" ferry_cluster_peer_failures_total "reason=\"lied\"")
    lied="$lied replica $i: $n"
    [ "$n" -ge 1 ] || misses="$misses replica $i asked the liar but counts no lie;"
done
echo "$NAME: $label: asked the liar:$(for a in $askers; do echo -n " replica $(replica_of "$a")"; done); lied counts:$lied"
for i in 1 2 3; do
    case " $askers " in
    *" 127.0.0.1:$(port_of "$i") "*) ;;
    *) echo "$NAME: $label: replica $i never asked the liar (its fill started later, from a good peer or upstream): it has not caught it" ;;
    esac
done
# The second layer the liar owns, at once (a failed fill leaves a peer
# out for 5 s; then a good probe brings it back). A replica that caught
# the liar must not ask it; one that never asked it has no reason not to.
lines_b=$(grep -cF "$LIE_B" "$WORK/lying-peer.log" || true)
size_b=$(blob_size "$WORK/lie-b" "$LIE_B")
start_clients lie-b "http://127.0.0.1:$L7_PORT/v2/e2e/lie-b/blobs/$LIE_B" "$LIE_B" scratch
b_started=$SECONDS
wait_clients
summarize lie-b
b_askers=$(grep -F "$LIE_B" "$WORK/lying-peer.log" | tail -n +$((lines_b + 1)) | grep -o 'from=[^ ]*' | sed 's/from=//' | xargs || true)
echo "$NAME: $label: second layer $((size_b / MIB)) MiB owned by the liar, $((b_started - a_done)) s after the first: clients correct $CORRECT/12, longest stall $STALL ms (retried $RETRIED, wrong images $WRONG); the liar was asked $(echo $b_askers | wc -w) times$(for a in $b_askers; do echo -n ", by replica $(replica_of "$a")"; done)"
grep "ok=False" "$WORK/lie-b-notes.txt" || true
for a in $b_askers; do
    case " $askers " in
    *" $a "*) misses="$misses replica $(replica_of "$a") caught the liar and asked it again for the second layer;" ;;
    esac
done
[ "$CORRECT" = 12 ] || misses="$misses second layer: clients correct $CORRECT/12;"
[ "$WRONG" = 0 ] || misses="$misses second layer: $WRONG wrong images;"
verdict "$label" "$misses"

# ---------------------------------------------------------------- case 4
label="case 4 (rolling config change)"
ACCEPT="application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json"
manifest_digest() { # registry-port
    echo "sha256:$(curl -fsS -H "Accept: $ACCEPT" "http://127.0.0.1:$1/v2/e2e/same/manifests/v1" | sha256sum | cut -d' ' -f1)"
}
M1=$(manifest_digest "$REG1_PORT")
M2=$(manifest_digest "$REG2_PORT")
[ "$M1" != "$M2" ] || fail "$label: both registries hold the same image"
# One pull of e2e/same:v1 through one replica: the manifest, then every
# blob it names. Prints: answers wrong-images longest-ms.
pull_round() { # replica expected-manifest-digest
    python3 - "$(port_of "$1")" "$2" "$M1" "$M2" "$ACCEPT" <<'PY'
import hashlib, json, sys, time, urllib.request, urllib.error
port, want, m1, m2, accept = sys.argv[1:6]
base = f"http://127.0.0.1:{port}/v2/e2e/same"
answers = wrong = 0
longest = 0.0
def get(path, headers={}):
    global longest
    t = time.monotonic()
    try:
        with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers), timeout=30) as r:
            body = r.read()
    except urllib.error.HTTPError as e:
        body = None
        print(f"    {path}: status {e.code}", file=sys.stderr)
    except OSError as e:
        body = None
        print(f"    {path}: {e}", file=sys.stderr)
    longest = max(longest, time.monotonic() - t)
    return body
body = get("/manifests/v1", {"Accept": accept})
answers += 1
got = "sha256:" + hashlib.sha256(body).hexdigest() if body is not None else "none"
if got != want:
    wrong += 1
    which = {m1: "registry 1's", m2: "registry 2's"}.get(got, "another")
    print(f"    manifest: {which} image ({got})", file=sys.stderr)
if body is not None:
    m = json.loads(body)
    for d in [m["config"]["digest"]] + [l["digest"] for l in m["layers"]]:
        b = get(f"/blobs/{d}")
        answers += 1
        if b is None or "sha256:" + hashlib.sha256(b).hexdigest() != d:
            wrong += 1
            print(f"    blob {d}: wrong bytes or none", file=sys.stderr)
print(answers, wrong, round(longest * 1000))
PY
}
image_bytes() { # oci-dir → the bytes of its config and layers
    python3 - "$1" <<'PY'
import json, os, sys
d = sys.argv[1]
idx = json.load(open(os.path.join(d, "index.json")))
m = json.load(open(os.path.join(d, "blobs", "sha256", idx["manifests"][0]["digest"][7:])))
print(sum(x["size"] for x in [m["config"]] + m["layers"]))
PY
}
stop_replica 1
stop_replica 2
stop_replica 3
for i in 1 2 3; do write_config "$i" "$THREE" "$R1_R2"; done
for i in 1 2 3; do start_replica "$i"; done
wait_live 2 1 2 3
LIVE="1 2 3"
up=$(sum_metric ferry_upstream_bytes_total)
total=0
wrong=0
longest=0
rounds() { # n expected-for-replica-1 for-2 for-3
    local n=$1 r i answers w ms want
    shift
    local wants=("$@")
    for r in $(seq 1 "$n"); do
        for i in 1 2 3; do
            want=${wants[$((i - 1))]}
            answers="" w="" ms=""
            read -r answers w ms < <(pull_round "$i" "$want" 2>> "$WORK/same-notes.txt") || true
            [ -n "$ms" ] || fail "$label: the pull through replica $i did not finish"
            total=$((total + answers))
            wrong=$((wrong + w))
            [ "$ms" -le "$longest" ] || longest=$ms
            [ "$w" = 0 ] || echo "    replica $i: $w wrong (round $r)" >> "$WORK/same-notes.txt"
        done
    done
}
: > "$WORK/same-notes.txt"
rounds 1 "$M1" "$M1" "$M1"
echo "==== $(date +%T.%N) restarted with [r2, r1]" >> "$WORK/ferry-2.log"
stop_replica 2
write_config 2 "$THREE" "$R2_R1"
start_replica 2
wait_live 2 1 2 3
rounds 3 "$M1" "$M2" "$M1"
fetched=$(($(sum_metric ferry_upstream_bytes_total) - up))
both=$(($(image_bytes "$WORK/same-r1") + $(image_bytes "$WORK/same-r2")))
echo "$NAME: $label: answers correct $((total - wrong))/$total, upstream $(ratio "$fetched" "$both")x the two images' blobs, longest answer $longest ms (wrong images $wrong)"
cat "$WORK/same-notes.txt"
misses=""
[ "$wrong" = 0 ] || misses="$misses $wrong wrong images;"
verdict "$label" "$misses"

# ---------------------------------------------------------------- case 5
label="case 5 (a forger without the secret)"
head -c 32 /dev/urandom | base64 > "$WORK/forger.secret" # not the cluster's
L=$(largest_blob "$WORK/secret")
L_SIZE=$(blob_size "$WORK/secret" "$L")
python3 tests/e2e/lying-peer.py "$FORGER_PORT" "$WORK/forger.secret" "http://127.0.0.1:$REG1_PORT" "$WORK/forger.log" \
    --forge-tag e2e/public/app:v1 --layer "e2e/secret/app@$L" > "$WORK/forger.out" 2>&1 &
PIDS+=("$!")
wait_port "$FORGER_PORT" || fail "the forger did not start: $(cat "$WORK/forger.out")"
FORGED=$(awk '$1 == "forged" {print $2}' "$WORK/forger.out")
grep -q "^forged sha256:[0-9a-f]* layer $L $L_SIZE\$" "$WORK/forger.out" || fail "$label: the forger's manifest: $(cat "$WORK/forger.out")"
REAL=sha256:$(curl -fsS -H "Accept: $ACCEPT" "http://127.0.0.1:$REG1_PORT/v2/e2e/public/app/manifests/v1" | sha256sum | cut -d' ' -f1)
[ "$FORGED" != "$REAL" ] || fail "$label: the forged manifest is the real one"
TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
AC_HTTP='"accessControl": {"repositories": {
    "e2e/secret/**": {"policies": [{"users": ["ci"], "actions": ["read"]}]},
    "e2e/public/**": {"anonymousPolicy": ["read"]}}}'
AC_FERRY="\"accessTokens\": [{\"user\": \"ci\", \"token\": \"$TOKEN\"}]"
WITH_FORGER="[${THREE#[}"
WITH_FORGER="${WITH_FORGER%]},\"$FORGER\"]"
ONLY_R1="[{\"urls\": [\"$R1\"], \"onDemand\": true}]"
for i in 1 2 3; do stop_replica "$i"; done
for i in 1 2 3; do write_config "$i" "$WITH_FORGER" "$ONLY_R1" "$AC_HTTP" "$AC_FERRY"; done
for i in 1 2 3; do start_replica "$i"; done
wait_live 3 1 2 3
echo "$NAME: $label: the forger ($FORGER, another secret) owns $TAG_KEY and the protected layer $L ($L_SIZE bytes) of e2e/secret/app; its manifest $FORGED lists that layer (the real one: $REAL)"
# One GET through replica i, as a client without credentials unless curl
# arguments say otherwise. Prints: status sha256-of-body.
get() { # replica path [curl args...]
    local port code
    port=$(port_of "$1")
    local path=$2
    shift 2
    : > "$WORK/body"
    code=$(curl -s -m 20 -o "$WORK/body" -w '%{http_code}' "$@" "http://127.0.0.1:$port$path") || code=000
    echo "$code sha256:$(sha256sum < "$WORK/body" | cut -d' ' -f1)"
}
: > "$WORK/forge-notes.txt"
manifests=0 forged_served=0 wrong_manifests=0 anon=0 readable=0 refused=0 statuses=""
manifest_round() { # round
    local i code got
    for i in 1 2 3; do
        read -r code got <<< "$(get "$i" /v2/e2e/public/app/manifests/v1 -H "Accept: $ACCEPT")"
        manifests=$((manifests + 1))
        if [ "$got" = "$FORGED" ]; then
            forged_served=$((forged_served + 1))
            echo "    $1: replica $i served the FORGED manifest ($code)" >> "$WORK/forge-notes.txt"
        elif [ "$code" != 200 ] || [ "$got" != "$REAL" ]; then
            wrong_manifests=$((wrong_manifests + 1))
            echo "    $1: replica $i answered $code with $got, not the real manifest" >> "$WORK/forge-notes.txt"
        fi
    done
}
blob_round() { # round
    local i code got
    for i in 1 2 3; do
        read -r code got <<< "$(get "$i" "/v2/e2e/public/app/blobs/$L")"
        anon=$((anon + 1))
        statuses="$statuses $code"
        case "$code" in
        401 | 403 | 404) refused=$((refused + 1)) ;;
        *) echo "    $1: replica $i answered $code to an anonymous GET of the protected layer under e2e/public/app" >> "$WORK/forge-notes.txt" ;;
        esac
        if [ "${code:0:1}" = 2 ] && [ "$got" = "$L" ]; then
            readable=$((readable + 1))
            echo "    $1: replica $i SENT THE PROTECTED LAYER to an anonymous client under e2e/public/app" >> "$WORK/forge-notes.txt"
        fi
    done
}
# Cold: every replica asks the tag's owner, the forger (each then leaves
# it out for 5 s); once it is back in every ring, the cold layer, which
# the forger owns too; then the layer is read by an authenticated client
# (so every replica holds it, linked to e2e/secret/app), and everything
# again, warm.
manifest_round cold
t=$(date +%s.%N)
# ferry_cluster_peers_live is set at each probe (every 500 ms): a second
# on, it shows the forger out where a replica left it out, until it is
# back (5 s after the failure).
sleep 1
wait_live 3 1 2 3
back=$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
blob_round cold
auth_ok=0 anon_secret=0 anon_secret_codes=""
for i in 1 2 3; do
    read -r code got <<< "$(get "$i" /v2/e2e/secret/app/manifests/v1 -H "Accept: $ACCEPT" -H "Authorization: Bearer $TOKEN")"
    [ "$code" = 200 ] || echo "    setup: replica $i answered $code to the authenticated manifest of e2e/secret/app:v1" >> "$WORK/forge-notes.txt"
    read -r code got <<< "$(get "$i" "/v2/e2e/secret/app/blobs/$L" -H "Authorization: Bearer $TOKEN")"
    if [ "$code" = 200 ] && [ "$got" = "$L" ]; then
        auth_ok=$((auth_ok + 1))
    else
        echo "    setup: replica $i answered $code ($got) to the authenticated GET of the layer under e2e/secret/app" >> "$WORK/forge-notes.txt"
    fi
    read -r code got <<< "$(get "$i" "/v2/e2e/secret/app/blobs/$L")"
    anon_secret_codes="$anon_secret_codes $code"
    [ "$code" != 401 ] || anon_secret=$((anon_secret + 1))
done
manifest_round warm
blob_round warm
codes=$(for c in $statuses; do echo "$c"; done | sort | uniq -c | awk '{printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1}')
echo "$NAME: $label: protected blobs readable $readable, forged manifests served $forged_served, other wrong manifests $wrong_manifests (of $manifests), anonymous GETs of the layer under e2e/public/app refused $refused/$anon ($codes), authenticated GETs of it under e2e/secret/app $auth_ok/3, anonymous ones refused $anon_secret/3 (401s); the forger was back in every ring ${back}s after the cold manifests"
cat "$WORK/forge-notes.txt"
misses=""
[ "$readable" = 0 ] || misses="$misses $readable protected blobs readable;"
[ "$refused" = "$anon" ] || misses="$misses $((anon - refused)) anonymous GETs of the protected layer not refused;"
[ "$forged_served" = 0 ] || misses="$misses $forged_served forged manifests served;"
[ "$wrong_manifests" = 0 ] || misses="$misses $wrong_manifests answers not the real manifest;"
[ "$auth_ok" = 3 ] || misses="$misses setup: the authenticated client read the layer through $auth_ok/3 replicas;"
[ "$anon_secret" = 3 ] || misses="$misses setup: anonymous GETs under e2e/secret/app answered$anon_secret_codes, not 401;"
# Whom the forger answered (its log), and what each replica counted.
asked="" tag_askers=0
for i in 1 2 3; do
    a="127.0.0.1:$(port_of "$i")"
    nt=$(grep -F " from=$a " "$WORK/forger.log" | grep -c ' forged=manifest' || true)
    nb=$(grep -F " from=$a " "$WORK/forger.log" | grep -c ' forged=blob' || true)
    n=$(curl -fsS -m 3 "http://127.0.0.1:$(port_of "$i")/metrics" | awk -v p="peer=\"$FORGER\"" \
        'index($0, "ferry_cluster_peer_failures_total{") == 1 && index($0, p) && index($0, "reason=\"unsigned\"") {t += $NF} END {printf "%d", t}')
    [ "$nt" = 0 ] || tag_askers=$((tag_askers + 1))
    if [ $((nt + nb)) = 0 ]; then
        asked="$asked replica $i: never asked it (unsigned $n);"
    else
        asked="$asked replica $i: got $nt forged manifests and $nb forged blobs, counts unsigned $n;"
        [ "$n" -ge 1 ] || misses="$misses replica $i took forged answers but counts none unsigned;"
    fi
done
echo "$NAME: $label: forged answers sent and ferry_cluster_peer_failures_total{peer=\"$FORGER\",reason=\"unsigned\"}:${asked%;}"
[ "$tag_askers" -ge 1 ] || misses="$misses nobody asked the forger for the tag it owns (nothing was tested);"
verdict "$label" "$misses"

echo "$NAME: took ${SECONDS}s"
finish
[ "$failed" -eq 0 ]
