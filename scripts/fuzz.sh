#!/usr/bin/env bash
# Coverage-guided fuzzing of matchchat's input rules: `scripts/fuzz.sh [SECONDS]`.
#
# - The targets live in fuzz/ (cargo-fuzz's layout, a workspace of its own with its own
#   fuzz/target, outside the main workspace): client_frame, body, token, history_cursors.
#   See "Fuzzing" in docs/benchmarks.md.
# - Needs the nightly toolchain (`rustup toolchain list`); installs cargo-fuzz with
#   `cargo install cargo-fuzz --locked` when it is missing (about a minute).
# - Builds the targets once (libFuzzer, AddressSanitizer, debug assertions and overflow
#   checks: cargo-fuzz's defaults), then runs each for SECONDS (default 20) over its
#   checked-in corpus fuzz/corpus/<target>. New inputs go to a scratch folder, so the
#   checked-in corpus stays as it is; a crash is kept in fuzz/artifacts/<target>/.
# - Prints, per target, the executions and libFuzzer's final coverage line. Fails (non-zero)
#   on the first crash, panic, failed assertion or timeout, after naming the input.
# - Builds and runs at nice 10: it shares the machine politely.
# - The build goes to MATCHCHAT_FUZZ_TARGET_DIR (default ~/.cache/matchchat/fuzz-target),
#   outside the checkout, so a fresh clone (CI) reuses the last build instead of spending
#   ~12 minutes on it; cargo rebuilds what changed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECONDS_PER_TARGET=${1:-20}
if ! [[ $SECONDS_PER_TARGET =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: scripts/fuzz.sh [SECONDS]   (seconds per target, default 20)" >&2
    exit 2
fi
TARGETS=(client_frame body token history_cursors)

step() { printf '\n==> %s\n' "$*" >&2; }

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz.sh: the nightly toolchain is missing (cargo-fuzz needs it): rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    step "installing cargo-fuzz"
    nice -n 10 cargo install cargo-fuzz --locked
fi

export CARGO_TARGET_DIR=${MATCHCHAT_FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/matchchat/fuzz-target}
mkdir -p "$CARGO_TARGET_DIR"

step "building the fuzz targets ($(cargo fuzz --version)) in $CARGO_TARGET_DIR"
(cd fuzz && nice -n 10 cargo +nightly fuzz build)

SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

summary=()
for target in "${TARGETS[@]}"; do
    step "fuzzing $target for ${SECONDS_PER_TARGET}s"
    mkdir -p "$SCRATCH/$target"
    log="$SCRATCH/$target.log"
    status=0
    # New inputs go to the scratch folder (first); the checked-in corpus is read only.
    (cd fuzz && nice -n 10 cargo +nightly fuzz run "$target" \
        "$SCRATCH/$target" "corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1) >"$log" 2>&1 || status=$?
    done_line=$(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1 || true)
    cov_line=$(grep -E '^#[0-9]+\s+DONE' "$log" | tail -n 1 || true)
    if ((status != 0)); then
        tail -n 60 "$log" >&2
        echo "fuzz.sh: $target FAILED (exit $status); the input is in fuzz/artifacts/$target/" >&2
        echo "reproduce: (cd fuzz && cargo +nightly fuzz run $target artifacts/$target/<file>)" >&2
        exit 1
    fi
    echo "$target: ${done_line:-no summary} | ${cov_line:-}"
    summary+=("$(printf '%-16s %s' "$target" "${done_line#Done }")")
done

step "fuzzing done, no crash"
printf '%s\n' "${summary[@]}"
