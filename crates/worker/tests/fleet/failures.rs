//! Crashes and outages: nothing lost, nothing stored twice, no worker exits.

use std::time::Duration;

use crate::helpers::{GROUP, Pipeline, STREAM, eventually};

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn kill_9_mid_batch_leaves_pending_entries_that_another_worker_stores() {
    // The whole backlog is there before the worker starts, so it is still storing when its first
    // batch lands. (Publishing 5,000 while it ran, a fast machine stored them all between two looks
    // and left nothing to recover: CI, 2026-12-04.)
    const N: usize = 20_000;
    let p = Pipeline::start().await;
    p.publish("acme", "k", N).await;
    let mut a = p.worker("doomed", &[("WORKER_BATCH_SIZE", "200")]);
    // Let it get going, then kill it without warning while batches are in flight. Look often: a
    // look every 100 ms (`eventually`) can miss the whole run.
    let deadline = tokio::time::Instant::now() + WAIT;
    while p.stored_count().await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the doomed worker never stored anything");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.process.kill();
    let orphaned = p.pending_of("doomed").await;
    let stored_at_kill = p.stored_count().await;
    assert!(
        orphaned > 0 && stored_at_kill < N as u64,
        "kill landed too late to test anything: {orphaned} pending, {stored_at_kill} stored"
    );

    assert!(p.unstored().await["acme"] > 0, "the tenant's unstored events are counted");
    let b = p.worker("survivor", &[("WORKER_BATCH_SIZE", "200")]);
    assert_eq!(p.wait_for_count(N as u64, WAIT).await, N as u64);
    assert_eq!(p.stored_ids().await.len(), N, "exact count, no duplicates");
    assert!(
        eventually(WAIT, || async { p.pending(GROUP).await == 0 }).await,
        "the orphaned entries were acknowledged"
    );
    assert_eq!(p.pending_of("doomed").await, 0);
    // Entries written but not acknowledged by the dead worker were acknowledged once, by the survivor.
    p.assert_counts_settled(&b).await;
}

#[tokio::test]
async fn entries_pending_on_a_dead_consumer_are_claimed_after_the_idle_time() {
    let p = Pipeline::start().await;
    p.publish("acme", "ghost", 300).await;
    let held = p.read_as_ghost("ghost", 300).await;
    assert_eq!(held.len(), 300);
    assert_eq!(p.pending_of("ghost").await, 300);

    let w = p.worker("live", &[("WORKER_CLAIM_IDLE_MS", "500")]);
    assert_eq!(p.wait_for_count(300, WAIT).await, 300);
    assert!(eventually(WAIT, || async { p.pending(GROUP).await == 0 }).await);
    assert_eq!(p.stored_ids().await.len(), 300);
    p.assert_counts_settled(&w).await;
}

