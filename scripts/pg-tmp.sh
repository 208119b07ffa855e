#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for tests and local development.
#
#   scripts/pg-tmp.sh start          starts a cluster in a new temporary data folder and prints
#                                    shell lines to evaluate:
#                                      export DATABASE_URL=postgres://postgres@127.0.0.1:PORT/postgres
#                                      export MATCHCHAT_PG_DATADIR=/tmp/matchchat-pg.XXXXXX
#                                    (the same lines are written to $MATCHCHAT_PG_DATADIR.env)
#   scripts/pg-tmp.sh stop DATADIR   stops that cluster (and only that one) and deletes its folder
#   scripts/pg-tmp.sh status DATADIR tells whether that cluster runs
#
# Typical use:   eval "$(scripts/pg-tmp.sh start)"; ...; scripts/pg-tmp.sh stop "$MATCHCHAT_PG_DATADIR"
#
# The cluster listens on 127.0.0.1 only, on a free port, with trust authentication (it is
# throwaway: nothing else can reach it), fsync=on and synchronous_commit=on (so durability
# behaves like production), and max_connections=300 (every test opens its own pool).
# Progress goes to stderr; stdout carries only the export lines.
#
# PostgreSQL refuses to run as root: as root the cluster runs as the `postgres` OS user
# (created if missing). Binaries are looked up in $PG_BINDIR, /usr/lib/postgresql/15/bin,
# `pg_config --bindir` and `dpkg -L postgresql-15`; when none is found and this runs as root,
# `apt-get install -y postgresql-15` installs them.
set -euo pipefail

MARKER=".matchchat-pg-tmp"
PG_USER_OS="postgres"

log() { printf 'pg-tmp: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

is_root() { [[ $(id -u) -eq 0 ]]; }

# Prints the folder holding initdb/pg_ctl/postgres, or nothing.
find_bindir() {
    local candidates=()
    [[ -n ${PG_BINDIR:-} ]] && candidates+=("$PG_BINDIR")
    candidates+=(/usr/lib/postgresql/15/bin)
    if command -v pg_config >/dev/null 2>&1; then
        candidates+=("$(pg_config --bindir 2>/dev/null || true)")
    fi
    if command -v dpkg >/dev/null 2>&1; then
        local from_dpkg
        from_dpkg=$(dpkg -L postgresql-15 2>/dev/null | grep '/bin/initdb$' | head -n1 || true)
        [[ -n $from_dpkg ]] && candidates+=("$(dirname "$from_dpkg")")
    fi
    local dir
    for dir in "${candidates[@]}"; do
        if [[ -n $dir && -x $dir/initdb && -x $dir/pg_ctl && -x $dir/postgres ]]; then
            printf '%s\n' "$dir"
            return 0
        fi
    done
    return 0
}

ensure_binaries() {
    local dir
    dir=$(find_bindir)
    if [[ -z $dir ]]; then
        if is_root && command -v apt-get >/dev/null 2>&1; then
            log "PostgreSQL 15 not found: installing postgresql-15 with apt-get"
            DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >&2
            dir=$(find_bindir)
        else
            log "PostgreSQL 15 server binaries (initdb, pg_ctl, postgres) were not found."
            log "Install them, e.g. on Debian/Ubuntu: sudo apt-get install -y postgresql-15"
            log "or point PG_BINDIR at the folder holding them, or set DATABASE_URL to a server you have."
            exit 1
        fi
    fi
    [[ -n $dir ]] || die "PostgreSQL binaries still not found after installing postgresql-15"
    printf '%s\n' "$dir"
}

# Runs a command as the cluster's OS user (root cannot run PostgreSQL).
as_pg() {
    if is_root; then
        runuser -u "$PG_USER_OS" -- "$@"
    else
        "$@"
    fi
}

ensure_os_user() {
    is_root || return 0
    if ! id -u "$PG_USER_OS" >/dev/null 2>&1; then
        log "creating OS user $PG_USER_OS"
        useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "$PG_USER_OS"
    fi
}

free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' && return 0
    fi
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            printf '%s\n' "$port"
            return 0
        fi
    done
    die "no free loopback port found"
}

