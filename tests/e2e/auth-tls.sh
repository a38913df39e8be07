#!/usr/bin/env bash
# End-to-end test of upstream authentication and TLS with real parts:
# Debian's docker-registry (CNCF Distribution) serving TLS with a private CA
# and htpasswd (bcrypt) authentication on loopback; an image pushed with
# skopeo; ferry pulling through it with the CA from a certDir and the
# password from a zot credentialsFile. Then the same without credentials
# must fail cleanly.
#
# Usage: tests/e2e/auth-tls.sh [path/to/ferry]   (needs openssl, htpasswd)
set -euo pipefail

cd "$(dirname "$0")/../.."
FERRY=${1:-target/debug/ferry}
NAME=e2e-auth
WORK=$(mktemp -d)
. tests/e2e/lib.sh
trap e2e_cleanup EXIT

for tool in openssl htpasswd skopeo docker-registry; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done
[ -x "$FERRY" ] || fail "no ferry binary at $FERRY"

# A private CA and a server certificate for 127.0.0.1.
PKI="$WORK/pki"
mkdir -p "$PKI" "$WORK/certs.d"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -out "$PKI/ca.crt" \
    -days 2 -subj "/CN=ferry e2e CA" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout "$PKI/server.key" -out "$PKI/server.csr" \
    -subj "/CN=127.0.0.1" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > "$PKI/ext.cnf"
openssl x509 -req -in "$PKI/server.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -out "$PKI/server.crt" -days 2 -extfile "$PKI/ext.cnf" 2>/dev/null
cp "$PKI/ca.crt" "$WORK/certs.d/ca.crt"
htpasswd -Bbn mirror 'pa$$word' > "$WORK/htpasswd" 2>/dev/null

start_registry <<YAML
  tls:
    certificate: $PKI/server.crt
    key: $PKI/server.key
auth:
  htpasswd:
    realm: ferry-e2e
    path: $WORK/htpasswd
YAML

python3 tests/e2e/make-image.py "$WORK/oci" v1 3 > /dev/null
skopeo --insecure-policy copy --quiet --dest-cert-dir "$WORK/certs.d" --dest-creds 'mirror:pa$$word' \
    "oci:$WORK/oci:v1" "docker://127.0.0.1:$REG_PORT/private/app:v1" || fail "push to the TLS + htpasswd registry"

# Sets PORT. Not run in $(...): a subshell would keep the PID to itself,
# and the cleanup would never stop this ferry.
start_ferry() { # name extra-sync-json
    local port
    port=$(free_port)
    cat > "$WORK/$1.json" <<JSON
{
  "http": {"address": "127.0.0.1", "port": "$port"},
  "storage": {"rootDirectory": "$WORK/$1-data"},
  "extensions": {"sync": {"enable": true $2, "registries": [
    {"urls": ["https://127.0.0.1:$REG_PORT"], "certDir": "$WORK/certs.d", "maxRetries": 0}
  ]}}
}
JSON
    RUST_LOG=info "$FERRY" serve --config "$WORK/$1.json" > "$WORK/$1.log" 2>&1 &
    PIDS+=($!)
    wait_port "$port" || fail "ferry ($1) did not start"
    PORT=$port
}

cat > "$WORK/credentials.json" <<JSON
{"127.0.0.1:$REG_PORT": {"username": "mirror", "password": "pa\$\$word"}}
JSON
start_ferry with-creds ", \"credentialsFile\": \"$WORK/credentials.json\""
skopeo --insecure-policy copy --quiet --src-tls-verify=false \
    "docker://127.0.0.1:$PORT/private/app:v1" "dir:$WORK/pull" || fail "pull through ferry with credentials"
check_dir "$WORK/pull" 3
if grep -q 'pa\$\$word' "$WORK/with-creds.log"; then fail "the password appears in ferry's log"; fi
ok "TLS (private CA via certDir) + htpasswd registry pulled through ferry with a credentialsFile: 3 blobs verified"

start_ferry no-creds ""
if skopeo --insecure-policy copy --quiet --src-tls-verify=false \
    "docker://127.0.0.1:$PORT/private/app:v1" "dir:$WORK/pull-nocreds" 2> "$WORK/skopeo-nocreds.log"; then
    fail "pull without credentials succeeded"
fi
code=$(curl -s "http://127.0.0.1:$PORT/v2/private/app/manifests/v1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["errors"][0]["code"])')
[ -n "$code" ] || fail "no OCI error without credentials"
ok "without credentials ferry answers an OCI error ($code), nothing served"
finish
