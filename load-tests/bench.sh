#!/usr/bin/env bash
# One-command benchmark: starts its own redis-server and MongoDB-protocol server, measures evp
# against the ceilings of those servers in the same run, and prints ratios.
#
#   load-tests/bench.sh            # the figures in docs/PERFORMANCE.md
#   BENCH_SCALE=0.1 load-tests/bench.sh   # a tenth of the events, for a quick look
#   BENCH_PHASES="drain" load-tests/bench.sh   # only some of: redis ingest drain memory saturated client
#   BENCH_PHASES="read" load-tests/bench.sh    # the read API by depth, 100k and 1M events stored (not
#       in the default run: filling 1M events takes minutes; BENCH_READ_SIZES="100000" for less,
#       BENCH_READ_SAMPLES (50), BENCH_READ_FILTERS ("none type"), BENCH_READ_WALK (the walk's page
#       size, 1000; smaller on a slow server, so no page of the walk passes the read timeout))
#   BENCH_PHASES="indexes" load-tests/bench.sh  # the store rate of each index set (EVENT_INDEXES)
#   BENCH_PHASES="limits" load-tests/bench.sh   # batched and single-event ingest with a tenant rate
#       limit configured (far above the load) against none, alternating rounds
#   BENCH_PHASES="analytics" load-tests/bench.sh   # analytics answer time with 10k and 1M events stored,
#       rollup lag at 80% of the drain rate, lease failover (not in the default run: storing 1M events
#       takes minutes; BENCH_ANALYTICS_SIZES="10000 100000" for less)
#   BENCH_PHASES="dashboard" load-tests/bench.sh   # single events with and without an open dashboard
#   BENCH_PHASES="subscriptions" load-tests/bench.sh   # a subscription's delivery rate with 1 and 2
#       consumers (and of every type with 1) against the workers' drain rate, and received-to-delivered
#       p50/p99 at 40% and 80% of the end-to-end rate and at 80% and 60% of the drain, beside control
#       runs with no subscription; BENCH_SUB_RATES="9000 11000" sends at these rates instead
#   BENCH_PHASES="cluster" load-tests/bench.sh     # batched ingest: one Redis vs a 3-master Redis Cluster
#       with 8 partitions, and the cost of REDIS_WAIT_REPLICAS=1 (not in the default run)
#   WORKER_BIN=/path/to/evp-worker load-tests/bench.sh   # measure another build's worker
#   BENCH_KEEP_LOGS=/tmp/bench-logs load-tests/bench.sh  # keep the servers' and workers' logs
#   BENCH_ROUNDS=5 load-tests/bench.sh    # rounds of the single-event comparison (3)
#
# Everything runs on this machine over loopback: load generator, Redis, ingest, workers, MongoDB.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$EVP_ROOT"
SCALE="${BENCH_SCALE:-1}"
PHASES=" ${BENCH_PHASES:-redis ingest drain memory saturated client} "
phase() { [[ "$PHASES" == *" $1 "* ]]; }
n() { python3 -c "print(max(1000, int($1 * $SCALE)))"; }

