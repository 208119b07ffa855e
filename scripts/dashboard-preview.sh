#!/usr/bin/env bash
# Regenerates docs/img/dashboard.png, the picture of docs/grafana/matchchat-dashboard.json,
# without Grafana:
#
#   scripts/dashboard-preview.sh [--nodes 1|2] [--phase-secs N] [--out PATH] [--html PATH]
#
# 1. Starts throwaway chat-server nodes (target/debug, built first; on 127.0.0.1, free ports,
#    each with CHAT_METRICS_BIND): --nodes 1 (default) on an SQLite file in a temporary
#    folder; --nodes 2 a cluster of two on a throwaway PostgreSQL (scripts/pg-tmp.sh) with
#    CHAT_BUS=postgres, so the cluster-bus panels have data and each node its own line. When
#    the server has webhooks (`chat-server --help` lists --webhook-url), a local receiver
#    answering 204 is started and configured too.
# 2. Starts a throwaway Prometheus (Debian's `prometheus`, installed with apt-get when missing
#    and this runs as root) scraping every node's /metrics once a second, its data in the
#    temporary folder, listening on 127.0.0.1 only.
# 3. Drives three phases of modest traffic with target/debug/chat-bench: `soak` (sends over 40
#    rooms at 10 msg/s, history reads, seen marks, reconnects, slow and abrupt clients) for
#    --phase-secs (default 90), a `latency` spike (150 msg/s over 100 rooms) for a third of
#    that, and `soak` again at 20 msg/s for two thirds of it: about 3.5 minutes in all.
# 4. Renders the dashboard with scripts/dashboard-render.mjs: every panel's own PromQL against
#    that Prometheus over the run's time range, drawn as SVG in Grafana's dark style and
#    screenshotted with headless Chromium (Debian's; playwright-core from
#    tests/browser/node_modules, `npm ci` there when missing) to --out (docs/img/dashboard.png).
#
# Environment: CHAT_SERVER_BIN runs that server binary instead of building target/debug's
# (e.g. another branch's build); CHROMIUM names the browser (default `command -v chromium`).
#
# Every process it starts is stopped by PID when it exits, however it exits; waits poll for
# readiness with a deadline. Everything runs under `nice -n 10` (other work shares the machine).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

NODES=1
PHASE_SECS=90
OUT="$REPO/docs/img/dashboard.png"
HTML=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --nodes) NODES=$2; shift 2 ;;
        --phase-secs) PHASE_SECS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --html) HTML=$2; shift 2 ;;
        -h | --help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "dashboard-preview: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $NODES == 1 || $NODES == 2 ]] || { echo "dashboard-preview: --nodes is 1 or 2" >&2; exit 2; }
[[ $PHASE_SECS =~ ^[0-9]+$ && $PHASE_SECS -ge 15 ]] || { echo "dashboard-preview: --phase-secs is a whole number, at least 15" >&2; exit 2; }

