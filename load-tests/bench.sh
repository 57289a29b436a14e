#!/usr/bin/env bash
# One-command benchmark: starts its own redis-server and MongoDB-protocol server, measures evp
# against the ceilings of those servers in the same run, and prints ratios.
#
#   load-tests/bench.sh            # the figures in docs/PERFORMANCE.md
#   BENCH_SCALE=0.1 load-tests/bench.sh   # a tenth of the events, for a quick look
#   BENCH_PHASES="drain" load-tests/bench.sh   # only some of: redis ingest drain memory
#
# Everything runs on this machine over loopback: load generator, Redis, ingest, workers, MongoDB.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$EVP_ROOT"
SCALE="${BENCH_SCALE:-1}"
PHASES=" ${BENCH_PHASES:-redis ingest drain memory} "
phase() { [[ "$PHASES" == *" $1 "* ]]; }
n() { python3 -c "print(max(1000, int($1 * $SCALE)))"; }

echo "== building (release)"
cargo build --release --locked --bins -q
cargo build --release --locked -q -p evp-ingest --example http_ceiling
start_servers "$EVP_ROOT/target/release"
REDIS_CLI=(redis-cli -p "$REDIS_PORT")
json() { python3 -c "import json,sys; d=json.load(open('$1')); print($2)"; }
ratio() { python3 -c "print(f'{100 * $1 / $2:.0f}%' if $2 else 'n/a')"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
redis_mem() { "${REDIS_CLI[@]}" info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r'; }

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr)"
echo "== MongoDB server: $MONGODB_URI ($(command -v mongod >/dev/null && echo mongod || echo nx-27017))"

# --- Redis ceiling: XADD of a representative entry, pipelined and not -----------------------
PAYLOAD=$(python3 -c "import json; print(json.dumps({'v':1,'tenant':'load','id':'0192f0c4-7b1e-7cc3-9a52-3f5e8d2b1a10','type':'loadtest.bench','ts':1,'rcv':1,'source':'evp-loadtest','data':{'seq':1,'path':'/pricing','user':'u-1','pad':'x'*100}}, separators=(',',':')))")
xadd_rate() {
    redis-benchmark -p "$REDIS_PORT" -c "$1" -n "$2" -P "$3" -q XADD benchstream '*' e "$PAYLOAD" \
        | tr '\r' '\n' | awk '/requests per second/ {for (i=1;i<=NF;i++) if ($i ~ /^[0-9.]+$/) r=$i} END {print int(r)}'
}
XADD_P100=0; XADD_P1=0; BATCH_RATE=0; SINGLE_RATE=0; WRK_RATE=0; WRK_OK=0; CEIL_RATE=0; CEIL_XADD_RATE=0
WRK_US=n/a; CEIL_US=n/a; CEIL_XADD_US=n/a; WRK_CPU=n/a; CEIL_CPU=n/a; CEIL_XADD_CPU=n/a
if phase redis; then
echo "== redis-benchmark XADD"
XADD_P100=$(xadd_rate 50 "$(n 1000000)" 100)
"${REDIS_CLI[@]}" del benchstream > /dev/null
XADD_P1=$(xadd_rate 50 "$(n 300000)" 1)
"${REDIS_CLI[@]}" del benchstream > /dev/null
echo "   pipelined (-P 100, 50 clients): $XADD_P100 XADD/s;  unpipelined (50 clients): $XADD_P1 XADD/s"
fi

# --- Ingest alone (no workers): batches of 100, then single events --------------------------
start_ingest
if phase ingest; then
echo "== ingest, 100 events per request, as fast as possible"
loadtest --events "$(n 1000000)" --batch 100 --concurrency 32 --quiet --json "$WORK/batch.json"
BATCH_RATE=$(json "$WORK/batch.json" "int(d['events_per_s'])")
"${REDIS_CLI[@]}" del events > /dev/null
echo "== ingest, single-event requests, as fast as possible"
loadtest --events "$(n 300000)" --batch 1 --concurrency 64 --quiet --json "$WORK/single.json"
SINGLE_RATE=$(json "$WORK/single.json" "int(d['events_per_s'])")
"${REDIS_CLI[@]}" del events > /dev/null

echo "== ingest, single-event requests from wrk (a C client that needs less of the shared CPU)"
wrk_script "$WORK/single.lua"
wrk_single "$INGEST_URL/events" "$INGEST_PID"
WRK_RATE=$WRK_RPS; WRK_CPU=$WRK_CPU_LINE; WRK_US=$WRK_US_LINE
WRK_OK=$("${REDIS_CLI[@]}" xlen events)
"${REDIS_CLI[@]}" del events > /dev/null
echo "   wrk: $WRK_RATE requests/s ($WRK_OK events in the stream)"
echo "   $WRK_CPU"

echo "== this machine's HTTP ceiling: a bare axum server answering 202, same wrk run"
CEIL_PORT=$(free_port)
"$EVP_ROOT/target/release/examples/http_ceiling" "127.0.0.1:$CEIL_PORT" > "$WORK/ceiling.log" 2>&1 &
CEIL_PID=$!
wait_port "$CEIL_PORT" http_ceiling "$WORK/ceiling.log"
wrk_single "http://127.0.0.1:$CEIL_PORT/events" "$CEIL_PID"
CEIL_RATE=$WRK_RPS; CEIL_CPU=$WRK_CPU_LINE; CEIL_US=$WRK_US_LINE
kill "$CEIL_PID"
echo "   bare axum: $CEIL_RATE requests/s"
echo "   $CEIL_CPU"
echo "== ceiling of one request, one XADD: the same bare server appending each body to Redis"
CEIL_PORT=$(free_port)
"$EVP_ROOT/target/release/examples/http_ceiling" "127.0.0.1:$CEIL_PORT" "redis://127.0.0.1:$REDIS_PORT" > "$WORK/ceiling-xadd.log" 2>&1 &
CEIL_PID=$!
wait_port "$CEIL_PORT" http_ceiling "$WORK/ceiling-xadd.log"
wrk_single "http://127.0.0.1:$CEIL_PORT/events" "$CEIL_PID"
CEIL_XADD_RATE=$WRK_RPS; CEIL_XADD_CPU=$WRK_CPU_LINE; CEIL_XADD_US=$WRK_US_LINE
kill "$CEIL_PID"
"${REDIS_CLI[@]}" del events > /dev/null
echo "   bare axum + XADD: $CEIL_XADD_RATE requests/s"
echo "   $CEIL_XADD_CPU"

echo "== ingest latency at half of the maximum rate"
loadtest --duration 10 --rate $((BATCH_RATE / 2)) --batch 100 --concurrency 32 --quiet --json "$WORK/batch-half.json"
"${REDIS_CLI[@]}" del events > /dev/null
loadtest --duration 10 --rate $((SINGLE_RATE / 2)) --batch 1 --concurrency 64 --quiet --json "$WORK/single-half.json"
"${REDIS_CLI[@]}" del events > /dev/null
fi

# --- Workers: drain a filled stream with 1, 2, 4 workers, against MongoDB's own rate ----------
DRAIN_EVENTS=$(n 30000)
declare -A DRAIN MONGO
DRAIN=([1]=0 [2]=0 [4]=0); MONGO=([1]=1 [2]=1 [4]=1)
if phase drain; then
for workers in 1 2 4; do
    # The server's own rate with as many concurrent bulk writes as K workers make (K x 4 in flight).
    echo "== MongoDB server's own bulk-insert rate: batches of 500, $((4 * workers)) writers, $DRAIN_EVENTS documents"
    MONGO[$workers]=$("$BIN/evp-loadtest" mongo-insert --events "$DRAIN_EVENTS" --batch 500 --concurrency $((4 * workers)) | awk '{print int($4)}')
    run="drain${workers}x$RANDOM"
    loadtest --events "$DRAIN_EVENTS" --batch 100 --concurrency 16 --quiet --run-id "$run" > /dev/null
    start_workers "$workers"
    "$BIN/evp-loadtest" drain --run-id "$run" --events "$DRAIN_EVENTS" --tenant "$TENANT" --json "$WORK/drain$workers.json"
    stop_workers
    DRAIN[$workers]=$(json "$WORK/drain$workers.json" "int(d['processing_events_per_s'])")
done
fi
MONGO_RATE=${MONGO[1]}

# --- Memory: steady flow at a rate the workers sustain, sampled at 100k and at 1M events ------
AT_100K="0 0 0 0 0"; AT_1M="0 0 0 0 0"; DRAINED_100K=0; DRAINED_1M=0
if phase memory; then
FLOW_RATE=$(python3 -c "print(int(0.8 * ${DRAIN[2]})) if ${DRAIN[2]} else print(1500)")
echo "== memory under steady flow at $FLOW_RATE events/s with 2 workers"
# Warm-up, not measured: allocators, connections and buffers grow to their working size first.
# A worker's working size is its in-flight window: WORKER_MAX_INFLIGHT batches of entries and their
# documents, and a MongoDB connection per write in flight. Under a steady flow it first fills that
# window whenever MongoDB happens to stall, which showed as a step of up to 2 MB at a random point
# of a run; so the workers start on a backlog, which fills the window at once, and then run a
# steady flow (a worker's RSS levels off after about 100k events of its own; two share these).
loadtest --events "$(n 20000)" --batch 100 --concurrency 16 --quiet > /dev/null
start_workers 2
sample() {
    local w=("${WORKER_PIDS[@]}")
    echo "$(rss_kb "$INGEST_PID") $(rss_kb "${w[0]}") $(rss_kb "${w[1]}") $(redis_mem) $("${REDIS_CLI[@]}" xlen events)"
}
settled_redis() {
    for _ in $(seq 600); do [ "$("${REDIS_CLI[@]}" xlen events)" -eq 0 ] && break; sleep 0.1; done
    redis_mem
}
loadtest --events "$(n 300000)" --rate "$FLOW_RATE" --batch 100 --concurrency 16 --quiet > /dev/null
loadtest --events "$(n 100000)" --rate "$FLOW_RATE" --batch 100 --concurrency 16 --quiet > /dev/null
AT_100K=$(sample)
DRAINED_100K=$(settled_redis)
loadtest --events "$(n 900000)" --rate "$FLOW_RATE" --batch 100 --concurrency 16 --quiet > /dev/null
AT_1M=$(sample)
DRAINED_1M=$(settled_redis)
stop_workers
fi

# --- Report ---------------------------------------------------------------------------------
p() { json "$WORK/$1.json" "f\"p50 {d['latency_ms']['p50']:.1f} ms, p99 {d['latency_ms']['p99']:.1f} ms\""; }
read -r I1 W1 V1 R1 L1 <<< "$AT_100K"
read -r I2 W2 V2 R2 L2 <<< "$AT_1M"
cat <<REPORT

================ evp benchmark (scale $SCALE) ================
Redis XADD ceiling          pipelined -P 100: $XADD_P100/s   unpipelined, 50 clients: $XADD_P1/s
Ingest, 100 per request     $BATCH_RATE events/s  = $(ratio "$BATCH_RATE" "$XADD_P100") of pipelined XADD   ($(p batch))
Ingest, single events       $SINGLE_RATE events/s  = $(ratio "$SINGLE_RATE" "$XADD_P1") of unpipelined XADD   ($(p single))
  same, driven by wrk       $WRK_RATE events/s  = $(ratio "$WRK_RATE" "$XADD_P1") of unpipelined XADD, $(ratio "$WRK_RATE" "$CEIL_XADD_RATE") of the request+XADD ceiling, $(ratio "$WRK_RATE" "$CEIL_RATE") of the HTTP ceiling
HTTP ceiling (bare axum)    $CEIL_RATE requests/s with the same wrk run (no auth, validation, Redis, metrics)
Request+XADD ceiling        $CEIL_XADD_RATE requests/s: the same bare server with one XADD per request (same Redis client)
CPU per single-event request, server / Redis, in µs: ingest $WRK_US, bare axum + XADD $CEIL_XADD_US, bare axum $CEIL_US
  during the ingest's wrk run: $WRK_CPU
  during the request+XADD ceiling's run: $CEIL_XADD_CPU
Latency at half rate        batches: $(p batch-half);  single events: $(p single-half)
MongoDB bulk insert         4 writers: ${MONGO[1]}/s   8 writers: ${MONGO[2]}/s   16 writers: ${MONGO[4]}/s (the server's own rate, same documents, batches of 500)
Worker drain                1: ${DRAIN[1]}/s ($(ratio "${DRAIN[1]}" "${MONGO[1]}"))   2: ${DRAIN[2]}/s ($(ratio "${DRAIN[2]}" "${MONGO[2]}"))   4: ${DRAIN[4]}/s ($(ratio "${DRAIN[4]}" "${MONGO[4]}")) of MongoDB's rate at the same number of writers
Memory at 100k events (after a 20k backlog and a 300k warm-up)
                            ingest RSS ${I1} kB, worker RSS ${W1}/${V1} kB, Redis used_memory $R1 B, stream length $L1
Memory at 1M events         ingest RSS ${I2} kB, worker RSS ${W2}/${V2} kB, Redis used_memory $R2 B, stream length $L2
Redis after the backlog drained: $DRAINED_100K B at 100k, $DRAINED_1M B at 1M
Growth 100k -> 1M           ingest $(ratio "$I2" "$I1"), workers $(ratio "$W2" "$W1")/$(ratio "$V2" "$V1"), Redis $(ratio "$R2" "$R1") (drained: $(ratio "$DRAINED_1M" "$DRAINED_100K"))
REPORT
