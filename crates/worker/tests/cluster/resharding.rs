//! A partition's slot moved to another master under load (ASK while its keys migrate, MOVED
//! after): nothing is lost, nothing stored twice, nobody restarts.

use std::time::Duration;

use evp_runtime::partitions::{Partitions, slot};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::failover::{accepted, assert_stored_once, load};
use crate::system::{PARTITIONS, System, TENANTS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_moved_to_another_master_under_load_keeps_every_event() {
    let mut sys = System::start(&[]).await;
    let workers = sys.workers(&["w1", "w2"], &[]);
    let pids: Vec<Option<u32>> = workers.iter().map(|w| w.pid()).collect();
    let partitions = Partitions::new("events", PARTITIONS);
    let moved = slot(&partitions.get(0).unwrap().stream);
    let from = sys.cluster.master_of(moved);
    let to = sys.cluster.master_of(slot(&partitions.get(PARTITIONS - 1).unwrap().stream));
    assert_ne!(from, to, "partitions 0 and 7 live on different masters");

    let stop = CancellationToken::new();
    let batches = tokio::spawn(load(sys.sender(), "batch", 4, stop.clone()));
    let singles = tokio::spawn(load(sys.sender(), "single", 1, stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The migration window: partition 0's keys are on the target while the source still owns the
    // slot, so every command on them is answered ASK. Writes to the partition are refused there
    // (503: redis-rs does not follow ASK inside MULTI/EXEC, and the aborted transaction wrote
    // nothing), never lost nor half-written; the same write once the move is done is accepted and stored once. Where
    // the slot and its keys are after the answers proves they came inside the window.
    let moving = tokio::task::block_in_place(|| sys.cluster.start_moving_slot(moved, to));
    let in_window = (0..).map(|i| format!("window-{i}")).find(|id| partitions.route(id).index == 0).unwrap();
    let probe_body = json!({"id": in_window, "type": "window"});
    let mut answers = Vec::new();
    for _ in 0..5 {
        let (status, body) = sys.post("/events", TENANTS[0].1, &probe_body).await;
        assert!(matches!(status, 202 | 503), "{status} {body}");
        if status == 503 {
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("nothing was accepted") || message.contains("retry with the same ids"),
                "{message}"
            );
        }
        answers.push(status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sys.cluster.master_of(moved),
        from,
        "the answers came inside the window: the source still owns the slot"
    );
    assert_eq!(sys.cluster.keys_in_slot(from, moved), 0, "and its keys are all on the target");
    assert!(sys.cluster.keys_in_slot(to, moved) > 0);
    eprintln!("writes to the migrating partition answered {answers:?}");
    tokio::task::block_in_place(|| sys.cluster.finish_moving_slot(moving));
    assert_eq!(sys.cluster.master_of(moved), to, "the slot changed hands");
    let (status, _) = sys.post("/events", TENANTS[0].1, &probe_body).await;
    assert_eq!(status, 202, "the write refused in the window is accepted once the move is done");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let mut outcomes = batches.await.unwrap();
    outcomes.extend(singles.await.unwrap());

    let mut accepted = accepted(&outcomes);
    accepted.insert(in_window);
    let refused = outcomes.iter().filter(|(s, _, _)| *s == 503).count();
    eprintln!("{} requests, {refused} answered 503", outcomes.len());
    let to_partition_0: Vec<&String> = accepted.iter().filter(|id| partitions.route(id).index == 0).collect();
    assert!(!to_partition_0.is_empty(), "partition 0 took writes");

    // Partition 0 takes writes on its new master, and everything accepted is stored once.
    let probe = (0..).map(|i| format!("moved-{i}")).find(|id| partitions.route(id).index == 0).unwrap();
    let (status, _) = sys.post("/events", TENANTS[0].1, &json!({"id": probe, "type": "probe"})).await;
    assert_eq!(status, 202);
    assert_stored_once(&sys, &accepted, &probe).await;

    sys.stop_with(workers, &pids).await;
}
