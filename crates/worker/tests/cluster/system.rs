//! `System`: a Redis Cluster, a MongoDB server, an in-process ingest and worker processes.

use std::time::Duration;

use evp_ingest::IngestConfig;
use evp_runtime::config::Env;
use evp_testkit::{ChildGuard, MongoServer, RedisCluster, free_port, program};
use mongodb::bson::{Document, doc};
use serde_json::Value;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const BIN: &str = env!("CARGO_BIN_EXE_evp-worker");
pub const GROUP: &str = "evp-workers-group";
pub const PARTITIONS: u32 = 8;
pub const TENANTS: [(&str, &str); 2] = [("acme", "acme-key"), ("globex", "globex-key")];
pub const OPS: &str = "ops-key";

pub struct System {
    pub cluster: RedisCluster,
    pub mongo: MongoServer,
    pub database: String,
    db: mongodb::Database,
    pub logs: TempDir,
    addr: std::net::SocketAddr,
    http: reqwest::Client,
    shutdown: CancellationToken,
    ingest: JoinHandle<anyhow::Result<()>>,
}

impl System {
    /// A cluster, MongoDB and the ingest; `ingest_env` adds or replaces ingest variables.
    pub async fn start(ingest_env: &[(&str, &str)]) -> Self {
        let cluster = RedisCluster::start();
        let mongo = MongoServer::start().await;
        let database = mongo.unique_database("cluster");
        let db = mongo.client().await.database(&database);
        let mut sys = Self {
            cluster,
            mongo,
            database,
            db,
            logs: tempfile::tempdir().unwrap(),
            addr: ([127, 0, 0, 1], 0).into(),
            http: reqwest::Client::new(),
            shutdown: CancellationToken::new(),
            ingest: tokio::spawn(async { Ok(()) }),
        };
        let keys = TENANTS.iter().map(|(t, k)| format!("{t}:{k}")).collect::<Vec<_>>().join(",");
        let mut env = sys.env();
        env.extend([("API_KEYS".to_string(), keys), ("ADMIN_KEYS".to_string(), OPS.to_string())]);
        for (k, v) in ingest_env {
            env.retain(|(name, _)| name != k);
            env.push((k.to_string(), v.to_string()));
        }
        let mut config = IngestConfig::from_env(&Env::from_pairs(env)).unwrap();
        config.threads = 2;
        config.backlog_poll = Duration::from_millis(100);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        sys.addr = listener.local_addr().unwrap();
        sys.ingest = tokio::spawn(evp_ingest::run(config, listener, None, sys.shutdown.clone()));
        sys
    }

    /// What every program of this system runs with.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("REDIS_CLUSTER", "true".to_string()),
            ("REDIS_URL", self.cluster.seeds()),
            ("STREAM_PARTITIONS", PARTITIONS.to_string()),
            ("MONGODB_URI", self.mongo.uri().to_string()),
            ("MONGODB_DATABASE", self.database.clone()),
            ("LOG_FORMAT", "json".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Starts an `evp-worker` process.
    pub fn worker(&self, name: &str, overrides: &[(&str, &str)]) -> ChildGuard {
        let port = free_port();
        let mut cmd = program(BIN, self.env());
        cmd.env("CONSUMER_NAME", name).env("WORKER_PORT", port.to_string());
        cmd.env("WORKER_BLOCK_MS", "200").env("LEASE_TTL_MS", "2000").envs(overrides.iter().copied());
        ChildGuard::serving(name, cmd, &self.logs.path().join(format!("{name}.log")), port)
    }

    /// Starts one worker process per name, all with `overrides`.
    pub fn workers(&self, names: &[&str], overrides: &[(&str, &str)]) -> Vec<ChildGuard> {
        names.iter().map(|name| self.worker(name, overrides)).collect()
    }

    /// Stops the ingest, after the workers: each must still be the process first started (it ran
    /// throughout, without a restart) and must exit 0 on SIGTERM.
    pub async fn stop_with(self, workers: Vec<ChildGuard>, pids: &[Option<u32>]) {
        for (mut w, pid) in workers.into_iter().zip(pids) {
            assert!(w.is_running() && w.pid() == *pid, "the workers carried on without a restart");
            assert_eq!(w.signal_and_wait("TERM", Duration::from_secs(20)), Some(0));
        }
        self.stop().await;
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> (u16, Value) {
        self.sender().post(path, key, body).await
    }

    /// A handle that posts to the ingest from another task.
    pub fn sender(&self) -> Sender {
        Sender { http: self.http.clone(), addr: self.addr }
    }

    pub async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("http://{}{path}", self.addr))
            .header("x-api-key", key)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    pub fn events(&self) -> mongodb::Collection<Document> {
        self.db.collection("events")
    }

    /// Stored events matching `filter`.
    pub async fn stored(&self, filter: Document) -> u64 {
        self.events().count_documents(filter).await.unwrap_or(0)
    }

    /// Stored documents with one of `ids` as `event_id`, per id.
    pub async fn stored_ids(&self) -> Vec<(String, String)> {
        use futures::TryStreamExt;
        let docs: Vec<Document> = self
            .events()
            .find(doc! {})
            .projection(doc! {"tenant": 1, "event_id": 1})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        docs.iter()
            .map(|d| (d.get_str("tenant").unwrap().to_string(), d.get_str("event_id").unwrap().to_string()))
            .collect()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.ingest.await.unwrap().unwrap();
    }
}

#[derive(Clone)]
pub struct Sender {
    http: reqwest::Client,
    addr: std::net::SocketAddr,
}

impl Sender {
    pub async fn post(&self, path: &str, key: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("http://{}{path}", self.addr))
            .header("x-api-key", key)
            .json(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }
}

pub fn rfc3339(ms: i64) -> String {
    mongodb::bson::DateTime::from_millis(ms).try_to_rfc3339_string().unwrap()
}

pub use evp_testkit::eventually;
