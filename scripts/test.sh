#!/usr/bin/env bash
# matchchat's test command: `scripts/test.sh`. CI runs it through .ci/run.
#
# - If DATABASE_URL is not a postgres:// URL, starts a throwaway PostgreSQL 15 cluster with
#   scripts/pg-tmp.sh (installing PostgreSQL with apt-get when it is missing and this runs
#   as root) and stops and deletes it when this script exits, however it exits.
#   With DATABASE_URL=postgres://... set, that server is used instead (its user must be
#   allowed to CREATE DATABASE: every PostgreSQL test creates a database of its own).
# - Runs `cargo test --workspace` (every crate; both store backends, SQLite and PostgreSQL).
#   Arguments replace `--workspace`: `scripts/test.sh -p chat-store` tests one crate,
#   `scripts/test.sh -p chat-store -- postgres::` a subset.
# - Then runs the browser tests (see run_browser_tests below).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

PG_DATADIR=""
cleanup() {
    local status=$?
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
run_cargo_tests "$@"
if [[ $# -eq 0 ]]; then
    run_browser_tests
fi
step "all tests passed"
