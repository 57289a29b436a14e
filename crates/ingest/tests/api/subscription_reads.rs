//! A subscription's reads walk their range window by window (`evp_store::windows`):
//! against the real server, with documents at chosen stream positions, a read returns exactly the
//! first events of its range in stream order whatever windows they fall in (and, with types,
//! whichever way its windows are read, `TypedRead`), and the lag's edges are the range's first
//! and last events. A read from the beginning starts at the tenant's recorded first position.

use evp_events::EntryId;
use evp_store::subscriptions::{SubscriptionStore, TypedRead};
use evp_store::windows::{Edge, Windows};
use evp_store::{EventIndexes, EventStore};
use evp_testkit::MongoServer;
use mongodb::Collection;
use mongodb::bson::{Document, doc};

const BASE: u64 = 1_800_000_000_000;

/// Milliseconds after `BASE` of tenant acme's events in partition 0: some within a first window of
/// 10 ms, some on the edges of the windows after it, some seconds and an hour later.
const OFFSETS: [u64; 15] = [0, 1, 1, 50, 99, 100, 101, 450, 499, 500, 2_000, 2_000, 9_000, 60_000, 3_600_000];

fn position(i: usize) -> String {
    EntryId::new(BASE + OFFSETS[i], i as u64).sortable()
}

/// A database of the test's own with evp's indexes: its `events` collection, to place events in,
/// and the store that reads them.
async fn placed(prefix: &str) -> (MongoServer, Collection<Document>, SubscriptionStore) {
    let mongo = MongoServer::start().await;
    let database = mongo.unique_database(prefix);
    let client = mongo.client().await;
    EventStore::new(client.clone(), &database).ensure_indexes(&EventIndexes::all()).await.unwrap();
    let store = SubscriptionStore::new(&client, &database);
    (mongo, client.database(&database).collection("events"), store)
}

#[tokio::test]
async fn a_windowed_read_returns_exactly_the_first_events_of_its_range_in_stream_order() {
    let (_mongo, events, store) = placed("windows").await;

    // acme's events in partition 0, and at the same positions another tenant's and another
    // partition's, which no read of acme's partition 0 may return. Inserted newest first, so that
    // the server's record order is not the stream's.
    let mut docs: Vec<Document> = Vec::new();
    for i in (0..OFFSETS.len()).rev() {
        let kind = if i % 3 == 0 { "a" } else { "b" };
        for (tenant, partition) in [("acme", 0), ("globex", 0), ("acme", 1)] {
            docs.push(doc! {
                "tenant": tenant, "partition": partition, "seq": position(i), "type": kind,
                "event_id": format!("{tenant}-{partition}-{i:02}"),
            });
        }
    }
    events.insert_many(docs).await.unwrap();

    let expected = |from: usize, before: usize, types: &[String]| -> Vec<String> {
        (from..before)
            .filter(|i| types.is_empty() || types.iter().any(|t| t == if i % 3 == 0 { "a" } else { "b" }))
            .map(|i| format!("acme-0-{i:02}"))
            .collect()
    };
    let before_all = EntryId::new(BASE + 7_200_000, 0).sortable();
    let beginning = EntryId::new(0, 0).sortable();
    // The walk from the beginning crosses many windows before the first event; from the first
    // event, the events fall in several windows: the read under test is windowed.
    assert!(Windows::new(&beginning, &before_all, Edge::Oldest).count() > 10);
    assert!(Windows::new(&position(0), &before_all, Edge::Oldest).count() > 5);

    let n = OFFSETS.len();
    let mut reads = 0;
    // Type a is a third of the events (rare: read by keys), type b two thirds (read whole), and a
    // read that starts the other way learns it after one window, so every read with types below is
    // made starting both ways, and crosses from one way to the other.
    let mut learned = Vec::new();
    for (types, how) in [
        (vec![], TypedRead::ByKeys),
        (vec!["a".to_string()], TypedRead::ByKeys),
        (vec!["a".to_string()], TypedRead::Whole),
        (vec!["b".to_string()], TypedRead::ByKeys),
        (vec!["b".to_string()], TypedRead::Whole),
    ] {
        for from in 0..n {
            for before in from..=n {
                let (lo, hi) =
                    (position(from), if before == n { before_all.clone() } else { position(before) });
                let all = expected(from, before, &types);
                for limit in [1, 2, 5, n + 1] {
                    let mut read = how;
                    let rows =
                        store.deliverable("acme", 0, &lo, &hi, &types, limit, &mut read).await.unwrap();
                    let got: Vec<String> = rows.iter().map(|r| r.event_id.clone()).collect();
                    let want: Vec<String> = all.iter().take(limit).cloned().collect();
                    assert_eq!(got, want, "[{from}, {before}), types {types:?} from {how:?}, limit {limit}");
                    reads += 1;
                }
                for (edge, want) in [(Edge::Oldest, all.first()), (Edge::Newest, all.last())] {
                    let got = store.edge_position(edge, "acme", 0, &lo, &hi, &types).await.unwrap();
                    let want = want.map(|id| position(id[7..].parse().unwrap()));
                    assert_eq!(got, want, "{edge:?} of [{from}, {before}), types {types:?}");
                }
            }
        }
        // From the beginning, past many empty windows.
        let mut read = how;
        let rows = store.deliverable("acme", 0, &beginning, &before_all, &types, n, &mut read).await.unwrap();
        let got: Vec<String> = rows.iter().map(|r| r.event_id.clone()).collect();
        assert_eq!(got, expected(0, n, &types), "from the beginning, types {types:?} from {how:?}");
        learned.push(read);
    }
    assert!(reads > 1000, "{reads}");
    // The reads of a did end by keys, those of b whole, whichever way they started.
    use TypedRead::{ByKeys, Whole};
    assert_eq!(learned, [ByKeys, ByKeys, ByKeys, Whole, Whole]);
}

