//! The whole pipeline on a real Redis Cluster (three masters, one replica each, on loopback):
//! an in-process ingest and `evp-worker` processes with `STREAM_PARTITIONS=8`, a real
//! MongoDB-protocol server, a master SIGKILLed under load, and a partition's slot moved to another
//! master under load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod failover;
mod resharding;
mod system;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use evp_runtime::partitions::{Partitions, slot};
use mongodb::bson::{Document, doc};
use serde_json::{Value, json};

use crate::system::{OPS, PARTITIONS, System, TENANTS, eventually};

const WAIT: Duration = Duration::from_secs(180);

/// Two tenants, 20,000 events over eight partitions: each stored exactly once, in the partition
/// its aggregate (else its id) hashes to; an aggregate's events read back in the order they were
/// sent although their timestamps run backwards; exact analytics; dead letters listed, replayed
/// and stored through the admin API, per partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_partitions_on_a_cluster_store_every_event_exactly_once() {
    let mut sys = System::start(&[]).await;
    let partitions = Partitions::new("events", PARTITIONS);
    // The partitions spread over the three masters.
    let masters: HashSet<u16> = partitions.iter().map(|p| sys.cluster.master_of(slot(&p.stream))).collect();
    assert_eq!(masters.len(), 3, "eight partitions land on all three masters");

    // A few events that will end up as dead letters: read by a consumer that then vanishes, as
    // if delivered five times already.
    let stuck: Vec<Value> = (0..4).map(|i| json!({"id": format!("stuck-{i}"), "type": "stuck"})).collect();
    assert_eq!(sys.post("/events/batch", TENANTS[0].1, &json!(stuck)).await.0, 202);
    let mut conn = sys.cluster.connection().await;
    for i in 0..4 {
        let partition = partitions.route(&format!("stuck-{i}"));
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&partition.stream)
            .arg(system::GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await
            .or_else(|e| if e.code() == Some("BUSYGROUP") { Ok(()) } else { Err(e) })
            .unwrap();
        let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(system::GROUP)
            .arg("ghost")
            .arg("STREAMS")
            .arg(&partition.stream)
            .arg(">")
            .query_async(&mut conn)
            .await
            .unwrap();
        let ids: Vec<String> = read.keys.into_iter().flat_map(|k| k.ids).map(|e| e.id).collect();
        if ids.is_empty() {
            continue; // read with an earlier stuck event of the same partition
        }
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(&partition.stream)
            .arg(system::GROUP)
            .arg("ghost")
            .arg(0)
            .arg(&ids)
            .arg("RETRYCOUNT")
            .arg(5)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    let overrides = [("WORKER_CLAIM_IDLE_MS", "300"), ("WORKER_MAX_DELIVERIES", "5")];
    let workers = sys.workers(&["w1", "w2"], &overrides);
    let pids: Vec<Option<u32>> = workers.iter().map(|w| w.pid()).collect();

    // 20,000 events, the two tenants interleaved, in batches of 500. Half belong to one of 40
    // aggregates (timestamps going backwards), half to none (routed by id).
    let base_ms: i64 = 1_780_000_000_000;
    let mut sent: HashMap<(String, String), Value> = HashMap::new();
    for batch in 0..40 {
        let (tenant, key) = TENANTS[batch % 2];
        let events: Vec<Value> = (0..500)
            .map(|j| {
                let n = batch * 500 + j;
                let event_type = ["created", "updated", "deleted"][n % 3];
                let mut event = json!({
                    "id": format!("{tenant}-{n}"),
                    "type": event_type,
                    "timestamp": system::rfc3339(base_ms - n as i64 * 1000),
                    "data": {"n": n},
                });
                if n % 2 == 0 {
                    event["aggregate_id"] = json!(format!("agg-{}", n % 40));
                }
                sent.insert((tenant.to_string(), format!("{tenant}-{n}")), event.clone());
                event
            })
            .collect();
        let (status, body) = sys.post("/events/batch", key, &json!(events)).await;
        assert_eq!(status, 202, "{body}");
    }

    assert!(eventually(WAIT, || async { sys.stored(doc! {"type": {"$ne": "stuck"}}).await == 20_000 }).await);
    // Exactly once, in the partition the routing names.
    let docs = sys.documents(doc! {"type": {"$ne": "stuck"}}).await;
    assert_eq!(docs.len(), 20_000);
    let mut seen = HashSet::new();
    let mut per_partition = BTreeMap::new();
    for d in &docs {
        let key = (d.get_str("tenant").unwrap().to_string(), d.get_str("event_id").unwrap().to_string());
        let event = &sent[&key];
        let routing = event["aggregate_id"].as_str().unwrap_or(&key.1).to_string();
        let partition = d.get_i32("partition").unwrap();
        assert_eq!(partition as u32, partitions.route(&routing).index, "{key:?}");
        *per_partition.entry(partition).or_insert(0) += 1;
        assert!(seen.insert(key), "stored once");
    }
    assert_eq!(per_partition.len(), 8, "every partition carried events: {per_partition:?}");

    // An aggregate's events come back in the order they were sent (timestamps run backwards).
    for (tenant, key) in TENANTS {
        let (status, body) = sys.get("/aggregates/agg-6/events?limit=1000", key).await;
        assert_eq!(status, 200, "{body}");
        let ns: Vec<i64> =
            body["events"].as_array().unwrap().iter().map(|e| e["data"]["n"].as_i64().unwrap()).collect();
        let mut expected: Vec<i64> = sent
            .iter()
            .filter(|((t, _), e)| t == tenant && e["aggregate_id"] == "agg-6")
            .map(|(_, e)| e["data"]["n"].as_i64().unwrap())
            .collect();
        expected.sort();
        assert_eq!(ns, expected, "{tenant}: agg-6 in send order");
        assert!(ns.len() > 200, "{}", ns.len());
    }

    // Exact analytics per tenant, and the rollups catch up over every partition.
    let window = format!(
        "/analytics/metrics?from={}&to={}&bucket=day",
        system::rfc3339(base_ms - 86_400_000),
        system::rfc3339(base_ms + 3_600_000)
    );
    for (tenant, key) in TENANTS {
        let (status, body) = sys.get(&window, key).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["total"], 10_000, "{tenant}: {body}");
        let by_type: BTreeMap<String, i64> = body["by_type"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["type"].as_str().unwrap().to_string(), t["count"].as_i64().unwrap()))
            .collect();
        let mut expected = BTreeMap::new();
        for ((t, _), e) in &sent {
            if t == tenant {
                *expected.entry(e["type"].as_str().unwrap().to_string()).or_insert(0i64) += 1;
            }
        }
        assert_eq!(by_type, expected, "{tenant}");
    }
    assert!(
        eventually(WAIT, || async {
            let (_, body) = sys.get(&window, TENANTS[0].1).await;
            body["rollup"]["lag_seconds"].as_f64().is_some_and(|lag| lag < 2.0) && body["total"] == 10_000
        })
        .await,
        "the rollups close every partition's ranges"
    );

    // The stuck events are dead letters of their own partitions; replayed, they are stored.
    assert!(
        eventually(WAIT, || async {
            sys.get("/admin/dlq", OPS).await.1["dead_letters"].as_array().is_some_and(|d| d.len() == 4)
        })
        .await
    );
    let (_, listed) = sys.get("/admin/dlq", OPS).await;
    for letter in listed["dead_letters"].as_array().unwrap() {
        let id = letter["id"].as_str().unwrap();
        let event_id = letter["event"]["id"].as_str().unwrap();
        let partition = partitions.route(event_id).index;
        assert_eq!(letter["partition"], partition, "{letter}");
        assert!(id.starts_with(&format!("{partition}:")), "{letter}");
        assert_eq!(letter["reason"], "not stored after 5 deliveries");
    }
    let first = listed["dead_letters"][0]["id"].as_str().unwrap().to_string();
    let (status, body) = sys.post("/admin/dlq/replay", OPS, &json!({"ids": [first]})).await;
    assert_eq!((status, body), (200, json!({"replayed": 1})));
    let (status, body) = sys.post("/admin/dlq/replay", OPS, &json!({"all": true})).await;
    assert_eq!((status, body), (200, json!({"replayed": 3})));
    assert!(eventually(WAIT, || async { sys.stored(doc! {"type": "stuck"}).await == 4 }).await);
    assert_eq!(sys.get("/admin/dlq", OPS).await.1["dead_letters"], json!([]));

    // The rollups themselves (not the read path's tail): a partition's ranges close once a later
    // entry of that partition is acknowledged, so after one later event in each partition every
    // range holding the 20,004 events is closed and counted exactly once (the ticks' own ranges
    // stay open).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for partition in &partitions {
        let id = (0..).map(|i| format!("tick-{i}")).find(|id| partitions.route(id) == partition).unwrap();
        assert_eq!(sys.post("/events", TENANTS[0].1, &json!({"id": id, "type": "tick"})).await.0, 202);
    }
    let counted = eventually(WAIT, || async { sys.rolled_up().await == 20_004 }).await;
    assert!(counted, "the rollups hold {} events, not 20,004", sys.rolled_up().await);

    sys.stop_with(workers, &pids).await;
}

/// Documents of the stored events matching `filter`; the sum of the live rollup generation.
impl System {
    pub async fn rolled_up(&self) -> i64 {
        use futures::TryStreamExt;
        let int = |d: &Document, key: &str| match d.get(key) {
            Some(mongodb::bson::Bson::Int32(v)) => i64::from(*v),
            Some(mongodb::bson::Bson::Int64(v)) => *v,
            _ => 0,
        };
        let db = self.events().client().database(&self.database);
        let pointer =
            db.collection::<Document>("rollup_progress").find_one(doc! {"_id": "current"}).await.unwrap();
        let Some(current) = pointer.map(|p| int(&p, "current")) else { return 0 };
        let counts: Vec<Document> = db
            .collection::<Document>("event_counts")
            .find(doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        counts.iter().filter(|d| int(d, "gen") == current).map(|d| int(d, "count")).sum()
    }

    pub async fn documents(&self, filter: Document) -> Vec<Document> {
        use futures::TryStreamExt;
        self.events().find(filter).await.unwrap().try_collect().await.unwrap()
    }
}
