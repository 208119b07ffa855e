#!/usr/bin/env bash
# 1 node vs 3 nodes, on each cluster engine, same machine, same run: throughput and
# latency --rate 2000 with every pair split across nodes. See docs/benchmarks.md (Cluster).
#
#   crates/chat-bench/run-cluster.sh [ENGINE...]      ENGINE: postgres nats (default: both)
#
# Environment:
#   RUNS=1            runs of each case (the table reports the median)
#   OUT=DIR           results (default /tmp/chat-bench-cluster): <engine>-<nodes>-<mode>.jsonl
#   TP_SECS=10  LAT_SECS=20  LAT_RATE=2000  LAT_ROOMS=500  MODES="latency throughput"
#   DATABASE_URL      an existing PostgreSQL (may CREATE DATABASE); otherwise a throwaway one
#   NATS_URL          an existing nats-server; otherwise a throwaway one (scripts/nats-tmp.sh)
#
# Every case gets fresh servers and a fresh database. The one-node case runs with the same
# CHAT_BUS as the three-node case, so the table shows what the extra nodes cost. Expects
# target/release/chat-server and chat-bench: cargo build --release -p chat-server -p chat-bench
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ENGINES=("$@")
[[ ${#ENGINES[@]} -gt 0 ]] || ENGINES=(postgres nats)
RUNS=${RUNS:-1}
OUT=${OUT:-/tmp/chat-bench-cluster}
TP_SECS=${TP_SECS:-10}
LAT_SECS=${LAT_SECS:-20}
SERVER=${CHAT_SERVER_BIN:-$ROOT/target/release/chat-server}
BENCH=${CHAT_BENCH_BIN:-$ROOT/target/release/chat-bench}
KEY=bench-service-key-0123456789abcdef0123
mkdir -p "$OUT"
for bin in "$SERVER" "$BENCH"; do
    [[ -x $bin ]] || { echo "missing $bin: cargo build --release -p chat-server -p chat-bench" >&2; exit 2; }
done

WORK=$(mktemp -d /tmp/chat-bench-cluster.XXXXXX)
PIDS=()
PG_DATADIR=""
NATS_DIR=""
cleanup() {
    stop_nodes
    if [[ -n $NATS_DIR ]]; then "$ROOT/scripts/nats-tmp.sh" stop "$NATS_DIR" >&2 || true; fi
    if [[ -n $PG_DATADIR ]]; then "$ROOT/scripts/pg-tmp.sh" stop "$PG_DATADIR" >&2 || true; fi
    rm -rf "$WORK"
}
stop_nodes() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
trap cleanup EXIT

case ${DATABASE_URL:-} in
    postgres://* | postgresql://*) PG_BASE=$DATABASE_URL ;;
    *)
        env_lines=$("$ROOT/scripts/pg-tmp.sh" start)
        PG_DATADIR=$(printf '%s\n' "$env_lines" | sed -n 's/^export MATCHCHAT_PG_DATADIR=//p')
        PG_BASE=$(printf '%s\n' "$env_lines" | sed -n 's/^export DATABASE_URL=//p')
        ;;
esac
if [[ -z ${NATS_URL:-} ]]; then
    env_lines=$("$ROOT/scripts/nats-tmp.sh" start)
    NATS_DIR=$(printf '%s\n' "$env_lines" | sed -n 's/^export MATCHCHAT_NATS_DIR=//p')
    NATS_URL=$(printf '%s\n' "$env_lines" | sed -n 's/^export NATS_URL=//p')
fi

# Starts $2 nodes with CHAT_BUS=$1 on a fresh database; sets URLS and PIDS.
start_nodes() {
    local engine=$1 count=$2 name=$3
    local dbname="cluster_${name//-/_}_$$"
    psql "$PG_BASE" -qAtc "CREATE DATABASE $dbname" >/dev/null
    local db="${PG_BASE%/*}/$dbname"
    URLS=()
    local i line
    for i in $(seq "$count"); do
        mkdir -p "$WORK/$name/$i"
        env CHAT_BIND=127.0.0.1:0 DATABASE_URL="$db" CHAT_BUS="$engine" CHAT_NATS_URL="$NATS_URL" \
            CHAT_SERVICE_KEY=$KEY CHAT_JWT_SECRET=0123456789abcdef0123456789abcdef-jwt \
            CHAT_RATE_PER_SEC=1000000 CHAT_RATE_BURST=1000000 \
            CHAT_REQUEST_RATE_PER_SEC=1000000 CHAT_REQUEST_RATE_BURST=1000000 \
            CHAT_MAX_CONNECTIONS_PER_USER=100000 RUST_LOG=${RUST_LOG:-warn} \
            "$SERVER" >"$WORK/$name/$i/stdout" 2>"$OUT/$name-node$i.server.log" &
        PIDS+=($!)
        line=""
        for _ in $(seq 600); do
            line=$(head -n1 "$WORK/$name/$i/stdout" 2>/dev/null || true)
            [[ -n $line ]] && break
            kill -0 "${PIDS[-1]}" 2>/dev/null || { cat "$OUT/$name-node$i.server.log" >&2; exit 1; }
            sleep 0.1
        done
        [[ $line == "chat-server listening on http://"* ]] || { echo "node did not start: $line" >&2; exit 1; }
        URLS+=("${line#chat-server listening on }")
    done
    echo "== $name: nodes ${PIDS[*]} at ${URLS[*]}" >&2
}

bench() {
    local args=() u p
    for u in "${URLS[@]}"; do args+=(--url "$u"); done
    for p in "${PIDS[@]}"; do args+=(--server-pid "$p"); done
    "$BENCH" "${args[@]}" --service-key $KEY "$@"
}

for engine in "${ENGINES[@]}"; do
    for nodes in 1 3; do
        # Latency first, each case after a CHECKPOINT: a throughput run leaves the database
        # flushing hundreds of MB, which showed in the next run's latency tail.
        for mode in ${MODES:-latency throughput}; do
            results="$OUT/$engine-$nodes-$mode.jsonl"
            : >"$results"
            for i in $(seq "$RUNS"); do
                psql "$PG_BASE" -qAtc "CHECKPOINT" >/dev/null
                start_nodes "$engine" "$nodes" "$engine-$nodes-$mode-$i"
                case $mode in
                    throughput) bench --label "$engine x$nodes" throughput --rooms 500 --window 8 --duration "$TP_SECS" --warmup 2 >>"$results" || true ;;
                    latency) bench --label "$engine x$nodes" latency --rate "${LAT_RATE:-2000}" --rooms "${LAT_ROOMS:-500}" --duration "$LAT_SECS" --warmup 2 >>"$results" || true ;;
                esac
                stop_nodes
            done
            echo "== $results:" >&2
            cat "$results" >&2
        done
    done
done
