//! The exact rollups and the leader lease, with real worker processes: counts per (tenant, type,
//! minute) equal what was sent after SIGKILLs of the leader and of a worker mid-batch; a standby
//! takes over within the lease TTL; a deposed leader (SIGSTOP past its lease) cannot change the
//! rollups; `rollups rebuild` under load keeps analytics exact and ends exact; provisional counts
//! kept from round to round equal a recount.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use evp_events::EntryId;
use evp_events::input::{Admission, Limits, admit_batch};
use evp_store::rollups::{Contribution, RANGE_MS, RangeCounts, RollupError, RollupStore, minute_of};
use futures::TryStreamExt;
use mongodb::bson::{DateTime, Document, doc};
use serde_json::{Value, json};

use crate::helpers::{BIN, Pipeline, STREAM, Worker, eventually};

const TTL_MS: u64 = 1_500;

/// (tenant, type, minute ms) → events.
type Counts = BTreeMap<(String, String, i64), i64>;

/// `n` events (ids `<prefix>-<i>`) over 3 types and 7 minutes, every 50th at a timestamp in 1999.
fn events(prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let timestamp = if i % 50 == 0 {
                "1999-12-31T23:59:59Z".to_owned()
            } else {
                format!("2026-11-20T09:{:02}:{:02}Z", i % 7, i % 60)
            };
            let event_type = ["view", "click", "buy"][i % 3];
            json!({"type": event_type, "id": format!("{prefix}-{i}"), "timestamp": timestamp})
        })
        .collect()
}

fn expected(sent: &[(&str, Vec<Value>)]) -> Counts {
    let mut counts = Counts::new();
    for (tenant, events) in sent {
        for e in events {
            let ms =
                DateTime::parse_rfc3339_str(e["timestamp"].as_str().unwrap()).unwrap().timestamp_millis();
            let key = (tenant.to_string(), e["type"].as_str().unwrap().to_owned(), minute_of(ms));
            *counts.entry(key).or_default() += 1;
        }
    }
    counts
}

impl Pipeline {
    /// XADDs events of `tenant` exactly as the ingest encodes them; returns the last entry id.
    async fn send(&self, tenant: &str, events: &[Value]) -> String {
        let mut conn = self.redis.connection().await;
        let mut last = String::new();
        for chunk in events.chunks(500) {
            let body = serde_json::to_vec(chunk).unwrap();
            let encoded = admit_batch(&body, &Admission::new(tenant, now_ms(), Limits::default())).unwrap();
            let mut pipe = redis::pipe();
            for e in &encoded {
                pipe.cmd("XADD").arg(STREAM).arg("*").arg("e").arg(&e.payload);
            }
            let ids: Vec<String> = pipe.query_async(&mut conn).await.unwrap();
            last = ids.last().unwrap().clone();
        }
        last
    }

    async fn rollups_store(&self) -> RollupStore {
        RollupStore::new(&self.mongo.client().await, &self.database)
    }

    /// Waits until the rollups of the current generation hold every range up to the one of
    /// `last_entry`: a later entry (a sentinel of another tenant) is sent after a second, so that
    /// range closes.
    async fn wait_rolled_up(&self, last_entry: &str) {
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        self.send("sentinel", &[json!({"type": "tick"})]).await;
        let store = self.rollups_store().await;
        let ms = evp_runtime::stream_state::EntryId::parse(last_entry).unwrap().ms;
        let needed = ms as i64 / evp_store::rollups::RANGE_MS;
        let done = eventually(Duration::from_secs(60), || async {
            let current = store.generations().await.unwrap().current;
            store.next_range(current, 0).await.unwrap() > needed
        })
        .await;
        assert!(done, "the rollups did not reach the last entry's range");
    }

