# shellcheck shell=bash
# Start/stop a throwaway moto server (local AWS) on a free 127.0.0.1 port.
# moto_server.py, not the plain moto_server: DynamoDB transactions must be isolated.
# Requires scripts/lib/common.sh and a venv from scripts/lib/venv.sh.
#
# After start_moto: MOTO_PID (also its process-group id), MOTO_PORT,
# MOTO_ENDPOINT, MOTO_LOG; start_iam_moto adds an IAM-enforcing one. Call stop_moto (both) from
# an EXIT trap.

MOTO_PID=""
IAM_MOTO_PID=""
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
    printf -- '---- last lines of %s ----\n' "$1" >&2
    tail -n 30 "$1" >&2 || true
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

# _launch_moto LOG — start one moto server; sets _LAUNCHED_PID and _LAUNCHED_ENDPOINT.
_launch_moto() {
    local log=$1 attempt status started port
    mkdir -p "$(dirname "$log")"
    started="$(now_ms)"
    # A free port can be taken between probing and binding; retry on a new one.
    for attempt in 1 2 3; do
        port="$(_free_port)"
        _LAUNCHED_ENDPOINT="http://127.0.0.1:$port"
        # setsid: own process group, so stop_moto can take down anything it
        # spawns and a terminal Ctrl-C reaches us (and our trap) rather than it.
        setsid "$VENV_DIR/bin/python" "$_MOTO_LIB_DIR/moto_server.py" -H 127.0.0.1 -p "$port" \
            >"$log" 2>&1 </dev/null &
        _LAUNCHED_PID=$!
        status=0
        _wait_ready "$_LAUNCHED_ENDPOINT/moto-api/" "$_LAUNCHED_PID" "$MOTO_START_TIMEOUT" || status=$?
        case "$status" in
            0)
                info "moto ready at $_LAUNCHED_ENDPOINT (pid $_LAUNCHED_PID, log $log) in $(fmt_ms $(($(now_ms) - started)))"
                return 0
                ;;
            2)
                if grep -q 'Address already in use' "$log" 2>/dev/null && ((attempt < 3)); then
                    info "port $port was taken, retrying"
                    continue
                fi
                _moto_log_tail "$log"
                die "moto_server exited during startup"
                ;;
            *)
                _moto_log_tail "$log"
                _stop_pid "$_LAUNCHED_PID"
                die "moto_server did not answer at $_LAUNCHED_ENDPOINT/moto-api/ within ${MOTO_START_TIMEOUT}s"
                ;;
        esac
    done
}

start_moto() {
    _pick_log
    _launch_moto "$MOTO_LOG"
    MOTO_PID=$_LAUNCHED_PID
    MOTO_ENDPOINT=$_LAUNCHED_ENDPOINT
    MOTO_PORT=${MOTO_ENDPOINT##*:}
}

# start_iam_moto — a second moto that enforces IAM, for the tests that run each function under
# its own policy from template.yaml (moto's enforcement is server-wide, so the other tests keep
# theirs unenforced). Exports MOTO_IAM_ENDPOINT and the harness admin's key
# (MOTO_IAM_ADMIN_KEY_ID, MOTO_IAM_ADMIN_SECRET), which builds the test resources and users, and
# IAM_HARNESS_PYTHON (the venv's python, for iam_harness.py), and IAM_MOTO_LOG, where every
# refusal is logged as `IAM DENIED <user> <action> on <resource>` (moto_server.py).
start_iam_moto() {
    IAM_MOTO_LOG="${MOTO_LOG%.log}-iam.log"
    _launch_moto "$IAM_MOTO_LOG"
    IAM_MOTO_PID=$_LAUNCHED_PID
    MOTO_IAM_ENDPOINT=$_LAUNCHED_ENDPOINT
    local admin
    admin="$("$VENV_DIR/bin/python" "$_MOTO_LIB_DIR/iam_harness.py" bootstrap --endpoint "$MOTO_IAM_ENDPOINT")" \
        || die "could not bootstrap the IAM-enforcing moto (log $IAM_MOTO_LOG)"
    read -r MOTO_IAM_ADMIN_KEY_ID MOTO_IAM_ADMIN_SECRET <<<"$admin"
    IAM_HARNESS_PYTHON="$VENV_DIR/bin/python"
    export MOTO_IAM_ENDPOINT MOTO_IAM_ADMIN_KEY_ID MOTO_IAM_ADMIN_SECRET IAM_HARNESS_PYTHON IAM_MOTO_LOG
    info "IAM enforced on $MOTO_IAM_ENDPOINT"
}

# _stop_pid PID — TERM the process group, then KILL what is left.
_stop_pid() {
    local pid=$1 _
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    info "moto stopped (pid $pid)"
}

stop_moto() {
    if [[ -n "$IAM_MOTO_PID" ]]; then
        _stop_pid "$IAM_MOTO_PID"
        IAM_MOTO_PID=""
    fi
    [[ -n "$MOTO_PID" ]] || return 0
    local pid=$MOTO_PID
    MOTO_PID=""
    _stop_pid "$pid"
}
