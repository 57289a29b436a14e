//! A MongoDB-protocol server for tests: an external one, `mongod`, or `secantusd-rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{ChildGuard, free_port, workspace_root};

/// Which server stands behind a [`MongoServer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MongoKind {
    /// `MONGODB_TEST_URI`: started by someone else, never stopped by us.
    External,
    Mongod,
    /// `secantusd-rs` (crate `secantus-mdb`): MongoDB's wire protocol and semantics over WiredTiger.
    Secantus,
}

/// A MongoDB-protocol server. Each fixture hands out unique database names, so tests sharing an
/// external server stay independent.
#[derive(Debug)]
pub struct MongoServer {
    kind: MongoKind,
    uri: String,
    port: u16,
    dir: TempDir,
    process: Option<ChildGuard>,
}

static DB_COUNTER: AtomicU32 = AtomicU32::new(0);

impl MongoServer {
    /// Starts (or, with `MONGODB_TEST_URI`, attaches to) a server and waits until it answers a ping.
    pub async fn start() -> Self {
        if let Ok(uri) = std::env::var("MONGODB_TEST_URI")
            && !uri.is_empty()
        {
            let dir = tempfile::tempdir().expect("temp dir");
            let server = Self { kind: MongoKind::External, uri, port: 0, dir, process: None };
            server.wait_for_ping().await;
            return server;
        }
        Self::start_owned().await
    }

    /// Starts a server of this test's own (a `mongod` on PATH, else secantusd-rs), even when
    /// `MONGODB_TEST_URI` is set: for tests that stop and restart it.
    pub async fn start_owned() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let kind = if which("mongod").is_some() { MongoKind::Mongod } else { MongoKind::Secantus };
        let port = free_port();
        let process = Some(Self::spawn(kind, port, &dir));
        let server = Self { kind, uri: format!("mongodb://127.0.0.1:{port}"), port, dir, process };
        server.wait_for_ping().await;
        server
    }

    fn spawn(kind: MongoKind, port: u16, dir: &TempDir) -> ChildGuard {
        let log = dir.path().join("mongo.log");
        let (name, cmd) = match kind {
            MongoKind::Mongod => {
                let data = dir.path().join("data");
                std::fs::create_dir_all(&data).expect("data dir");
                let mut cmd = Command::new("mongod");
                cmd.args(["--port", &port.to_string(), "--bind_ip", "127.0.0.1", "--quiet", "--dbpath"])
                    .arg(&data);
                ("mongod", cmd)
            }
            _ => {
                let mut cmd = Command::new(secantus_binary());
                // An empty config file of its own: no secantusd.toml of the machine applies. A small
                // cache and write-ahead log file (allocated in full), since a test run starts many.
                let config = dir.path().join("secantusd.toml");
                std::fs::write(&config, "").expect("secantusd.toml");
                cmd.arg("--config").arg(&config);
                cmd.arg("--storage-path").arg(dir.path().join("data"));
                cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()]);
                cmd.args(["--cache-size", "256M", "--log-file-max", "16MB", "--log-level", "WARNING"]);
                // Without it a journaled write (`j: true`, as the worker writes) is acknowledged before
                // its log record is synced, and a SIGKILL loses it: acknowledged events vanished when
                // the outage test killed the server under load (CI, 2026-12-04). mongod syncs first.
                cmd.arg("--sync-on-commit");
                ("secantusd-rs", cmd)
            }
        };
        let mut process = ChildGuard::spawn(name, cmd, &log).unwrap_or_else(|e| {
            panic!("cannot start {name}: {e}; run the README's test command, which installs secantusd-rs")
        });
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        process.wait_for_port(addr, Duration::from_secs(30)).expect("MongoDB server did not start");
        process
    }

    async fn wait_for_ping(&self) {
        let client = self.client().await;
        for _ in 0..150 {
            let ping = client.database("admin").run_command(mongodb::bson::doc! { "ping": 1 }).await;
            if ping.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("MongoDB server at {} does not answer ping", self.uri);
    }

    /// Which server this is.
    pub fn kind(&self) -> MongoKind {
        self.kind
    }

    /// The connection string.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// A database name no other test of this process uses.
    pub fn unique_database(&self, prefix: &str) -> String {
        let n = DB_COUNTER.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}_{}_{n}", std::process::id())
    }

    /// A client for assertions, with short timeouts so a failing test fails fast.
    pub async fn client(&self) -> mongodb::Client {
        let mut options = mongodb::options::ClientOptions::parse(&self.uri).await.expect("mongodb uri");
        options.server_selection_timeout = Some(Duration::from_secs(5));
        options.connect_timeout = Some(Duration::from_secs(2));
        mongodb::Client::with_options(options).expect("mongodb client")
    }

    /// The sum of WiredTiger counters of `serverStatus` (`wiredTiger.<group>.<name>`), when the
    /// server reports them: what an operation cost the server, as the difference of two looks
    /// (meaningful on a server of the test's own, not an [`MongoKind::External`] one that others
    /// share). A missing counter among `names` counts 0; `None` when the first is missing.
    pub async fn wired_tiger(&self, group: &str, names: &[&str]) -> Option<i64> {
        use mongodb::bson::{Bson, doc};
        let client = self.client().await;
        let status = client.database("admin").run_command(doc! { "serverStatus": 1 }).await.ok()?;
        let counters = status.get_document("wiredTiger").ok()?.get_document(group).ok()?;
        let value = |name: &str| match counters.get(name)? {
            Bson::Int32(n) => Some(i64::from(*n)),
            Bson::Int64(n) => Some(*n),
            Bson::Double(n) => Some(*n as i64),
            _ => None,
        };
        let first = value(names.first()?)?;
        Some(first + names[1..].iter().filter_map(|n| value(n)).sum::<i64>())
    }

    /// WiredTiger cursor steps so far (`cursor next calls` and `cursor prev calls`): how many keys
    /// or documents the server has stepped through.
    pub async fn cursor_steps(&self) -> Option<i64> {
        self.wired_tiger("cursor", &["cursor next calls", "cursor prev calls"]).await
    }

    /// Kills the server (simulates an outage); data files are kept for [`restart`](Self::restart).
    pub fn stop(&mut self) {
        assert!(self.kind != MongoKind::External, "cannot stop an external MongoDB");
        if let Some(p) = self.process.as_mut() {
            p.kill();
        }
    }

    /// Starts the server again on the same port and data.
    pub async fn restart(&mut self) {
        self.stop();
        self.process = Some(Self::spawn(self.kind, self.port, &self.dir));
        self.wait_for_ping().await;
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join(name)).find(|p| p.is_file())
}

/// `SECANTUSD_BIN`, else the pinned version where `scripts/deps.sh` installs it
/// (`$EVP_TOOLS`, default `~/.local/share/evp`, then `secantus-mdb-<version>/bin`), else
/// `secantusd-rs` on PATH.
pub fn secantus_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("SECANTUSD_BIN") {
        return bin.into();
    }
    let version = std::fs::read_to_string(workspace_root().join("scripts/secantus-mdb.version"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    let tools = std::env::var_os("EVP_TOOLS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share/evp")));
    let pinned = tools.map(|t| t.join(format!("secantus-mdb-{version}/bin/secantusd-rs")));
    match pinned {
        Some(pinned) if pinned.is_file() => pinned,
        _ => which("secantusd-rs").unwrap_or_else(|| "secantusd-rs".into()),
    }
}