#[tokio::test]
async fn mongodb_outage_mid_stream_loses_nothing_and_no_worker_exits() {
    let mut p = Pipeline::start_owning_mongo().await;
    let mut a = p.worker("a", &[("WORKER_BATCH_SIZE", "50")]);
    let mut b = p.worker("b", &[("WORKER_BATCH_SIZE", "50")]);
    p.publish("acme", "before", 300).await;
    assert_eq!(p.wait_for_count(300, WAIT).await, 300);

    p.mongo.stop();
    p.publish("acme", "during", 700).await;
    // Both keep running, report not ready, and hold the entries pending (or unread) in Redis.
    assert!(
        eventually(WAIT, || async { a.get("/health/ready").await.0 == 503 }).await,
        "readiness must report MongoDB down"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(a.process.is_running() && b.process.is_running(), "a worker exited during the outage");

    p.mongo.restart().await;
    p.publish("acme", "after", 300).await;
    assert_eq!(p.wait_for_count(1300, WAIT).await, 1300);
    assert_eq!(p.stored_ids().await.len(), 1300);
    assert!(eventually(WAIT, || async { p.pending(GROUP).await == 0 }).await);
    assert!(a.process.is_running() && b.process.is_running());
    let retries =
        a.metric("evp_worker_write_retries_total").await + b.metric("evp_worker_write_retries_total").await;
    assert!(retries > 0.0, "the failed writes were retried and counted");
    assert_eq!(p.xlen(&format!("{STREAM}:dlq")).await, 0, "an outage must not dead-letter anything");
}

#[tokio::test]
async fn sigterm_writes_and_acknowledges_the_batch_in_flight_then_exits_0() {
    let mut p = Pipeline::start_owning_mongo().await;
    let mut w = p.worker("w", &[]);
    assert!(eventually(WAIT, || async { w.get("/health/ready").await.0 == 200 }).await);
    // Hold the batch in flight: MongoDB is down when it is read.
    p.mongo.stop();
    p.publish("acme", "inflight", 200).await;
    assert!(
        eventually(WAIT, || async { p.pending_of("w").await == 200 }).await,
        "the worker did not read the batch"
    );

    let pid = w.process.pid().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    // The worker has taken the signal (its shutdown has begun) and is still there, holding the batch.
    assert!(
        eventually(WAIT, || async { w.process.log().contains("shutdown signal received") }).await,
        "the worker did not take the signal; log:\n{}",
        w.process.log()
    );
    assert!(w.process.is_running(), "the worker must not exit with a batch unwritten");
    assert_eq!(p.pending_of("w").await, 200, "the batch is still held, unacknowledged");

    p.mongo.restart().await;
    let code = w.process.signal_and_wait("0", Duration::from_secs(30));
    assert_eq!(code, Some(0), "log:\n{}", w.process.log());
    assert_eq!(p.stored_count().await, 200);
    assert_eq!(p.pending(GROUP).await, 0, "the in-flight batch was acknowledged before exit");
    assert!(w.process.log().contains("evp-worker stopped"));
}

#[tokio::test]
async fn no_reading_beyond_the_writes_in_flight() {
    let mut p = Pipeline::start_owning_mongo().await;
    let w = p.worker("bounded", &[("WORKER_BATCH_SIZE", "10"), ("WORKER_MAX_INFLIGHT", "2")]);
    assert!(eventually(WAIT, || async { w.get("/health/ready").await.0 == 200 }).await);
    p.mongo.stop();
    p.publish("acme", "bp", 1000).await;
    assert!(eventually(WAIT, || async { p.pending_of("bounded").await > 0 }).await);
    // A read takes what is there, so a batch may be partial; but while both slots are stuck
    // nothing more is read: at most 2 x 10 entries are held, the rest wait in Redis.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = p.pending_of("bounded").await;
    assert!(held > 0 && held <= 20, "read beyond WORKER_MAX_INFLIGHT x WORKER_BATCH_SIZE: {held} held");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(p.pending_of("bounded").await, held, "kept reading while every write slot was stuck");

    p.mongo.restart().await;
    assert_eq!(p.wait_for_count(1000, WAIT).await, 1000);
    assert_eq!(p.stored_ids().await.len(), 1000);
}

#[tokio::test]
async fn redis_restarted_empty_the_group_is_recreated_and_consuming_resumes() {
    let p = Pipeline::start().await;
    let w = p.worker("w", &[]);
    p.publish("acme", "one", 50).await;
    assert_eq!(p.wait_for_count(50, WAIT).await, 50);

    let _: () = p.redis_query(&mut redis::cmd("FLUSHALL")).await;
    p.publish("acme", "two", 50).await;
    assert_eq!(p.wait_for_count(100, WAIT).await, 100, "log:\n{}", w.process.log());
    let groups: redis::streams::StreamInfoGroupsReply =
        p.redis_query(redis::cmd("XINFO").arg("GROUPS").arg(STREAM)).await;
    assert_eq!(groups.groups.len(), 1);
    assert_eq!(groups.groups[0].name, GROUP);
}

/// The worker acknowledges an entry once MongoDB acknowledged its journaled write (`j: true`), so
/// that acknowledgement must mean the write is on disk. The stand-in honours `j: true` only when
/// started with `--sync-on-commit` (without it, CI's outage test lost 100 acknowledged events,
/// 2026-12-04): the fixture passes it, and this test fails if it stops doing so. Measured: 50
/// journaled single-event writes took 54 log syncs with the flag, 1 without.
#[tokio::test]
async fn journaled_writes_are_synced_to_disk_before_they_are_acknowledged() {
    use mongodb::bson::{RawDocumentBuf, doc};

    let mongo = evp_testkit::MongoServer::start_owned().await;
    let store = evp_store::EventStore::new(mongo.client().await, &mongo.unique_database("synced"));
    let log_syncs = || mongo.wired_tiger("log", &["log sync operations"]);
    let Some(before) = log_syncs().await else {
        eprintln!("not checked: the server does not report WiredTiger's log syncs");
        return;
    };
    const WRITES: i64 = 50;
    for i in 0..WRITES {
        let event =
            doc! { "_id": format!("acme:{i}"), "tenant": "acme", "event_id": i.to_string(), "type": "t" };
        let raw = RawDocumentBuf::try_from(&event).unwrap();
        assert_eq!(store.insert(&[&raw]).await.unwrap(), [evp_store::Verdict::Written]);
    }
    let syncs = log_syncs().await.unwrap() - before;
    assert!(
        syncs >= WRITES / 2,
        "{WRITES} journaled writes, one at a time, took {syncs} log syncs: the server acknowledges them before they are on disk"
    );
}
