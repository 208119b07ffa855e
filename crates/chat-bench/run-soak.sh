#!/usr/bin/env bash
# Runs `chat-bench soak` against a fresh release chat-server and keeps what it printed, with
# the server's memory split (/proc: anonymous, file, threads) once a minute and glibc's
# malloc_stats at the end. See docs/benchmarks.md, "Soak".
#
#   crates/chat-bench/run-soak.sh sqlite|postgres [DURATION]      (DURATION: 30m by default)
#
# Environment:
#   OUT=DIR            where results go (default /tmp/chat-bench-soak): <label>.jsonl (the
#                      verdict), <label>.stderr (the per-minute lines), <label>.proc.tsv,
#                      <label>.server.log (ends with malloc_stats), <label>.pg-restart.log
#   LABEL              default: the backend
#   RESTART_AT=SECS    postgres: restart PostgreSQL (pg_ctl restart -m fast) this many seconds
#                      after the soak's clock started (default: half the duration; 0: never)
#   SERVER_ENV         extra VAR=value words for the server (e.g. MALLOC_ARENA_MAX=2)
#   SOAK_ARGS          extra soak flags;  DRAIN_SECS=120
#   CHAT_SERVER_BIN, CHAT_BENCH_BIN   binaries to use instead of target/release/* (they are
#                      copied first, so a rebuild during the run does not touch them)
#   DATABASE_URL       postgres: an existing server (its user may CREATE DATABASE; it is not
#                      restarted then unless it is a scripts/pg-tmp.sh one named by
#                      MATCHCHAT_PG_DATADIR); otherwise scripts/pg-tmp.sh starts a throwaway one.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BACKEND=${1:-}
DURATION=${2:-30m}
case $BACKEND in sqlite | postgres) ;; *) sed -n '2,24p' "$0" >&2; exit 2 ;; esac
OUT=${OUT:-/tmp/chat-bench-soak}
LABEL=${LABEL:-$BACKEND}
DRAIN_SECS=${DRAIN_SECS:-120}
KEY=bench-service-key-0123456789abcdef0123
mkdir -p "$OUT"

secs_of() {
    case $1 in
        *h) echo $(( ${1%h} * 3600 )) ;;
        *m) echo $(( ${1%m} * 60 )) ;;
        *s) echo "${1%s}" ;;
        *) echo "$1" ;;
    esac
}
DURATION_SECS=$(secs_of "$DURATION")
RESTART_AT=${RESTART_AT:-$(( DURATION_SECS / 2 ))}

