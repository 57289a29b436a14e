#!/usr/bin/env bash
# Compares the single-event throughput of two evp-ingest binaries, A and B, on this shared machine:
# the ingest runs single-threaded, pinned to CPU 1; wrk and redis-server are pinned to CPU 0; the
# two builds alternate, ROUNDS times, each with a fresh Redis. Pinning keeps the builds from
# competing with the load generator for the same core, so the ingest is what limits the rate, and
# alternating spreads the machine's drifts over both; compare the means, and trust a difference
# only when most rounds agree.
#
#   load-tests/ab.sh A_BINARY B_BINARY        # e.g. a copy of target/release/evp-ingest per build
#   ROUNDS=8 SECONDS_EACH=10 load-tests/ab.sh A B
#
# Needs 2 cores; installs wrk and redis-server when missing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ $# -eq 2 ] || { echo "usage: $0 A_BINARY B_BINARY" >&2; exit 2; }
[ "$(nproc)" -ge 2 ] || { echo "ab.sh pins to CPUs 0 and 1: needs 2 cores" >&2; exit 2; }
ensure_redis
ROUNDS="${ROUNDS:-5}"
SECONDS_EACH="${SECONDS_EACH:-6}"
wrk_script "$WORK/single.lua"

# $1: binary. Prints requests/s.
measure() {
    local redis_port port redis_pid pid rate
    redis_port=$(free_port)
    taskset -c 0 redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
        > "$WORK/redis.log" 2>&1 &
    redis_pid=$!
    wait_port "$redis_port" redis-server "$WORK/redis.log"
    port=$(free_port)
    REDIS_URL="redis://127.0.0.1:$redis_port" MONGODB_URI="mongodb://127.0.0.1:9" API_KEYS="$TENANT:$KEY" \
        PORT="$port" LOG_FORMAT=json TOKIO_WORKER_THREADS=1 taskset -c 1 "$1" > "$WORK/ingest.log" 2>&1 &
    pid=$!
    wait_port "$port" "$1" "$WORK/ingest.log"
    taskset -c 0 wrk -t1 -c64 -d2s -s "$WORK/single.lua" "http://127.0.0.1:$port/events" > /dev/null
    rate=$(taskset -c 0 wrk -t1 -c64 -d"${SECONDS_EACH}s" -s "$WORK/single.lua" "http://127.0.0.1:$port/events" \
        | awk '/Non-2xx/ {bad = 1} /Requests\/sec/ {r = int($2)} END {print bad ? "refused" : r}')
    kill -9 "$pid" "$redis_pid" 2>/dev/null || true
    wait "$pid" "$redis_pid" 2>/dev/null || true
    [ "$rate" != refused ] || { echo "$1 refused requests; log:" >&2; tail -5 "$WORK/ingest.log" >&2; exit 1; }
    echo "$rate"
}

A_RATES=(); B_RATES=()
for round in $(seq 1 "$ROUNDS"); do
    a=$(measure "$1"); b=$(measure "$2")
    A_RATES+=("$a"); B_RATES+=("$b")
    printf 'round %d   A %7d   B %7d requests/s   B/A %s\n' "$round" "$a" "$b" "$(python3 -c "print(f'{$b / $a:.2f}')")"
done
python3 - "${A_RATES[*]}" "${B_RATES[*]}" <<'PY'
import statistics, sys
a = [int(x) for x in sys.argv[1].split()]
b = [int(x) for x in sys.argv[2].split()]
wins = sum(y > x for x, y in zip(a, b))
print(f"mean  A {statistics.mean(a):,.0f}   B {statistics.mean(b):,.0f} requests/s   "
      f"B/A {statistics.mean(b) / statistics.mean(a):.2f}   B faster in {wins} of {len(a)} rounds")
PY
