//! A real Redis Cluster on loopback: `redis-server --cluster-enabled yes` nodes joined by
//! `redis-cli --cluster create`, masters with one replica each.
//!
//! Each node listens on its port and on port + 10000 (the cluster bus), so ports are chosen where
//! both are free. Nodes fail over fast (`cluster-node-timeout` 1 s) and keep serving the slots they
//! own while another master is down (`cluster-require-full-coverage no`), which is what the
//! failover tests need. Every node is killed and reaped on drop.

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::ChildGuard;

/// One node of the cluster.
#[derive(Debug)]
pub struct ClusterNode {
    pub port: u16,
    process: ChildGuard,
}

/// A running Redis Cluster.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    dir: TempDir,
}

impl RedisCluster {
    /// Three masters, each with one replica, ready (every slot served, every replica in sync).
    pub fn start() -> Self {
        Self::start_with(3, 1)
    }

    /// `masters` masters with `replicas` replicas each.
    pub fn start_with(masters: usize, replicas: usize) -> Self {
        let count = masters * (1 + replicas);
        let dir = tempfile::tempdir().expect("temp dir");
        let nodes: Vec<ClusterNode> = cluster_ports(count)
            .into_iter()
            .map(|port| ClusterNode { port, process: spawn(&dir, port) })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        let out = create.output().expect("run redis-cli --cluster create (install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { nodes, dir };
        cluster.wait_until_ready(Duration::from_secs(30));
        cluster
    }

    /// Every node's URL, comma-separated: what `REDIS_URL` takes with `REDIS_CLUSTER=true`.
    pub fn seeds(&self) -> String {
        self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    /// The ports of the nodes that are alive.
    pub fn live_ports(&mut self) -> Vec<u16> {
        self.nodes.iter_mut().filter_map(|n| n.process.is_running().then_some(n.port)).collect()
    }

    /// A cluster client for assertions, from the same crate the binaries use.
    pub async fn connection(&mut self) -> redis::cluster_async::ClusterConnection {
        let seeds: Vec<String> = self.live_ports().iter().map(|p| format!("redis://127.0.0.1:{p}")).collect();
        redis::cluster::ClusterClient::builder(seeds)
            .retries(10)
            .response_timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("cluster client")
            .get_async_connection()
            .await
            .expect("connect to the test cluster")
    }

    /// The port of the master serving `slot`, as a live node sees it.
    pub fn master_of(&mut self, slot: u16) -> u16 {
        self.try_master_of(slot).unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// The port of the master serving `slot`, `None` while none does (during a failover).
    pub fn try_master_of(&mut self, slot: u16) -> Option<u16> {
        let port = self.live_ports()[0];
        let nodes = cli(port, &["cluster", "nodes"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
            });
            if serves {
                let addr = fields[1].split('@').next().unwrap_or_default();
                return addr.rsplit(':').next().and_then(|p| p.parse().ok());
            }
        }
        None
    }

    /// Moves `slot`, with its keys, to the master on `to`, the way `redis-cli --cluster reshard`
    /// does: IMPORTING on the target, MIGRATING on the source, MIGRATE of its keys in batches,
    /// then the new owner announced to every master. Clients meanwhile get ASK for keys already
    /// moved and MOVED once it is done.
    pub fn move_slot(&mut self, slot: u16, to: u16) {
        let moving = self.start_moving_slot(slot, to);
        self.finish_moving_slot(moving);
    }

    /// The first half of [`move_slot`](Self::move_slot): IMPORTING, MIGRATING and every key
    /// migrated. Until [`finish_moving_slot`](Self::finish_moving_slot), the source still owns the
    /// slot and answers ASK for its keys, which are on the target: the migration window.
    pub fn start_moving_slot(&mut self, slot: u16, to: u16) -> SlotMove {
        let from = self.master_of(slot);
        assert_ne!(from, to, "slot {slot} is already on {to}");
        let id = |port: u16| cli(port, &["cluster", "myid"]).trim().to_string();
        let moving = SlotMove { slot, from, to, to_id: id(to) };
        let slot_arg = slot.to_string();
        expect_ok(cli(to, &["cluster", "setslot", &slot_arg, "importing", &id(from)]));
        expect_ok(cli(from, &["cluster", "setslot", &slot_arg, "migrating", &moving.to_id]));
        migrate_keys(&moving);
        moving
    }

    /// Keys left on the source migrated, then the target announced as the slot's owner to
    /// every master.
    pub fn finish_moving_slot(&mut self, moving: SlotMove) {
        migrate_keys(&moving);
        let SlotMove { slot, from, to, to_id } = moving;
        let slot_arg = slot.to_string();
        let masters: Vec<u16> =
            self.live_ports().into_iter().filter(|p| cli(*p, &["role"]).starts_with("master")).collect();
        for port in [to, from].into_iter().chain(masters) {
            expect_ok(cli(port, &["cluster", "setslot", &slot_arg, "node", &to_id]));
        }
    }

    /// How many keys of `slot` the node on `port` holds.
    pub fn keys_in_slot(&self, port: u16, slot: u16) -> u64 {
        cli(port, &["cluster", "countkeysinslot", &slot.to_string()]).trim().parse().unwrap_or(0)
    }

    /// SIGKILLs the node on `port` (no chance to hand anything over).
    pub fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).expect("a node of this cluster");
        node.process.signal_and_wait("KILL", Duration::from_secs(5));
    }