WORK=$(mktemp -d /tmp/chat-bench-soak.XXXXXX)
cp "${CHAT_SERVER_BIN:-$ROOT/target/release/chat-server}" "$WORK/chat-server"
cp "${CHAT_BENCH_BIN:-$ROOT/target/release/chat-bench}" "$WORK/chat-bench"
SERVER_PID="" PG_DATADIR="" OWN_PG="" SAMPLER_PID="" RESTARTER_PID=""
cleanup() {
    for pid in $SAMPLER_PID $RESTARTER_PID; do kill "$pid" 2>/dev/null || true; done
    if [[ -n $SERVER_PID ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    if [[ -n $OWN_PG ]]; then "$ROOT/scripts/pg-tmp.sh" stop "$PG_DATADIR" >&2 || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

if [[ $BACKEND == sqlite ]]; then
    DB="sqlite://$WORK/chat.db"
else
    case ${DATABASE_URL:-} in
        postgres://* | postgresql://*) PG_BASE=$DATABASE_URL; PG_DATADIR=${MATCHCHAT_PG_DATADIR:-} ;;
        *)
            env_lines=$("$ROOT/scripts/pg-tmp.sh" start)
            PG_DATADIR=$(printf '%s\n' "$env_lines" | sed -n 's/^export MATCHCHAT_PG_DATADIR=//p')
            PG_BASE=$(printf '%s\n' "$env_lines" | sed -n 's/^export DATABASE_URL=//p')
            OWN_PG=1
            ;;
    esac
    dbname="soak_${LABEL//[^a-zA-Z0-9]/_}_$$"
    psql "$PG_BASE" -qAtc "CREATE DATABASE $dbname" >/dev/null
    DB="${PG_BASE%/*}/$dbname"
fi

# shellcheck disable=SC2086
env CHAT_BIND=127.0.0.1:0 DATABASE_URL="$DB" CHAT_SERVICE_KEY=$KEY \
    CHAT_JWT_SECRET=0123456789abcdef0123456789abcdef-jwt CHAT_RATE_PER_SEC=1000000 CHAT_RATE_BURST=1000000 \
    CHAT_REQUEST_RATE_PER_SEC=1000000 CHAT_REQUEST_RATE_BURST=1000000 \
    CHAT_MAX_CONNECTIONS_PER_USER=100000 RUST_LOG=${RUST_LOG:-warn} ${SERVER_ENV:-} \
    "$WORK/chat-server" >"$WORK/stdout" 2>"$OUT/$LABEL.server.log" &
SERVER_PID=$!
line=""
for _ in $(seq 600); do
    line=$(head -n1 "$WORK/stdout" 2>/dev/null || true)
    [[ -n $line ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$OUT/$LABEL.server.log" >&2; exit 1; }
    sleep 0.1
done
URL=${line#chat-server listening on }
[[ $URL == http://* ]] || { echo "server did not start: $line" >&2; exit 1; }
echo "== soak $LABEL ($BACKEND, $DURATION): server pid $SERVER_PID at $URL; ${SERVER_ENV:-no extra env}" >&2

# Once a minute: the server's memory by kind and its thread count (glibc gives each thread
# that allocates an arena, up to 8 per core, which is one candidate for RSS growth).
{
    printf 'utc\trss_kib\trss_anon_kib\trss_file_kib\tthreads\n'
    while kill -0 "$SERVER_PID" 2>/dev/null; do
        awk -v t="$(date -u +%H:%M:%S)" '
            /^VmRSS:/ {r=$2} /^RssAnon:/ {a=$2} /^RssFile:/ {f=$2} /^Threads:/ {n=$2}
            END {printf "%s\t%s\t%s\t%s\t%s\n", t, r, a, f, n}' "/proc/$SERVER_PID/status" 2>/dev/null || break
        sleep 60
    done
} >"$OUT/$LABEL.proc.tsv" &
SAMPLER_PID=$!

# The soak's clock starts once its clients are connected (a second or two after this).
if [[ $BACKEND == postgres && $RESTART_AT -gt 0 && -n $PG_DATADIR ]]; then
    {
        sleep "$RESTART_AT"
        echo "restart at $(date -u +%H:%M:%S.%N)"
        runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$PG_DATADIR/data" \
            -l "$PG_DATADIR/server.log" -w -m fast restart >/dev/null
        echo "back at $(date -u +%H:%M:%S.%N)"
    } >"$OUT/$LABEL.pg-restart.log" 2>&1 &
    RESTARTER_PID=$!
fi

status=0
# shellcheck disable=SC2086
"$WORK/chat-bench" --url "$URL" --service-key $KEY --server-pid "$SERVER_PID" --label "$LABEL" \
    --drain-secs "$DRAIN_SECS" soak --duration "$DURATION" ${SOAK_ARGS:-} \
    >"$OUT/$LABEL.jsonl" 2> >(tee "$OUT/$LABEL.stderr" >&2) || status=$?

# glibc's view of the heap, printed on the server's stderr: bytes the arenas hold from the
# system against bytes in live allocations (what RSS counts that a leak would not explain).
if command -v gdb >/dev/null; then
    gdb -p "$SERVER_PID" -batch -ex 'call (void) malloc_stats()' >/dev/null 2>&1 || true
fi
awk -v t="$(date -u +%H:%M:%S)" '
    /^VmRSS:/ {r=$2} /^RssAnon:/ {a=$2} /^RssFile:/ {f=$2} /^Threads:/ {n=$2}
    END {printf "%s\t%s\t%s\t%s\t%s\n", t, r, a, f, n}' "/proc/$SERVER_PID/status" >>"$OUT/$LABEL.proc.tsv" || true
echo "== soak $LABEL: exit $status; $OUT/$LABEL.{jsonl,stderr,proc.tsv,server.log}" >&2
exit "$status"
