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
#   PINNED=0 load-tests/ab.sh A B             # nothing pinned, the ingest with its default threads,
#                                             # as bench.sh runs it; also prints CPU µs per request
#
# Pinned mode needs 2 cores; installs wrk and redis-server when missing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ $# -eq 2 ] || { echo "usage: $0 A_BINARY B_BINARY" >&2; exit 2; }
PINNED="${PINNED:-1}"
if [ "$PINNED" = 1 ]; then
    [ "$(nproc)" -ge 2 ] || { echo "ab.sh pins to CPUs 0 and 1: needs 2 cores" >&2; exit 2; }
    ON_LOAD=(taskset -c 0); ON_INGEST=(taskset -c 1); INGEST_ENV=(TOKIO_WORKER_THREADS=1)
else
    ON_LOAD=(); ON_INGEST=(); INGEST_ENV=()
fi
ensure_redis
ROUNDS="${ROUNDS:-5}"
SECONDS_EACH="${SECONDS_EACH:-6}"
wrk_script "$WORK/single.lua"

# $1: binary. Prints requests/s and, unpinned, the ingest's CPU µs per request.
measure() {
    local redis_port port pid rate us=""
    redis_port=$(free_port)
    "${ON_LOAD[@]}" redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
        > "$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    wait_port "$redis_port" redis-server "$WORK/redis.log"
    port=$(free_port)
    env REDIS_URL="redis://127.0.0.1:$redis_port" MONGODB_URI="mongodb://127.0.0.1:9" API_KEYS="$TENANT:$KEY" \
        PORT="$port" LOG_FORMAT=json "${INGEST_ENV[@]}" "${ON_INGEST[@]}" "$1" > "$WORK/ingest.log" 2>&1 &
    pid=$!
    wait_port "$port" "$1" "$WORK/ingest.log"
    "${ON_LOAD[@]}" wrk -t1 -c64 -d2s -s "$WORK/single.lua" "http://127.0.0.1:$port/events" > /dev/null
    if [ "$PINNED" = 1 ]; then
        rate=$("${ON_LOAD[@]}" wrk -t1 -c64 -d"${SECONDS_EACH}s" -s "$WORK/single.lua" "http://127.0.0.1:$port/events" \
            | awk '/Non-2xx/ {bad = 1} /Requests\/sec/ {r = int($2)} END {print bad ? "refused" : r}')
    else
        wrk_single "http://127.0.0.1:$port/events" "$pid" "$SECONDS_EACH"
        rate=$WRK_RPS; us=$WRK_SERVER_US
        [ "$WRK_REFUSED" = 0 ] || rate=refused
    fi
    kill -9 "$pid" "$REDIS_PID" 2>/dev/null || true
    wait "$pid" "$REDIS_PID" 2>/dev/null || true
    [ "$rate" != refused ] || { echo "$1 refused requests; log:" >&2; tail -5 "$WORK/ingest.log" >&2; exit 1; }
    echo "$rate $us"
}

A_RATES=(); B_RATES=()
for round in $(seq 1 "$ROUNDS"); do
    read -r a a_us <<< "$(measure "$1")"
    read -r b b_us <<< "$(measure "$2")"
    A_RATES+=("$a"); B_RATES+=("$b")
    cpu=""; [ -z "$a_us" ] || cpu="   CPU per request A $a_us µs, B $b_us µs"
    printf 'round %d   A %7d   B %7d requests/s   B/A %s%s\n' "$round" "$a" "$b" \
        "$(python3 -c "print(f'{$b / $a:.2f}')")" "$cpu"
done
python3 - "${A_RATES[*]}" "${B_RATES[*]}" <<'PY'
import statistics, sys
a = [int(x) for x in sys.argv[1].split()]
b = [int(x) for x in sys.argv[2].split()]
wins = sum(y > x for x, y in zip(a, b))
print(f"mean  A {statistics.mean(a):,.0f}   B {statistics.mean(b):,.0f} requests/s   "
      f"B/A {statistics.mean(b) / statistics.mean(a):.2f}   B faster in {wins} of {len(a)} rounds")
PY