    /// The current generation's counts as stored in `event_counts` (no tail), sentinel left out.
    async fn rolled_up(&self) -> Counts {
        let store = self.rollups_store().await;
        let current = store.generations().await.unwrap().current;
        let counts =
            self.mongo.client().await.database(&self.database).collection::<Document>("event_counts");
        let docs: Vec<Document> =
            counts.find(doc! { "gen": current }).await.unwrap().try_collect().await.unwrap();
        let mut out = Counts::new();
        for d in docs {
            let tenant = d.get_str("tenant").unwrap().to_owned();
            if tenant == "sentinel" {
                continue;
            }
            let key = (
                tenant,
                d.get_str("type").unwrap().to_owned(),
                d.get_datetime("minute").unwrap().timestamp_millis(),
            );
            let n = d.get_i64("count").or_else(|_| d.get_i32("count").map(i64::from)).unwrap();
            *out.entry(key).or_default() += n;
        }
        out.retain(|_, n| *n != 0);
        out
    }
}

fn tail(log: &str) -> String {
    log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

impl Pipeline {
    /// The consumer name holding the rollup lease in Redis (the lease's own record).
    async fn lease_holder(&self) -> Option<String> {
        let token: Option<String> =
            self.redis_query(redis::cmd("GET").arg(format!("{{{STREAM}:lease:rollups}}"))).await;
        token.and_then(|t| t.split_once('/').map(|(holder, _)| holder.to_owned()))
    }

    /// Whether `name` holds the lease.
    async fn holds_lease(&self, name: &str) -> bool {
        self.lease_holder().await.as_deref() == Some(name)
    }
}

impl Worker {
    /// Whether the worker's own health says it leads.
    async fn is_leader(&self) -> bool {
        let Ok(resp) = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/health", self.port))
            .timeout(Duration::from_millis(500))
            .send()
            .await
        else {
            return false;
        };
        let body: Value = resp.json().await.unwrap_or_default();
        body["rollup"]["leader"] == true
    }
}

/// Index of the worker that leads, waiting for one.
async fn leader(workers: &[&Worker]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        for (i, w) in workers.iter().enumerate() {
            if w.is_leader().await {
                return i;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no worker became the rollup leader");
}

fn lease_env() -> [(&'static str, String); 1] {
    [("LEASE_TTL_MS", TTL_MS.to_string())]
}

fn worker(p: &Pipeline, name: &str) -> Worker {
    let env = lease_env();
    let overrides: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    p.worker(name, &overrides)
}

#[tokio::test]
async fn counts_stay_exact_when_the_leader_and_a_worker_are_killed_mid_run() {
    let p = Pipeline::start().await;
    let mut w1 = worker(&p, "r-w1");
    let mut w2 = worker(&p, "r-w2");
    let acme = events("a", 10_000);
    let globex = events("g", 10_000);
    // Paced, so that ranges close (and are counted) while events still arrive.
    for i in 0..10 {
        p.send("acme", &acme[i * 500..(i + 1) * 500]).await;
        p.send("globex", &globex[i * 500..(i + 1) * 500]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Kill the leader once it has counted something and while events are still arriving.
    let lead = leader(&[&w1, &w2]).await;
    let (killed, standby) = if lead == 0 { (&mut w1, &w2) } else { (&mut w2, &w1) };
    let counted = eventually(Duration::from_secs(60), || async {
        killed.metric("evp_worker_rollup_events_counted_total").await > 0.0
    })
    .await;
    assert!(counted, "the leader never counted anything");
    let killed_at = Instant::now();
    killed.process.kill();
    let standby_name = if lead == 0 { "r-w2" } else { "r-w1" };
    let took_over = eventually(Duration::from_millis(TTL_MS + 1_000), || p.holds_lease(standby_name)).await;
    let failover = killed_at.elapsed();
    assert!(took_over, "the standby did not take over within LEASE_TTL_MS + 1 s");
    let says_so = eventually(Duration::from_secs(5), || standby.is_leader()).await;
    assert!(says_so, "the new leader's health does not say it leads");
    eprintln!("failover after SIGKILL: {failover:?}");
    let w3 = worker(&p, "r-w3");

    p.send("acme", &acme[5_000..]).await;
    let last = p.send("globex", &globex[5_000..]).await;
    // Kill a worker holding entries mid-batch (the non-leader), and replace it.
    let victim_is_w3 = !w3.is_leader().await;
    let victim_name = if victim_is_w3 {
        "r-w3"
    } else if lead == 0 {
        "r-w2"
    } else {
        "r-w1"
    };
    let holding = eventually(Duration::from_secs(30), || async { p.pending_of(victim_name).await > 0 }).await;
    let mut w3 = w3;
    if victim_is_w3 {
        w3.process.kill();
    } else if lead == 0 {
        w2.process.kill();
    } else {
        w1.process.kill();
    }
    let _w4 = worker(&p, "r-w4");

    assert_eq!(p.wait_for_count(20_000, Duration::from_secs(120)).await, 20_000);
    p.stored_ids().await;
    p.wait_rolled_up(&last).await;
    let want = expected(&[("acme", acme), ("globex", globex)]);
    let got = p.rolled_up().await;
    assert_eq!(got.values().sum::<i64>(), 20_000, "every stored event counted once");
    assert_eq!(got, want, "counts per (tenant, type, minute) equal what was sent");
    assert!(holding, "the second kill found no batch in flight: it tested nothing");

    // The analytics read: with Redis saying nothing was appended past the provisional counts,
    // no event is read, and the counts (the sentinel's, in a range not closed yet, included) are
    // still exact.
    let store = p.rollups_store().await;
    let read_without_events = || async {
        let progress = store.progress(&[0]).await.unwrap();
        let info: std::collections::HashMap<String, redis::Value> =
            p.redis_query(redis::cmd("XINFO").arg("STREAM").arg(STREAM)).await;
        let Some(redis::Value::BulkString(last)) = info.get("last-generated-id") else { panic!("{info:?}") };
        let last = evp_runtime::stream_state::EntryId::parse(std::str::from_utf8(last).unwrap()).unwrap();
        assert!(last < progress.partitions[&0].until, "the provisional counts reach the last entry");
        let appended = BTreeMap::from([(0, last)]);
        let mut out = Counts::new();
        for tenant in ["acme", "globex", "sentinel"] {
            // 1990 to 2100.
            let c = store
                .counts(Some(tenant), None, 631_152_000_000, 4_102_444_800_000, &progress, &appended)
                .await
                .unwrap();
            for ((event_type, minute), n) in c.counts {
                out.insert((tenant.to_owned(), event_type, minute), n);
            }
        }
        out
    };
    let caught_up = eventually(Duration::from_secs(10), || async {
        let progress = store.progress(&[0]).await.unwrap();
        !progress.partitions[&0].provisional.is_empty()
    })
    .await;
    assert!(caught_up, "no provisional counts were written");
    let mut read = read_without_events().await;
    let sentinel: i64 = read.iter().filter(|(k, _)| k.0 == "sentinel").map(|(_, n)| n).sum();
    read.retain(|k, _| k.0 != "sentinel");
    assert_eq!(sentinel, 1, "the sentinel, in the open range, is counted from the provisional counts");
    assert_eq!(read, want);
}

#[tokio::test]
async fn a_deposed_leader_cannot_change_the_rollups() {
    let p = Pipeline::start().await;
    let w1 = worker(&p, "d-w1");
    let w2 = worker(&p, "d-w2");
    let first = events("a", 3_000);
    let last = p.send("acme", &first).await;
    assert_eq!(p.wait_for_count(3_000, Duration::from_secs(60)).await, 3_000);
    p.wait_rolled_up(&last).await;
    let lead = leader(&[&w1, &w2]).await;
    let (old, new) = if lead == 0 { (&w1, &w2) } else { (&w2, &w1) };
    let store = p.rollups_store().await;
    let old_fence = eventually(Duration::from_secs(30), || async {
        old.metric("evp_worker_rollup_events_counted_total").await > 0.0
    })
    .await;
    assert!(old_fence, "the first leader never counted");
    let fence_of = |d: Option<Document>| {
        d.and_then(|d| d.get_i64("fence").ok().or_else(|| d.get_i32("fence").ok().map(i64::from)))
            .unwrap_or(0)
    };
    let progress = p.mongo.client().await.database(&p.database).collection::<Document>("rollup_progress");
    let first_fence = fence_of(progress.find_one(doc! { "_id": "current" }).await.unwrap());

    // Freeze the leader past its lease; the standby takes over and carries on.
    let pid = old.process.pid().unwrap().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let new_name = if lead == 0 { "d-w2" } else { "d-w1" };
    let took_over = eventually(Duration::from_millis(TTL_MS + 1_000), || p.holds_lease(new_name)).await;
    assert!(took_over, "the standby did not take over from a frozen leader: {}", tail(&new.process.log()));
    let second = events("g", 3_000);
    let last = p.send("globex", &second).await;
    assert_eq!(p.wait_for_count(6_001, Duration::from_secs(120)).await, 6_001, "and one sentinel");
    p.wait_rolled_up(&last).await;
    let new_fence = fence_of(progress.find_one(doc! { "_id": "current" }).await.unwrap());
    assert!(new_fence > first_fence, "the new grant has a larger fencing number");

    // A write with the old fencing number is refused, and changes nothing.
    let before = p.rolled_up().await;
    let current = store.generations().await.unwrap().current;
    let next = store.next_range(current, 0).await.unwrap();
    let advance = store.advance(current, 0, next, next + 100, first_fence).await;
    assert!(matches!(advance, Err(RollupError::Fenced { .. })), "{advance:?}");
    // A document the new leader has written (globex's): it has seen the newer fencing number.
    let (tenant, event_type, minute) = before.keys().find(|k| k.0 == "globex").unwrap().clone();
    let stale = RangeCounts {
        partition: 0,
        from: next,
        to: next + 1,
        contributions: vec![Contribution {
            tenant,
            event_type,
            minute_ms: minute,
            ranges: BTreeMap::from([(next + 1_000_000, 1_000)]),
        }],
        events: 1_000,
    };
    let apply = store.apply(current, &stale, first_fence).await;
    assert!(matches!(apply, Err(RollupError::Fenced { .. })), "{apply:?}");
    assert_eq!(p.rolled_up().await, before);

    // Resumed, the old leader learns it was deposed, and the counts stay exact.
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    let stood_down = eventually(Duration::from_secs(10), || async { !old.is_leader().await }).await;
    assert!(stood_down, "the resumed leader still claims the lease");
    assert!(new.is_leader().await);
    let last = p.send("acme", &events("late", 500)).await;
    p.wait_rolled_up(&last).await;
    let want = expected(&[("acme", first), ("globex", second), ("acme", events("late", 500))]);
    assert_eq!(p.rolled_up().await, want);
    assert!(old.process.log().contains("lease lost"), "the old leader logged nothing about losing the lease");
}

#[tokio::test]
async fn rebuild_under_load_keeps_analytics_exact() {
    let p = Pipeline::start().await;
    let _w1 = worker(&p, "b-w1");
    let _w2 = worker(&p, "b-w2");
    let store = p.rollups_store().await;
    // Set A, in a minute nothing else lands in; rolled up before the rebuild.
    let set_a: Vec<Value> = (0..2_000)
        .map(|i| json!({"type": "old", "id": format!("a-{i}"), "timestamp": "2026-11-19T08:30:00Z"}))
        .collect();
    let last = p.send("acme", &set_a).await;
    assert_eq!(p.wait_for_count(2_000, Duration::from_secs(60)).await, 2_000);
    p.wait_rolled_up(&last).await;
    let a_minute = DateTime::parse_rfc3339_str("2026-11-19T08:30:00Z").unwrap().timestamp_millis();
    let count_a = || async {
        let progress = store.progress(&[0]).await.unwrap();
        let c = store
            .counts(Some("acme"), Some("old"), a_minute, a_minute + 60_000, &progress, &BTreeMap::new())
            .await
            .unwrap();
        c.counts.values().sum::<i64>()
    };
    assert_eq!(count_a().await, 2_000);
    // A wrong count in the current generation, which only a recount removes.
    let current = store.generations().await.unwrap().current;
    let counts = p.mongo.client().await.database(&p.database).collection::<Document>("event_counts");
    let ghost_minute = DateTime::parse_rfc3339_str("2026-11-18T00:00:00Z").unwrap();
    counts
        .insert_one(
            doc! { "_id": format!("{current}|acme|ghost|{}", ghost_minute.timestamp_millis()), "gen": current,
            "tenant": "acme", "type": "ghost", "minute": ghost_minute, "count": 5_i64, "fence": 0_i64 },
        )
        .await
        .unwrap();
    let ghost = || async {
        let t = ghost_minute.timestamp_millis();
        let progress = store.progress(&[0]).await.unwrap();
        let c = store
            .counts(Some("acme"), Some("ghost"), t, t + 60_000, &progress, &BTreeMap::new())
            .await
            .unwrap();
        c.counts.values().sum::<i64>()
    };
    assert_eq!(ghost().await, 5);

    // Load during the rebuild.
    let load = events("g", 6_000);
    let sender = {
        let load = load.clone();
        let p_redis = p.redis.url();
        tokio::spawn(async move {
            let client = redis::Client::open(p_redis).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let mut last = String::new();
            for chunk in load.chunks(250) {
                let body = serde_json::to_vec(chunk).unwrap();
                let encoded =
                    admit_batch(&body, &Admission::new("globex", now_ms(), Limits::default())).unwrap();
                let mut pipe = redis::pipe();
                for e in &encoded {
                    pipe.cmd("XADD").arg(STREAM).arg("*").arg("e").arg(&e.payload);
                }
                let ids: Vec<String> = pipe.query_async(&mut conn).await.unwrap();
                last = ids.last().unwrap().clone();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            last
        })
    };
    let (uri, database) = (p.mongo.uri().to_owned(), p.database.clone());
    let rebuild = tokio::task::spawn_blocking(move || {
        evp_testkit::program(BIN, [("MONGODB_URI", uri), ("MONGODB_DATABASE", database)])
            .args(["rollups", "rebuild", "--timeout-s", "120"])
            .output()
            .unwrap()
    });
    let mut checks = 0;
    while !rebuild.is_finished() {
        let seen = count_a().await;
        if seen != 2_000 {
            let db = p.mongo.client().await.database(&p.database);
            let progress: Vec<Document> =
                db.collection("rollup_progress").find(doc! {}).await.unwrap().try_collect().await.unwrap();
            let docs: Vec<Document> =
                db.collection("event_counts").find(doc! {}).await.unwrap().try_collect().await.unwrap();
            let logs: String = ["b-w1", "b-w2"]
                .iter()
                .map(|n| std::fs::read_to_string(p.logs.path().join(format!("{n}.log"))).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n");
            let logs: Vec<&str> = logs
                .lines()
                .filter(|l| l.contains("closed ranges") || l.contains("rebuil") || l.contains("WARN"))
                .collect();
            panic!(
                "analytics answered {seen} during the rebuild\n{progress:?}\n{docs:?}\n{}",
                logs.join("\n")
            );
        }
        checks += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = rebuild.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("done in"), "{stdout}");
    assert!(checks > 0);
    assert!(store.generations().await.unwrap().current > current, "readers moved to the new generation");
    assert_eq!(ghost().await, 0, "the rebuild recomputed the counts from the events");
    assert_eq!(count_a().await, 2_000);

    let last = sender.await.unwrap();
    assert_eq!(p.wait_for_count(8_001, Duration::from_secs(120)).await, 8_001, "and one sentinel");
    p.wait_rolled_up(&last).await;
    assert_eq!(p.rolled_up().await, expected(&[("acme", set_a), ("globex", load)]));
}

/// The provisional counts written round after round from what the last round kept (the frontier
/// moving within the open ranges, then a range closing) equal those of the same region read whole.
#[tokio::test]
async fn provisional_counts_kept_between_rounds_equal_a_recount() {
    let p = Pipeline::start().await;
    // No worker leads (the lease is held by nobody running), so only this test writes the rollups.
    let lease = format!("{{{STREAM}:lease:rollups}}");
    let _: () = p.redis_query(redis::cmd("SET").arg(&lease).arg("outsider").arg("PX").arg(600_000)).await;
    let mut w = worker(&p, "pv-w1");
    let sent = events("a", 600);
    p.send("acme", &sent[..300]).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    p.send("globex", &sent[300..]).await;
    assert_eq!(p.wait_for_count(600, Duration::from_secs(60)).await, 600);
    w.process.kill();

    let docs = p.mongo.client().await.database(&p.database).collection::<Document>("events");
    let seqs: Vec<EntryId> = docs
        .find(doc! { "partition": 0 })
        .sort(doc! { "seq": 1 })
        .projection(doc! { "seq": 1 })
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .iter()
        .map(|d| EntryId::parse(d.get_str("seq").unwrap()).unwrap())
        .collect();
    assert_eq!(seqs.len(), 600);
    let range = |e: &EntryId| e.ms as i64 / RANGE_MS;
    let (k1, k2) = (range(&seqs[0]), range(&seqs[599]));
    assert!(k1 < k2 && range(&seqs[299]) < k2, "the two sends lie in different ranges");

    let store = p.rollups_store().await;
    let fence = 1;
    let generation = store.generations().await.unwrap().current;
    store.advance(generation, 0, 0, k1, fence).await.unwrap();
    let provisional = || async {
        let mut counts = store.progress(&[0]).await.unwrap().partitions[&0].provisional.clone();
        counts.sort_by_key(|c| (c.tenant.clone(), c.event_type.clone(), c.minute_ms, c.range));
        counts
    };
    let total = |counts: &[evp_store::rollups::Provisional]| counts.iter().map(|c| c.count).sum::<i64>();

    let mut kept = None;
    assert!(store.write_provisional(generation, 0, k1, seqs[150], fence, &mut kept).await.unwrap());
    assert_eq!(total(&provisional().await), 150);
    assert!(store.write_provisional(generation, 0, k1, seqs[450], fence, &mut kept).await.unwrap());
    assert_eq!(total(&provisional().await), 450, "the first 150 kept, the next 300 read");
    // Range k1 is counted to its end: taken from the kept counts, it is what reading it gives.
    let sorted = |mut c: Vec<Contribution>| {
        c.sort_by_key(|c| (c.tenant.clone(), c.event_type.clone(), c.minute_ms));
        c
    };
    let from_kept = kept.clone().unwrap().take_closed(0, k2).expect("range k1 is counted to its end");
    let read = store.count_ranges(0, k1, k2).await.unwrap();
    assert_eq!((from_kept.from, from_kept.to, from_kept.events), (k1, k2, 300));
    assert_eq!((read.from, read.to, read.events), (k1, k2, 300));
    assert_eq!(sorted(from_kept.contributions), sorted(read.contributions));
    // Range k1 closes: its counts leave, the rest of k2 is added.
    store.advance(generation, 0, k1, k2, fence).await.unwrap();
    let end = seqs[599].next();
    assert!(store.write_provisional(generation, 0, k2, end, fence, &mut kept).await.unwrap());
    let step_by_step = provisional().await;
    assert_eq!(total(&step_by_step), 300);
    assert!(step_by_step.iter().all(|c| c.tenant == "globex" && c.range == k2), "{step_by_step:?}");

    let mut fresh = None;
    assert!(store.write_provisional(generation, 0, k2, end, fence, &mut fresh).await.unwrap());
    assert_eq!(provisional().await, step_by_step, "the same counts read whole");
}
