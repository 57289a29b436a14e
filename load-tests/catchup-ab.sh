#!/usr/bin/env bash
# Compares how fast two evp-ingest binaries, A and B, deliver a subscription that is far behind:
# EVENTS events (of one tenant, every type) are stored once by two workers; then a new
# subscription from the beginning is consumed to the end by one consumer (evp-client's
# Subscriber, through `evp-loadtest subscribe`) with A's ingest, then with B's, ROUNDS times in
# turn, on the same servers and the same stored events. Prints each round's events/s (with the
# CPU time per delivered event of the ingest and of the MongoDB server) and the workers' drain
# rate beside them.
#
#   load-tests/catchup-ab.sh A_BINARY B_BINARY     # e.g. a copy of target/release/evp-ingest per build
#   EVENTS=500000 ROUNDS=3 load-tests/catchup-ab.sh A B
#   TYPED=1 load-tests/catchup-ab.sh A B          # a subscription of the events' type instead of every type
#                                                 # (10% more events, of another type, sent at the same time)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ $# -eq 2 ] || { echo "usage: $0 A_BINARY B_BINARY" >&2; exit 2; }
cd "$EVP_ROOT"
EVENTS="${EVENTS:-200000}"
ROUNDS="${ROUNDS:-2}"
A="$(realpath "$1")"; B="$(realpath "$2")"
cargo build --release --locked -q --bin evp-worker --bin evp-loadtest
start_servers "$EVP_ROOT/target/release"
start_ingest
run="catchup$RANDOM"
echo "== storing $EVENTS events with 2 workers"
type_args=()
if [ "${TYPED:-0}" = 1 ]; then
    # Sent at the same time, so the other type's events lie among the subscription's.
    loadtest --events "$((EVENTS / 10))" --batch 100 --concurrency 4 --quiet --run-id "other$RANDOM" > /dev/null &
    OTHER_PID=$!
    type_args=(--type "loadtest.$run")
fi
loadtest --events "$EVENTS" --batch 100 --concurrency 16 --quiet --run-id "$run" > /dev/null
[ -z "${OTHER_PID:-}" ] || wait "$OTHER_PID"
start_workers 2
"$BIN/evp-loadtest" drain --run-id "$run" --events "$EVENTS" --tenant "$TENANT" --json "$WORK/drain.json" > /dev/null
stop_workers
DRAIN=$(python3 -c "import json; print(int(json.load(open('$WORK/drain.json'))['processing_events_per_s']))")
echo "   drain: $DRAIN events/s"
for round in $(seq 1 "$ROUNDS"); do
    for build in A B; do
        kill "$INGEST_PID"; wait "$INGEST_PID" 2>/dev/null || true
        binary=$A; [ "$build" = B ] && binary=$B
        INGEST_PORT=$(free_port)
        API_KEYS="$TENANT:$KEY" PORT="$INGEST_PORT" "$binary" > "$WORK/ingest-$build.log" 2>&1 &
        INGEST_PID=$!; PIDS+=($INGEST_PID)
        wait_port "$INGEST_PORT" "evp-ingest ($build)" "$WORK/ingest-$build.log"
        cpu_begin "$INGEST_PID" "$MONGO_PID"
        "$BIN/evp-loadtest" subscribe --url "http://127.0.0.1:$INGEST_PORT" --key "$KEY" --name "catchup-$build-$round" \
            "${type_args[@]}" --consumers 1 --events "$EVENTS" --json "$WORK/sub.json" > /dev/null
        cpu_end
        echo "round $round, $build: $(python3 -c "import json; print(int(json.load(open('$WORK/sub.json'))['events_per_s']))") events/s delivered;" \
            "CPU per event: ingest $((CPU_US[0] / EVENTS)) µs, MongoDB server $((CPU_US[1] / EVENTS)) µs;" \
            "of both cores: ingest ${CPU_SHARES[0]}, server ${CPU_SHARES[1]}, the rest ${CPU_SHARES[2]}, idle ${CPU_SHARES[4]}"
    done
done
