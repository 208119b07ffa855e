#!/usr/bin/env bash
# Runs chat-bench's budget scenarios against a fresh release chat-server and keeps every JSON
# line. See docs/benchmarks.md.
#
#   crates/chat-bench/run-budget.sh sqlite|postgres [MODE...]
#
# MODE is any of: throughput latency latency-floor connections history (default: all
# five). latency is 2,000 msg/s over 500 rooms, latency-floor 100 msg/s over 50 rooms; both
# with --breakdown (the server's per-hop histograms, read from /metrics).
# Environment:
#   RUNS=3            runs of each mode (the table reports the median)
#   OUT=DIR           where results go (default /tmp/chat-bench-results); one
#                     <backend>-<mode>.jsonl per mode, and the server's log beside it
#   TP_SECS=10        throughput measured seconds;  LAT_SECS=20  latency measured seconds
#   HIST_SECS=20      history measured seconds;     CONNS=19000 connections count
#   IDLE_SECS=30      connections idle window (2 ping intervals); BENCH_ARGS extra flags
#   CHAT_SERVER_BIN, CHAT_BENCH_BIN   binaries to use instead of target/release/*
#   DATABASE_URL      for postgres: an existing server to use (its user must be allowed to
#                     CREATE DATABASE); otherwise scripts/pg-tmp.sh starts a throwaway one
#                     (fsync=on, synchronous_commit=on) and stops it at the end.
#
# Every run gets a fresh server and a fresh database. Expects target/release/chat-server and
# target/release/chat-bench: cargo build --release -p chat-server -p chat-bench
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BACKEND=${1:-}
shift || true
MODES=("$@")
[[ ${#MODES[@]} -gt 0 ]] || MODES=(throughput latency latency-floor connections history)
case $BACKEND in sqlite | postgres) ;; *) sed -n '2,20p' "$0" >&2; exit 2 ;; esac

RUNS=${RUNS:-3}
OUT=${OUT:-/tmp/chat-bench-results}
TP_SECS=${TP_SECS:-10}
LAT_SECS=${LAT_SECS:-20}
HIST_SECS=${HIST_SECS:-20}
CONNS=${CONNS:-19000}
IDLE_SECS=${IDLE_SECS:-30}
SERVER=${CHAT_SERVER_BIN:-$ROOT/target/release/chat-server}
BENCH=${CHAT_BENCH_BIN:-$ROOT/target/release/chat-bench}
KEY=bench-service-key-0123456789abcdef0123
mkdir -p "$OUT"
for bin in "$SERVER" "$BENCH"; do
    [[ -x $bin ]] || { echo "missing $bin: cargo build --release -p chat-server -p chat-bench" >&2; exit 2; }
done

WORK=$(mktemp -d /tmp/chat-bench-run.XXXXXX)
SERVER_PID=""
PG_DATADIR=""
cleanup() {
    if [[ -n $SERVER_PID ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    if [[ -n $PG_DATADIR ]]; then "$ROOT/scripts/pg-tmp.sh" stop "$PG_DATADIR" >&2 || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

PG_BASE=""
if [[ $BACKEND == postgres ]]; then
    case ${DATABASE_URL:-} in
        postgres://* | postgresql://*) PG_BASE=$DATABASE_URL ;;
        *)
            env_lines=$("$ROOT/scripts/pg-tmp.sh" start)
            PG_DATADIR=$(printf '%s\n' "$env_lines" | sed -n 's/^export MATCHCHAT_PG_DATADIR=//p')
            PG_BASE=$(printf '%s\n' "$env_lines" | sed -n 's/^export DATABASE_URL=//p')
            ;;
    esac
    psql "$PG_BASE" -Atc "SHOW fsync; SHOW synchronous_commit; SHOW server_version" | paste -sd' ' | sed 's/^/postgres: fsync, synchronous_commit, version: /' >&2
fi

# Starts a server on a fresh database; sets SERVER_PID and URL.
start_server() {
    local name=$1
    shift
    local db
    if [[ $BACKEND == sqlite ]]; then
        db="sqlite://$WORK/$name/chat.db"
    else
        local dbname="bench_${name//-/_}_$$"
        psql "$PG_BASE" -qAtc "CREATE DATABASE $dbname" >/dev/null
        db="${PG_BASE%/*}/$dbname"
    fi
    mkdir -p "$WORK/$name"
    env CHAT_BIND=127.0.0.1:0 DATABASE_URL="$db" CHAT_SERVICE_KEY=$KEY \
        CHAT_JWT_SECRET=0123456789abcdef0123456789abcdef-jwt CHAT_RATE_PER_SEC=1000000 CHAT_RATE_BURST=1000000 \
        CHAT_REQUEST_RATE_PER_SEC=1000000 CHAT_REQUEST_RATE_BURST=1000000 \
        CHAT_MAX_CONNECTIONS_PER_USER=100000 RUST_LOG=${RUST_LOG:-warn} "$@" \
        "$SERVER" >"$WORK/$name/stdout" 2>"$OUT/$BACKEND-$name.server.log" &
    SERVER_PID=$!
    local line=""
    for _ in $(seq 600); do
        line=$(head -n1 "$WORK/$name/stdout" 2>/dev/null || true)
        [[ -n $line ]] && break
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$OUT/$BACKEND-$name.server.log" >&2; exit 1; }
        sleep 0.1
    done
    URL=${line#chat-server listening on }
    [[ $URL == http://* ]] || { echo "server did not start: $line" >&2; exit 1; }
    echo "== $BACKEND $name: server pid $SERVER_PID at $URL" >&2
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

bench() {
    # shellcheck disable=SC2086
    "$BENCH" --url "$URL" --service-key $KEY --server-pid "$SERVER_PID" --label "$BACKEND" ${BENCH_ARGS:-} "$@"
}

for mode in "${MODES[@]}"; do
    results="$OUT/$BACKEND-$mode.jsonl"
    : >"$results"
    for i in $(seq "$RUNS"); do
        # A fresh server and database for every run: runs do not see each other's data, and
        # memory per connection is measured from a fresh baseline.
        start_server "$mode-$i"
        case $mode in
            throughput) bench throughput --rooms 500 --window 8 --duration "$TP_SECS" --warmup 2 >>"$results" || true ;;
            latency) bench latency --rate 2000 --rooms 500 --duration "$LAT_SECS" --warmup 2 --breakdown >>"$results" || true ;;
            latency-floor) bench latency --rate 100 --rooms 50 --duration "$LAT_SECS" --warmup 2 --breakdown >>"$results" || true ;;
            connections) bench connections --count "$CONNS" --idle-secs "$IDLE_SECS" >>"$results" || true ;;
            history) bench history --rooms 100 --seed 300 --rate 200 --send-rate 1000 --duration "$HIST_SECS" --warmup 2 >>"$results" || true ;;
            *) echo "unknown mode $mode" >&2; exit 2 ;;
        esac
        stop_server
    done
    echo "== $results:" >&2
    cat "$results" >&2
done
