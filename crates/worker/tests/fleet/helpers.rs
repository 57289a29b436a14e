//! `Pipeline`: a redis-server, a MongoDB server, and worker processes on top.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use evp_events::input::{Admission, Limits, admit_batch};
use evp_runtime::partitions::Partitions;
use evp_runtime::unstored;
use evp_testkit::{ChildGuard, MongoServer, RedisServer, free_port, program};
use mongodb::bson::{Document, doc};
use serde_json::json;
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_evp-worker");
pub const STREAM: &str = "events";
pub const GROUP: &str = "evp-workers-group";

/// The keys of the per-tenant counts of the one partition.
pub fn counts() -> unstored::Keys {
    unstored::Keys::new(Partitions::new(STREAM, 1).first(), GROUP)
}

pub struct Pipeline {
    pub redis: RedisServer,
    pub mongo: MongoServer,
    pub database: String,
    pub logs: TempDir,
}

pub struct Worker {
    pub port: u16,
    pub process: ChildGuard,
}

impl Pipeline {
    pub async fn start() -> Self {
        Self::with_mongo(MongoServer::start().await)
    }

    /// With a MongoDB server of the test's own, for tests that stop and restart it.
    pub async fn start_owning_mongo() -> Self {
        Self::with_mongo(MongoServer::start_owned().await)
    }

    fn with_mongo(mongo: MongoServer) -> Self {
        let redis = RedisServer::start();
        let database = mongo.unique_database("fleet");
        Self { redis, mongo, database, logs: tempfile::tempdir().unwrap() }
    }

