//! The argument groups several subcommands share: the ingest (`--url`, `--key`), the consumer group
//! a wait watches, the MongoDB a verification reads, and where a JSON report goes.

use clap::Args;
use evp_loadtest::verify;

/// The ingest a subcommand talks to.
#[derive(Args, Debug)]
pub struct Api {
    /// evp-ingest base URL.
    #[arg(long, env = "EVP_URL", default_value = "http://127.0.0.1:3000")]
    pub url: String,
    /// API key to send as x-api-key.
    #[arg(long, env = "EVP_API_KEY", default_value = "demo-key")]
    pub key: String,
}

/// Writes `report` to `path` as JSON, when a path was given.
pub fn write_json(path: Option<&std::path::Path>, report: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)?;
    }
    Ok(())
}

/// The consumer group whose acknowledgements end the wait (cheap to watch, unlike counting in
/// MongoDB, which competes with the workers for the server).
#[derive(Args, Debug)]
pub struct GroupArgs {
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    #[arg(long, env = "EVENTS_STREAM", default_value = "events")]
    pub stream: String,
    #[arg(long = "group", env = "CONSUMER_GROUP", default_value = "evp-workers-group")]
    pub group: String,
    /// The stream's partitions (the group is watched on each, and summed).
    #[arg(long, env = "STREAM_PARTITIONS", default_value_t = 1)]
    pub partitions: u32,
    /// `--redis-url` lists a Redis Cluster's seed nodes, comma-separated.
    #[arg(long, env = "REDIS_CLUSTER", default_value_t = false)]
    pub redis_cluster: bool,
}

impl GroupArgs {
    pub fn group(&self) -> verify::Group<'_> {
        verify::Group {
            redis_url: &self.redis_url,
            cluster: self.redis_cluster,
            stream: &self.stream,
            partitions: self.partitions,
            name: &self.group,
        }
    }
}

/// What a verification needs: the group whose acknowledgements end its wait, the MongoDB it
/// counts in, and where its report goes.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub group: GroupArgs,
    #[command(flatten)]
    pub mongo: MongoArgs,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

impl VerifyArgs {
    /// Where the events of `run_id` are checked.
    pub fn target<'a>(&'a self, run_id: &'a str) -> verify::Target<'a> {
        let mongo = &self.mongo;
        verify::Target {
            mongodb_uri: &mongo.mongodb_uri,
            database: &mongo.database,
            tenant: &mongo.tenant,
            run_id,
        }
    }
}

#[derive(Args, Debug)]
pub struct MongoArgs {
    #[arg(long, env = "MONGODB_URI", default_value = "mongodb://127.0.0.1:27017")]
    pub mongodb_uri: String,
    #[arg(long, env = "MONGODB_DATABASE", default_value = "evp")]
    pub database: String,
    /// Tenant the API key belongs to (where the events are stored).
    #[arg(long, default_value = "demo")]
    pub tenant: String,
    /// Give up verifying after this many seconds without progress.
    #[arg(long, default_value_t = 60)]
    pub stall_timeout: u64,
}