cmd_start() {
    local bindir datadir port attempt
    bindir=$(ensure_binaries)
    ensure_os_user
    log "using $("$bindir/postgres" --version)"

    datadir=$(mktemp -d "${TMPDIR:-/tmp}/matchchat-pg.XXXXXX")
    touch "$datadir/$MARKER"
    mkdir "$datadir/data"
    if is_root; then
        chown -R "$PG_USER_OS": "$datadir"
    fi
    chmod 700 "$datadir/data"

    if ! as_pg "$bindir/initdb" -D "$datadir/data" -U postgres --auth=trust --encoding=UTF8 --locale=C \
        >"$datadir/initdb.log" 2>&1; then
        cat "$datadir/initdb.log" >&2
        rm -rf "$datadir"
        die "initdb failed"
    fi

    for attempt in 1 2 3 4 5; do
        port=$(free_port)
        cat >"$datadir/data/postgresql.auto.conf" <<EOF
# written by scripts/pg-tmp.sh: a throwaway test cluster
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$datadir'
fsync = on
synchronous_commit = on
full_page_writes = on
max_connections = 300
shared_buffers = 128MB
EOF
        if is_root; then chown "$PG_USER_OS": "$datadir/data/postgresql.auto.conf"; fi
        if as_pg "$bindir/pg_ctl" -D "$datadir/data" -l "$datadir/server.log" -w -t 60 start >/dev/null 2>&1; then
            break
        fi
        log "start on port $port failed (attempt $attempt), retrying on another port"
        tail -n 5 "$datadir/server.log" >&2 || true
        if [[ $attempt -eq 5 ]]; then
            rm -rf "$datadir"
            die "PostgreSQL did not start"
        fi
    done

    local url="postgres://postgres@127.0.0.1:$port/postgres"
    {
        printf 'export DATABASE_URL=%s\n' "$url"
        printf 'export MATCHCHAT_PG_DATADIR=%s\n' "$datadir"
    } | tee "$datadir.env"
    log "started on 127.0.0.1:$port (data in $datadir; stop with: scripts/pg-tmp.sh stop $datadir)"
}

check_ours() {
    local datadir=$1
    [[ -n $datadir ]] || usage
    [[ -f $datadir/$MARKER ]] || die "$datadir is not a cluster started by pg-tmp.sh (no $MARKER there)"
}

cmd_stop() {
    local datadir=${1:-}
    check_ours "$datadir"
    local bindir
    bindir=$(find_bindir)
    if [[ -f $datadir/data/postmaster.pid ]]; then
        if [[ -n $bindir ]] && as_pg "$bindir/pg_ctl" -D "$datadir/data" -m fast -w -t 60 stop >/dev/null 2>&1; then
            log "stopped the cluster in $datadir"
        else
            # pg_ctl missing or failed: signal the postmaster of this data folder only.
            local pid
            pid=$(head -n1 "$datadir/data/postmaster.pid" 2>/dev/null || true)
            if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
                log "pg_ctl stop failed; sending SIGINT (fast shutdown) to postmaster $pid"
                kill -INT "$pid" || true
                for _ in $(seq 1 100); do
                    kill -0 "$pid" 2>/dev/null || break
                    sleep 0.1
                done
            fi
        fi
    fi
    rm -rf "$datadir" "$datadir.env"
}

cmd_status() {
    local datadir=${1:-}
    check_ours "$datadir"
    local bindir
    bindir=$(find_bindir)
    [[ -n $bindir ]] || die "PostgreSQL binaries not found"
    as_pg "$bindir/pg_ctl" -D "$datadir/data" status
}

case ${1:-} in
    start) cmd_start ;;
    stop) shift; cmd_stop "${1:-}" ;;
    status) shift; cmd_status "${1:-}" ;;
    *) usage ;;
esac
