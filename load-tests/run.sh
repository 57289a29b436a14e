#!/usr/bin/env bash
# The load test users run against a running evp (scripts/up.sh, or a deployment):
#
#   load-tests/run.sh --events 100000 --rate 50000 --batch 100 --concurrency 32 --verify
#
# Every option of evp-loadtest passes through (see --help): --url (EVP_URL), --key (EVP_API_KEY),
# --events or --duration, --rate (0 = as fast as possible), --batch (1 = POST /events),
# --concurrency, --verify with --mongodb-uri (MONGODB_URI), --database and --tenant, --json FILE.
# Exits non-zero when an accepted event is missing or stored twice.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cargo build --release --locked -q -p evp-loadtest --manifest-path "$ROOT/Cargo.toml"
exec "$ROOT/target/release/evp-loadtest" "$@"
