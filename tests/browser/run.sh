#!/usr/bin/env bash
# matchchat's browser end-to-end tests: the one entry point (scripts/test.sh calls it).
#
#   tests/browser/run.sh                      runs every browser test
#   tests/browser/run.sh --test-name-pattern=hidden   runs some (arguments go to `node --test`)
#   tests/browser/run.sh --screenshots        rewrites docs/img/desktop.png and docs/img/phone.png
#
# It installs Debian's Chromium when `chromium` is missing (as root, with apt-get; Playwright's
# own browser downloads are not used), installs playwright-core from package-lock.json
# (`npm ci`), builds the server (`cargo build -p chat-server`), then runs the tests with Node's
# built-in runner. Each test starts `target/debug/chat-server --demo` itself on a free port of
# 127.0.0.1 with a SQLite file in a temporary folder, and stops it by PID at the end.
#
# Environment: CHROMIUM (browser binary; default `command -v chromium`), CHAT_SERVER_BIN
# (server binary; default target/debug/chat-server, or $CARGO_TARGET_DIR/debug/chat-server),
# KEEP_TEST_DIRS=1 (keep each test's folder with server.log and chat.db).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

say() { printf 'browser-tests: %s\n' "$*" >&2; }

apt_install() {
    if [[ $(id -u) -ne 0 ]]; then
        say "cannot install $* (not root): install it and run again"
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if [[ -z ${APT_UPDATED:-} ]]; then
        apt-get update -qq
        APT_UPDATED=1
    fi
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

SCREENSHOTS=0
if [[ ${1:-} == "--screenshots" ]]; then
    SCREENSHOTS=1
    shift
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    say "installing nodejs and npm (apt-get)"
    apt_install nodejs npm
fi

if [[ -z ${CHROMIUM:-} ]] && ! command -v chromium >/dev/null 2>&1; then
    say "installing Debian's chromium (apt-get)"
    apt_install chromium
fi
if [[ $SCREENSHOTS -eq 1 ]] && ! dpkg -s fonts-noto-color-emoji >/dev/null 2>&1; then
    say "installing fonts-noto-color-emoji for the screenshots (apt-get)"
    apt_install fonts-noto-color-emoji
fi

cd "$HERE"
if [[ -f package-lock.json ]]; then
    say "npm ci"
    npm ci --no-audit --no-fund --loglevel=error
else
    say "npm install (no package-lock.json)"
    npm install --no-audit --no-fund --loglevel=error
fi

say "cargo build -p chat-server"
(cd "$REPO" && cargo build -p chat-server)
if [[ -z ${CHAT_SERVER_BIN:-} && -n ${CARGO_TARGET_DIR:-} ]]; then
    case $CARGO_TARGET_DIR in
        /*) export CHAT_SERVER_BIN="$CARGO_TARGET_DIR/debug/chat-server" ;;
        *) export CHAT_SERVER_BIN="$REPO/$CARGO_TARGET_DIR/debug/chat-server" ;;
    esac
fi

if [[ $SCREENSHOTS -eq 1 ]]; then
    say "screenshots -> docs/img/"
    exec node screenshots.mjs "$@"
fi

say "node --test"
exec node --test --test-reporter=spec --test-concurrency=1 "$@" client.test.mjs chat.test.mjs protocol11.test.mjs
