#!/usr/bin/env bash
# End-to-end test of client access control and the status page with real
# parts: Debian's docker-registry upstream, skopeo (containers/image, the
# library podman and CRI-O use) as the client logging in to ferry, and
# Debian's headless Chromium rendering ferry's status page.
#
#   1. ferry with an htpasswd file (bcrypt) and zot accessControl:
#      team/** readable by alice only;
#   2. skopeo without credentials is refused (401 + Basic challenge), with
#      alice's password it pulls and every blob verifies, with bob's (a
#      known user without permission) it is refused;
#   3. Chromium renders GET / (no JavaScript): the DOM shows the figures of
#      the pull just done, and the screenshot is a real picture (checked
#      for size and for more than a handful of colours).
#
# Usage: tests/e2e/client-access.sh [path/to/ferry]  (needs htpasswd, chromium, python3-pil)
set -euo pipefail

cd "$(dirname "$0")/../.."
FERRY=${1:-target/debug/ferry}
NAME=e2e-access
WORK=$(mktemp -d)
. tests/e2e/lib.sh
trap e2e_cleanup EXIT

for tool in htpasswd skopeo docker-registry chromium; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done
[ -x "$FERRY" ] || fail "no ferry binary at $FERRY"

start_registry < /dev/null
python3 tests/e2e/make-image.py "$WORK/oci" v1 3 > /dev/null
skopeo --insecure-policy copy --quiet --dest-tls-verify=false \
    "oci:$WORK/oci:v1" "docker://127.0.0.1:$REG_PORT/team/app:v1" || fail "push to registry"

htpasswd -Bbn alice 'al1ce-pw' > "$WORK/htpasswd" 2>/dev/null
htpasswd -Bbn bob 'b0b-pw' >> "$WORK/htpasswd" 2>/dev/null
PORT=$(free_port)
cat > "$WORK/ferry.json" <<JSON
{
  "http": {"address": "127.0.0.1", "port": "$PORT",
    "auth": {"htpasswd": {"path": "$WORK/htpasswd"}},
    "accessControl": {"repositories": {
      "team/**": {"policies": [{"users": ["alice"], "actions": ["read"]}]}
    }, "adminPolicy": {"users": ["alice"], "actions": ["read"]}}},
  "storage": {"rootDirectory": "$WORK/ferry-data"},
  "extensions": {"sync": {"enable": true, "registries": [
    {"urls": ["http://127.0.0.1:$REG_PORT"], "maxRetries": 0}
  ]}}
}
JSON
RUST_LOG=info "$FERRY" serve --config "$WORK/ferry.json" > "$WORK/ferry.log" 2>&1 &
PIDS+=($!)
wait_port "$PORT" || fail "ferry did not start"

pull() { # dest [skopeo options...]
    local dest=$1
    shift
    skopeo --insecure-policy copy --quiet --src-tls-verify=false "$@" \
        "docker://127.0.0.1:$PORT/team/app:v1" "dir:$dest"
}

if pull "$WORK/anon" 2> "$WORK/skopeo-anon.log"; then fail "anonymous pull succeeded"; fi
grep -qi "unauthorized\|authentication required" "$WORK/skopeo-anon.log" \
    || fail "anonymous pull failed for another reason: $(cat "$WORK/skopeo-anon.log")"
challenge=$(curl -s -o /dev/null -D - "http://127.0.0.1:$PORT/v2/" | tr -d '\r' | grep -i '^www-authenticate:' || true)
case "$challenge" in *'Basic realm="ferry"'*) ;; *) fail "no Basic challenge on /v2/: $challenge" ;; esac
ok "anonymous: refused with 401 and $challenge"

pull "$WORK/alice" --src-creds 'alice:al1ce-pw' || fail "alice's pull"
check_dir "$WORK/alice" 3
ok "alice logs in (Basic, bcrypt htpasswd) and pulls team/app:v1: 3 blobs verified"

if pull "$WORK/bob" --src-creds 'bob:b0b-pw' 2> "$WORK/skopeo-bob.log"; then fail "bob's pull succeeded"; fi
code=$(curl -s -u 'bob:b0b-pw' "http://127.0.0.1:$PORT/v2/team/app/manifests/v1" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["errors"][0]["code"])')
[ "$code" = DENIED ] || fail "bob got $code, want DENIED"
ok "bob (known, no permission) is refused: $code"

# The status page in a real browser, without JavaScript: for admins only
# when access control is on (alice is one here).
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/")" = 401 ] || fail "anonymous status page"
[ "$(curl -s -o /dev/null -w '%{http_code}' -u 'bob:b0b-pw' "http://127.0.0.1:$PORT/")" = 403 ] || fail "bob's status page"
PAGE="http://alice:al1ce-pw@127.0.0.1:$PORT/"
CHROME=(chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run
    --disable-background-networking --disable-component-update --disable-sync
    --disable-javascript --user-data-dir="$WORK/chrome" --window-size=1200,900)
timeout 60 "${CHROME[@]}" --dump-dom "$PAGE" > "$WORK/page.html" 2> "$WORK/chrome.log" \
    || fail "chromium could not load the status page"
for want in "Downloads in flight (0)" "Upstream registries" "127.0.0.1:$REG_PORT" "answering" \
    "answered from cache"; do
    grep -qF "$want" "$WORK/page.html" || fail "status page lacks '$want'"
done
timeout 60 "${CHROME[@]}" --screenshot="$WORK/status.png" "$PAGE" \
    >> "$WORK/chrome.log" 2>&1 || fail "chromium could not take a screenshot"
# Pillow: Debian's python3-pil, or whatever python3 comes first with it.
PY=python3
$PY -c 'import PIL' 2>/dev/null || PY=/usr/bin/python3
$PY - "$WORK/status.png" <<'PY' || fail "the screenshot is not a rendered page"
import sys
from PIL import Image
im = Image.open(sys.argv[1]).convert("RGB")
colours = len(im.resize((300, 225)).getcolors(maxcolors=1 << 20) or [])
print(f"screenshot {im.size[0]}x{im.size[1]}, {colours} colours")
assert im.size == (1200, 900), im.size
assert colours > 20, "a blank or nearly blank page"
PY
if [ -n "${E2E_SCREENSHOT:-}" ]; then cp "$WORK/status.png" "$E2E_SCREENSHOT"; fi
ok "status page rendered by headless Chromium: DOM holds the pull's figures, screenshot checked"
finish
