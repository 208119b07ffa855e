#!/usr/bin/env bash
# A throwaway NATS server for tests and local development.
#
#   scripts/nats-tmp.sh start            starts a nats-server in a new temporary folder and prints
#                                        shell lines to evaluate:
#                                          export NATS_URL=nats://127.0.0.1:PORT
#                                          export MATCHCHAT_NATS_PID=PID
#                                          export MATCHCHAT_NATS_DIR=/tmp/matchchat-nats.XXXXXX
#                                        (the same lines are written to $MATCHCHAT_NATS_DIR.env)
#   scripts/nats-tmp.sh stop PID_OR_DIR  stops that server (and only that one) and deletes its folder
#   scripts/nats-tmp.sh down DIR         stops that server's process but keeps its folder and port
#   scripts/nats-tmp.sh up DIR           starts it again on the same port; prints the lines again
#   scripts/nats-tmp.sh restart DIR [S]  down, wait S seconds (default 0), up
#   scripts/nats-tmp.sh status DIR       tells whether that server runs (exit 0) or not (exit 3)
#
# Typical use:   eval "$(scripts/nats-tmp.sh start)"; ...; scripts/nats-tmp.sh stop "$MATCHCHAT_NATS_DIR"
# A test that restarts NATS under load: scripts/nats-tmp.sh restart "$MATCHCHAT_NATS_DIR" 2
# (the PID changes: `up` and `restart` print the new MATCHCHAT_NATS_PID; stop by DIR is safest).
#
# The server listens on 127.0.0.1 only, on a free port below the kernel's ephemeral range (so
# no client socket takes it while the server is down for a restart), with no authentication
# (it is throwaway: nothing else can reach it) and the HTTP monitoring port off. JetStream is
# off unless NATS_TMP_JETSTREAM=1 (then it stores in DIR/jetstream, kept across restarts).
# Processes are only ever signalled by PID, after checking that the PID is the nats-server
# running this folder's config. Progress goes to stderr; stdout carries only the export lines.
#
# The binary is $NATS_SERVER_BIN, or `nats-server` on PATH (Debian installs /usr/bin/nats-server);
# when neither is found and this runs as root, `apt-get update && apt-get install -y nats-server`
# installs it.
set -euo pipefail

MARKER=".matchchat-nats-tmp"
READY_SECS=${NATS_TMP_READY_SECS:-15}

