//! A master SIGKILLed under load, with `REDIS_WAIT_REPLICAS=1`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use evp_runtime::partitions::{Partitions, slot};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::system::{PARTITIONS, Sender, System, TENANTS, eventually};

const WAIT: Duration = Duration::from_secs(180);

/// What one load task saw: each request's status and the ids it carried.
pub type Outcomes = Vec<(u16, Vec<String>, Instant)>;

/// Posts small batches (or single events) with fresh ids until `stop`.
pub async fn load(sender: Sender, name: &'static str, batch: usize, stop: CancellationToken) -> Outcomes {
    let (tenant, key) = TENANTS[0];
    let mut outcomes = Vec::new();
    let mut n = 0;
    while !stop.is_cancelled() {
        let ids: Vec<String> = (0..batch).map(|j| format!("{tenant}-{name}-{n}-{j}")).collect();
        let events: Vec<Value> = ids.iter().map(|id| json!({"id": id, "type": "load"})).collect();
        let (status, _) = if batch == 1 {
            sender.post("/events", key, &events[0]).await
        } else {
            sender.post("/events/batch", key, &json!(events)).await
        };
        outcomes.push((status, ids, Instant::now()));
        n += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    outcomes
}

/// The ids of every event that got a 202, after checking that nothing got anything but 202 or
/// 503.
pub fn accepted(outcomes: &Outcomes) -> HashSet<String> {
    let statuses: HashSet<u16> = outcomes.iter().map(|(s, _, _)| *s).collect();
    assert!(statuses.is_subset(&HashSet::from([202, 503])), "only 202 or 503: {statuses:?}");
    outcomes.iter().filter(|(s, _, _)| *s == 202).flat_map(|(_, ids, _)| ids.clone()).collect()
}

/// Waits until every id of `accepted` and `probe` is stored, then checks that nothing is stored
/// twice.
pub async fn assert_stored_once(sys: &System, accepted: &HashSet<String>, probe: &str) {
    assert!(
        eventually(WAIT, || async {
            let stored: HashSet<String> = sys.stored_ids().await.into_iter().map(|(_, id)| id).collect();
            accepted.is_subset(&stored) && stored.contains(probe)
        })
        .await,
        "every accepted event is stored"
    );
    let stored = sys.stored_ids().await;
    let unique: HashSet<&(String, String)> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "no event is stored twice");
}

/// SIGKILL of the master holding partition 0 while two clients send: the ingest answers 202 or
/// 503 only; every event that got a 202 is stored exactly once; the workers carry on without a
/// restart; once the dead master is back (as a replica of its promoted one) the partitions it
/// held take writes again. `WAIT 1` cannot be satisfied while a promoted master has no replica,
/// so those partitions answer 503 meanwhile; the other partitions keep answering 202.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_loses_no_acknowledged_event() {
    let mut sys = System::start(&[("REDIS_WAIT_REPLICAS", "1")]).await;
    let workers = sys.workers(&["w1", "w2"], &[]);
    let pids: Vec<Option<u32>> = workers.iter().map(|w| w.pid()).collect();
    let partitions = Partitions::new("events", PARTITIONS);
    let victim_slot = slot(&partitions.get(0).unwrap().stream);
    let victim = sys.cluster.master_of(victim_slot);

    let stop = CancellationToken::new();
    let batches = tokio::spawn(load(sys.sender(), "batch", 4, stop.clone()));
    let singles = tokio::spawn(load(sys.sender(), "single", 1, stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;

    sys.cluster.kill(victim);
    let killed_at = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sys.cluster.try_master_of(victim_slot).is_none_or(|master| master == victim) {
        assert!(Instant::now() < deadline, "no replica was promoted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let promoted_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The old master comes back and replicates its promoted replica: WAIT 1 can succeed again.
    sys.cluster.restart(victim);
    sys.cluster.wait_until_ready(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let mut outcomes = batches.await.unwrap();
    outcomes.extend(singles.await.unwrap());

    let accepted = accepted(&outcomes);
    let before = outcomes.iter().filter(|(s, _, at)| *s == 202 && *at < killed_at).count();
    let meanwhile =
        outcomes.iter().filter(|(s, _, at)| *s == 202 && *at > killed_at && *at < promoted_at).count();
    let after = outcomes.iter().filter(|(s, _, at)| *s == 202 && *at > promoted_at).count();
    let refused = outcomes.iter().filter(|(s, _, _)| *s == 503).count();
    eprintln!(
        "202s before the kill {before}, until the promotion {meanwhile}, after {after}; 503s {refused}"
    );
    assert!(before > 0 && after > 0, "writes were accepted before and after the failover");
    assert!(refused > 0, "what could not be confirmed on a replica was refused");

    // Writes to partition 0 itself are accepted again.
    let routed_to_0 = (0..).map(|i| format!("probe-{i}")).find(|id| partitions.route(id).index == 0).unwrap();
    let probe = json!({"id": routed_to_0, "type": "probe"});
    assert!(
        eventually(Duration::from_secs(30), || async {
            sys.post("/events", TENANTS[0].1, &probe).await.0 == 202
        })
        .await,
        "partition 0 takes writes on its promoted master"
    );

    // Every 202'd event is stored, exactly once.
    assert_stored_once(&sys, &accepted, &routed_to_0).await;

    sys.stop_with(workers, &pids).await;
}
