#!/usr/bin/env bash
# Starts the whole evp system on this machine: Redis (AOF on), a MongoDB, evp-ingest and
# evp-worker replicas. Installs what is missing first. Ctrl-C stops everything it started.
#
#   scripts/up.sh [--workers N] [--cluster]     (default 2 workers, one Redis)
#
# Servers already answering on REDIS_URL / MONGODB_URI are used as they are. Otherwise Redis
# listens on 6379 and MongoDB (a mongod on PATH, else secantusd-rs) on 27017, with their data in .run/.
# --cluster: a local Redis Cluster instead (3 masters, 1 replica each, on free loopback ports;
# REDIS_CLUSTER=true, STREAM_PARTITIONS=8 unless set).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/deps.sh"
cd "$EVP_ROOT"

WORKERS=2
CLUSTER=0
while [ $# -gt 0 ]; do
    case "$1" in
        --cluster) CLUSTER=1; shift ;;
        --workers) WORKERS="$2"; shift 2 ;;
        --workers=*) WORKERS="${1#*=}"; shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$WORKERS" =~ ^[0-9]+$ ]] || { echo "--workers takes a number" >&2; exit 2; }

export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export MONGODB_URI="${MONGODB_URI:-mongodb://127.0.0.1:27017}"
export API_KEYS="${API_KEYS:-demo:demo-key}"
export ADMIN_KEYS="${ADMIN_KEYS:-demo-ops-key}"
export PORT="${PORT:-3000}"
export LOG_FORMAT="${LOG_FORMAT:-pretty}"
RUN="$EVP_ROOT/.run"
mkdir -p "$RUN"
SERVER_PIDS=()   # redis-server, the MongoDB server: stopped last
APP_PIDS=()      # evp-ingest and the workers: stopped first, and waited for

# Children run in their own session, so Ctrl-C reaches only this script, which then stops them in
# order: the ingest drains and the workers finish their batches while Redis and MongoDB still run.
spawn() { setsid "$@" & }

cleanup() {
    trap - INT TERM EXIT
    trap '' PIPE   # a closed terminal or pipe must not stop the stopping
    echo; echo "evp: stopping the ingest and the workers..."
    STOP_GRACE=30 stop_pids "${APP_PIDS[@]}"
    echo "evp: stopping Redis and MongoDB..."
    STOP_GRACE=30 stop_pids "${SERVER_PIDS[@]}"
    exit "${1:-0}"
}
trap cleanup INT TERM EXIT

host_port() { local hp="${1#*://}"; hp="${hp%%/*}"; hp="${hp##*@}"; echo "${hp%%\?*}"; }
listening() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }
wait_for() {
    for _ in $(seq 200); do listening "$1" && return 0; sleep 0.1; done
    echo "evp: $2 did not start; see $3" >&2; exit 1
}

ensure_redis
REDIS_HP="$(host_port "$REDIS_URL")"
if [ "$CLUSTER" = 1 ]; then
    source "$EVP_ROOT/scripts/redis-cluster.sh"
    rm -rf "$RUN/cluster"
    start_redis_cluster "$RUN/cluster" 3 1 || { SERVER_PIDS+=("${CLUSTER_PIDS[@]}"); cleanup 1; }
    SERVER_PIDS+=("${CLUSTER_PIDS[@]}")
    export REDIS_URL="$CLUSTER_SEEDS" REDIS_CLUSTER=true STREAM_PARTITIONS="${STREAM_PARTITIONS:-8}"
    echo "evp: Redis Cluster of 6 nodes (3 masters): $REDIS_URL; $STREAM_PARTITIONS partitions"
elif listening "$REDIS_HP"; then
    echo "evp: using the Redis already at $REDIS_HP"
else
    spawn redis-server --port "${REDIS_HP##*:}" --bind 127.0.0.1 --dir "$RUN" --appendonly yes \
        --appendfsync everysec --save "" --maxmemory-policy noeviction > "$RUN/redis.log" 2>&1
    SERVER_PIDS+=($!)
    wait_for "$REDIS_HP" redis-server "$RUN/redis.log"
fi

MONGO_HP="$(host_port "$MONGODB_URI")"
if listening "$MONGO_HP"; then
    echo "evp: using the MongoDB already at $MONGO_HP"
elif command -v mongod >/dev/null; then
    mkdir -p "$RUN/mongo"
    spawn mongod --port "${MONGO_HP##*:}" --bind_ip 127.0.0.1 --dbpath "$RUN/mongo" > "$RUN/mongo.log" 2>&1
    SERVER_PIDS+=($!)
    wait_for "$MONGO_HP" mongod "$RUN/mongo.log"
else
    ensure_secantus
    start_secantus "$RUN/secantus" "${MONGO_HP##*:}" "$RUN/mongo.log"
    SERVER_PIDS+=("$SECANTUS_PID")
    wait_for "$MONGO_HP" secantusd-rs "$RUN/mongo.log"
fi

echo "evp: building (release)..."
cargo build --release --locked --bins -q
BIN="$EVP_ROOT/target/release"

if [ -x "$BIN/evp-worker" ]; then
    for i in $(seq 1 "$WORKERS"); do
        CONSUMER_NAME="worker-$i" WORKER_PORT=$((9100 + i - 1)) spawn "$BIN/evp-worker" > "$RUN/worker-$i.log" 2>&1
        APP_PIDS+=($!)
    done
fi
spawn "$BIN/evp-ingest" > "$RUN/ingest.log" 2>&1
APP_PIDS+=($!)
wait_for "127.0.0.1:$PORT" evp-ingest "$RUN/ingest.log"

KEY="${API_KEYS%%,*}"; KEY="${KEY#*:}"
cat <<MSG

evp is running (logs in .run/). Ctrl-C stops everything.
  Swagger UI:  http://127.0.0.1:$PORT/docs
  Dashboard:   http://127.0.0.1:$PORT/dashboard  (key $KEY, or the operator key ${ADMIN_KEYS%%,*})
  Health:      curl -s http://127.0.0.1:$PORT/health
  Send one:    curl -s -X POST http://127.0.0.1:$PORT/events \\
                 -H 'x-api-key: $KEY' -H 'content-type: application/json' \\
                 -d '{"type":"page_view","data":{"path":"/pricing"}}'
MSG
[ -x "$BIN/evp-worker" ] && echo "  Workers:     $WORKERS (metrics on ports 9100..$((9100 + WORKERS - 1)))"
# Returns when a child exits by itself (Ctrl-C runs cleanup instead, which exits).
wait -n "${APP_PIDS[@]}" "${SERVER_PIDS[@]}" || true
echo "evp: a process exited unexpectedly; see .run/*.log" >&2
cleanup 1
