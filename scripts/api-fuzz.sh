#!/usr/bin/env bash
# Property-based test of the HTTP API against its own OpenAPI document: Schemathesis (pinned in
# scripts/requirements-test.txt) generates requests from /openapi.json, valid and invalid, and
# runs every check (no 5xx, documented status codes and content types, responses that match their
# schemas, schema-valid requests accepted, schema-invalid ones refused, auth enforced). Any finding
# fails the run. The ingest runs against a private redis-server and MongoDB-protocol server, with a
# worker storing what it accepts. Uses the debug binaries of the workspace.
#   ST_SEEDS (default two fixed seeds, so CI is repeatable; each is a whole run), ST_MAX_EXAMPLES
#   (default 150 per operation).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../load-tests/lib.sh"
cd "$EVP_ROOT"
ensure_venv
cargo build --locked --bins -q
start_servers "$EVP_ROOT/target/debug"
export ADMIN_KEYS="ops-key-$RANDOM"
start_ingest
start_workers 1

# For each seed, twice: the tenant routes with a tenant key, then /admin/* with an operator key.
st() {
    "$EVP_ROOT/.venv/bin/st" --config-file "$EVP_ROOT/scripts/schemathesis.toml" --no-color run "$INGEST_URL/openapi.json" \
        --checks all --seed "$seed" --max-examples "${ST_MAX_EXAMPLES:-150}" --generation-database none \
        --request-timeout 40 "$@"
}
fuzz() {
    for seed in ${ST_SEEDS:-1 20261123}; do
        echo "=== seed $seed"
        st -H "x-api-key: $KEY" --exclude-path-regex '^/admin' || return 1
        st -H "x-api-key: $ADMIN_KEYS" --include-path-regex '^/admin' || return 1
    done
}
if fuzz > "$WORK/st.txt" 2>&1; then
    tail -25 "$WORK/st.txt"
    echo "api fuzz: 1 passed, 0 failed"
else
    # Findings only, each line cut short: a failing example can be a megabyte of JSON.
    sed -n '/FAILURES/,$p' "$WORK/st.txt" | cut -c1-300
    echo "--- ingest log (last 20 lines)"; tail -20 "$WORK/ingest.log"
    echo "api fuzz: 0 passed, 1 failed"
    exit 1
fi
