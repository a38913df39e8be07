# Shared helpers for the end-to-end scripts (sourced, not run).
# Each script sets NAME (its log prefix) and WORK (its scratch folder).

PIDS=()
passed=0
failed=0

e2e_cleanup() {
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
