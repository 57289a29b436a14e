//! `evp-worker`: config, telemetry, bind, run; or, with `dlq`, operate the dead-letter stream.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use evp_runtime::config::{CommonConfig, Env};
use evp_worker::WorkerConfig;
use evp_worker::dlq::{DeadLetters, Selection};

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
    }
}

async fn run_worker() -> ExitCode {
    let config = match WorkerConfig::from_env(&Env::process()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("evp-worker: {e}");
            return ExitCode::from(2);
        }
    };
    evp_runtime::telemetry::init(config.common.log_format);
    let result = async {
        let metrics = evp_runtime::metrics::install().context("metrics recorder")?;
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

async fn dlq(action: DlqAction) -> anyhow::Result<()> {
    let common = CommonConfig::from_env(&Env::process())?;
    let mut letters =
        DeadLetters::connect(&common.redis_url, &common.stream).await.context("connecting to Redis")?;
    let selection = |ids: Vec<String>, all: bool| if all { Selection::All } else { Selection::Ids(ids) };
    match action {
        DlqAction::List { count } => {
            let total = letters.len().await?;
            for letter in letters.list(count).await? {
                println!("{letter}");
            }
            eprintln!("{total} dead letter(s) in {}:dlq", common.stream);
        }
        DlqAction::Replay { ids, all } => {
            let n = letters.replay(&selection(ids, all)).await?;
            println!("replayed {n} dead letter(s) to {}", common.stream);
        }
        DlqAction::Purge { ids, all } => {
            let n = letters.purge(&selection(ids, all)).await?;
            println!("purged {n} dead letter(s)");
        }
    }
    Ok(())
}