/// A window holding more keys than one read returns (`KEYS_PER_READ`: here the first window from
/// the beginning, which crosses the empty stretch and holds all 25,000) is read on from its last
/// key: a read with types, and its edges, still find exactly what the range holds.
#[tokio::test]
async fn a_read_with_types_goes_on_past_a_window_too_full_for_one_read() {
    use evp_store::subscriptions::KEYS_PER_READ;

    let (_mongo, events, store) = placed("windows_full").await;
    const N: u64 = 25_000;
    assert!(N as usize > 2 * KEYS_PER_READ);
    // 50 events a millisecond; every 7th of type a, one of type c near each end.
    let kind = |i: u64| match i {
        3 | 24_990 => "c",
        _ if i.is_multiple_of(7) => "a",
        _ => "b",
    };
    let at = |i: u64| EntryId::new(BASE + i / 50, i % 50).sortable();
    let docs: Vec<Document> = (0..N)
        .map(|i| doc! { "tenant": "acme", "partition": 0, "seq": at(i), "type": kind(i), "event_id": format!("{i:05}") })
        .collect();
    events.insert_many(docs).await.unwrap();

    let (beginning, before) = (EntryId::new(0, 0).sortable(), EntryId::new(BASE + 3_600_000, 0).sortable());
    let a = vec!["a".to_string()];
    let all_a: Vec<String> = (0..N).filter(|&i| kind(i) == "a").map(|i| format!("{i:05}")).collect();
    let all_b: Vec<String> = (0..N).filter(|&i| kind(i) == "b").map(|i| format!("{i:05}")).collect();
    // Type b, most of the events, read whole: a window capped at what the read still wants is
    // read on past its last event.
    for (types, all) in [(&a, &all_a), (&vec!["b".to_string()], &all_b)] {
        for how in [TypedRead::ByKeys, TypedRead::Whole] {
            for limit in [1_000, all.len() + 1] {
                let mut read = how;
                let rows =
                    store.deliverable("acme", 0, &beginning, &before, types, limit, &mut read).await.unwrap();
                let got: Vec<String> = rows.iter().map(|r| r.event_id.clone()).collect();
                assert_eq!(got.len(), all.len().min(limit), "{types:?} from {how:?}, limit {limit}");
                assert!(
                    got == all[..got.len()],
                    "{types:?} from {how:?}, limit {limit}: not the first in order"
                );
            }
        }
    }
    let c = vec!["c".to_string()];
    for (edge, want) in [(Edge::Oldest, at(3)), (Edge::Newest, at(24_990))] {
        let got = store.edge_position(edge, "acme", 0, &beginning, &before, &c).await.unwrap();
        assert_eq!(got, Some(want), "{edge:?}");
    }
    // The oldest c from past the first one: past 20,000 keys of other types.
    let got = store.edge_position(Edge::Oldest, "acme", 0, &at(4), &before, &c).await.unwrap();
    assert_eq!(got, Some(at(24_990)));
}

