#!/usr/bin/env bash
# Where the CPU time of a single-event request goes, sampled by perf: the ingest and the
# request+XADD ceiling of bench.sh (a bare axum server doing one XADD per request, same Redis
# client), each under the same wrk load, split by where the time is spent (the kernel, the
# allocator, the rest of libc, and the user-space code by crate), plus the ingest's hottest
# functions. Unlike instructions.sh this sees system calls, the allocator's cache misses and the
# kernel's TCP work.
#
#   load-tests/profile.sh                  # about a minute; needs perf (installs linux-perf) and root
#                                          # or kernel.perf_event_paranoid <= 0
#   PROFILE_KEEP=DIR load-tests/profile.sh # also keep DIR/perf-ingest.data and DIR/perf-ceiling.data,
#                                          # recorded with call graphs, e.g. for
#                                          # perf report -i DIR/perf-ingest.data --no-children -G
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$EVP_ROOT"
command -v perf > /dev/null || apt_install linux-perf
SECONDS_EACH="${SECONDS_EACH:-8}"

echo "== building (release)"
cargo build --release --locked -q -p evp-ingest
cargo build --release --locked -q -p evp-ingest --example http_ceiling
BIN="$EVP_ROOT/target/release"
start_redis
wrk_script "$WORK/single.lua"

# $1: label; the rest: the server command, in which {port} stands for the port to listen on.
profile() {
    local label="$1"; shift
    local port pid data graph=()
    port=$(free_port)
    MONGODB_URI="mongodb://127.0.0.1:9" API_KEYS="$TENANT:$KEY" \
        PORT="$port" LOG_FORMAT=json "${@//\{port\}/$port}" > "$WORK/$label.log" 2>&1 &
    pid=$!
    PIDS+=($pid)
    wait_port "$port" "$label" "$WORK/$label.log"
    data="$WORK/perf-$label.data"
    [ -z "${PROFILE_KEEP:-}" ] || { mkdir -p "$PROFILE_KEEP"; data="$PROFILE_KEEP/perf-$label.data"; graph=(--call-graph dwarf,16384); }
    wrk -t1 -c64 -d2s -s "$WORK/single.lua" "http://127.0.0.1:$port/events" > /dev/null
    perf record -q -F 999 "${graph[@]}" -p "$pid" -o "$data" -- sleep "$SECONDS_EACH" > /dev/null 2>&1 &
    local perf_pid=$!
    wrk_single "http://127.0.0.1:$port/events" "$pid" "$SECONDS_EACH"
    wait "$perf_pid" || { echo "perf record failed (needs root or kernel.perf_event_paranoid <= 0)" >&2; exit 1; }
    [ "$WRK_REFUSED" = 0 ] || { echo "$label refused requests; log:" >&2; tail -5 "$WORK/$label.log" >&2; exit 1; }
    echo "== $label: $WRK_RPS requests/s under perf, $WRK_SERVER_US µs of CPU per request"
    perf report -i "$data" --no-children --sort dso,sym --stdio -q 2> /dev/null > "$WORK/$label.report"
    python3 - "$WORK/$label.report" "$label" "$WRK_SERVER_US" "$WORK/$label.groups" <<'PY'
import json, re, sys
path, label, us, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
groups = {}
top = []
for line in open(path, errors="replace"):
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)", line)
    if not m:
        continue
    pct, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()
    if kind == "k" or dso.startswith("[kernel"):
        group = "kernel (TCP over loopback, system calls, scheduling)"
    elif dso.startswith("libc") or sym.startswith("__rust_") or sym.startswith("__rustc::"):
        alloc = re.search(r"malloc|free|realloc|calloc|alloc|_int_|consolidate|tcache|memalign", sym)
        group = "malloc and free (libc, and Rust's shims)" if alloc else "libc: other (memcpy, memmove, ...)"
    elif dso.startswith("[vdso"):
        group = "clock reads (vdso)"
    else:
        # The crate of the first path in the symbol: <F as axum::handler::Handler> is axum's.
        crate = re.search(r"([A-Za-z_][A-Za-z0-9_]*)::", sym)
        name = crate.group(1) if crate else "other"
        group = {"core": "core/alloc/std", "alloc": "core/alloc/std", "std": "core/alloc/std"}.get(name, name)
        if name.startswith("evp") or name == "http_ceiling":
            group = "this program (evp-ingest, evp-events / the ceiling)"
        top.append((pct, sym))
    groups[group] = groups.get(group, 0.0) + pct
json.dump({g: pct * us / 100 for g, pct in groups.items()}, open(out, "w"))
if label == "ingest":
    print("   hottest user-space functions of the ingest (share of its CPU time, self):")
    for pct, sym in sorted(top, key=lambda t: -t[0])[:12]:
        print(f"   {pct:5.1f}%  {sym[:110]}")
PY
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

profile ingest "$BIN/evp-ingest"
profile ceiling "$BIN/examples/http_ceiling" "127.0.0.1:{port}" "$REDIS_URL"

echo "== CPU per request by where it is spent, in µs (perf's shares of each server's measured CPU time)"
python3 - "$WORK/ingest.groups" "$WORK/ceiling.groups" <<'PY'
import json, sys
ingest, ceiling = (json.load(open(p)) for p in sys.argv[1:3])
rows = sorted(set(ingest) | set(ceiling), key=lambda g: -(ingest.get(g, 0) - ceiling.get(g, 0)))
print(f"   {'':52} {'ingest':>7} {'request+XADD':>13} {'difference':>11}")
other = [0.0, 0.0]
for g in rows:
    a, b = ingest.get(g, 0.0), ceiling.get(g, 0.0)
    if max(a, b) < 0.4:
        other[0] += a; other[1] += b
        continue
    print(f"   {g[:52]:52} {a:7.1f} {b:13.1f} {a - b:+11.1f}")
print(f"   {'the rest (each under 0.4 µs)':52} {other[0]:7.1f} {other[1]:13.1f} {other[0] - other[1]:+11.1f}")
a, b = sum(ingest.values()), sum(ceiling.values())
print(f"   {'total':52} {a:7.1f} {b:13.1f} {a - b:+11.1f}")
PY