    /// Starts the node on `port` again after [`kill`](Self::kill): it keeps its `nodes.conf`, so
    /// it rejoins the cluster (a master that was failed over comes back as a replica).
    pub fn restart(&mut self, port: u16) {
        let process = spawn(&self.dir, port);
        let node = self.nodes.iter_mut().find(|n| n.port == port).expect("a node of this cluster");
        node.process = process;
    }

    /// Waits until every live node sees all 16,384 slots served and every master's replicas (if
    /// still alive) are in sync.
    pub fn wait_until_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ready = self.nodes.iter().filter(|n| port_open(n.port)).all(|n| {
                let info = cli(n.port, &["cluster", "info"]);
                let replication = cli(n.port, &["info", "replication"]);
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && (replication.contains("role:master") || replication.contains("master_link_status:up"))
            });
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not become ready within {timeout:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Starts one cluster node in its own directory under `dir` and waits for its port.
fn spawn(dir: &TempDir, port: u16) -> ChildGuard {
    let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
    let node_dir = dir.path().join(port.to_string());
    std::fs::create_dir_all(&node_dir).expect("node dir");
    let mut cmd = Command::new(&bin);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
        .args(["--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no"])
        .args(["--cluster-replica-validity-factor", "0", "--repl-diskless-sync", "yes"])
        .args(["--repl-diskless-sync-delay", "0"])
        .arg("--dir")
        .arg(&node_dir);
    let mut process = ChildGuard::spawn(&format!("redis-cluster-{port}"), cmd, &node_dir.join("redis.log"))
        .unwrap_or_else(|e| panic!("cannot start {bin} (install redis-server): {e}"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    process.wait_for_port(addr, Duration::from_secs(10)).expect("cluster node did not start");
    process
}

/// `redis-cli -p <port> <args>`'s output ("" when it cannot run).
fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn expect_ok(reply: String) {
    assert!(reply.trim() == "OK" || reply.trim() == "NOKEY", "redis-cli answered {reply:?}");
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// `count` ports where the port and port + 10000 (its cluster bus) are both free, all below the
/// kernel's ephemeral ports (32768 and up), so that no outgoing connection of the tests takes one
/// between the check and the node's bind.
fn cluster_ports(count: usize) -> Vec<u16> {
    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos().into());
    let mut candidate = 12_000 + (seed.wrapping_mul(2_654_435_761) % 10_000) as u16;
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        candidate = if candidate >= 22_000 { 12_000 } else { candidate + 1 };
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(candidate) && free(candidate + 10_000) && !out.contains(&candidate) {
            out.push(candidate);
        }
    }
    out
}

/// A slot on its way from one master to another ([`RedisCluster::start_moving_slot`]).
#[derive(Debug)]
pub struct SlotMove {
    pub slot: u16,
    pub from: u16,
    pub to: u16,
    to_id: String,
}

/// MIGRATEs every key of the slot still on the source to the target, 100 at a time.
fn migrate_keys(moving: &SlotMove) {
    let slot_arg = moving.slot.to_string();
    let port = moving.to.to_string();
    loop {
        let keys = cli(moving.from, &["cluster", "getkeysinslot", &slot_arg, "100"]);
        let keys: Vec<&str> = keys.lines().map(str::trim).filter(|k| !k.is_empty()).collect();
        if keys.is_empty() {
            return;
        }
        let mut args = vec!["migrate", "127.0.0.1", port.as_str(), "", "0", "5000", "KEYS"];
        args.extend(keys);
        expect_ok(cli(moving.from, &args));
    }
}
