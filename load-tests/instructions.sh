#!/usr/bin/env bash
# User-space CPU instructions per single-event request, counted by callgrind: a figure that, unlike
# requests per second on a shared machine, repeats to within a fraction of a per cent, so small
# changes to the request path can be measured. Compares the ingest with the two ceilings of
# bench.sh (bare axum; bare axum + one XADD per request).
#
#   load-tests/instructions.sh              # about 2 minutes
#   load-tests/instructions.sh --profile    # also keep the ingest's callgrind file for
#                                           # callgrind_annotate --inclusive=yes FILE
#
# Each server runs under valgrind; the counters are dumped after 2,000 warm-up requests and again
# after 10,000 more (16 in flight), and the difference is divided by 10,000. The kernel's share
# (system calls, TCP) is not counted.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$EVP_ROOT"
command -v valgrind > /dev/null || apt_install valgrind

echo "== building (release)"
cargo build --release --locked -q -p evp-ingest -p evp-loadtest
cargo build --release --locked -q -p evp-ingest --example http_ceiling
BIN="$EVP_ROOT/target/release"
start_redis

# $1: label; the rest: the server command, in which {port} stands for the port to listen on.
count() {
    local label="$1"; shift
    local port out pid before after
    port=$(free_port)
    out="$WORK/callgrind.$(echo "$label" | tr -c 'a-z0-9\n' '-')"
    MONGODB_URI="mongodb://127.0.0.1:9" API_KEYS="$TENANT:$KEY" \
        PORT="$port" LOG_FORMAT=json valgrind --tool=callgrind --callgrind-out-file="$out" "${@//\{port\}/$port}" \
        > "$out.log" 2>&1 &
    pid=$!
    wait_port "$port" "$label" "$out.log"
    send() {
        "$BIN/evp-loadtest" --url "http://127.0.0.1:$port" --key "$KEY" --events "$1" --batch 1 \
            --concurrency 16 --quiet > "$out.send" 2>&1
    }
    total() {
        callgrind_control --dump "$pid" > /dev/null 2>&1
        sleep 1
        cat "$out".[0-9]* | awk '/^summary:/ {s += $2} END {print s}'
    }
    send 2000
    before=$(total)
    send 10000
    after=$(total)
    grep -q "accepted 10000 " "$out.send" || { echo "$label did not accept every request:" >&2; cat "$out.send" >&2; exit 1; }
    kill -9 "$pid"
    wait "$pid" 2>/dev/null || true
    RESULT=$(( (after - before) / 10000 ))
    printf '   %-30s %7s instructions per request\n' "$label" "$RESULT"
    LAST_PROFILE="$(ls "$out".[0-9]* | sort -V | tail -1)"
}

echo "== single-event requests, user-space instructions per request (callgrind)"
count "bare axum" "$BIN/examples/http_ceiling" "127.0.0.1:{port}"
BARE=$RESULT
count "bare axum + one XADD" "$BIN/examples/http_ceiling" "127.0.0.1:{port}" "$REDIS_URL"
XADD=$RESULT
count "evp-ingest" "$BIN/evp-ingest"
INGEST=$RESULT
echo "   the ingest costs $(python3 -c "print(f'{$INGEST / $XADD:.2f}')")x bare axum + XADD, $(python3 -c "print(f'{$INGEST / $BARE:.2f}')")x bare axum"
if [ "${1:-}" = --profile ]; then
    cp "$LAST_PROFILE" "$EVP_ROOT/target/callgrind.evp-ingest"
    echo "   profile of the ingest's 10,000 requests: target/callgrind.evp-ingest"
fi
