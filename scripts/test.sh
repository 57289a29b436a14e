#!/usr/bin/env bash
# Runs every test of the workspace against real servers, installing what is missing first.
# Integration tests start their own redis-server and MongoDB-protocol server on free ports.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/deps.sh"
cd "$EVP_ROOT"

ensure_redis
if needs_nx MONGODB_TEST_URI; then ensure_nx; fi

cargo test --workspace --locked "$@"
