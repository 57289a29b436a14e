#!/usr/bin/env bash
# Runs every test of the workspace against real servers, installing what is missing first.
# Integration tests start their own redis-server and MongoDB-protocol server on free ports;
# then a smoke of the load test runs the whole pipeline (load-tests/smoke.sh), Schemathesis
# tests the HTTP API against its OpenAPI document (scripts/api-fuzz.sh), and headless Chromium
# tests the dashboard against a running system (scripts/dashboard-test.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/deps.sh"
cd "$EVP_ROOT"

ensure_redis
# Even with MONGODB_TEST_URI, the tests that stop and restart MongoDB start a server of their own.
command -v mongod >/dev/null || ensure_secantus
ensure_venv

cargo test --workspace --locked "$@"

# The whole pipeline end to end: 20k events through ingest and two workers, verified exactly.
load-tests/smoke.sh

# The HTTP API against its own OpenAPI document (Schemathesis, every check).
scripts/api-fuzz.sh

# The dashboard in a real browser: keys, counts, consumers, restart, dead-letter replay.
scripts/dashboard-test.sh
