#!/usr/bin/env bash
# Shared by smoke.sh and bench.sh: start a private pipeline (redis-server, a MongoDB-protocol
# server, evp-ingest, workers) on free loopback ports in a temporary directory; everything started
# is stopped on exit.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/scripts/deps.sh"

command -v python3 > /dev/null || apt_install python3   # free ports and report arithmetic
WORK="$(mktemp -d -t evp-load.XXXXXX)"
PIDS=()
WORKER_PIDS=()
WORKER_NAMES=()
KEY="load-key"
TENANT="load"

stop_all() {
    stop_pids "${WORKER_PIDS[@]}"
    stop_pids "${PIDS[@]}"
    rm -rf "$WORK"
}
trap stop_all EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
    echo "$2 did not start; log:" >&2; tail -20 "$3" >&2; exit 1
}

# A private redis-server without persistence; sets REDIS_PORT, REDIS_PID and REDIS_URL.
start_redis() {
    ensure_redis
    REDIS_PORT=$(free_port)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
        > "$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=($REDIS_PID)
    wait_port "$REDIS_PORT" redis-server "$WORK/redis.log"
    export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
}

# $1: directory holding evp-ingest, evp-worker and evp-loadtest.
start_servers() {
    BIN="$1"
    start_redis

    if [ -n "${MONGODB_TEST_URI:-}" ]; then
        export MONGODB_URI="$MONGODB_TEST_URI"
    else
        MONGO_PORT=$(free_port)
        if command -v mongod >/dev/null; then
            mkdir -p "$WORK/mongo"
            mongod --port "$MONGO_PORT" --bind_ip 127.0.0.1 --dbpath "$WORK/mongo" > "$WORK/mongo.log" 2>&1 &
        else
            ensure_secantus
            start_secantus "$WORK/secantus" "$MONGO_PORT" "$WORK/mongo.log"
        fi
        MONGO_PID=$!   # the server's pid, for CPU shares
        PIDS+=($MONGO_PID)
        wait_port "$MONGO_PORT" "MongoDB server" "$WORK/mongo.log"
        export MONGODB_URI="mongodb://127.0.0.1:$MONGO_PORT"
    fi
    export MONGODB_DATABASE="evp_load_$$"
    export LOG_FORMAT=json
}

# Which MongoDB-protocol server the run uses.
mongo_server_name() {
    if [ -n "${MONGODB_TEST_URI:-}" ]; then echo "given by MONGODB_TEST_URI"
    elif command -v mongod >/dev/null; then mongod --version | head -1
    else echo "secantusd-rs $SECANTUS_VERSION"; fi
}

start_ingest() {
    INGEST_PORT=$(free_port)
    API_KEYS="$TENANT:$KEY" PORT="$INGEST_PORT" STREAM_HIGH_WATER="${STREAM_HIGH_WATER:-100000000}" \
        "$BIN/evp-ingest" > "$WORK/ingest.log" 2>&1 &
    INGEST_PID=$!
    PIDS+=($INGEST_PID)
    wait_port "$INGEST_PORT" evp-ingest "$WORK/ingest.log"
    INGEST_URL="http://127.0.0.1:$INGEST_PORT"
}

# $1: how many workers (the binary: WORKER_BIN, default the build's evp-worker, so that another
# build's worker can be measured on the same servers).
start_workers() {
    local name
    for i in $(seq 1 "$1"); do
        name="load-worker-$i-$RANDOM"
        # WORKER_PORT_BASE: worker i serves health and metrics on WORKER_PORT_BASE + i (else none).
        CONSUMER_NAME="$name" WORKER_PORT="$((${WORKER_PORT_BASE:-0} ? ${WORKER_PORT_BASE:-0} + i : 0))" \
            "${WORKER_BIN:-$BIN/evp-worker}" >> "$WORK/worker-$i.log" 2>&1 &
        WORKER_PIDS+=($!)
        WORKER_NAMES+=("$name")
    done
}

# What the dashboard's browser scripts need: Chromium and Selenium, the debug binaries, and a
# running system with an operator key (ADMIN_KEYS) and two workers.
start_dashboard_system() {
    ensure_chromium
    ensure_venv
    cargo build --locked --bins -q
    start_servers "$EVP_ROOT/target/debug"
    export ADMIN_KEYS="ops-key-$RANDOM"
    start_ingest
    start_workers 2
}