echo "== building (release)"
cargo build --release --locked --bins -q
cargo build --release --locked -q -p evp-ingest --example http_ceiling
start_servers "$EVP_ROOT/target/release"
REDIS_CLI=(redis-cli -p "$REDIS_PORT")
json() { python3 -c "import json,sys; d=json.load(open('$1')); print($2)"; }
ratio() { python3 -c "print(f'{100 * $1 / $2:.0f}%' if $2 else 'n/a')"; }
now_iso() { python3 -c "import datetime as d; print((d.datetime.now(d.timezone.utc) + d.timedelta(seconds=$1)).strftime('%Y-%m-%dT%H:%M:%SZ'))"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
redis_mem() { "${REDIS_CLI[@]}" info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r'; }

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr)"
echo "== MongoDB server: $MONGODB_URI ($(mongo_server_name))"

# --- Redis ceiling: XADD of a representative entry, pipelined and not -----------------------
PAYLOAD=$(python3 -c "import json; print(json.dumps({'v':1,'tenant':'load','id':'0192f0c4-7b1e-7cc3-9a52-3f5e8d2b1a10','type':'loadtest.bench','ts':1,'rcv':1,'source':'evp-loadtest','data':{'seq':1,'path':'/pricing','user':'u-1','pad':'x'*100}}, separators=(',',':')))")
xadd_rate() {
    redis-benchmark -p "$REDIS_PORT" -c "$1" -n "$2" -P "$3" -q XADD benchstream '*' e "$PAYLOAD" \
        | tr '\r' '\n' | awk '/requests per second/ {for (i=1;i<=NF;i++) if ($i ~ /^[0-9.]+$/) r=$i} END {print int(r)}'
}
declare -A INDEX_RATE
XADD_P100=0; XADD_P1=0; BATCH_RATE=0; SINGLE_RATE=0; WRK_RATE=0; CEIL_RATE=0; CEIL_XADD_RATE=0
WRK_US=n/a; CEIL_US=n/a; CEIL_XADD_US=n/a; TO_CEIL_XADD=n/a; TO_XADD_P1=n/a; TO_CEIL=n/a
ROUNDS="${BENCH_ROUNDS:-3}"
if phase redis; then
echo "== redis-benchmark XADD, pipelined (the unpipelined rate is measured with the single events below)"
XADD_P100=$(xadd_rate 50 "$(n 1000000)" 100)
"${REDIS_CLI[@]}" del benchstream > /dev/null
echo "   pipelined (-P 100, 50 clients): $XADD_P100 XADD/s"
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

# Single events from wrk (a C client that needs less of the shared CPU than evp-loadtest) against
# the ingest and the two ceilings, and redis-benchmark's unpipelined XADD, in alternating rounds:
# this machine's speed drifts by tens of per cent within minutes, so each round's ratios compare
# figures taken within a minute of each other, and the report gives the median of each.
echo "== single-event requests, $ROUNDS rounds of: unpipelined XADD (redis-benchmark, 50 clients), then wrk"
echo "   (64 connections) against the ingest, the request+XADD ceiling and the HTTP ceiling"
echo "   (the ceilings: the bare axum server of examples/http_ceiling.rs, serving as the ingest does,"
echo "   with one XADD per request through the same Redis client, and answering 202 with nothing else)"
wrk_script "$WORK/single.lua"
CEIL_PORT=$(free_port); CEIL_XADD_PORT=$(free_port)
"$EVP_ROOT/target/release/examples/http_ceiling" "127.0.0.1:$CEIL_PORT" > "$WORK/ceiling.log" 2>&1 &
CEIL_PID=$!
"$EVP_ROOT/target/release/examples/http_ceiling" "127.0.0.1:$CEIL_XADD_PORT" "$REDIS_URL" \
    > "$WORK/ceiling-xadd.log" 2>&1 &
CEIL_XADD_PID=$!
wait_port "$CEIL_PORT" http_ceiling "$WORK/ceiling.log"
wait_port "$CEIL_XADD_PORT" http_ceiling "$WORK/ceiling-xadd.log"
R_P1=(); R_ING=(); R_ING_US=(); R_CX=(); R_CX_US=(); R_C=(); R_C_US=()
for round in $(seq "$ROUNDS"); do
    R_P1+=("$(xadd_rate 50 "$(n 300000)" 1)")
    "${REDIS_CLI[@]}" del benchstream > /dev/null
    wrk_single "$INGEST_URL/events" "$INGEST_PID"
    [ "$WRK_REFUSED" = 0 ] || echo "   the ingest refused requests (non-2xx): see its log" >&2
    R_ING+=("$WRK_RPS"); R_ING_US+=("$WRK_SERVER_US"); ING_LINE="$WRK_US_LINE µs; $WRK_CPU_LINE"
    stored=$("${REDIS_CLI[@]}" xlen events)
    "${REDIS_CLI[@]}" del events > /dev/null
    wrk_single "http://127.0.0.1:$CEIL_XADD_PORT/events" "$CEIL_XADD_PID"
    R_CX+=("$WRK_RPS"); R_CX_US+=("$WRK_SERVER_US"); CX_LINE="$WRK_US_LINE µs"
    "${REDIS_CLI[@]}" del events > /dev/null
    wrk_single "http://127.0.0.1:$CEIL_PORT/events" "$CEIL_PID"
    R_C+=("$WRK_RPS"); R_C_US+=("$WRK_SERVER_US")
    i=$((round - 1))
    echo "   round $round: unpipelined XADD ${R_P1[$i]}/s; ingest ${R_ING[$i]}/s ($stored events in the stream);" \
        "request+XADD ceiling ${R_CX[$i]}/s; HTTP ceiling ${R_C[$i]}/s"
    echo "     ingest = $(ratio "${R_ING[$i]}" "${R_CX[$i]}") of the request+XADD ceiling," \
        "$(ratio "${R_ING[$i]}" "${R_P1[$i]}") of unpipelined XADD"
    echo "     CPU per request, server / Redis: ingest $ING_LINE"
    echo "     request+XADD ceiling $CX_LINE, HTTP ceiling $WRK_SERVER_US µs"
done
kill "$CEIL_PID" "$CEIL_XADD_PID"
# The median of a list of rates (a whole number) or of µs (one decimal); `rounds A B`: the median
# and each round of A[i] / B[i], in per cent.
median() { python3 -c "import statistics, sys; print(int(statistics.median(map(float, sys.argv[1:]))))" "$@"; }
median_us() { python3 -c "import statistics, sys; print(f'{statistics.median(map(float, sys.argv[1:])):.1f}')" "$@"; }
rounds() {
    python3 - "$1" "$2" <<'PY'
import statistics, sys
a, b = ([float(x) for x in arg.split()] for arg in sys.argv[1:])
r = [100 * x / y for x, y in zip(a, b)]
print(f"{statistics.median(r):.0f}% (rounds: {', '.join(f'{x:.0f}%' for x in r)})")
PY
}
XADD_P1=$(median "${R_P1[@]}"); WRK_RATE=$(median "${R_ING[@]}")
CEIL_XADD_RATE=$(median "${R_CX[@]}"); CEIL_RATE=$(median "${R_C[@]}")
WRK_US=$(median_us "${R_ING_US[@]}"); CEIL_XADD_US=$(median_us "${R_CX_US[@]}"); CEIL_US=$(median_us "${R_C_US[@]}")
TO_CEIL_XADD=$(rounds "${R_ING[*]}" "${R_CX[*]}")
TO_XADD_P1=$(rounds "${R_ING[*]}" "${R_P1[*]}")
TO_CEIL=$(rounds "${R_ING[*]}" "${R_C[*]}")

echo "== ingest latency at half of the maximum rate"
loadtest --duration 10 --rate $((BATCH_RATE / 2)) --batch 100 --concurrency 32 --quiet --json "$WORK/batch-half.json"
"${REDIS_CLI[@]}" del events > /dev/null
loadtest --duration 10 --rate $((SINGLE_RATE / 2)) --batch 1 --concurrency 64 --quiet --json "$WORK/single-half.json"
"${REDIS_CLI[@]}" del events > /dev/null
fi

# --- Workers: drain a filled stream with 1, 2, 4 workers (and 2 without the rollup job), against
# MongoDB's own rate -----------------------------------------------------------------------------
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
# The same with 2 workers and no rollup job (its lease held for a worker that does not exist), as
# the insert benchmark runs none: what the job's one read of each stored event costs the drain.
run="drainnojob$RANDOM"
loadtest --events "$DRAIN_EVENTS" --batch 100 --concurrency 16 --quiet --run-id "$run" > /dev/null
"${REDIS_CLI[@]}" set '{events:lease:rollups}' nobody px 600000 > /dev/null
start_workers 2
"$BIN/evp-loadtest" drain --run-id "$run" --events "$DRAIN_EVENTS" --tenant "$TENANT" --json "$WORK/drain-nojob.json"
stop_workers
"${REDIS_CLI[@]}" del '{events:lease:rollups}' > /dev/null
DRAIN_NOJOB=$(json "$WORK/drain-nojob.json" "int(d['processing_events_per_s'])")
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

# --- A database that already holds many events; a reader competing with the workers ---------
# 3 workers drain a 30k backlog into a database already holding 300k events: alone; beside a
# reader counting the run's documents every 200 ms (what --verify used to do), for 60 s, as the
# entries the group acknowledged in that time; and end to end as users run it (the load test with
# --verify, which now watches the consumer group). Transient write failures: from the workers' logs.
SAT_PREFILL=$(n 300000); SAT_EVENTS=$(n 30000); SAT_WORKERS=3; SAT_READER_S=60
declare -A SAT=([alone]=0 [reader]=0 [verify]=0) SAT_RETRIES=([alone]=0 [reader]=0 [verify]=0)
retried() { cat "$WORK"/worker-*.log 2>/dev/null | grep -c 'bulk write failed' || true; }
acked() {   # entries the group has read and acknowledged (XINFO GROUPS: entries-read - pending)
    "${REDIS_CLI[@]}" xinfo groups events | awk 'prev == "entries-read" {r = $1} prev == "pending" {p = $1} {prev = $1} END {print r - p}'
}
if phase saturated; then
echo "== prefilling MongoDB with $SAT_PREFILL events"
"$BIN/evp-loadtest" mongo-insert --events "$SAT_PREFILL" --batch 500 --concurrency 4 --keep-in "$MONGODB_DATABASE"
for mode in alone verify reader; do
    run="sat-$mode-$RANDOM"
    before=$(retried)
    echo "== $SAT_WORKERS workers, $SAT_EVENTS events ($mode)"
    if [ "$mode" = verify ]; then
        start_workers "$SAT_WORKERS"
        loadtest --events "$SAT_EVENTS" --rate 50000 --batch 100 --concurrency 32 --quiet --verify \
            --run-id "$run" --stall-timeout 300 --json "$WORK/sat-$mode.json"
        SAT[$mode]=$(json "$WORK/sat-$mode.json" "int(d['verify']['processing_events_per_s'])")
    elif [ "$mode" = reader ]; then
        loadtest --events "$SAT_EVENTS" --batch 100 --concurrency 16 --quiet --run-id "$run" > /dev/null
        "$BIN/evp-loadtest" mongo-count --tenant "$TENANT" --run-id "$run" --every-ms 200 --seconds "$SAT_READER_S" \
            > "$WORK/counts.txt" &
        COUNT_PID=$!
        a0=$(acked)
        start_workers "$SAT_WORKERS"
        wait "$COUNT_PID" || true
        a1=$(acked)
        SAT[$mode]=$(( (a1 - a0) / SAT_READER_S ))
        echo "   acknowledged $((a1 - a0)) in ${SAT_READER_S}s beside the reader ($(cat "$WORK/counts.txt"))"
        "$BIN/evp-loadtest" drain --run-id "$run" --events "$SAT_EVENTS" --tenant "$TENANT" --stall-timeout 300 > /dev/null
    else
        loadtest --events "$SAT_EVENTS" --batch 100 --concurrency 16 --quiet --run-id "$run" > /dev/null
        start_workers "$SAT_WORKERS"
        "$BIN/evp-loadtest" drain --run-id "$run" --events "$SAT_EVENTS" --tenant "$TENANT" --stall-timeout 300 \
            --json "$WORK/sat-$mode.json"
        SAT[$mode]=$(json "$WORK/sat-$mode.json" "int(d['processing_events_per_s'])")
    fi
    stop_workers
    SAT_RETRIES[$mode]=$(( $(retried) - before ))
done
[ -n "${BENCH_KEEP_LOGS:-}" ] && mkdir -p "$BENCH_KEEP_LOGS" && cp "$WORK"/*.log "$BENCH_KEEP_LOGS"/
fi

# --- The read API by depth: the first page against page 501, with 100k and 1M events stored ---
# Keyset pages cost the same at any depth; each page is requested 50 times (p50, p99), with no
# filter and with a type filter. Only with BENCH_PHASES=read (see the top of this file).
READ_REPORT=""
if phase read; then
stored=0
for size in ${BENCH_READ_SIZES:-100000 1000000}; do
    echo "== storing events up to $size for the read API"
    "$BIN/evp-loadtest" mongo-insert --events $((size - stored)) --concurrency 4 \
        --keep-in "$MONGODB_DATABASE" --tenant "$TENANT"
    stored=$size
    type=$(curl -s "$INGEST_URL/events?limit=1" -H "x-api-key: $KEY" | python3 -c "import json,sys; print(json.load(sys.stdin)['events'][0]['type'])")
    for filter in ${BENCH_READ_FILTERS:-none type}; do
        query=""; [ "$filter" = type ] && query="&type=$type"
        "$BIN/evp-loadtest" read --url "$INGEST_URL" --key "$KEY" --query "$query" --depth 500 --samples "${BENCH_READ_SAMPLES:-50}" \
            --walk-limit "${BENCH_READ_WALK:-1000}" \
            --json "$WORK/read-$size.json" | tee -a "$WORK/read.txt"
        READ_REPORT+="  $size events $(json "$WORK/read-$size.json" "f\"{'type filter' if d['query'] else 'no filter'}: first page p50 {d['first']['p50_ms']:.1f} ms p99 {d['first']['p99_ms']:.1f} ms; page {d['deep_page']} p50 {d['deep']['p50_ms']:.1f} ms p99 {d['deep']['p99_ms']:.1f} ms = {d['deep']['p50_ms'] / d['first']['p50_ms']:.2f}x\"")
"
    done
done
fi

# --- The limiters' cost (BENCH_PHASES=limits) ---------------------------------------------------
# The same ingest binary twice on the same Redis: without limits, and with a per-tenant rate limit
# far above what the run sends (every request takes its tokens from the replica's lease, the lease
# from Redis). Alternating rounds of batched (evp-loadtest, 100 per request) and single-event (wrk)
# requests against each; the report gives the medians and the ratio.
LIMITS_REPORT=""
if phase limits; then
LIMITED_PORT=$(free_port)
TENANT_RATE_LIMIT=100000000 TENANT_LIMITS=flood=2000 API_KEYS="$TENANT:$KEY,flood:flood-key" \
    PORT="$LIMITED_PORT" STREAM_HIGH_WATER=100000000 "$BIN/evp-ingest" > "$WORK/ingest-limited.log" 2>&1 &
LIMITED_PID=$!
PIDS+=($LIMITED_PID)
wait_port "$LIMITED_PORT" evp-ingest "$WORK/ingest-limited.log"
wrk_script "$WORK/single.lua"
L_B0=(); L_B1=(); L_S0=(); L_S1=()
for round in $(seq "$ROUNDS"); do
    for which in 0 1; do
        url=$INGEST_URL; pid=$INGEST_PID
        [ "$which" = 1 ] && { url="http://127.0.0.1:$LIMITED_PORT"; pid=$LIMITED_PID; }
        "$BIN/evp-loadtest" --url "$url" --key "$KEY" --tenant "$TENANT" --events "$(n 300000)" --batch 100 \
            --concurrency 32 --quiet --json "$WORK/limits-b$which.json"
        rate=$(json "$WORK/limits-b$which.json" "int(d['events_per_s'])")
        "${REDIS_CLI[@]}" del events > /dev/null
        wrk_single "$url/events" "$pid" 5
        "${REDIS_CLI[@]}" del events > /dev/null
        if [ "$which" = 0 ]; then L_B0+=("$rate"); L_S0+=("$WRK_RPS"); else L_B1+=("$rate"); L_S1+=("$WRK_RPS"); fi
    done
    echo "   round $round: batched ${L_B0[-1]} vs ${L_B1[-1]} events/s limited; single ${L_S0[-1]} vs ${L_S1[-1]}/s limited"
done
# Two tenants on the limited ingest: B (the load-test tenant) sends 500 single events/s for 10 s
# alone, then again while A ("flood", limited to 2,000 events/s by TENANT_LIMITS) offers ten times
# its limit in batches of 100. B's p99 in both, and A's accepted rate against its limit.
LIMITED_URL="http://127.0.0.1:$LIMITED_PORT"
b_steady() {
    "$BIN/evp-loadtest" --url "$LIMITED_URL" --key "$KEY" --tenant "$TENANT" --duration 10 --rate 500 --batch 1 \
        --concurrency 8 --quiet --json "$WORK/$1.json"
}
b_steady two-b-alone
"$BIN/evp-loadtest" --url "$LIMITED_URL" --key flood-key --tenant flood --duration 12 --rate 20000 --batch 100 \
    --concurrency 16 --quiet --json "$WORK/two-a.json" &
FLOOD_PID=$!
sleep 1
b_steady two-b-flooded
wait "$FLOOD_PID" || true
"${REDIS_CLI[@]}" del events > /dev/null
TWO_REPORT=$(python3 - "$WORK" <<'PY'
import json, sys
w = sys.argv[1]
alone, flooded, a = (json.load(open(f"{w}/{n}.json")) for n in ("two-b-alone", "two-b-flooded", "two-a"))
def refused(r): return sum(r["rejected"].values()) + r["errors"]
print(f"  two tenants: B alone p99 {alone['latency_ms']['p99']:.2f} ms, while A floods p99 {flooded['latency_ms']['p99']:.2f} ms"
      f" = {flooded['latency_ms']['p99'] / alone['latency_ms']['p99']:.2f}x; B refused {refused(alone)} / {refused(flooded)};"
      f" A accepted {a['accepted'] / a['duration_s']:.0f}/s of a 2000/s limit (+ its burst), refused {refused(a)} events")
PY
)
echo "$TWO_REPORT"
med() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
MB0=$(med "${L_B0[@]}"); MB1=$(med "${L_B1[@]}"); MS0=$(med "${L_S0[@]}"); MS1=$(med "${L_S1[@]}")
LIMITS_REPORT="  batched (100 per request), median of $ROUNDS rounds: no limits $MB0/s, with a rate limit $MB1/s = $(python3 -c "print(f'{$MB1 / $MB0:.3f}')")x
  single events (wrk, 64 connections): no limits $MS0/s, with a rate limit $MS1/s = $(python3 -c "print(f'{$MS1 / $MS0:.3f}')")x
  rounds: batched ${L_B0[*]} / ${L_B1[*]}; single ${L_S0[*]} / ${L_S1[*]}
$TWO_REPORT
"
kill "$LIMITED_PID"
fi

# --- The index set: the store rate of each, one run (BENCH_PHASES=indexes) ---------------------
# The server's own bulk-insert rate (4 writers, batches of 500, the worker's documents) with each
# index set on a fresh collection: the layout before _id carried (tenant, event id), _id alone,
# evp's fixed set, the default EVENT_INDEXES and every filter; the load test's events (source
# only) and events carrying every optional field (every partial index then holds every event).
INDEX_REPORT=""
if phase indexes; then
INDEX_EVENTS=$(n "${BENCH_INDEX_EVENTS:-100000}")
for fields in "" "--every-field"; do
    for set in legacy id-only none type type,source all; do
        spec=$set; [ "$set" = all ] && spec=type,source,aggregate_id,correlation_id
        echo "== store rate, indexes $set ${fields:-(load test events)}: $INDEX_EVENTS documents"
        rate=$("$BIN/evp-loadtest" mongo-insert --events "$INDEX_EVENTS" --batch 500 --concurrency 4 \
            --indexes "$spec" $fields | awk '{print int($4)}')
        INDEX_RATE["$set$fields"]=$rate
        INDEX_REPORT+="  $(printf '%-8s %-14s' "$set" "${fields:-load-test}") $rate documents/s
"
    done
    INDEX_REPORT+="  default (type) / legacy ${fields:-load-test}: $(python3 -c "print(f'{${INDEX_RATE[type$fields]} / ${INDEX_RATE[legacy$fields]}:.2f}')")x
"
done
fi

# --- Analytics: rollup lag under load, lease failover, answer time by events stored ----------
# Only with BENCH_PHASES=analytics. First, on a fresh database: the rollup lag while events arrive
# at 80% of what the workers drain, and the failover of the rollup lease. Then the answer time of
# GET /analytics/metrics with 10k and with 1M events stored: the events are stored straight into
# MongoDB (spread over the last 24 h, as the worker would store them), `evp-worker rollups
# rebuild` counts them (events stored past the stream are counted by a rebuild only), and a
# one-hour window (by minute) and a one-day window (by hour) are each asked 50 times.
ANALYTICS_REPORT=""
if phase analytics; then
ANALYTICS_WORKERS=2
"${REDIS_CLI[@]}" del events > /dev/null
export WORKER_PORT_BASE=$(free_port)
health_field() {   # the largest value of rollup.<field> over the workers' health (null when none)
    for i in $(seq 1 "$ANALYTICS_WORKERS"); do
        curl -s -m 2 "http://127.0.0.1:$((WORKER_PORT_BASE + i))/health" || echo '{}'
        echo
    done | python3 -c "
import json, sys
v = [json.loads(l).get('rollup', {}).get('$1') for l in sys.stdin if l.strip()]
v = [x for x in v if isinstance(x, (int, float))]
print(max(v) if v else 'null')"
}

echo "== drain rate of $ANALYTICS_WORKERS workers (for the rollup-lag run)"
LAG_DRAIN_EVENTS=$(n 40000)
loadtest --events "$LAG_DRAIN_EVENTS" --batch 100 --concurrency 8 --quiet > /dev/null
t0=$(date +%s.%N)
start_workers "$ANALYTICS_WORKERS"
until [ "$("${REDIS_CLI[@]}" xinfo groups events 2>/dev/null | awk 'prev == "entries-read" {r = $1} prev == "pending" {p = $1} prev == "lag" {l = $1} {prev = $1} END {print (r != "" && p == 0 && l == 0) ? 1 : 0}')" = 1 ]; do sleep 0.2; done
LAG_DRAIN=$(python3 -c "print(int($LAG_DRAIN_EVENTS / ($(date +%s.%N) - $t0)))")
LAG_RATE=$((LAG_DRAIN * 8 / 10))
echo "   drain $LAG_DRAIN events/s; sending at $LAG_RATE events/s for 60 s"
loadtest --duration 60 --rate "$LAG_RATE" --batch 100 --concurrency 8 --quiet > /dev/null &
LOAD_PID=$!
: > "$WORK/lags.txt"
while kill -0 "$LOAD_PID" 2>/dev/null; do health_field rollup_lag_seconds >> "$WORK/lags.txt"; sleep 1; done
LAG_STATS=$(python3 -c "
v = sorted(float(x) for x in open('$WORK/lags.txt') if x.strip() not in ('', 'null'))
print(f'p50 {v[len(v)//2]:.1f} s, p90 {v[int(len(v)*0.9)]:.1f} s, max {v[-1]:.1f} s over {len(v)} samples' if v else 'n/a')")
echo "   rollup lag: $LAG_STATS"

# Failover: SIGKILL the leader under light load; time until the rollups move again (the new
# leader's first closed range). The lease TTL is the default, 10 s.
loadtest --duration 40 --rate 500 --batch 10 --concurrency 2 --quiet > /dev/null &
LOAD_PID=$!
sleep 5
holder=$("${REDIS_CLI[@]}" get '{events:lease:rollups}' | cut -d/ -f1)
leader_pid=""; standby=""
for i in "${!WORKER_PIDS[@]}"; do
    if [ "${WORKER_NAMES[$i]}" = "$holder" ]; then leader_pid=${WORKER_PIDS[$i]}; else standby=$((i + 1)); fi
done
closed() {   # ranges the standby has closed (it becomes the leader): its own counter, no database read
    curl -s -m 2 "http://127.0.0.1:$((WORKER_PORT_BASE + standby))/metrics" \
        | awk '/^evp_worker_rollup_ranges_closed_total/ {print $2; found=1} END {if (!found) print 0}'
}
before=$(closed)
t0=$(date +%s.%N)
kill -9 "$leader_pid"
while [ "$(closed)" = "$before" ]; do sleep 0.1; done
FAILOVER_S=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')")
echo "   failover: the new leader closed its first range ${FAILOVER_S} s after SIGKILL of the leader ($holder)"
wait "$LOAD_PID" || true
stop_workers
ANALYTICS_REPORT+="  rollup lag at 80% of the drain rate ($LAG_RATE of $LAG_DRAIN events/s, $ANALYTICS_WORKERS workers, 60 s): $LAG_STATS
  lease failover (LEASE_TTL_MS 10000): the new leader closed its first range ${FAILOVER_S} s after SIGKILL of the leader
"

start_workers "$ANALYTICS_WORKERS"
stored=0
for size in ${BENCH_ANALYTICS_SIZES:-10000 1000000}; do
    echo "== storing events up to $size for analytics (spread over 24 h), then rollups rebuild"
    "$BIN/evp-loadtest" mongo-insert --events $((size - stored)) --batch 100 --concurrency 4 \
        --keep-in "$MONGODB_DATABASE" --tenant "$TENANT" --spread-s 86400 --event-type bench.analytics
    stored=$size
    t0=$(date +%s.%N)
    "$BIN/evp-worker" rollups rebuild --timeout-s 3600 | tail -1
    echo "   rebuilt in $(python3 -c "print(f'{$(date +%s.%N) - $t0:.0f}')") s"
    # Settle: an idle minute of the leader, with a last event through the stream.
    loadtest --events 100 --batch 100 --concurrency 1 --quiet > /dev/null
    sleep 3
    for window in "from=$(now_iso -3600)&to=$(now_iso 0)&bucket=minute" "from=$(now_iso -86400)&to=$(now_iso 0)&bucket=hour"; do
        "$BIN/evp-loadtest" analytics --url "$INGEST_URL" --key "$KEY" --query "$window" --samples 50 \
            --json "$WORK/analytics.json" | tee -a "$WORK/analytics.txt"
        label=$([[ "$window" == *minute ]] && echo "1 h by minute" || echo "1 day by hour")
        ANALYTICS_REPORT+="  $size events stored, $label: $(json "$WORK/analytics.json" "f\"p50 {d['latency']['p50_ms']:.1f} ms p99 {d['latency']['p99_ms']:.1f} ms (total {d['total']})\"")
"
    done
done
stop_workers
unset WORKER_PORT_BASE
"${REDIS_CLI[@]}" del events > /dev/null
fi

# --- The client library: the Emitter from one process against the load generator's batches ---
# Both send batches of 100 to the ingest alone (no workers), one after the other.
CLIENT_EVENTS=$(n 200000); CLIENT_LOADGEN=0; CLIENT_EMIT=0
if phase client; then
echo "== evp-client Emitter against evp-loadtest, $CLIENT_EVENTS events each, batches of 100"
"${REDIS_CLI[@]}" del events > /dev/null
loadtest --events "$CLIENT_EVENTS" --batch 100 --concurrency 32 --quiet --json "$WORK/client-loadgen.json" > /dev/null
CLIENT_LOADGEN=$(json "$WORK/client-loadgen.json" "int(d['events_per_s'])")
"${REDIS_CLI[@]}" del events > /dev/null
CLIENT_EMIT=$("$BIN/evp-loadtest" emit --url "$INGEST_URL" --key "$KEY" --events "$CLIENT_EVENTS" | tee /dev/stderr | awk '{print int($7)}')
"${REDIS_CLI[@]}" del events > /dev/null
fi

# --- The dashboard's cost: single events with and without an open dashboard ----------------
# Alternating wrk rounds of single events (ingest alone, no workers): without a dashboard, then
# with one open in headless Chromium (logged in, polling every 2 s). Only with
# BENCH_PHASES=dashboard. Chromium runs on the same two cores, so its own CPU is part of the cost.
DASH_REPORT=""
if phase dashboard; then
ensure_chromium
ensure_venv
wrk_script "$WORK/single.lua"
DASH_WITHOUT=(); DASH_WITH=(); DASH_POLL=()
chromium_ticks() { local t=0 pid; for pid in $(pgrep -f "chromium" || true); do t=$((t + $(proc_ticks "$pid" 2>/dev/null || echo 0))); done; echo "$t"; }
poll_like_the_dashboard() {   # the page's requests, every 2 s, without a browser
    while true; do
        curl -s -o /dev/null "$INGEST_URL/analytics/metrics?from=$(date -u -d '-1 hour' +%FT%TZ)&to=$(date -u +%FT%TZ)&bucket=minute" -H "x-api-key: $KEY"
        curl -s -o /dev/null "$INGEST_URL/health"
        sleep 2
    done
}
DASH_CHROMIUM=()
for round in $(seq "$ROUNDS"); do
    "${REDIS_CLI[@]}" del events > /dev/null
    wrk_single "$INGEST_URL/events" "$INGEST_PID"
    DASH_WITHOUT+=("$WRK_RPS")
    "${REDIS_CLI[@]}" del events > /dev/null
    poll_like_the_dashboard > /dev/null 2>&1 &
    POLL_PID=$!
    wrk_single "$INGEST_URL/events" "$INGEST_PID"
    DASH_POLL+=("$WRK_RPS")
    kill "$POLL_PID" 2>/dev/null; wait "$POLL_PID" 2>/dev/null || true
    "${REDIS_CLI[@]}" del events > /dev/null
    "$EVP_ROOT/.venv/bin/python" "$EVP_ROOT/scripts/dashboard_open.py" "$INGEST_URL" "$KEY" --seconds 25 \
        > "$WORK/dashboard-open.txt" 2>&1 &
    DASH_PID=$!
    for _ in $(seq 100); do grep -q "dashboard open" "$WORK/dashboard-open.txt" && break; sleep 0.1; done
    sleep 8   # past the browser's start-up
    c0=$(chromium_ticks)
    wrk_single "$INGEST_URL/events" "$INGEST_PID"
    DASH_CHROMIUM+=("$(python3 -c "print(f'{100 * ($(chromium_ticks) - $c0) / $(getconf CLK_TCK) / 10:.0f}%')")")
    DASH_WITH+=("$WRK_RPS")
    wait "$DASH_PID" || true
    echo "   round $round: without ${DASH_WITHOUT[-1]}/s, polled like the page ${DASH_POLL[-1]}/s, dashboard open in Chromium ${DASH_WITH[-1]}/s (Chromium used ${DASH_CHROMIUM[-1]} of a core)"
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
DW=$(median "${DASH_WITHOUT[@]}"); DP=$(median "${DASH_POLL[@]}"); DD=$(median "${DASH_WITH[@]}")
DASH_REPORT="  single events from wrk, median of $ROUNDS alternating rounds: without $DW/s
  with the page's requests every 2 s (curl) $DP/s = $(python3 -c "print(f'{$DP / $DW:.3f}')")x
  with the page open in headless Chromium on the same 2 cores $DD/s = $(python3 -c "print(f'{$DD / $DW:.3f}')")x (Chromium's own CPU: ${DASH_CHROMIUM[*]} of a core)
  rounds: without ${DASH_WITHOUT[*]}; polled ${DASH_POLL[*]}; open ${DASH_WITH[*]}
"
"${REDIS_CLI[@]}" del events > /dev/null
fi

# --- One Redis vs a Redis Cluster: batched ingest, alternating rounds ------------------------
CLUSTER_REPORT=""
if phase cluster; then
source "$EVP_ROOT/scripts/redis-cluster.sh"
start_redis_cluster "$WORK/cluster" 3 1 || { stop_pids "${CLUSTER_PIDS[@]}"; exit 1; }
PIDS+=("${CLUSTER_PIDS[@]}")
flush_cluster() { redis-cli --cluster call "${CLUSTER_SEEDS%%,*}" FLUSHALL > /dev/null 2>&1 || true; }
cluster_ticks() { local t=0 pid; for pid in "${CLUSTER_PIDS[@]}"; do t=$((t + $(proc_ticks "$pid"))); done; echo "$t"; }
# $1: label; the rest: env for the ingest. Batches of 100 from evp-loadtest, no workers; sets
# RUN_RATE and RUN_CPU (CPU of the ingest, Redis (all nodes), the rest of the machine).
cluster_run() {
    local label="$1" redis_t0 redis_t hz busy0 busy
    shift
    stop_pids "$INGEST_PID" 2> /dev/null || true
    INGEST_PORT=$(free_port)
    env "$@" API_KEYS="$TENANT:$KEY" PORT="$INGEST_PORT" STREAM_HIGH_WATER=100000000 \
        "$BIN/evp-ingest" > "$WORK/ingest-$label.log" 2>&1 &
    INGEST_PID=$!
    PIDS+=("$INGEST_PID")
    wait_port "$INGEST_PORT" evp-ingest "$WORK/ingest-$label.log"
    INGEST_URL="http://127.0.0.1:$INGEST_PORT"
    redis_t0=$(( $(cluster_ticks) + $(proc_ticks "$REDIS_PID") ))
    cpu_begin "$INGEST_PID"
    loadtest --events "$(n 2000000)" --batch 100 --concurrency 32 --quiet --json "$WORK/cluster-$label.json"
    cpu_end
    redis_t=$(( $(cluster_ticks) + $(proc_ticks "$REDIS_PID") - redis_t0 ))
    hz=$(getconf CLK_TCK)
    RUN_RATE=$(json "$WORK/cluster-$label.json" "int(d['events_per_s'])")
    RUN_CPU="ingest ${CPU_SHARES[0]}, Redis $(python3 -c "print(f'{100 * $redis_t / ($hz * $(nproc) * $(json "$WORK/cluster-$label.json" "d['duration_s']")):.0f}%')"), everything else (Redis and the load generator included) ${CPU_SHARES[1]}, idle ${CPU_SHARES[3]}"
    "${REDIS_CLI[@]}" del events > /dev/null
    flush_cluster
}
echo "== batched ingest (100 per request, 32 connections), $ROUNDS rounds of: one Redis;"
echo "   a 3-master cluster (1 replica each) with 8 partitions; the same with REDIS_WAIT_REPLICAS=1"
C_ONE=(); C_CLU=(); C_WAIT=()
for round in $(seq "$ROUNDS"); do
    cluster_run one REDIS_URL="$REDIS_URL"; C_ONE+=("$RUN_RATE"); L_ONE="$RUN_CPU"
    cluster_run cluster REDIS_URL="$CLUSTER_SEEDS" REDIS_CLUSTER=true STREAM_PARTITIONS=8; C_CLU+=("$RUN_RATE"); L_CLU="$RUN_CPU"
    cluster_run wait REDIS_URL="$CLUSTER_SEEDS" REDIS_CLUSTER=true STREAM_PARTITIONS=8 REDIS_WAIT_REPLICAS=1; C_WAIT+=("$RUN_RATE"); L_WAIT="$RUN_CPU"
    echo "   round $round: one Redis ${C_ONE[-1]}/s; cluster ${C_CLU[-1]}/s; cluster + WAIT 1 ${C_WAIT[-1]}/s"
    echo "     CPU of both cores: one Redis: $L_ONE; cluster: $L_CLU; + WAIT 1: $L_WAIT"
done
lat() { json "$WORK/$1.json" "f\"p50 {d['latency_ms']['p50']:.1f} ms, p99 {d['latency_ms']['p99']:.1f} ms\""; }
med() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
M1=$(med "${C_ONE[@]}"); M2=$(med "${C_CLU[@]}"); M3=$(med "${C_WAIT[@]}")
CLUSTER_REPORT="  batched ingest, median of $ROUNDS alternating rounds: one Redis $M1/s; 3-master cluster, 8 partitions $M2/s = $(python3 -c "print(f'{$M2 / $M1:.2f}')")x;
  with REDIS_WAIT_REPLICAS=1 $M3/s = $(python3 -c "print(f'{$M3 / $M2:.2f}')")x of the cluster without
  latency per request (last round): one Redis $(lat cluster-one); cluster $(lat cluster-cluster); + WAIT 1 $(lat cluster-wait)
  rounds: one ${C_ONE[*]}; cluster ${C_CLU[*]}; wait ${C_WAIT[*]}
  CPU in the last round: one Redis: $L_ONE; cluster: $L_CLU; + WAIT 1: $L_WAIT
"
fi

# --- Subscriptions: delivery rate against the drain rate; latency at 80% of the drain --------
# Two workers drain a backlog (the drain rate); a subscription of the run's type is then consumed
# from the beginning by 1, then 2 consumers (each its own subscription): the delivery rate. Then
# the end-to-end rate: the load test sending as fast as it can while the two workers store
# (--verify: events stored over the time from the first send to the last store), the drain as it
# is when the same two cores also run the load generator and the ingest. A subscription starting
# now is then consumed while the load test sends for 20 s at 40% and 80% of that end-to-end rate,
# and at 80% and 60% of the drain alone (each after the workers caught up): the time from the
# ingest's receiving an event to its delivery, p50 and p99, and the workers' backlog when the
# sending stopped (an event is delivered only once stored), beside control runs at 80% of each
# rate with no subscription. Only with BENCH_PHASES=subscriptions.
SUBS_REPORT=""
if phase subscriptions; then
SUB_EVENTS=$(n 30000)
run="subs$RANDOM"
drained() { for _ in $(seq 1200); do [ "$("${REDIS_CLI[@]}" xlen events)" -eq 0 ] && break; sleep 0.1; done; }
# Drained, and the rollup job caught up too (its lag, as analytics reports it, under 2 s), so that a
# live run does not pay for the backlog the run before it left.
rollup_lag() {
    curl -s "$INGEST_URL/analytics/metrics" -H "x-api-key: $KEY" \
        | python3 -c "import json,sys; print(json.load(sys.stdin)['rollup']['lag_seconds'] or 0)" 2>/dev/null || echo 99
}
settled() {
    drained
    for _ in $(seq 240); do
        python3 -c "import sys; sys.exit(0 if float('$(rollup_lag)') < 2 else 1)" && break
        sleep 0.5
    done
}
# Warm-up, not measured: the workers' first start on a fresh database creates its indexes, which
# once made the drain below read 4,112 events/s where other runs read 18,000-25,000.
start_workers 2
loadtest --events 1000 --batch 100 --concurrency 4 --quiet --run-id "warm$RANDOM" > /dev/null
drained
stop_workers
echo "== subscriptions: drain $SUB_EVENTS events with 2 workers, then consume them"
loadtest --events "$SUB_EVENTS" --batch 100 --concurrency 16 --quiet --run-id "$run" > /dev/null
start_workers 2
"$BIN/evp-loadtest" drain --run-id "$run" --events "$SUB_EVENTS" --tenant "$TENANT" --json "$WORK/subs-drain.json"
SUB_DRAIN=$(json "$WORK/subs-drain.json" "int(d['processing_events_per_s'])")
subscribe() { "$BIN/evp-loadtest" subscribe --url "$INGEST_URL" --key "$KEY" "$@"; }
# Each subscription is deleted once its run is over: one nobody consumes still costs a read of
# what is appended after it each time its lag is found (docs/OPERATIONS.md), which the runs after
# it would pay for.
unsubscribe() { curl -s -o /dev/null -X DELETE "$INGEST_URL/subscriptions/$1" -H "x-api-key: $KEY"; }
for c in 1 2; do
    subscribe --name "bench-$c-$run" --type "loadtest.$run" --consumers "$c" --events "$SUB_EVENTS" --json "$WORK/subs-$c.json"
    unsubscribe "bench-$c-$run"
done
SUB_RATE1=$(json "$WORK/subs-1.json" "int(d['events_per_s'])"); SUB_RATE2=$(json "$WORK/subs-2.json" "int(d['events_per_s'])")
# The same events through a subscription of every type (the tenant has no others yet): the read
# that tenant_position serves without a hint, window by window (evp_store::windows).
subscribe --name "bench-all-$run" --consumers 1 --events "$SUB_EVENTS" --json "$WORK/subs-all.json"
unsubscribe "bench-all-$run"
SUB_RATE_ALL=$(json "$WORK/subs-all.json" "int(d['events_per_s'])")
drained
echo "== subscriptions: the end-to-end rate (sending as fast as possible while 2 workers store)"
loadtest --events "$SUB_EVENTS" --batch 100 --concurrency 16 --quiet --verify --run-id "e2e$RANDOM" \
    --stall-timeout 300 --json "$WORK/subs-e2e.json" > /dev/null
SUB_E2E=$(json "$WORK/subs-e2e.json" "int(d['verify']['processing_events_per_s'])")
LIVE_LINES=""
# The subscriptions of the runs above name their run's type; the untyped ones name none (they
# start now, so they deliver the same events), the read that tenant_position alone serves. The
# control ("none") sends at the same rate with no subscription: what the workers' backlog is when
# nothing reads. CPU: each run's share of both cores' time for the MongoDB server (when the run
# started one), the ingest, and what stayed idle.
LIVE_AT=("40 $SUB_E2E end-to-end typed" "80 $SUB_E2E end-to-end typed" "80 $SUB_E2E end-to-end untyped"
    "80 $SUB_E2E end-to-end none" "80 $SUB_DRAIN drain typed" "80 $SUB_DRAIN drain none" "80 $SUB_DRAIN drain untyped"
    "60 $SUB_DRAIN drain untyped")
# BENCH_SUB_RATES="10000 12000": instead, each of these rates with no subscription, its type and
# every type (to find the rate the storage sustains while the same cores send, and the delivery there).
if [ -n "${BENCH_SUB_RATES:-}" ]; then
    LIVE_AT=()
    for rate in $BENCH_SUB_RATES; do LIVE_AT+=("100 $rate given none" "100 $rate given typed" "100 $rate given untyped"); done
fi
for live_at in "${LIVE_AT[@]}"; do
    read -r pct base basis typed <<< "$live_at"
    settled   # each rate starts with the workers and the rollup job caught up
    LIVE_RATE=$(python3 -c "print(max(100, int($pct * $base / 100)))")
    live="live$pct$RANDOM"
    echo "== subscriptions: sending at $LIVE_RATE events/s ($pct% of the $basis rate) for 20 s; subscription: $typed"
    type_args=(); [ "$typed" = typed ] && type_args=(--type "loadtest.$live")
    if [ "$typed" != none ]; then
        subscribe --name "bench-live-$live" "${type_args[@]}" --start-now --consumers 2 --duration 24 --json "$WORK/subs-live.json" &
        SUB_PID=$!
        sleep 1
    fi
    cpu_begin "${MONGO_PID:-$INGEST_PID}" "$INGEST_PID"
    loadtest --duration 20 --rate "$LIVE_RATE" --batch 100 --concurrency 16 --quiet --run-id "$live" --json "$WORK/subs-load.json" > /dev/null
    cpu_end
    BACKLOG_END=$("${REDIS_CLI[@]}" xlen events)
    cpu="CPU: MongoDB server ${CPU_SHARES[0]}, ingest ${CPU_SHARES[1]}, idle ${CPU_SHARES[4]}"
    [ -z "${MONGO_PID:-}" ] && cpu="CPU: ingest ${CPU_SHARES[1]}, idle ${CPU_SHARES[4]}"
    case "$typed" in
        typed) what="its type" ;;
        untyped) what="every type" ;;
        *) what="no subscription (the control)" ;;
    esac
    delivered="nothing read"
    if [ "$typed" != none ]; then
        wait "$SUB_PID"
        unsubscribe "bench-live-$live"
        delivered=$(json "$WORK/subs-live.json" "f\"{d['events']} delivered within 24 s; received to delivered p50 {d['delivery_p50_ms']:.0f} ms, p99 {d['delivery_p99_ms']:.0f} ms\"")
    fi
    at="at $pct% of the $basis rate"; [ "$basis" = given ] && at="at $base events/s"
    LIVE_LINES+="
  $at, $what: $(json "$WORK/subs-load.json" "f\"{d['accepted']} sent at {d['events_per_s']:.0f} events/s\""); $delivered; not yet stored when the sending stopped: $BACKLOG_END; $cpu"
done
stop_workers
SUBS_REPORT="  drain (2 workers)         $SUB_DRAIN events/s
  end to end (2 workers)    $SUB_E2E events/s = $(ratio "$SUB_E2E" "$SUB_DRAIN") of the drain (sending and storing on the same cores)
  delivery, 1 consumer      $SUB_RATE1 events/s = $(ratio "$SUB_RATE1" "$SUB_DRAIN") of the drain
  delivery, 2 consumers     $SUB_RATE2 events/s = $(ratio "$SUB_RATE2" "$SUB_DRAIN") of the drain
  delivery, every type, 1   $SUB_RATE_ALL events/s = $(ratio "$SUB_RATE_ALL" "$SUB_DRAIN") of the drain$LIVE_LINES"
"${REDIS_CLI[@]}" del events > /dev/null
fi

# --- Report ---------------------------------------------------------------------------------
p() { json "$WORK/$1.json" "f\"p50 {d['latency_ms']['p50']:.1f} ms, p99 {d['latency_ms']['p99']:.1f} ms\"" 2>/dev/null || echo "n/a (phase not run)"; }
read -r I1 W1 V1 R1 L1 <<< "$AT_100K"
read -r I2 W2 V2 R2 L2 <<< "$AT_1M"
cat <<REPORT

================ evp benchmark (scale $SCALE) ================
Redis XADD ceiling          pipelined -P 100: $XADD_P100/s   unpipelined, 50 clients: $XADD_P1/s (median of $ROUNDS rounds)
Ingest, 100 per request     $BATCH_RATE events/s  = $(ratio "$BATCH_RATE" "$XADD_P100") of pipelined XADD   ($(p batch))
Ingest, single events       $SINGLE_RATE events/s from evp-loadtest = $(ratio "$SINGLE_RATE" "$XADD_P1") of unpipelined XADD   ($(p single))
Single events from wrk, median of $ROUNDS alternating rounds:
  ingest                    $WRK_RATE events/s
                            = $TO_CEIL_XADD of the request+XADD ceiling
                            = $TO_XADD_P1 of unpipelined XADD
                            = $TO_CEIL of the HTTP ceiling
  request+XADD ceiling      $CEIL_XADD_RATE requests/s: the bare server with one XADD per request (same Redis client)
  HTTP ceiling              $CEIL_RATE requests/s: the bare server answering 202 (no auth, validation, Redis, metrics)
  CPU per request, server   ingest $WRK_US µs, request+XADD ceiling $CEIL_XADD_US µs, HTTP ceiling $CEIL_US µs
Latency at half rate        batches: $(p batch-half);  single events: $(p single-half)
MongoDB bulk insert         4 writers: ${MONGO[1]}/s   8 writers: ${MONGO[2]}/s   16 writers: ${MONGO[4]}/s (the server's own rate, same documents, batches of 500)
Worker drain                1: ${DRAIN[1]}/s ($(ratio "${DRAIN[1]}" "${MONGO[1]}"))   2: ${DRAIN[2]}/s ($(ratio "${DRAIN[2]}" "${MONGO[2]}"))   4: ${DRAIN[4]}/s ($(ratio "${DRAIN[4]}" "${MONGO[4]}")) of MongoDB's rate at the same number of writers
                            2 without the rollup job: ${DRAIN_NOJOB:-0}/s ($(ratio "${DRAIN_NOJOB:-0}" "${MONGO[2]}"))
Memory at 100k events (after a 20k backlog and a 300k warm-up)
                            ingest RSS ${I1} kB, worker RSS ${W1}/${V1} kB, Redis used_memory $R1 B, stream length $L1
Memory at 1M events         ingest RSS ${I2} kB, worker RSS ${W2}/${V2} kB, Redis used_memory $R2 B, stream length $L2
Redis after the backlog drained: $DRAINED_100K B at 100k, $DRAINED_1M B at 1M
Growth 100k -> 1M           ingest $(ratio "$I2" "$I1"), workers $(ratio "$W2" "$W1")/$(ratio "$V2" "$V1"), Redis $(ratio "$R2" "$R1") (drained: $(ratio "$DRAINED_1M" "$DRAINED_100K"))
Saturated MongoDB           $SAT_WORKERS workers draining $SAT_EVENTS into a database holding $SAT_PREFILL events:
  drain alone               ${SAT[alone]} events/s   (transient write failures logged: ${SAT_RETRIES[alone]})
  beside a counting reader  ${SAT[reader]} events/s over ${SAT_READER_S}s = $(ratio "${SAT[reader]}" "${SAT[alone]}") of alone   (failures logged: ${SAT_RETRIES[reader]})
  load test --verify        ${SAT[verify]} events/s end to end = $(ratio "${SAT[verify]}" "${SAT[alone]}") of the drain alone   (failures logged: ${SAT_RETRIES[verify]})
Client library              Emitter (one process, batches of 100): $CLIENT_EMIT events/s = $(ratio "$CLIENT_EMIT" "$CLIENT_LOADGEN") of evp-loadtest's $CLIENT_LOADGEN events/s (32 connections)
Limiters (BENCH_PHASES=limits)
$LIMITS_REPORT
Index sets (BENCH_PHASES=indexes), the server's own bulk-insert rate, 4 writers
$INDEX_REPORT
Read API by depth (BENCH_PHASES=read)
$READ_REPORT
Analytics (BENCH_PHASES=analytics)
$ANALYTICS_REPORT
Dashboard (BENCH_PHASES=dashboard)
$DASH_REPORT
Redis Cluster (BENCH_PHASES=cluster)
$CLUSTER_REPORT
Subscriptions (BENCH_PHASES=subscriptions)
$SUBS_REPORT
REPORT
