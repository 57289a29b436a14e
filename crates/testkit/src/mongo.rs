//! A MongoDB-protocol server for tests: an external one, `mongod`, or `nx-27017`.

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
    Nx27017,
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

    /// Starts a server of this test's own (a `mongod` on PATH, else nx-27017), even when
    /// `MONGODB_TEST_URI` is set: for tests that stop and restart it.
    pub async fn start_owned() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let kind = if which("mongod").is_some() { MongoKind::Mongod } else { MongoKind::Nx27017 };
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
                let bin = nx_binary();
                let mut cmd = Command::new(&bin);
                // Its PID file defaults to one shared path, which would stop a second instance.
                cmd.arg("--db").arg(dir.path().join("nx.db"));
                cmd.arg("--pid-file").arg(dir.path().join("nx.pid"));
                cmd.args(["--host", "127.0.0.1", "-p", &port.to_string()]);
                ("nx-27017", cmd)
            }
        };
        let mut process = ChildGuard::spawn(name, cmd, &log).unwrap_or_else(|e| {
            panic!("cannot start {name}: {e}; run the README's test command, which installs nx-27017")
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

/// `NX_27017_BIN`, else `.venv/bin/nx-27017` in the workspace, else `nx-27017` on PATH.
fn nx_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("NX_27017_BIN") {
        return bin.into();
    }
    let venv = workspace_root().join(".venv/bin/nx-27017");
    if venv.is_file() { venv } else { which("nx-27017").unwrap_or_else(|| "nx-27017".into()) }
}
