#!/usr/bin/env bash
# The dashboard in a real headless Chromium against a running system (redis-server, a
# MongoDB-protocol server, evp-ingest with an operator key, two workers): scripts/dashboard_test.py
# enters the keys and asserts on what the page renders. Installs Chromium, chromedriver and
# Selenium when missing. EVP_SCREENSHOT=path also saves a screenshot of the page.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../load-tests/lib.sh"
cd "$EVP_ROOT"
start_dashboard_system

EVP_URL="$INGEST_URL" EVP_KEY="$KEY" EVP_ADMIN_KEY="$ADMIN_KEYS" REDIS_PORT="$REDIS_PORT" \
EVP_WORKERS="$(IFS=,; echo "${WORKER_NAMES[*]}")" EVP_INGEST_PID="$INGEST_PID" \
EVP_INGEST_CMD="$(python3 -c 'import json,sys; print(json.dumps({"argv": [sys.argv[1]], "log": sys.argv[2], "env": {"API_KEYS": sys.argv[3], "PORT": sys.argv[4], "ADMIN_KEYS": sys.argv[5]}}))' \
    "$BIN/evp-ingest" "$WORK/ingest.log" "$TENANT:$KEY" "$INGEST_PORT" "$ADMIN_KEYS")" \
    "$EVP_ROOT/.venv/bin/python" "$EVP_ROOT/scripts/dashboard_test.py" || {
        echo "--- ingest log"; tail -20 "$WORK/ingest.log"; exit 1; }