log() { printf 'dashboard-preview: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

NICE=(nice -n 10)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/matchchat-dashboard.XXXXXX")
PIDS=()
PG_DATADIR=""
cleanup() {
    local status=$?
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # Bounded: a process that ignores SIGTERM for 10 s gets SIGKILL.
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n $PG_DATADIR ]]; then
        scripts/pg-tmp.sh stop "$PG_DATADIR" || true
    fi
    if [[ $status -ne 0 ]]; then
        log "failed; the last lines of each log:"
        local f
        for f in "$WORK"/*.log; do
            [[ -f $f ]] || continue
            printf '\n--- %s\n' "$(basename "$f")" >&2
            tail -n 15 "$f" >&2 || true
        done
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

apt_install() {
    [[ $(id -u) -eq 0 ]] || die "$* is missing and this is not root: install it (apt-get install $*) and run again"
    if [[ -z ${APT_UPDATED:-} ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

# Polls `cmd...` until it succeeds or `secs` pass.
wait_for() {
    local secs=$1 what=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [[ $SECONDS -lt $deadline ]] || die "$what: not ready within ${secs}s"
        sleep 0.2
    done
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# ---- what this needs
command -v python3 >/dev/null 2>&1 || apt_install python3
command -v prometheus >/dev/null 2>&1 || { log "installing Debian's prometheus (apt-get)"; apt_install prometheus; }
command -v node >/dev/null 2>&1 || { log "installing nodejs and npm (apt-get)"; apt_install nodejs npm; }
if [[ -z ${CHROMIUM:-} ]] && ! command -v chromium >/dev/null 2>&1; then
    log "installing Debian's chromium (apt-get)"
    apt_install chromium
fi
if [[ ! -d tests/browser/node_modules/playwright-core ]]; then
    log "npm ci in tests/browser (playwright-core)"
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BENCH_BIN=$TARGET_DIR/debug/chat-bench
if [[ -n ${CHAT_SERVER_BIN:-} ]]; then
    SERVER_BIN=$CHAT_SERVER_BIN
    [[ -x $SERVER_BIN ]] || die "CHAT_SERVER_BIN=$SERVER_BIN is not an executable"
    log "building chat-bench (debug); the server is $SERVER_BIN"
    "${NICE[@]}" cargo build -q -p chat-bench --bins
else
    SERVER_BIN=$TARGET_DIR/debug/chat-server
    log "building chat-server and chat-bench (debug)"
    "${NICE[@]}" cargo build -q -p chat-server -p chat-bench --bins
fi

secret() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
SERVICE_KEY=$(secret)
JWT_SECRET=$(secret)

# ---- a webhook receiver, when the server has webhooks
WEBHOOK_ENV=()
if "$SERVER_BIN" --help 2>/dev/null | grep -q -- '--webhook-url'; then
    node -e '
        const http = require("node:http");
        const server = http.createServer((req, res) => { req.resume(); req.on("end", () => { res.writeHead(204); res.end(); }); });
        server.listen(0, "127.0.0.1", () => console.log(`receiver on http://127.0.0.1:${server.address().port}/hook`));
    ' >"$WORK/receiver.out" 2>"$WORK/receiver.log" &
    PIDS+=($!)
    wait_for 15 "webhook receiver" grep -q 'receiver on' "$WORK/receiver.out"
    WEBHOOK_URL=$(sed -n 's/^receiver on //p' "$WORK/receiver.out")
    WEBHOOK_ENV=(CHAT_WEBHOOK_URL="$WEBHOOK_URL" CHAT_WEBHOOK_SECRET="$(secret)" CHAT_NOTIFY_AFTER_SECS=2)
    log "webhooks to $WEBHOOK_URL"
fi

# ---- the nodes
if [[ $NODES -eq 2 ]]; then
    log "starting a throwaway PostgreSQL (scripts/pg-tmp.sh)"
    env_lines=$(scripts/pg-tmp.sh start)
    PG_DATADIR=$(printf '%s\n' "$env_lines" | sed -n 's/^export MATCHCHAT_PG_DATADIR=//p')
    DATABASE_URL=$(printf '%s\n' "$env_lines" | sed -n 's/^export DATABASE_URL=//p')
    [[ -n $PG_DATADIR && -n $DATABASE_URL ]] || die "pg-tmp.sh printed no DATABASE_URL"
    BUS_ENV=(CHAT_BUS=postgres)
else
    DATABASE_URL="sqlite://$WORK/chat.db"
    BUS_ENV=(CHAT_BUS=local)
fi

URLS=()
METRICS=()
SERVER_PIDS=()
for n in $(seq 1 "$NODES"); do
    env -i PATH="$PATH" \
        CHAT_BIND=127.0.0.1:0 CHAT_METRICS_BIND=127.0.0.1:0 \
        DATABASE_URL="$DATABASE_URL" "${BUS_ENV[@]}" "${WEBHOOK_ENV[@]}" \
        CHAT_SERVICE_KEY="$SERVICE_KEY" CHAT_JWT_SECRET="$JWT_SECRET" RUST_LOG=warn \
        "${NICE[@]}" "$SERVER_BIN" >"$WORK/node$n.out" 2>"$WORK/node$n.log" &
    PIDS+=($!)
    SERVER_PIDS+=($!)
    wait_for 60 "chat-server node $n" grep -q '^chat-server metrics on ' "$WORK/node$n.out"
    URLS+=("$(sed -n 's|^chat-server listening on ||p' "$WORK/node$n.out")")
    METRICS+=("$(sed -n 's|^chat-server metrics on http://\([^/]*\)/metrics$|\1|p' "$WORK/node$n.out")")
    log "node $n: ${URLS[-1]}, metrics on ${METRICS[-1]}"
done

# ---- Prometheus
PROM_PORT=$(free_port)
PROM="http://127.0.0.1:$PROM_PORT"
{
    printf 'global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n'
    printf 'scrape_configs:\n  - job_name: matchchat\n    static_configs:\n      - targets:\n'
    for m in "${METRICS[@]}"; do printf '          - "%s"\n' "$m"; done
} >"$WORK/prometheus.yml"
"${NICE[@]}" prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --storage.tsdb.retention.time=1d \
    >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)
wait_for 60 "prometheus" curl -sf "$PROM/-/ready"
# Every node scraped at least once.
all_up() {
    curl -sf --get "$PROM/api/v1/query" --data-urlencode 'query=count(up{job="matchchat"} == 1)' |
        python3 -c "import json,sys; r=json.load(sys.stdin)['data']['result']; sys.exit(0 if r and int(r[0]['value'][1]) == $NODES else 1)"
}
wait_for 60 "prometheus scraping every node" all_up
log "prometheus on $PROM scraping ${METRICS[*]}"

# ---- traffic
START=$(date +%s)
URL_ARGS=()
for u in "${URLS[@]}"; do URL_ARGS+=(--url "$u"); done
BENCH=(env CHAT_SERVICE_KEY="$SERVICE_KEY" "${NICE[@]}" "$BENCH_BIN" "${URL_ARGS[@]}"
    --server-pid "$(IFS=,; echo "${SERVER_PIDS[*]}")" --threads 1 --provision-threads 2 --drain-secs 20
    --label dashboard-preview)
bench() {
    local name=$1
    shift
    log "chat-bench $*"
    local rc=0
    "${BENCH[@]}" "$@" >"$WORK/$name.json" 2>"$WORK/$name.log" || rc=$?
    case $rc in
        0) ;;
        1) log "warning: chat-bench $name reported a problem (its last lines follow); rendering anyway"; tail -n 8 "$WORK/$name.log" >&2 ;;
        *) die "chat-bench $name could not run (exit $rc)" ;;
    esac
}
SOAK=(--rooms 40 --history-rate 2 --seen-secs 5 --churn 0.25 --churn-secs 20 --slow 2 --slow-pause 3
    --abrupt 2 --abrupt-secs 15 --interval 15 --baseline-secs 15 --max-rss-growth 1000)
bench soak1 soak --duration "${PHASE_SECS}s" --rate 10 "${SOAK[@]}"
bench spike latency --rate 150 --rooms 100 --duration $((PHASE_SECS / 3)) --warmup 2
# The last phase is still running when the picture is taken (a dashboard is looked at under
# load): its soak is given time to spare, the picture is taken once it has printed the
# interval lines of the phase, and then it is stopped.
LAST_SECS=$((PHASE_SECS * 2 / 3))
log "chat-bench soak --rate 20 (${LAST_SECS}s, then the picture)"
"${BENCH[@]}" soak --duration "$((LAST_SECS + 300))s" --rate 20 "${SOAK[@]}" >"$WORK/soak2.json" 2>"$WORK/soak2.log" &
SOAK2_PID=$!
PIDS+=("$SOAK2_PID")
SOAK2_ENDED=0
phase_done() {
    if ! kill -0 "$SOAK2_PID" 2>/dev/null; then
        SOAK2_ENDED=1
        return 0
    fi
    [[ $(grep -c '^\[soak\] [0-9][0-9]:[0-9][0-9] rss' "$WORK/soak2.log") -ge $((LAST_SECS / 15)) ]]
}
wait_for $((LAST_SECS + 180)) "the last phase" phase_done
[[ $SOAK2_ENDED -eq 0 ]] || die "chat-bench soak2 ended early"
grep -q 'errors none' <(tail -n 1 "$WORK/soak2.log") || log "warning: the last soak interval had errors: $(tail -n 1 "$WORK/soak2.log")"
END=$(date +%s)
# The scrape after that moment is in.
scraped_after_end() {
    curl -sf --get "$PROM/api/v1/query" --data-urlencode 'query=min(timestamp(up{job="matchchat"}))' |
        python3 -c "import json,sys; r=json.load(sys.stdin)['data']['result']; sys.exit(0 if r and float(r[0]['value'][1]) >= $END + 1 else 1)"
}
wait_for 30 "a scrape after the traffic" scraped_after_end
END=$((END + 1))

# ---- the picture
mkdir -p "$(dirname "$OUT")"
RENDER_ARGS=(--prometheus "$PROM" --start "$((START - 5))" --end "$END" --out "$OUT")
[[ -n $HTML ]] && RENDER_ARGS+=(--html "$HTML")
"${NICE[@]}" node scripts/dashboard-render.mjs "${RENDER_ARGS[@]}"
log "wrote $OUT ($((END - START)) s of traffic on $NODES node(s))"
kill -TERM "$SOAK2_PID" 2>/dev/null || true
