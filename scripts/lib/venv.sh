# shellcheck shell=bash
# The repo's Python venv (.venv): created on demand, refreshed only when
# requirements-test.txt changes (tracked by a hash stamp inside the venv).
# Requires scripts/lib/common.sh.

VENV_DIR="${VENV_DIR:-$REPO_ROOT/.venv}"
VENV_REQUIREMENTS="$REPO_ROOT/requirements-test.txt"

_venv_wanted_stamp() {
    # The interpreter version is part of the stamp: a venv built by another
    # Python would have stale compiled wheels.
    local py_version
    py_version="$("${PYTHON:-python3}" -c 'import sys; print(sys.version.split()[0])')"
    printf '%s python-%s\n' "$(sha256sum "$VENV_REQUIREMENTS" | cut -d' ' -f1)" "$py_version"
}

_venv_ensure_locked() {
    local stamp_file="$VENV_DIR/.requirements.stamp" wanted
    wanted="$(_venv_wanted_stamp)"
    if [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$wanted" && -x "$VENV_DIR/bin/moto_server" ]] \
        && "$VENV_DIR/bin/python" -c '' 2>/dev/null; then
        info "venv up to date: $VENV_DIR"
        return 0
    fi
    local started
    started="$(now_ms)"
    if ! "$VENV_DIR/bin/python" -c '' 2>/dev/null; then
        # Missing or broken (e.g. its interpreter moved): rebuild from scratch.
        rm -rf "$VENV_DIR"
        info "creating venv: $VENV_DIR (${PYTHON:-python3})"
        "${PYTHON:-python3}" -m venv "$VENV_DIR" \
            || die "could not create a venv; on Debian install python3-venv"
    fi
    info "installing $(basename "$VENV_REQUIREMENTS") into the venv"
    "$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$VENV_REQUIREMENTS"
    printf '%s\n' "$wanted" >"$stamp_file"
    info "venv ready in $(fmt_ms $(($(now_ms) - started)))"
}

# ensure_venv — make .venv match requirements-test.txt. Serialised with a lock
# because parallel runs on a fresh machine would otherwise build it twice at once.
ensure_venv() {
    mkdir -p "$TARGET_DIR"
    if command -v flock >/dev/null 2>&1; then
        (
            flock 9
            _venv_ensure_locked
        ) 9>"$TARGET_DIR/.venv.lock"
    else
        _venv_ensure_locked
    fi
}
