//! `evp-worker`: config, telemetry, bind, run; or, with `dlq`, operate the dead-letter stream.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use evp_runtime::config::{CommonConfig, Env};
use evp_runtime::dead_letters::{DeadLetters, Selection};
use evp_store::rollups::RollupStore;
use evp_worker::WorkerConfig;
use evp_worker::config::DEFAULT_GROUP;
use std::time::{Duration, Instant};

/// mimalloc rather than glibc's malloc: a worker allocates and frees every entry's fields and
/// document from several threads, and glibc's arenas spent about a third of its CPU on it
/// (docs/PERFORMANCE.md, the drain).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Stream consumer of evp: reads the events stream, bulk-writes to MongoDB, acknowledges in batches.
/// Without a subcommand it runs a worker, configured by environment variables (see the README).
#[derive(Parser, Debug)]
#[command(name = "evp-worker", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect the dead-letter stream (<EVENTS_STREAM>:dlq) and replay or purge its entries.
    /// Uses REDIS_URL and EVENTS_STREAM.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Operate the exact rollups behind GET /analytics/metrics (collection event_counts).
    /// Uses MONGODB_URI and MONGODB_DATABASE.
    Rollups {
        #[command(subcommand)]
        action: RollupsAction,
    },
}

#[derive(Subcommand, Debug)]
enum RollupsAction {
    /// Recompute every count from the stored events while ingest and workers keep running: the
    /// rollup leader builds a new generation beside the current one and switches readers to it
    /// once it has caught up (analytics stays exact throughout). Prints progress; needs a running
    /// evp-worker to do the work.
    Rebuild {
        /// Give up waiting after this many seconds (the rebuild itself carries on in the leader).
        #[arg(long, default_value_t = 3600)]
        timeout_s: u64,
    },
}

#[derive(Subcommand, Debug)]
enum DlqAction {
    /// Print the oldest dead letters, one JSON object a line, with their reason and delivery count.
    List {
        /// How many to print.
        #[arg(long, default_value_t = 20)]
        count: usize,
    },
    /// Move dead letters back to the main stream (after fixing the cause), to be stored again.
    Replay {
        /// Dead-letter ids to replay.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Replay every dead letter present now.
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters for good.
    Purge {
        /// Dead-letter ids to delete.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Delete every dead letter present now.
        #[arg(long)]
        all: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => run_worker().await,
        Some(Command::Dlq { action }) => match dlq(action).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("evp-worker dlq: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Rollups { action: RollupsAction::Rebuild { timeout_s } }) => {
            match rebuild(Duration::from_secs(timeout_s)).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("evp-worker rollups rebuild: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run_worker() -> ExitCode {
    let config = match evp_runtime::config::from_process("evp-worker", WorkerConfig::from_env) {
        Ok(config) => config,
        Err(status) => return status,
    };
    evp_runtime::telemetry::init(config.common.log_format);
    let result = async {
        let metrics = evp_runtime::metrics::install(None).context("metrics recorder")?;
        let shutdown = evp_runtime::shutdown::on_signal();
        let listener = match config.port {
            0 => None,
            port => Some(
                tokio::net::TcpListener::bind(("0.0.0.0", port))
                    .await
                    .with_context(|| format!("cannot listen on WORKER_PORT {port}"))?,
            ),
        };
        evp_worker::run(config, listener, Some(metrics), shutdown).await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "evp-worker failed");
            ExitCode::FAILURE
        }
    }
}

/// Asks for a new generation and follows the leader's progress until readers use it.
async fn rebuild(timeout: Duration) -> anyhow::Result<()> {
    let common = CommonConfig::from_env(&Env::process())?;
    let client = evp_runtime::connect::mongo_client(&common.mongodb_uri, "evp-worker rollups").await?;
    let rollups = RollupStore::new(&client, &common.mongodb_database);
    let generation = rollups.request_rebuild().await.context("asking for a rebuild")?;
    println!("rebuilding the rollups as generation {generation}; the rollup leader does the work");
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let generations = rollups.generations().await?;
        if generations.current >= generation && generations.building.is_none() {
            println!(
                "done in {:.1} s: analytics now reads generation {generation}",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        let (built, target) =
            (rollups.next_range(generation, 0).await?, rollups.next_range(generations.current, 0).await?);
        let line = if built == 0 {
            "waiting for the rollup leader to start (is an evp-worker running?)".to_owned()
        } else {
            let behind = (target - built).max(0);
            format!(
                "progress: counted through {} (stream time), {behind} s behind the live rollups",
                range_time(built)
            )
        };
        if line != last {
            println!("{line}");
            last = line;
        }
        if started.elapsed() > timeout {
            anyhow::bail!(
                "not finished after {timeout:?}; the leader carries on, run the command again to follow it"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn range_time(range: i64) -> String {
    mongodb::bson::DateTime::from_millis(range * evp_store::rollups::RANGE_MS)
        .try_to_rfc3339_string()
        .unwrap_or_else(|_| range.to_string())
}

async fn dlq(action: DlqAction) -> anyhow::Result<()> {
    let common = CommonConfig::from_env(&Env::process())?;
    let conn = common.redis_target().context("REDIS_URL")?.shared(std::time::Duration::from_secs(10))?;
    conn.ping().await.context("connecting to Redis")?;
    let partitions = common.partitions();
    let where_ = if partitions.len() == 1 {
        format!("{}:dlq", common.stream)
    } else {
        format!("the dead-letter streams of {} partitions", partitions.len())
    };
    let partitions_n = partitions.len();
    let group = Env::process().string("CONSUMER_GROUP", DEFAULT_GROUP);
    let letters = DeadLetters::new(conn, partitions, &group);
    let selection = |ids: Vec<String>, all: bool| if all { Selection::All } else { Selection::Ids(ids) };
    match action {
        DlqAction::List { count } => {
            let total = letters.len().await?;
            for letter in letters.page(None, count).await?.0 {
                println!("{}", serde_json::to_string(&letter)?);
            }
            eprintln!("{total} dead letter(s) in {where_}");
        }
        DlqAction::Replay { ids, all } => {
            let n = letters.replay(&selection(ids, all)).await?;
            match partitions_n {
                1 => println!("replayed {n} dead letter(s) to {}", common.stream),
                _ => println!("replayed {n} dead letter(s) to their partitions' streams"),
            }
        }
        DlqAction::Purge { ids, all } => {
            let n = letters.purge(&selection(ids, all)).await?;
            println!("purged {n} dead letter(s)");
        }
    }
    Ok(())
}
