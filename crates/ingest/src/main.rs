//! `evp-ingest`: config, telemetry, bind, run.
//!
//! The main thread's runtime accepts connections, handles signals and keeps the shared clients;
//! requests are served on server threads of their own ([`evp_ingest::shards`]).

use std::process::ExitCode;

use evp_ingest::IngestConfig;
use evp_runtime::config::Env;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let config = match IngestConfig::from_env(&Env::process()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("evp-ingest: {e}");
            return ExitCode::from(2);
        }
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
    use anyhow::Context;
    let metrics = evp_runtime::metrics::install().context("metrics recorder")?;
    let shutdown = evp_runtime::shutdown::on_signal();
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", config.port))
        .await
        .with_context(|| format!("cannot listen on PORT {}", config.port))?;
    evp_ingest::run(config, listener, Some(metrics), shutdown).await
}
