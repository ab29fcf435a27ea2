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

# debug_build_bins [CARGO ARGS…] — the debug binaries of the whole workspace: every Lambda
# function, the emulator, the CLI and the benchmark suite.
# scripts/sdk-smoke, scripts/local-invoke and scripts/bench --tiny all build through here on
# purpose: cargo resolves dependency features per package selection, so each different `-p` set
# recompiled ~45 dependency crates (~5 min on 2 cores). `--workspace` resolves them exactly as the
# tests' build does (scripts/test: `cargo nextest run --workspace`), and as `cargo run --bin <fn>`
# does (the default members; what `cargo lambda watch` runs), so after the tests only our own
# crates are compiled here. That holds while no dev-dependency turns on a feature of a dependency
# that the normal build lacks (check: `cargo tree --workspace -e features` with and without
# `-e dev` list the same features).
debug_build_bins() {
    (cd "$REPO_ROOT" && cargo build --workspace --bins "$@" </dev/null)
}
