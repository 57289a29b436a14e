#!/usr/bin/env bash
# Installs what evp needs on a fresh Debian machine, and nothing that is already there.
# Sourced by up.sh and test.sh; safe to run again.
#   - redis-server, from Debian's packages
#   - a MongoDB-protocol server: a mongod on PATH or MONGODB_URI/MONGODB_TEST_URI when given,
#     else secantusd-rs (crate secantus-mdb, pinned in scripts/secantus-mdb.version, GPL-2.0, run
#     as a separate program), built once with cargo into $EVP_TOOLS (default ~/.local/share/evp)
#   - Schemathesis (pinned, from PyPI) in .venv/, for scripts/api-fuzz.sh
#   - Chromium and chromedriver (Debian) and Selenium (pinned, in .venv/), for the dashboard test
set -euo pipefail

EVP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "need root to run: $*" >&2; return 1; fi
}

apt_install() {
    echo "evp: installing $* (apt-get)" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_redis() {
    # redis-cli (redis-tools, a dependency of redis-server) builds the test clusters.
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return 0
    apt_install redis-server redis-tools
    # Debian starts a system redis on 6379 after install; evp starts its own servers.
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null
}

SECANTUS_VERSION="$(tr -d '[:space:]' < "$EVP_ROOT/scripts/secantus-mdb.version")"
EVP_TOOLS="${EVP_TOOLS:-$HOME/.local/share/evp}"
# The pinned secantusd-rs (SECANTUSD_BIN overrides it, as it does in the Rust test fixture).
SECANTUSD_BIN="${SECANTUSD_BIN:-$EVP_TOOLS/secantus-mdb-$SECANTUS_VERSION/bin/secantusd-rs}"
export EVP_TOOLS SECANTUSD_BIN

# secantusd-rs, the MongoDB stand-in: built from the Rust registry at the pinned version, --locked,
# into a folder named by that version (so a present binary is the right one), with cmake for the
# WiredTiger it bundles. The crate declares a newer rust-version than this toolchain but builds
# with it (--ignore-rust-version).
ensure_secantus() {
    [ -x "$SECANTUSD_BIN" ] && return 0
    command -v cmake >/dev/null || apt_install cmake
    command -v cc >/dev/null || apt_install gcc
    echo "evp: building secantusd-rs $SECANTUS_VERSION (the MongoDB stand-in; the first build takes several minutes)" >&2
    cargo install secantus-mdb --version "$SECANTUS_VERSION" --locked --ignore-rust-version --quiet \
        --root "$EVP_TOOLS/secantus-mdb-$SECANTUS_VERSION" >&2
    [ -x "$SECANTUSD_BIN" ]
}

# Starts secantusd-rs in the background: $1 data directory, $2 port, $3 log file; sets SECANTUS_PID.
# Its own empty config file, so no secantusd.toml of the machine applies. --sync-on-commit: a
# journaled write (j: true, as the worker writes) is acknowledged only once its log record is
# synced, as mongod does; without it a killed server can lose writes it acknowledged.
start_secantus() {
    mkdir -p "$1"
    : > "$1.toml"
    "$SECANTUSD_BIN" --config "$1.toml" --storage-path "$1" --host 127.0.0.1 --port "$2" \
        --sync-on-commit --log-level WARNING > "$3" 2>&1 &
    SECANTUS_PID=$!
}

# The project-local venv .venv/ with every pinned tool of scripts/requirements-test.txt
# (Schemathesis, Selenium); installs when any pin is missing.
ensure_venv() {
    local venv="$EVP_ROOT/.venv" pins missing
    pins=$(grep -E '^[A-Za-z0-9_.-]+==' "$EVP_ROOT/scripts/requirements-test.txt")
    if [ -x "$venv/bin/pip" ]; then
        missing=$(comm -23 <(echo "$pins" | tr 'A-Z_' 'a-z-' | sort) \
            <("$venv/bin/pip" freeze 2>/dev/null | tr 'A-Z_' 'a-z-' | sort))
        [ -z "$missing" ] && return 0
    fi
    command -v python3 >/dev/null || apt_install python3 python3-venv
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        apt_install python3-venv
        python3 -m venv "$venv"
    fi
    echo "evp: installing the pinned test tools into .venv (pip)" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$EVP_ROOT/scripts/requirements-test.txt"
}

# Headless Chromium and its WebDriver, from Debian, for the dashboard's browser test (Selenium,
# pinned in scripts/requirements-test.txt, drives them; no browser is downloaded).
ensure_chromium() {
    command -v chromium >/dev/null && command -v chromedriver >/dev/null && return 0
    apt_install chromium chromium-driver
}

# Signals the pids and waits for them, at most $STOP_GRACE seconds (default 20), then kills what is
# left: a server that misses its SIGTERM must not hang the run.
stop_pids() {
    local pid
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq $((${STOP_GRACE:-20} * 10))); do
        local alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}
