//! `evp-ingest`: config, telemetry, bind, run; and `evp-ingest keys …`, the API keys from the
//! command line (for operators without an operator key yet).
//!
//! The main thread's runtime accepts connections, handles signals and keeps the shared clients;
//! requests are served on server threads of their own ([`evp_ingest::shards`]).

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use evp_ingest::IngestConfig;
use evp_ingest::key_store::{KeyStore, NewKey, Role};
use evp_runtime::config::{CommonConfig, Env};

/// The HTTP front door of evp. Without a command it serves (configured by environment variables,
/// see the README).
#[derive(Parser)]
#[command(name = "evp-ingest", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// API keys kept in MongoDB (MONGODB_URI, MONGODB_DATABASE), as `/admin/keys` manages them.
    #[command(subcommand)]
    Keys(Keys),
}

#[derive(Subcommand)]
enum Keys {
    /// Creates a key and prints it as JSON, its secret in `key` (shown this once).
    Create {
        /// Its tenant (required for a tenant key).
        #[arg(long)]
        tenant: Option<String>,
        /// Make an operator key instead.
        #[arg(long)]
        operator: bool,
        /// Who or what holds it.
        #[arg(long)]
        name: Option<String>,
        /// RFC 3339 time after which it is refused.
        #[arg(long)]
        expires_at: Option<String>,
        /// Its own events/s, replacing its tenant's limit.
        #[arg(long)]
        rate_limit: Option<f64>,
        /// Its own burst (with --rate-limit).
        #[arg(long)]
        burst: Option<u64>,
    },
    /// Lists the keys made at runtime (one JSON object a line), never a secret.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revokes a key; every ingest replica refuses it within KEY_REFRESH_MS.
    Revoke { id: String },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Keys(keys)) = cli.command {
        return match manage(keys).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("evp-ingest keys: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match evp_runtime::config::from_process("evp-ingest", IngestConfig::from_env) {
        Ok(config) => config,
        Err(status) => return status,
    };
    evp_runtime::telemetry::init(config.common.log_format);
    match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "evp-ingest failed");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: IngestConfig) -> anyhow::Result<()> {
    let forgetting = evp_runtime::metrics::Forgetting {
        prefix: evp_ingest::metrics::SUBSCRIPTION_PREFIX,
        after: evp_ingest::metrics::SUBSCRIPTION_FORGET_AFTER,
    };
    let metrics = evp_runtime::metrics::install(Some(forgetting)).context("metrics recorder")?;
    let shutdown = evp_runtime::shutdown::on_signal();
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", config.port))
        .await
        .with_context(|| format!("cannot listen on PORT {}", config.port))?;
    evp_ingest::run(config, listener, Some(metrics), shutdown).await
}

async fn manage(command: Keys) -> anyhow::Result<ExitCode> {
    let common = CommonConfig::from_env(&Env::process())?;
    let mongo = evp_runtime::connect::mongo_client(&common.mongodb_uri, "evp-ingest keys")
        .await
        .context("MONGODB_URI")?;
    // Only the serving ingest authenticates, and it resolves bursts with its own MAX_BATCH_EVENTS.
    let store = KeyStore::new(&mongo.database(&common.mongodb_database), 1);
    match command {
        Keys::Create { tenant, operator, name, expires_at, rate_limit, burst } => {
            let role = if operator { Role::Operator } else { Role::Tenant };
            let new = NewKey::checked(tenant, role, name, expires_at.as_deref(), rate_limit, burst)
                .map_err(anyhow::Error::msg)?;
            let (info, key) = store.create(new).await.context("MongoDB")?;
            let mut out = serde_json::to_value(&info)?;
            out["key"] = serde_json::Value::String(key);
            println!("{out}");
        }
        Keys::List { tenant } => {
            for info in store.list(tenant.as_deref()).await.context("MongoDB")? {
                println!("{}", serde_json::to_string(&info)?);
            }
        }
        Keys::Revoke { id } => match store.revoke(&id).await.context("MongoDB")? {
            Some(_) => println!("revoked {id}"),
            None => {
                eprintln!("evp-ingest keys: no key {id:?}");
                return Ok(ExitCode::FAILURE);
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}
