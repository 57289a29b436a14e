#!/usr/bin/env bash
# CI smoke of the whole pipeline: 20,000 events through evp-ingest and two workers into MongoDB,
# verified exactly (every accepted event stored once), after checking that the verifier does fail
# when events are missing. Uses the debug binaries of the workspace.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$EVP_ROOT"
cargo build --locked --bins -q
start_servers "$EVP_ROOT/target/debug"
start_ingest

# The verifier must catch loss: with no worker running nothing is stored, so --verify has to fail.
if loadtest --events 200 --batch 50 --concurrency 2 --verify --quiet --stall-timeout 3 > "$WORK/negative.txt"; then
    cat "$WORK/negative.txt"; echo "load-test smoke: 0 passed, 1 failed (--verify did not notice missing events)"; exit 1
fi
grep -q "missing 200" "$WORK/negative.txt" || { cat "$WORK/negative.txt"; echo "load-test smoke: 0 passed, 1 failed"; exit 1; }

start_workers 2
if loadtest --events "${SMOKE_EVENTS:-20000}" --batch 100 --concurrency 8 --verify --quiet --stall-timeout 120; then
    echo "load-test smoke: 1 passed, 0 failed"
else
    echo "load-test smoke: 0 passed, 1 failed"; tail -5 "$WORK"/worker-*.log >&2; exit 1
fi
