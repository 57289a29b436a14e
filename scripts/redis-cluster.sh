# Sourced by scripts/up.sh --cluster and load-tests/bench.sh (phase cluster): starts a loopback
# Redis Cluster of redis-server processes, joined with `redis-cli --cluster create`.
#
#   start_redis_cluster <dir> [masters] [replicas per master]     (3 and 1 by default)
#
# Sets CLUSTER_SEEDS (comma-separated redis:// URLs, what REDIS_URL takes with REDIS_CLUSTER=true)
# and CLUSTER_PIDS (also when it fails, so the caller can stop what started). Each node listens on its port and on port + 10000 (the cluster bus); ports
# are chosen where both are free. Data and logs go to <dir>/<port>/. Needs ensure_redis first.

cluster_port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_redis_cluster() {
    local dir="$1" masters="${2:-3}" replicas="${3:-1}" count port addrs=() tries
    count=$((masters * (1 + replicas)))
    CLUSTER_PIDS=(); CLUSTER_SEEDS=""
    # Below the kernel's ephemeral ports (32768 and up), bus ports included, so no outgoing
    # connection can take a node's port between the check and the bind.
    port=$((12000 + RANDOM % 8000))
    while [ "${#addrs[@]}" -lt "$count" ]; do
        port=$((port + 1))
        cluster_port_free "$port" && cluster_port_free "$((port + 10000))" || continue
        mkdir -p "$dir/$port"
        redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
            --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
            --cluster-require-full-coverage no --dir "$dir/$port" > "$dir/$port/redis.log" 2>&1 &
        CLUSTER_PIDS+=($!)
        addrs+=("127.0.0.1:$port")
        CLUSTER_SEEDS="${CLUSTER_SEEDS:+$CLUSTER_SEEDS,}redis://127.0.0.1:$port"
    done
    for addr in "${addrs[@]}"; do
        for tries in $(seq 100); do redis-cli -p "${addr#*:}" ping > /dev/null 2>&1 && break; sleep 0.1; done
    done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas "$replicas" --cluster-yes > "$dir/create.log" 2>&1 \
        || { echo "redis-cli --cluster create failed:" >&2; tail -5 "$dir/create.log" >&2; return 1; }
    # Ready when every node sees every slot served and every replica is in sync with its master
    # (before that, WAIT finds no replica).
    for addr in "${addrs[@]}"; do
        for tries in $(seq 300); do
            redis-cli -p "${addr#*:}" cluster info 2>/dev/null | grep -q 'cluster_state:ok' \
                && redis-cli -p "${addr#*:}" info replication 2>/dev/null | grep -Eq 'role:master|master_link_status:up' \
                && break
            sleep 0.1
        done
    done
}
