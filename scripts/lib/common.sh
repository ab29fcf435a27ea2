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