/// A read from the beginning (or from long before a tenant's events) starts at the tenant's first
/// position, which every insert records (`evp_store::first_positions`), once an empty read shows
/// nothing of the tenant lies below it; it then costs what it returns, not the tenant's whole
/// partition. A record that is too high (an event stored without one, as before it existed) costs
/// a read of what lies below it, never an event, and is lowered to the first event found; a
/// missing one is made by the first read from the beginning, with or without types.
#[tokio::test]
async fn a_read_from_the_beginning_starts_at_the_first_position_the_inserts_recorded() {
    use evp_store::first_positions::FirstPositions;
    use mongodb::bson::RawDocumentBuf;

    let mongo = MongoServer::start().await;
    let database = mongo.unique_database("first_positions");
    let client = mongo.client().await;
    let writer = EventStore::new(client.clone(), &database);
    writer.ensure_indexes(&EventIndexes::all()).await.unwrap();
    let store = SubscriptionStore::new(&client, &database);
    let records = FirstPositions::new(&client.database(&database));
    let events: Collection<Document> = client.database(&database).collection("events");

    // Event i of a tenant in partition 0: appended i seconds after BASE.
    let at = |i: u64| EntryId::new(BASE + i * 1_000, 0).sortable();
    let event = |tenant: &str, i: u64| {
        doc! { "_id": format!("{tenant}:{i}"), "tenant": tenant, "partition": 0, "seq": at(i), "type": "a", "event_id": i.to_string() }
    };
    let store_batch = |tenant: &'static str, range: std::ops::Range<u64>| {
        let docs: Vec<RawDocumentBuf> =
            range.map(|i| RawDocumentBuf::try_from(&event(tenant, i)).unwrap()).collect();
        let writer = writer.clone();
        async move {
            let refs: Vec<&RawDocumentBuf> = docs.iter().collect();
            let verdicts = writer.insert(&refs).await.unwrap();
            assert!(
                verdicts
                    .iter()
                    .all(|v| *v == evp_store::Verdict::Written || *v == evp_store::Verdict::Duplicate)
            );
        }
    };

    // acme's events 1,000..3,000, stored as a worker stores them: the later batch first, then the
    // earlier one (a redelivery), then part of the later one again (duplicates).
    store_batch("acme", 2_000..3_000).await;
    assert_eq!(records.recorded("acme", 0).await.unwrap(), Some(at(2_000)));
    store_batch("acme", 1_000..2_000).await;
    assert_eq!(records.recorded("acme", 0).await.unwrap(), Some(at(1_000)));
    store_batch("acme", 2_500..2_600).await;
    assert_eq!(records.recorded("acme", 0).await.unwrap(), Some(at(1_000)), "a later batch leaves it");
    assert_eq!(records.recorded("acme", 1).await.unwrap(), None, "per partition");
    assert_eq!(records.recorded("globex", 0).await.unwrap(), None, "per tenant");
    assert_eq!(events.count_documents(doc! {}).await.unwrap(), 2_000);

    let before = EntryId::new(BASE + 10_000_000, 0).sortable();
    let start = |from: String, before: String| {
        let store = store.clone();
        async move { store.start_of("acme", 0, &from, &before).await.unwrap() }
    };
    // From the beginning, or a day before the first event: at the first event.
    assert_eq!(start(String::new(), before.clone()).await, at(1_000));
    assert_eq!(start(EntryId::new(BASE - 86_400_000, 0).sortable(), before.clone()).await, at(1_000));
    // Never past the range's end.
    assert_eq!(start(String::new(), at(500)).await, at(500));
    // From within the events, or within the hour before the range's end: where it was.
    assert_eq!(start(at(1_500), before.clone()).await, at(1_500));
    let recent = EntryId::new(BASE + 9_000_000, 0).sortable();
    assert_eq!(start(recent.clone(), before.clone()).await, recent);
    // A tenant without a record: from the beginning.
    assert_eq!(store.start_of("globex", 0, "", &before).await.unwrap(), "");

    // The read from the beginning: exactly the first events, for about what it returns.
    let steps_before = mongo.cursor_steps().await;
    let mut how = TypedRead::default();
    let rows = store.deliverable("acme", 0, "", &before, &[], 10, &mut how).await.unwrap();
    let steps_after = mongo.cursor_steps().await;
    let ids: Vec<String> = rows.iter().map(|r| r.event_id.clone()).collect();
    assert_eq!(ids, (1_000..1_010).map(|i| i.to_string()).collect::<Vec<_>>());
    match (steps_before, steps_after) {
        (Some(a), Some(b)) if mongo.kind() != evp_testkit::MongoKind::External => {
            // Without the record, a server that fetches every match of a range before the limit
            // (secantusd-rs) steps through all 2,000 of acme's keys (2,024 steps measured); with it,
            // through the windows from the first event (about 200).
            assert!(b - a < 1_000, "the read from the beginning took {} cursor steps for 10 events", b - a);
        }
        _ => eprintln!("not measuring the read's cursor steps: the server is shared, or does not say"),
    }
    let newest = store.edge_position(Edge::Newest, "acme", 0, "", &before, &[]).await.unwrap();
    assert_eq!(newest, Some(at(2_999)));

    // An event below the record, stored without one (as before records existed): found, delivered
    // first, and the record lowered to it.
    events.insert_one(event("acme", 500)).await.unwrap();
    assert_eq!(store.start_of("acme", 0, "", &before).await.unwrap(), "");
    assert_eq!(records.recorded("acme", 0).await.unwrap(), Some(at(500)));
    let rows = store.deliverable("acme", 0, "", &before, &[], 3, &mut how).await.unwrap();
    let ids: Vec<String> = rows.iter().map(|r| r.event_id.clone()).collect();
    assert_eq!(ids, ["500", "1000", "1001"]);
    assert_eq!(store.start_of("acme", 0, "", &before).await.unwrap(), at(500));
    let oldest = store.edge_position(Edge::Oldest, "acme", 0, "", &before, &[]).await.unwrap();
    assert_eq!(oldest, Some(at(500)));

    // No record at all (the collection dropped): a read from the beginning reads as before, and
    // records the first event it met, with types too (the walk meets every type's keys).
    for types in [vec!["b".to_string()], vec!["a".to_string()], vec![]] {
        for mut how in [TypedRead::ByKeys, TypedRead::Whole] {
            client.database(&database).collection::<Document>("first_positions").drop().await.unwrap();
            assert_eq!(records.recorded("acme", 0).await.unwrap(), None);
            let rows = store.deliverable("acme", 0, "", &before, &types, 2, &mut how).await.unwrap();
            let ids: Vec<String> = rows.iter().map(|r| r.event_id.clone()).collect();
            let want: &[&str] = if types == ["b"] { &[] } else { &["500", "1000"] };
            assert_eq!(ids, want, "types {types:?}, {how:?}");
            assert_eq!(records.recorded("acme", 0).await.unwrap(), Some(at(500)), "types {types:?}");
        }
    }
}
