//! The MongoDB server's own bulk-insert rate, measured the way the worker writes: the same
//! documents (built by the worker's code from the same stream entries), the same indexes, the same
//! unordered `insert_many`. The worker fleet's drain rate is judged against this number.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evp_events::input::{Admission, Limits, admit_batch};
use evp_store::{EventStore, Position, to_document};
use mongodb::bson::{RawDocumentBuf, doc};

use crate::generator::Generator;

/// Inserts `events` documents in batches of `batch` with `concurrency` writers; returns documents
/// per second. Into a scratch database, dropped afterwards, unless `keep_in` names the database
/// and tenant to fill (to give a benchmark a database that already holds many events).
/// How the inserted events look, beyond the generator's defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shape<'a> {
    /// Timestamps one by one, evenly over the last this long (default: all now).
    pub spread: Option<Duration>,
    /// One event type for all (default `loadtest.<run>`).
    pub event_type: Option<&'a str>,
    /// Every optional field set (`aggregate_id` one of 1,000, `correlation_id`, `causation_id`),
    /// so every partial index holds every event (default: `source` only, as the load test sends).
    pub every_field: bool,
}

/// The indexes of the collection written to.
#[derive(Debug, Clone)]
pub enum IndexChoice {
    /// evp's set for these `EVENT_INDEXES` (`_id` carrying tenant and event id).
    Set(evp_store::EventIndexes),
    /// `_id` alone: the floor.
    IdOnly,
    /// The layout before `_id` carried (tenant, event id): the driver's ObjectId `_id`, a unique
    /// (tenant, event_id) index, and every listing index, none partial. Kept to measure against.
    Legacy,
}

impl std::str::FromStr for IndexChoice {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, String> {
        match raw {
            "legacy" => Ok(Self::Legacy),
            "id-only" => Ok(Self::IdOnly),
            set => set.parse().map(Self::Set),
        }
    }
}

