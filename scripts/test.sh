#!/usr/bin/env bash
# matchchat's test command: `scripts/test.sh`. CI runs it through .ci/run.
#
# - If DATABASE_URL is not a postgres:// URL, starts a throwaway PostgreSQL 15 cluster with
#   scripts/pg-tmp.sh (installing PostgreSQL with apt-get when it is missing and this runs
#   as root) and stops and deletes it when this script exits, however it exits.
#   With DATABASE_URL=postgres://... set, that server is used instead (its user must be
#   allowed to CREATE DATABASE: every PostgreSQL test creates a database of its own).
# - Likewise starts a throwaway nats-server with scripts/nats-tmp.sh (installing Debian's
#   nats-server when missing) unless NATS_URL is set, for the cluster tests' NATS engine.
# - Runs `cargo test --workspace` (every crate; both store backends, SQLite and PostgreSQL).
#   Arguments replace `--workspace`: `scripts/test.sh -p chat-store` tests one crate,
#   `scripts/test.sh -p chat-store -- postgres::` a subset.
# - Then runs the browser tests (see run_browser_tests below).
# - Then runs each fuzz target briefly (scripts/fuzz.sh, FUZZ_SECONDS per target, default 10)
#   over its checked-in corpus: a regression of the input rules fails CI. The fuzz build
#   (nightly, AddressSanitizer) is cached outside the checkout (MATCHCHAT_FUZZ_TARGET_DIR,
#   default ~/.cache/matchchat/fuzz-target), so only the first run on a machine pays the
#   ~12 minutes of building it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

PG_DATADIR=""
NATS_DIR=""
cleanup() {
    local status=$?
    if [[ -n $NATS_DIR ]]; then
        step "stopping the throwaway NATS server"
        scripts/nats-tmp.sh stop "$NATS_DIR" || true
    fi
    if [[ -n $PG_DATADIR ]]; then
        step "stopping the throwaway PostgreSQL"
        scripts/pg-tmp.sh stop "$PG_DATADIR" || true
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_postgres() {
    case ${DATABASE_URL:-} in
        postgres://* | postgresql://*)
            step "using the PostgreSQL server in DATABASE_URL"
            return
            ;;
    esac
    step "starting a throwaway PostgreSQL (scripts/pg-tmp.sh)"
    local env_lines
    env_lines=$(scripts/pg-tmp.sh start)
    PG_DATADIR=$(printf '%s\n' "$env_lines" | sed -n 's/^export MATCHCHAT_PG_DATADIR=//p')
    DATABASE_URL=$(printf '%s\n' "$env_lines" | sed -n 's/^export DATABASE_URL=//p')
    [[ -n $PG_DATADIR && -n $DATABASE_URL ]] || { echo "pg-tmp.sh printed no DATABASE_URL" >&2; exit 1; }
    export DATABASE_URL
}

# The cluster tests' NATS engine needs a nats-server: a throwaway one (installed with apt-get
# when missing), unless NATS_URL already names one.
start_nats() {
    if [[ -n ${NATS_URL:-} ]]; then
        step "using the NATS server in NATS_URL"
        return
    fi
    step "starting a throwaway NATS server (scripts/nats-tmp.sh)"
    local env_lines
    env_lines=$(scripts/nats-tmp.sh start)
    NATS_DIR=$(printf '%s\n' "$env_lines" | sed -n 's/^export MATCHCHAT_NATS_DIR=//p')
    NATS_URL=$(printf '%s\n' "$env_lines" | sed -n 's/^export NATS_URL=//p')
    [[ -n $NATS_DIR && -n $NATS_URL ]] || { echo "nats-tmp.sh printed no NATS_URL" >&2; exit 1; }
    export NATS_URL MATCHCHAT_NATS_DIR="$NATS_DIR"
}

run_cargo_tests() {
    if [[ $# -gt 0 ]]; then
        step "cargo test $*"
        cargo test "$@"
    else
        step "cargo test --workspace"
        cargo test --workspace
    fi
}

# The browser suite (tests/browser/run.sh): after the Rust tests, with DATABASE_URL still set
# and the throwaway PostgreSQL still running.
run_browser_tests() {
    step "browser tests (tests/browser/run.sh)"
    tests/browser/run.sh
}

start_postgres
start_nats
run_cargo_tests "$@"
if [[ $# -eq 0 ]]; then
    run_browser_tests
    step "fuzz targets, ${FUZZ_SECONDS:-10} s each (scripts/fuzz.sh)"
    scripts/fuzz.sh "${FUZZ_SECONDS:-10}"
fi
step "all tests passed"