log() { printf 'nats-tmp: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

is_root() { [[ $(id -u) -eq 0 ]]; }

# Prints the path of nats-server, or nothing.
find_binary() {
    if [[ -n ${NATS_SERVER_BIN:-} ]]; then
        [[ -x $NATS_SERVER_BIN ]] && printf '%s\n' "$NATS_SERVER_BIN"
        return 0
    fi
    local path
    for path in "$(command -v nats-server 2>/dev/null || true)" /usr/bin/nats-server /usr/sbin/nats-server; do
        if [[ -n $path && -x $path ]]; then
            printf '%s\n' "$path"
            return 0
        fi
    done
    return 0
}

ensure_binary() {
    local bin
    bin=$(find_binary)
    if [[ -z $bin ]]; then
        [[ -z ${NATS_SERVER_BIN:-} ]] || die "NATS_SERVER_BIN=$NATS_SERVER_BIN is not an executable file"
        if is_root && command -v apt-get >/dev/null 2>&1; then
            log "nats-server not found: installing it with apt-get (Debian package nats-server)"
            DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >&2 ||
                die "apt-get install -y nats-server failed"
            bin=$(find_binary)
        else
            log "nats-server was not found on PATH."
            log "Install it, e.g. on Debian/Ubuntu: sudo apt-get update && sudo apt-get install -y nats-server"
            log "or point NATS_SERVER_BIN at the binary."
            exit 1
        fi
    fi
    [[ -n $bin ]] || die "nats-server still not found after installing the nats-server package"
    printf '%s\n' "$bin"
}

# Is TCP port $1 on 127.0.0.1 free to listen on (with SO_REUSEADDR, as nats-server listens)?
port_free() {
    local port=$1
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$port" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket()
# As Go's listener does: connections of a stopped server left in TIME_WAIT do not count.
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
        return
    fi
    ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

# A free port below the ephemeral range (a port in it could be taken by some client's socket
# while the server is down for a restart).
free_port() {
    local low=32768 hi port
    if [[ -r /proc/sys/net/ipv4/ip_local_port_range ]]; then
        read -r low _ </proc/sys/net/ipv4/ip_local_port_range || true
    fi
    hi=$((low - 1))
    ((hi > 12000)) || hi=12000
    for _ in $(seq 1 200); do
        port=$((10000 + (RANDOM * 32768 + RANDOM) % (hi - 10000)))
        if port_free "$port"; then
            printf '%s\n' "$port"
            return 0
        fi
    done
    die "no free loopback port found"
}

# Does PID $1 run nats-server with the config of folder $2?
is_our_process() {
    local pid=$1 dir=$2 cmdline
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
    [[ $cmdline == *"$dir/nats.conf"* ]]
}

# Does the server on port $1 answer a PING with PONG? (The NATS protocol: the server greets
# with INFO; CONNECT, then PING, gets PONG.)
# (A subshell: the socket's descriptor closes with it, whatever fails.)
answers_ping() (
    port=$1
    reply=""
    exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
    IFS= read -r -t 2 line <&3 || exit 1
    [[ $line == INFO* ]] || exit 1
    printf 'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n' >&3
    IFS= read -r -t 2 reply <&3 || exit 1
    [[ ${reply%$'\r'} == PONG ]]
)

write_config() {
    local dir=$1 port=$2
    {
        echo "# written by scripts/nats-tmp.sh: a throwaway test server"
        echo "server_name: \"matchchat-tmp-$port\""
        echo "listen: \"127.0.0.1:$port\""
        echo "# no http_port / https_port: monitoring is off"
        echo "pid_file: \"$dir/nats.pid\""
        echo "log_file: \"$dir/nats.log\""
        if [[ ${NATS_TMP_JETSTREAM:-0} == 1 ]]; then
            echo "jetstream { store_dir: \"$dir/jetstream\" }"
        fi
    } >"$dir/nats.conf"
    printf '%s\n' "$port" >"$dir/port"
}

# Starts the server of folder $1 (config already written) and waits until it answers a PING.
# Sets PID. Returns 1 (process gone, logged) when it did not come up.
launch() {
    local dir=$1 bin port
    bin=$(ensure_binary)
    port=$(cat "$dir/port")
    rm -f "$dir/nats.pid"
    # Its own session (setsid: no ^C from the caller's terminal), stdin/stdout/stderr off the
    # caller's pipes (so `$(nats-tmp.sh start)` returns).
    setsid "$bin" -c "$dir/nats.conf" </dev/null >>"$dir/stdout.log" 2>&1 &
    PID=$!
    local deadline=$((SECONDS + READY_SECS))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$PID" 2>/dev/null; then
            wait "$PID" 2>/dev/null || true
            log "nats-server exited during start-up; its log:"
            tail -n 5 "$dir/nats.log" "$dir/stdout.log" >&2 2>/dev/null || true
            return 1
        fi
        if answers_ping "$port" 2>/dev/null; then
            is_our_process "$PID" "$dir" || die "PID $PID is not the nats-server of $dir"
            return 0
        fi
        sleep 0.1
    done
    log "nats-server (PID $PID) did not answer on 127.0.0.1:$port within ${READY_SECS}s; stopping it"
    kill_pid "$PID" "$dir"
    return 1
}

# Stops PID $1 (the server of folder $2): SIGTERM, then SIGKILL after 10 s. By PID only, and
# only while it still is our server.
kill_pid() {
    local pid=$1 dir=$2
    is_our_process "$pid" "$dir" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        is_our_process "$pid" "$dir" || return 0
        # A child of this shell (start-up failure): reap it so it does not linger as a zombie.
        if [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]]; then
            wait "$pid" 2>/dev/null || true
            return 0
        fi
        sleep 0.1
    done
    log "PID $pid did not stop within 10 s of SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        is_our_process "$pid" "$dir" || return 0
        sleep 0.1
    done
    die "PID $pid is still running"
}

print_env() {
    local dir=$1 pid=$2 port
    port=$(cat "$dir/port")
    {
        printf 'export NATS_URL=nats://127.0.0.1:%s\n' "$port"
        printf 'export MATCHCHAT_NATS_PID=%s\n' "$pid"
        printf 'export MATCHCHAT_NATS_DIR=%s\n' "$dir"
    } | tee "$dir.env"
}

check_ours() {
    local dir=$1
    [[ -n $dir ]] || usage
    [[ -d $dir && -f $dir/$MARKER ]] || die "$dir is not a server folder of nats-tmp.sh (no $MARKER there)"
    [[ -f $dir/port ]] || die "$dir has no port file"
}

# The PID of the running server of folder $1, or nothing.
running_pid() {
    local dir=$1 pid
    pid=$(cat "$dir/nats.pid" 2>/dev/null || true)
    if [[ -n $pid ]] && is_our_process "$pid" "$dir"; then
        printf '%s\n' "$pid"
    fi
    return 0
}

cmd_start() {
    local dir port attempt
    ensure_binary >/dev/null
    dir=$(mktemp -d "${TMPDIR:-/tmp}/matchchat-nats.XXXXXX")
    touch "$dir/$MARKER"
    for attempt in 1 2 3 4 5; do
        port=$(free_port)
        write_config "$dir" "$port"
        if launch "$dir"; then
            print_env "$dir" "$PID"
            log "started $("$(find_binary)" --version 2>/dev/null || echo nats-server) on 127.0.0.1:$port," \
                "PID $PID (files in $dir; stop with: scripts/nats-tmp.sh stop $dir)"
            return 0
        fi
        log "start on port $port failed (attempt $attempt), retrying on another port"
    done
    rm -rf "$dir"
    die "nats-server did not start"
}

# PID_OR_DIR -> the folder.
dir_of() {
    local arg=$1 pid cmdline conf
    if [[ $arg =~ ^[0-9]+$ ]]; then
        pid=$arg
        cmdline=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline") ||
            die "no process $pid (to stop a server that is down, give its folder)"
        [[ -n $cmdline ]] || die "process $pid is not running (to stop a server that is down, give its folder)"
        conf=$(printf '%s\n' "$cmdline" | grep -m1 '/nats\.conf$' || true)
        [[ -n $conf ]] || die "process $pid is not a server started by nats-tmp.sh"
        printf '%s\n' "$(dirname "$conf")"
    else
        printf '%s\n' "${arg%/}"
    fi
}

cmd_stop() {
    local arg=${1:-} dir pid
    [[ -n $arg ]] || usage
    dir=$(dir_of "$arg")
    check_ours "$dir"
    if [[ $arg =~ ^[0-9]+$ ]]; then
        is_our_process "$arg" "$dir" || die "process $arg is not the server of $dir"
        pid=$arg
    else
        pid=$(running_pid "$dir")
    fi
    if [[ -n $pid ]]; then
        kill_pid "$pid" "$dir"
        log "stopped nats-server PID $pid ($dir)"
    else
        log "the server of $dir was not running"
    fi
    rm -rf "$dir" "$dir.env"
}

cmd_down() {
    local dir=${1:-} pid
    check_ours "$dir"
    pid=$(running_pid "$dir")
    if [[ -n $pid ]]; then
        kill_pid "$pid" "$dir"
        log "stopped nats-server PID $pid; port $(cat "$dir/port") kept (up with: scripts/nats-tmp.sh up $dir)"
    else
        log "the server of $dir was not running"
    fi
}

cmd_up() {
    local dir=${1:-} pid port
    check_ours "$dir"
    port=$(cat "$dir/port")
    pid=$(running_pid "$dir")
    if [[ -n $pid ]]; then
        log "already running: PID $pid on 127.0.0.1:$port"
        print_env "$dir" "$pid"
        return 0
    fi
    # The port is kept: a restart must come back where the clients reconnect to. Go's listener
    # sets SO_REUSEADDR, so connections of the old process left in TIME_WAIT do not block it.
    port_free "$port" || die "port $port is taken by another process; cannot start again on it"
    launch "$dir" || die "nats-server did not start again on port $port"
    print_env "$dir" "$PID"
    log "started again on 127.0.0.1:$port, PID $PID"
}

cmd_restart() {
    local dir=${1:-} secs=${2:-0}
    [[ $secs =~ ^[0-9]+([.][0-9]+)?$ ]] || die "restart: seconds must be a number, not $secs"
    cmd_down "$dir"
    sleep "$secs"
    cmd_up "$dir"
}

cmd_status() {
    local dir=${1:-} pid
    check_ours "$dir"
    pid=$(running_pid "$dir")
    if [[ -n $pid ]]; then
        echo "running: PID $pid on 127.0.0.1:$(cat "$dir/port")"
    else
        echo "not running (port $(cat "$dir/port") kept)"
        exit 3
    fi
}

case ${1:-} in
    start) cmd_start ;;
    stop) shift; cmd_stop "${1:-}" ;;
    down) shift; cmd_down "${1:-}" ;;
    up) shift; cmd_up "${1:-}" ;;
    restart) shift; cmd_restart "${1:-}" "${2:-0}" ;;
    status) shift; cmd_status "${1:-}" ;;
    *) usage ;;
esac