    /// The environment a worker of this pipeline runs with (before test-specific overrides).
    pub fn env(&self, name: &str, port: u16) -> Vec<(String, String)> {
        [
            ("REDIS_URL", self.redis.url()),
            ("MONGODB_URI", self.mongo.uri().to_string()),
            ("MONGODB_DATABASE", self.database.clone()),
            ("CONSUMER_NAME", name.to_string()),
            ("WORKER_PORT", port.to_string()),
            ("WORKER_CLAIM_IDLE_MS", "1000".to_string()),
            ("WORKER_BLOCK_MS", "200".to_string()),
            ("LOG_FORMAT", "json".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Starts a worker process; `overrides` replace or add variables.
    pub fn worker(&self, name: &str, overrides: &[(&str, &str)]) -> Worker {
        let port = free_port();
        let mut cmd = program(BIN, self.env(name, port));
        cmd.envs(overrides.iter().copied());
        let log = self.logs.path().join(format!("{name}.log"));
        Worker { port, process: ChildGuard::serving(name, cmd, &log, port) }
    }

    /// XADDs raw entry payloads, as something other than the ingest might; returns the entry ids.
    pub async fn publish_raw(&self, payloads: &[Vec<u8>]) -> Vec<String> {
        let mut conn = self.redis.connection().await;
        let mut ids = Vec::new();
        for payload in payloads {
            let id: String = redis::cmd("XADD")
                .arg(STREAM)
                .arg("*")
                .arg("e")
                .arg(payload)
                .query_async(&mut conn)
                .await
                .unwrap();
            ids.push(id);
        }
        ids
    }

    /// Encodes `n` events exactly as the ingest does and appends them as it does (XADDs and the
    /// tenant's unstored count in one MULTI); returns their ids.
    pub async fn publish(&self, tenant: &str, prefix: &str, n: usize) -> Vec<String> {
        let events: Vec<_> = (0..n)
            .map(|i| json!({"type": "test.event", "id": format!("{prefix}-{i}"), "data": {"i": i}}))
            .collect();
        let mut ids = Vec::new();
        let mut conn = self.redis.connection().await;
        for chunk in events.chunks(500) {
            let body = serde_json::to_vec(chunk).unwrap();
            let adm = Admission::new(tenant, 1_700_000_000_000, Limits::default());
            let encoded = admit_batch(&body, &adm).unwrap();
            let mut pipe = redis::pipe();
            pipe.atomic();
            for e in &encoded {
                pipe.cmd("XADD").arg(STREAM).arg("*").arg("e").arg(&e.payload).ignore();
                ids.push(e.id.clone());
            }
            unstored::count_batch(&mut pipe, &counts(), tenant, encoded.len());
            pipe.exec_async(&mut conn).await.unwrap();
        }
        ids
    }

    pub async fn collection(&self) -> mongodb::Collection<Document> {
        self.mongo.client().await.database(&self.database).collection("events")
    }

    pub async fn stored_count(&self) -> u64 {
        self.collection().await.count_documents(doc! {}).await.unwrap()
    }

    /// Every stored (tenant, event_id), asserting none is stored twice.
    pub async fn stored_ids(&self) -> HashSet<(String, String)> {
        use futures::TryStreamExt;
        let docs: Vec<Document> =
            self.collection().await.find(doc! {}).await.unwrap().try_collect().await.unwrap();
        let mut seen = HashSet::new();
        for d in &docs {
            let key = (d.get_str("tenant").unwrap().to_string(), d.get_str("event_id").unwrap().to_string());
            assert!(seen.insert(key.clone()), "stored twice: {key:?}");
        }
        seen
    }

    /// Waits (bounded) until MongoDB holds `n` events; returns the last count seen.
    pub async fn wait_for_count(&self, n: u64, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let count = self.stored_count().await;
            if count >= n || Instant::now() > deadline {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Each tenant's events not yet stored, as counted in Redis (absent: none).
    pub async fn unstored(&self) -> HashMap<String, i64> {
        self.redis_query(redis::cmd("HGETALL").arg(counts().unstored)).await
    }

    /// Waits until no tenant has an unstored event counted, and checks that `worker` never had to
    /// reconcile the counts: they reached zero by counting alone.
    pub async fn assert_counts_settled(&self, worker: &Worker) {
        let settled =
            eventually(Duration::from_secs(30), || async { self.unstored().await.is_empty() }).await;
        assert!(settled, "unstored counts left: {:?}", self.unstored().await);
        assert_eq!(worker.metric("evp_worker_unstored_counts_reconciled_total").await, 0.0);
    }

    pub async fn redis_query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        let mut conn = self.redis.connection().await;
        cmd.query_async(&mut conn).await.unwrap()
    }

    /// Entries pending in `group` (all consumers).
    pub async fn pending(&self, group: &str) -> u64 {
        let reply: redis::streams::StreamPendingReply =
            self.redis_query(redis::cmd("XPENDING").arg(STREAM).arg(group)).await;
        reply.count() as u64
    }

    /// Entries pending for one consumer.
    pub async fn pending_of(&self, consumer: &str) -> u64 {
        let reply: redis::streams::StreamPendingCountReply = self
            .redis_query(
                redis::cmd("XPENDING").arg(STREAM).arg(GROUP).arg("-").arg("+").arg(100_000).arg(consumer),
            )
            .await;
        reply.ids.len() as u64
    }

    pub async fn xlen(&self, stream: &str) -> u64 {
        self.redis_query(redis::cmd("XLEN").arg(stream)).await
    }

    /// Creates the group (as a worker would) and reads `count` entries as `consumer`, which then
    /// never acknowledges them: the state a worker killed mid-batch leaves behind.
    pub async fn read_as_ghost(&self, consumer: &str, count: usize) -> Vec<String> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(STREAM)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .exec_async(&mut self.redis.connection().await)
            .await;
        if let Err(e) = created {
            assert_eq!(e.code(), Some("BUSYGROUP"), "{e}");
        }
        let reply: redis::streams::StreamReadReply = self
            .redis_query(
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(consumer)
                    .arg("COUNT")
                    .arg(count)
                    .arg("STREAMS")
                    .arg(STREAM)
                    .arg(">"),
            )
            .await;
        reply.keys.into_iter().flat_map(|k| k.ids).map(|id| id.id).collect()
    }

    /// Ids pending for `consumer`.
    pub async fn read_ids_of(&self, consumer: &str) -> Vec<String> {
        let reply: redis::streams::StreamPendingCountReply = self
            .redis_query(
                redis::cmd("XPENDING").arg(STREAM).arg(GROUP).arg("-").arg("+").arg(100_000).arg(consumer),
            )
            .await;
        reply.ids.into_iter().map(|p| p.id).collect()
    }

    /// Runs `evp-worker` with arguments (the dlq subcommands) and returns (exit code, stdout).
    pub fn cli(&self, args: &[&str]) -> (i32, String) {
        let out =
            evp_testkit::program(BIN, [("REDIS_URL", self.redis.url()), ("EVENTS_STREAM", STREAM.into())])
                .args(args)
                .output()
                .unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Worker {
    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(format!("http://127.0.0.1:{}{path}", self.port)).await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// The value of an unlabelled metric (the sum over its labels otherwise); 0 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until the trimmer has completed `rounds` more rounds than now, proving that it ran.
    pub async fn wait_for_trim_rounds(&self, rounds: f64) {
        let start = self.metric("evp_worker_trim_runs_total").await;
        let ran = eventually(Duration::from_secs(30), || async {
            self.metric("evp_worker_trim_runs_total").await >= start + rounds
        })
        .await;
        assert!(ran, "the trimmer did not run");
    }
}

pub use evp_testkit::eventually;
