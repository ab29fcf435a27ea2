# shellcheck shell=bash
# Headless Chromium for the browser tests (cli/tests/gallery.rs): installed from Debian's
# archive when missing, then exported as CHROMIUM, which the tests read.
# Requires scripts/lib/common.sh.

# _apt_get ARGS… — apt-get as root (through sudo only when we are not root), non-interactive,
# waiting for the dpkg lock rather than failing when another install holds it.
_apt_get() {
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 \
            || die "chromium is missing and installing it needs root: apt-get install chromium, or set CHROMIUM"
        sudo=(sudo)
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get -o DPkg::Lock::Timeout=300 "$@"
}

# ensure_chromium — CHROMIUM as given, else `chromium` on PATH, installing it if absent.
ensure_chromium() {
    if [[ -n "${CHROMIUM:-}" ]]; then
        [[ -x "$CHROMIUM" ]] || die "CHROMIUM=$CHROMIUM is not an executable"
        info "chromium: $CHROMIUM (from CHROMIUM)"
        return 0
    fi
    if ! command -v chromium >/dev/null 2>&1; then
        command -v apt-get >/dev/null 2>&1 \
            || die "chromium is missing and there is no apt-get here: install Chromium and set CHROMIUM to it"
        local started
        started="$(now_ms)"
        info "installing chromium (apt-get)"
        # The package lists are refreshed only when the install needs it: `apt-get update` is
        # slow, and a stock image usually has lists that already name chromium.
        if ! _apt_get install -y -qq --no-install-recommends chromium; then
            info "retrying after apt-get update"
            _apt_get update -qq || die "apt-get update failed"
            _apt_get install -y -qq --no-install-recommends chromium \
                || die "apt-get install chromium failed"
        fi
        command -v chromium >/dev/null 2>&1 || die "chromium is still not on PATH after installing it"
        info "chromium installed in $(fmt_ms $(($(now_ms) - started)))"
    fi
    CHROMIUM="$(command -v chromium)"
    export CHROMIUM
    # Debian's /usr/bin/chromium wrapper writes shell noise to stderr; only the version matters.
    info "chromium: $CHROMIUM ($("$CHROMIUM" --version 2>/dev/null | head -n1))"
}