impl IndexChoice {
    async fn create(&self, store: &EventStore, database: &mongodb::Database) -> mongodb::error::Result<()> {
        match self {
            Self::Set(filters) => store.ensure_indexes(filters).await.map(|_| ()),
            Self::IdOnly => database.create_collection("events").await,
            Self::Legacy => {
                let plain = |keys: mongodb::bson::Document, unique: bool| {
                    let options = mongodb::options::IndexOptions::builder().unique(unique).build();
                    mongodb::IndexModel::builder().keys(keys).options(options).build()
                };
                let mut models = vec![
                    plain(doc! { "tenant": 1, "event_id": 1 }, true),
                    plain(doc! { "tenant": 1, "timestamp": -1, "event_id": -1 }, false),
                    plain(doc! { "tenant": 1, "aggregate_id": 1, "seq": 1, "partition": 1 }, false),
                    plain(doc! { "partition": 1, "seq": 1, "tenant": 1, "type": 1, "timestamp": 1 }, false),
                ];
                for field in ["type", "source", "aggregate_id", "correlation_id"] {
                    models
                        .push(plain(doc! { "tenant": 1, field: 1, "timestamp": -1, "event_id": -1 }, false));
                }
                database
                    .collection::<mongodb::bson::Document>("events")
                    .create_indexes(models)
                    .await
                    .map(|_| ())
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn bulk_insert_rate(
    mongodb_uri: &str,
    events: u64,
    batch: usize,
    concurrency: usize,
    payload_bytes: usize,
    keep_in: Option<(&str, &str)>,
    shape: Shape<'_>,
    indexes: &IndexChoice,
) -> anyhow::Result<f64> {
    let Shape { spread, event_type, every_field } = shape;
    let run = format!("bench{:08x}", rand::random::<u32>());
    let mut generator = Generator::new(&run, batch as u64, Some(events), payload_bytes);
    if let Some(event_type) = event_type {
        generator = generator.with_event_type(event_type);
    }
    let tenant = keep_in.map_or("bench", |(_, tenant)| tenant);
    let requests = generator.requests().unwrap_or(0);
    let events_total = events;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    // With a spread, each event gets its own timestamp, evenly over the last `spread`.
    let timestamped = |request: u64| -> anyhow::Result<Vec<u8>> {
        let body = generator.body(request);
        if spread.is_none() && !every_field && batch > 1 {
            return Ok(body);
        }
        let mut events: Vec<serde_json::Value> = match serde_json::from_slice(&body)? {
            serde_json::Value::Array(events) => events,
            one => vec![one],
        };
        for (i, event) in events.iter_mut().enumerate() {
            let n = request as i64 * batch as i64 + i as i64;
            if let Some(over) = spread {
                let over_ms = over.as_millis() as i64;
                let ms = now_ms - over_ms + over_ms * n / (events_total.max(1) as i64);
                let at = mongodb::bson::DateTime::from_millis(ms).try_to_rfc3339_string()?;
                event["timestamp"] = serde_json::Value::String(at);
            }
            if every_field {
                event["aggregate_id"] = format!("agg-{}", n % 1000).into();
                event["correlation_id"] = format!("cor-{n}").into();
                event["causation_id"] = format!("cause-{n}").into();
            }
        }
        Ok(serde_json::to_vec(&events)?)
    };
    let mut batches = VecDeque::new();
    for request in 0..requests {
        let admission = Admission::new(tenant, now_ms, Limits::default());
        let docs: Vec<RawDocumentBuf> = admit_batch(&timestamped(request)?, &admission)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let entry_id = format!("{request}-{i}");
                let position = Position { partition: 0, entry_id: &entry_id };
                to_document(&vec![(evp_events::entry::FIELD.to_string(), e.payload)], position)
            })
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!(e.reason))?;
        let docs = if matches!(indexes, IndexChoice::Legacy) {
            docs.into_iter().map(without_id).collect::<anyhow::Result<_>>()?
        } else {
            docs
        };
        batches.push_back(docs);
    }

    let client = mongodb::Client::with_uri_str(mongodb_uri).await?;
    let database = keep_in.map_or_else(|| format!("evp_{run}"), |(database, _)| database.to_string());
    let store = EventStore::new(client.clone(), &database);
    indexes.create(&store, &client.database(&database)).await?;
    let queue = Arc::new(Mutex::new(batches));
    let started = Instant::now();
    let mut writers = Vec::new();
    for _ in 0..concurrency {
        let (queue, store) = (queue.clone(), store.clone());
        writers.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop_front();
                let Some(docs) = next else { return anyhow::Ok(()) };
                store.insert(&docs.iter().collect::<Vec<_>>()).await?;
            }
        }));
    }
    for writer in writers {
        writer.await??;
    }
    let rate = events as f64 / started.elapsed().as_secs_f64();
    if keep_in.is_none() {
        client.database(&database).drop().await?;
    }
    Ok(rate)
}

/// A document without its `_id`, so the driver gives it an ObjectId (the legacy layout).
fn without_id(doc: RawDocumentBuf) -> anyhow::Result<RawDocumentBuf> {
    let mut doc = mongodb::bson::Document::try_from(doc)?;
    doc.remove("_id");
    Ok(RawDocumentBuf::try_from(&doc)?)
}

/// What `verify` did before it watched the consumer group: counts the documents of one tenant and
/// type every `every`, for `duration`. Returns how many counts it made. A benchmark runs it beside
/// the workers to measure what such a reader costs them.
pub async fn count_loop(
    mongodb_uri: &str,
    database: &str,
    tenant: &str,
    event_type: &str,
    every: std::time::Duration,
    duration: std::time::Duration,
) -> anyhow::Result<u64> {
    let client = mongodb::Client::with_uri_str(mongodb_uri).await?;
    let events = client.database(database).collection::<mongodb::bson::Document>("events");
    let filter = mongodb::bson::doc! {"tenant": tenant, "type": event_type};
    let until = Instant::now() + duration;
    let mut counts = 0;
    while Instant::now() < until {
        match events.count_documents(filter.clone()).await {
            Ok(_) => counts += 1,
            Err(e) => eprintln!("mongo-count: {e}"),
        }
        tokio::time::sleep(every).await;
    }
    Ok(counts)
}
