# shellcheck shell=bash
# Start/stop a throwaway moto server (local AWS) on a free 127.0.0.1 port.
# moto_server.py, not the plain moto_server: DynamoDB transactions must be isolated.
# Requires scripts/lib/common.sh and a venv from scripts/lib/venv.sh.
#
# After start_moto: MOTO_PID (also its process-group id), MOTO_PORT,
# MOTO_ENDPOINT, MOTO_LOG. Call stop_moto from an EXIT trap.

MOTO_PID=""
MOTO_PORT=""
MOTO_ENDPOINT=""
MOTO_LOG="${MOTO_LOG:-}"
MOTO_START_TIMEOUT="${MOTO_START_TIMEOUT:-30}"
# moto_server.py (beside this file) is moto_server with DynamoDB calls serialised: see its doc.
_MOTO_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

_free_port() {
    "$VENV_DIR/bin/python" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# _wait_ready URL PID TIMEOUT — 0 ready, 1 timed out, 2 process died.
_wait_ready() {
    "$VENV_DIR/bin/python" - "$@" <<'PY'
import os, sys, time, urllib.request
url, pid, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
# Never route the readiness probe through a proxy: the server is local.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        with opener.open(url, timeout=1) as response:
            if response.status < 500:
                sys.exit(0)
    except Exception:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(2)
    time.sleep(0.1)
sys.exit(1)
PY
}

_moto_log_tail() {
    printf -- '---- last lines of %s ----\n' "$MOTO_LOG" >&2
    tail -n 30 "$MOTO_LOG" >&2 || true
    printf -- '----\n' >&2
}

# _pick_log — target/moto.log, unless another run holds it (engineers run
# scripts/test side by side): then a per-process log, so neither clobbers
# the other. The lock lives as long as this shell's fd 8.
_pick_log() {
    [[ -z "$MOTO_LOG" ]] || return 0
    mkdir -p "$TARGET_DIR"
    MOTO_LOG="$TARGET_DIR/moto.log"
    if command -v flock >/dev/null 2>&1; then
        exec 8>"$TARGET_DIR/.moto-log.lock"
        flock -n 8 || MOTO_LOG="$TARGET_DIR/moto-$$.log"
    fi
}

start_moto() {
    _pick_log
    mkdir -p "$(dirname "$MOTO_LOG")"
    local attempt status started
    started="$(now_ms)"
    # A free port can be taken between probing and binding; retry on a new one.
    for attempt in 1 2 3; do
        MOTO_PORT="$(_free_port)"
        MOTO_ENDPOINT="http://127.0.0.1:$MOTO_PORT"
        # setsid: own process group, so stop_moto can take down anything it
        # spawns and a terminal Ctrl-C reaches us (and our trap) rather than it.
        setsid "$VENV_DIR/bin/python" "$_MOTO_LIB_DIR/moto_server.py" -H 127.0.0.1 -p "$MOTO_PORT" \
            >"$MOTO_LOG" 2>&1 </dev/null &
        MOTO_PID=$!
        status=0
        _wait_ready "$MOTO_ENDPOINT/moto-api/" "$MOTO_PID" "$MOTO_START_TIMEOUT" || status=$?
        case "$status" in
            0)
                info "moto ready at $MOTO_ENDPOINT (pid $MOTO_PID, log $MOTO_LOG) in $(fmt_ms $(($(now_ms) - started)))"
                return 0
                ;;
            2)
                if grep -q 'Address already in use' "$MOTO_LOG" 2>/dev/null && ((attempt < 3)); then
                    info "port $MOTO_PORT was taken, retrying"
                    MOTO_PID=""
                    continue
                fi
                MOTO_PID=""
                _moto_log_tail
                die "moto_server exited during startup"
                ;;
            *)
                _moto_log_tail
                stop_moto
                die "moto_server did not answer at $MOTO_ENDPOINT/moto-api/ within ${MOTO_START_TIMEOUT}s"
                ;;
        esac
    done
}

stop_moto() {
    [[ -n "$MOTO_PID" ]] || return 0
    local pid=$MOTO_PID _
    MOTO_PID=""
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    info "moto stopped (pid $pid)"
}