stop_workers() {
    stop_pids "${WORKER_PIDS[@]}"
    WORKER_PIDS=()
}

# $1: file to write. A wrk script that posts one single event per request with \$KEY
# (installs wrk when missing).
wrk_script() {
    command -v wrk > /dev/null || apt_install wrk
    cat > "$1" <<LUA
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.headers["x-api-key"] = "$KEY"
wrk.body = '{"type":"loadtest.wrk","source":"wrk","data":{"seq":1,"path":"/pricing","user":"u-1","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}'
LUA
}

# Where the machine's CPU time goes while a command runs. `cpu_begin PID...` snapshots the CPU
# time of those processes (all their threads) and of the whole machine; `cpu_end` then sets
# CPU_SHARES to each process's share of all cores' time, followed by the rest of the busy time
# (the load generator, the kernel's softirq work, anything else), time stolen by the hypervisor and
# idle time, and CPU_US[i] to the i-th process's CPU time in microseconds.
proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime, in clock ticks
machine_ticks() { awk '/^cpu / {print $2+$3+$4+$7+$8, $9, $5+$6}' /proc/stat; }   # busy steal idle
cpu_begin() {
    local pid
    CPU_PIDS=("$@")
    CPU_T0=()
    for pid in "$@"; do CPU_T0+=("$(proc_ticks "$pid")"); done
    read -r CPU_BUSY0 CPU_STEAL0 CPU_IDLE0 <<< "$(machine_ticks)"
}
cpu_end() {
    local busy steal idle total rest i d hz
    read -r busy steal idle <<< "$(machine_ticks)"
    hz=$(getconf CLK_TCK)
    busy=$((busy - CPU_BUSY0)); steal=$((steal - CPU_STEAL0)); idle=$((idle - CPU_IDLE0))
    total=$((busy + steal + idle)); rest=$busy
    CPU_SHARES=(); CPU_US=()
    for i in "${!CPU_PIDS[@]}"; do
        d=$(($(proc_ticks "${CPU_PIDS[$i]}") - CPU_T0[i]))
        rest=$((rest - d))
        CPU_SHARES+=("$((100 * d / total))%")
        CPU_US+=("$((d * 1000000 / hz))")
    done
    CPU_SHARES+=("$((100 * rest / total))%" "$((100 * steal / total))%" "$((100 * idle / total))%")
}

# $1: URL, $2: the server's pid, $3: seconds (10 unless given). Single-event requests from wrk,
# 64 connections, while the CPU time of the server and of Redis ($REDIS_PID) is measured. Sets
# WRK_RPS, WRK_REFUSED (non-2xx answers: 0 or 1), WRK_SERVER_US (the server's CPU time per
# request, in µs), WRK_US_LINE ("server / Redis" µs per request) and WRK_CPU_LINE (where all the
# machine's CPU time went). Expects the script written by `wrk_script "$WORK/single.lua"`.
wrk_single() {
    local out requests
    cpu_begin "$2" "$REDIS_PID"
    out=$(wrk -t1 -c64 -d"${3:-10}s" -s "$WORK/single.lua" "$1")
    cpu_end
    WRK_RPS=$(awk '/Requests\/sec/ {print int($2)}' <<< "$out")
    WRK_REFUSED=$(grep -c Non-2xx <<< "$out" || true)
    requests=$(awk '/requests in/ {print $1}' <<< "$out")
    WRK_SERVER_US=$(python3 -c "print(f'{${CPU_US[0]} / $requests:.1f}')")
    WRK_US_LINE="$WRK_SERVER_US / $(python3 -c "print(f'{${CPU_US[1]} / $requests:.1f}')")"
    WRK_CPU_LINE="CPU of both cores: server ${CPU_SHARES[0]}, Redis ${CPU_SHARES[1]}, wrk and the rest ${CPU_SHARES[2]}, stolen ${CPU_SHARES[3]}, idle ${CPU_SHARES[4]}"
}

loadtest() {
    "$BIN/evp-loadtest" --url "$INGEST_URL" --key "$KEY" --tenant "$TENANT" "$@"
}
