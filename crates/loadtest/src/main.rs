//! `evp-loadtest`: see `load-tests/README.md`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

mod args;

use args::{Api, VerifyArgs, write_json};
use evp_loadtest::driver::{self, Plan};
use evp_loadtest::generator::{Generator, event_id};
use evp_loadtest::mongo_bench;
use evp_loadtest::report::Report;
use evp_loadtest::verify::{self, Wait};

/// Load generator and end-to-end verifier for evp. Without a subcommand it sends events to
/// evp-ingest, prints sent / accepted / rejected, events/s and latency percentiles, and with
/// --verify waits until MongoDB holds every accepted event exactly once. Exits 1 when an accepted
/// event is missing or stored twice.
#[derive(Parser, Debug)]
#[command(name = "evp-loadtest", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure the MongoDB server's own bulk-insert rate with the worker's documents and batch size.
    MongoInsert {
        #[arg(long, env = "MONGODB_URI", default_value = "mongodb://127.0.0.1:27017")]
        mongodb_uri: String,
        #[arg(long, default_value_t = 20_000)]
        events: u64,
        #[arg(long, default_value_t = 500)]
        batch: usize,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        #[arg(long, default_value_t = 100)]
        payload_bytes: usize,
        /// Insert into this database and keep the documents (default: a scratch database, dropped).
        #[arg(long)]
        keep_in: Option<String>,
        /// The tenant of the kept documents.
        #[arg(long, default_value = "bench")]
        tenant: String,
        /// Received times (and so timestamps) spread evenly over the last this many seconds
        /// (default: all at the Unix epoch).
        #[arg(long)]
        spread_s: Option<u64>,
        /// The event type of every event (default `loadtest.<run>`, a new one each run).
        #[arg(long)]
        event_type: Option<String>,
        /// The indexes: an `EVENT_INDEXES` value (`none`, `type`, `type,source,…`), `id-only`, or
        /// `legacy` (the layout before `_id` carried tenant and event id).
        #[arg(long, default_value = evp_store::EventIndexes::DEFAULT)]
        indexes: evp_loadtest::mongo_bench::IndexChoice,
        /// Every optional field set on every event (every partial index holds every event).
        #[arg(long)]
        every_field: bool,
    },
    /// Time GET /analytics/metrics with --query (e.g. `from=…&to=…&bucket=hour`), --samples times
    /// (p50, p99).
    Analytics {
        #[command(flatten)]
        api: Api,
        #[arg(long, default_value = "")]
        query: String,
        #[arg(long, default_value_t = 50)]
        samples: usize,
        /// Also write the report here, as JSON.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Count one tenant's documents of one event type every --every-ms for --seconds: the load a
    /// polling verifier puts on MongoDB, for measuring what it costs the workers.
    MongoCount {
        #[arg(long, env = "MONGODB_URI", default_value = "mongodb://127.0.0.1:27017")]
        mongodb_uri: String,
        #[arg(long, env = "MONGODB_DATABASE", default_value = "evp")]
        database: String,
        #[arg(long)]
        tenant: String,
        /// The run whose event type is counted.
        #[arg(long)]
        run_id: String,
        #[arg(long, default_value_t = 200)]
        every_ms: u64,
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
    },
    /// Time the read API: the first page of GET /events against page --depth + 1, each requested
    /// --samples times (p50, p99).
    Read {
        #[command(flatten)]
        api: Api,
        /// Extra query parameters, e.g. `&type=page_view`.
        #[arg(long, default_value = "")]
        query: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, default_value_t = 500)]
        depth: usize,
        #[arg(long, default_value_t = 50)]
        samples: usize,
        /// Page size of the walk down to the deep page (1 to 1000): smaller on a slow server, so
        /// that no page of the walk passes the read timeout.
        #[arg(long, default_value_t = 1000)]
        walk_limit: usize,
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Send events with evp-client's fire-and-forget Emitter from this one process (batches of
    /// 100 on its background thread) and print the rate, to compare with the load generator's.
    Emit {
        #[command(flatten)]
        api: Api,
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        #[arg(long, default_value_t = 100)]
        payload_bytes: usize,
    },
    /// Consume a subscription with evp-client's Subscriber (--consumers of them) until --events
    /// are acknowledged or --duration passed; print events/s and the time from the ingest's
    /// receiving each event to its delivery (p50, p99).
    Subscribe {
        #[command(flatten)]
        api: Api,
        /// The subscription (created with --types when it does not exist).
        #[arg(long)]
        name: String,
        /// Event types it delivers (repeat the flag); none: every type.
        #[arg(long = "type")]
        types: Vec<String>,
        #[arg(long, default_value_t = 1)]
        consumers: usize,
        #[arg(long)]
        events: Option<u64>,
        #[arg(long)]
        duration: Option<f64>,
        /// A new subscription starts now instead of at the beginning.
        #[arg(long)]
        start_now: bool,
        /// Events per poll.
        #[arg(long, default_value_t = 1000)]
        batch: u32,
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Time workers draining events 0..N of an earlier run: wait until the consumer group has
    /// acknowledged the whole stream, then check MongoDB holds every event exactly once.
    Drain {
        #[arg(long)]
        run_id: String,
        #[arg(long)]
        events: u64,
        #[command(flatten)]
        check: VerifyArgs,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    api: Api,
    /// Total events to send.
    #[arg(long, default_value_t = 10_000, conflicts_with = "duration")]
    events: u64,
    /// Send for this many seconds instead of a fixed count.
    #[arg(long)]
    duration: Option<f64>,
    /// Target events per second; 0 sends as fast as the server answers.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Events per request; 1 uses POST /events, more use POST /events/batch.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    batch: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    concurrency: u64,
    /// Bytes of padding in each event's data.
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Run id used in event ids and the event type (random by default).
    #[arg(long)]
    run_id: Option<String>,
    /// Wait until MongoDB holds every accepted event exactly once; exit 1 otherwise. The wait
    /// watches the consumer group in Redis (--redis-url), falling back to a count in MongoDB
    /// every 5 s when Redis is not reachable from here.
    #[arg(long)]
    verify: bool,
    /// Count in MongoDB (every 5 s) instead of watching the consumer group.
    #[arg(long, requires = "verify")]
    no_group_watch: bool,
    #[command(flatten)]
    check: VerifyArgs,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run(cli.run).await,
        Some(Command::MongoInsert {
            mongodb_uri,
            events,
            batch,
            concurrency,
            payload_bytes,
            keep_in,
            tenant,
            spread_s,
            event_type,
            indexes,
            every_field,
        }) => {
            let keep_in = keep_in.as_deref().map(|database| (database, tenant.as_str()));
            let spread = spread_s.map(Duration::from_secs);
            let shape = mongo_bench::Shape { spread, event_type: event_type.as_deref(), every_field };
            mongo_bench::bulk_insert_rate(&mongodb_uri, events, batch, concurrency, payload_bytes, keep_in, shape, &indexes).await.map(|rate| {
                println!("mongodb bulk insert: {rate:.0} documents/s ({events} documents, batches of {batch}, {concurrency} writers, indexes {indexes:?}, every field {every_field})");
                true
            })
        }
        Some(Command::MongoCount { mongodb_uri, database, tenant, run_id, every_ms, seconds }) => {
            let event_type = evp_loadtest::generator::event_type(&run_id);
            let every = Duration::from_millis(every_ms);
            mongo_bench::count_loop(
                &mongodb_uri,
                &database,
                &tenant,
                &event_type,
                every,
                Duration::from_secs_f64(seconds),
            )
            .await
            .map(|counts| {
                println!("mongodb counts: {counts} in {seconds}s");
                true
            })
        }
        Some(Command::Read { api, query, limit, depth, samples, walk_limit, json }) => {
            let shape = evp_loadtest::read_bench::Shape { limit, depth, samples, walk_limit };
            evp_loadtest::read_bench::run(&api.url, &api.key, &query, shape).await.and_then(|r| {
                println!(
                    "read{}: first page p50 {:.1} ms p99 {:.1} ms; page {} p50 {:.1} ms p99 {:.1} ms ({:.2}x the first at p50); walked in {:.1}s",
                    r.query, r.first.p50_ms, r.first.p99_ms, r.deep_page, r.deep.p50_ms, r.deep.p99_ms,
                    r.deep.p50_ms / r.first.p50_ms.max(1e-9), r.walk_s
                );
                write_json(json.as_deref(), &r)?;
                Ok(true)
            })
        }
        Some(Command::Analytics { api, query, samples, json }) => {
            evp_loadtest::read_bench::analytics(&api.url, &api.key, &query, samples).await.and_then(|r| {
                println!(
                    "analytics {}: p50 {:.1} ms p99 {:.1} ms (total {})",
                    r.query, r.latency.p50_ms, r.latency.p99_ms, r.total
                );
                write_json(json.as_deref(), &r)?;
                Ok(true)
            })
        }
        Some(Command::Emit { api, events, payload_bytes }) => emit(&api.url, &api.key, events, payload_bytes),
        Some(Command::Drain { run_id, events, check }) => drain(&run_id, events, &check).await,
        Some(Command::Subscribe {
            api,
            name,
            types,
            consumers,
            events,
            duration,
            start_now,
            batch,
            json,
        }) => {
            let plan = evp_loadtest::subscribe_bench::Plan {
                name,
                types,
                consumers,
                events,
                duration: duration.map(Duration::from_secs_f64),
                start_now,
                batch,
            };
            evp_loadtest::subscribe_bench::run(&api.url, &api.key, &plan).await.and_then(|r| {
                println!(
                    "subscribe {}: {} events by {} consumer(s) in {:.2}s = {:.0} events/s; received to delivered p50 {:.0} ms, p99 {:.0} ms",
                    r.subscription, r.events, r.consumers, r.seconds, r.events_per_s, r.delivery_p50_ms, r.delivery_p99_ms
                );
                write_json(json.as_deref(), &r)?;
                Ok(true)
            })
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("evp-loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<bool> {
    let run_id = args.run_id.clone().unwrap_or_else(|| format!("{:08x}", rand::random::<u32>()));
    let total = args.duration.is_none().then_some(args.events);
    let generator = Generator::new(&run_id, args.batch, total, args.payload_bytes);
    let plan = Plan {
        url: args.api.url.clone(),
        key: args.api.key.clone(),
        generator: generator.clone(),
        rate: args.rate,
        concurrency: args.concurrency as usize,
        duration: args.duration.map(Duration::from_secs_f64),
        progress: !args.quiet,
    };
    let outcome = driver::run(plan).await?;
    let sent_done = Instant::now();
    let mut report =
        Report::new(&run_id, &args.api.url, args.batch, args.concurrency as usize, args.rate, &outcome);
    if args.verify {
        let expected: Vec<String> = outcome
            .accepted_requests
            .iter()
            .flat_map(|&r| generator.events_of(r))
            .map(|n| event_id(&run_id, n))
            .collect();
        let target = args.check.target(&run_id);
        let stall = Duration::from_secs(args.check.mongo.stall_timeout);
        let wait = if args.no_group_watch { Wait::Count } else { Wait::Group(args.check.group.group()) };
        report.verify = Some(
            verify::verify(&target, wait, &expected, outcome.started, sent_done, stall, !args.quiet).await?,
        );
    }
    report.print();
    write_json(args.check.json.as_deref(), &report)?;
    Ok(report.verify.as_ref().is_none_or(|v| v.ok()))
}

async fn drain(run_id: &str, events: u64, check: &VerifyArgs) -> anyhow::Result<bool> {
    let target = check.target(run_id);
    let stall = Duration::from_secs(check.mongo.stall_timeout);
    let started = Instant::now();
    let done = verify::wait_acknowledged(&check.group.group(), stall).await?;
    let ids = verify::all_ids(run_id, events);
    let mut v = verify::verify(&target, Wait::Done(done), &ids, started, done, stall, false).await?;
    let seconds = done.duration_since(started).as_secs_f64();
    v.processing_events_per_s = events as f64 / seconds;
    println!(
        "drain {run_id}: {} of {} stored in {seconds:.2}s = {:.0} events/s; missing {}, duplicates {}",
        v.stored, v.expected, v.processing_events_per_s, v.missing, v.duplicates
    );
    write_json(check.json.as_deref(), &v)?;
    Ok(v.ok())
}

/// Emits `events` through evp-client's Emitter, as fast as its queue takes them (a full queue
/// is waited out, not counted as lost), then shuts it down; prints events/s.
fn emit(url: &str, key: &str, events: u64, payload_bytes: usize) -> anyhow::Result<bool> {
    use evp_client::{Client, EmitError, Emitter, EmitterConfig, Event};
    let emitter = Emitter::new(Client::new(url, key)?, EmitterConfig::default())?;
    let pad = "x".repeat(payload_bytes);
    let started = Instant::now();
    for i in 0..events {
        let event = Event::new("loadtest.emitted").data(serde_json::json!({"seq": i, "pad": pad}));
        loop {
            match emitter.emit(event.clone()) {
                Ok(_) => break,
                Err(EmitError::QueueFull) => std::thread::sleep(Duration::from_micros(200)),
                Err(e) => anyhow::bail!("{e}"),
            }
        }
    }
    let delivered = emitter.shutdown(Duration::from_secs(120));
    let seconds = started.elapsed().as_secs_f64();
    let stats_ok = delivered;
    println!(
        "emitter: {events} events in {seconds:.2}s = {:.0} events/s from one process (delivered: {stats_ok})",
        events as f64 / seconds
    );
    Ok(delivered)
}
