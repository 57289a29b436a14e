#!/usr/bin/env bash
# Makes docs/dashboard.png: the dashboard with an operator key, taken by headless Chromium while
# the system runs under load (evp-loadtest at 800 events/s, three event types, two dead letters, a
# subscription whose consumer holds a delivery).
#   scripts/screenshot.sh [path]     # default docs/dashboard.png
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../load-tests/lib.sh"
cd "$EVP_ROOT"
OUT="$(realpath -m "${1:-docs/dashboard.png}")"
start_dashboard_system
for t in page_view signup checkout; do
    curl -s -X POST "$INGEST_URL/events/batch" -H "x-api-key: $KEY" -H 'content-type: application/json' \
        -d "$(python3 -c "import json; print(json.dumps([{'type': '$t'} for _ in range({'page_view': 900, 'signup': 120, 'checkout': 45}['$t'])]))")" > /dev/null
done
for i in 1 2; do
    redis-cli -p "$REDIS_PORT" XADD events:dlq '*' e '{"v":1,"tenant":"load","id":"order-'$i'","type":"checkout","ts":1,"rcv":1}' \
        dlq_reason "not stored after 5 deliveries" dlq_deliveries 6 dlq_source_id "1-$i" dlq_consumer gone-worker \
        dlq_at "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > /dev/null
done
# A subscription with a consumer that holds a delivery, for the Subscriptions panel.
curl -s -X PUT "$INGEST_URL/subscriptions/active-users" -H "x-api-key: $KEY" -H 'content-type: application/json' \
    -d '{"types":["signup","checkout"]}' > /dev/null
sleep 2   # the workers store the batches above
( for _ in $(seq 9); do   # polling without acknowledging: it stays a live consumer holding 50 events
    curl -s -X POST "$INGEST_URL/subscriptions/active-users/poll" -H "x-api-key: $KEY" -H 'content-type: application/json' \
        -d '{"consumer":"projector-1","max":50}' > /dev/null
    sleep 10
done ) &
loadtest --duration 75 --rate 800 --batch 20 --concurrency 4 --quiet > /dev/null &
LOAD_PID=$!
"$EVP_ROOT/.venv/bin/python" "$EVP_ROOT/scripts/dashboard_open.py" "$INGEST_URL" "$ADMIN_KEYS" --screenshot "$OUT" --after 60
wait "$LOAD_PID" || true
