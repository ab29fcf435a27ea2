# shellcheck shell=bash
# Shared helpers for scripts/ and .ci/: repo paths, section headers, timing.
# Sourced, never executed; callers own `set -euo pipefail`.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck disable=SC2034 # used by the scripts that source this
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"

# section TITLE — a header that stands out in long CI logs.
section() {
    printf '\n==== %s ====\n' "$*"
}

info() {
    printf '  %s\n' "$*"
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# now_ms — wall clock in milliseconds, for step timings (GNU date).
now_ms() {
    date +%s%3N
}

# fmt_ms MS — "12.3s" from a millisecond count.
fmt_ms() {
    local ms=$1
    printf '%d.%01ds' $((ms / 1000)) $(((ms % 1000) / 100))
}

# FUNCTIONS — every crate under functions/ is one Lambda function; its package name is its
# directory name.
FUNCTIONS=()
for _manifest in "$REPO_ROOT"/functions/*/Cargo.toml; do
    [[ -f "$_manifest" ]] && FUNCTIONS+=("$(basename "$(dirname "$_manifest")")")
done
unset _manifest

# debug_build_bins [CARGO ARGS…] — the debug build of every Lambda function and the emulator.
# scripts/sdk-smoke and scripts/local-invoke both build through here on purpose: cargo resolves
# dependency features per package selection, so a different `-p` set recompiles ~45 crates
# (~5 min on 2 cores) that the other script has just built. (scripts/bench's selection still
# differs and pays that once: CI's three steps went from 847 s to 734 s, not further.)
debug_build_bins() {
    local packages=() fn
    for fn in "${FUNCTIONS[@]}"; do packages+=(-p "$fn"); done
    (cd "$REPO_ROOT" && cargo build "${packages[@]}" -p pictify-emulator "$@" </dev/null)
}
