//! Reading configuration from environment variables.
//!
//! Every program builds a typed config struct through [`Env`], which reads each variable once and
//! turns a bad value into a [`ConfigError`] naming the variable, the value and the fault: the one line
//! an operator needs when a process refuses to start. Tests build an `Env` from a map instead of
//! mutating the process environment.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

/// A configuration value that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {variable}: {message}")]
pub struct ConfigError {
    pub variable: String,
    pub message: String,
}

/// A program's configuration read from the process environment. A bad value is printed as
/// `program: error` and becomes exit status 2, before logging is set up.
pub fn from_process<C>(
    program: &str,
    read: impl FnOnce(&Env) -> Result<C, ConfigError>,
) -> Result<C, std::process::ExitCode> {
    read(&Env::process()).map_err(|e| {
        eprintln!("{program}: {e}");
        std::process::ExitCode::from(2)
    })
}

/// Where variables come from: the process environment, or a map in tests.
#[derive(Debug, Clone, Default)]
pub struct Env {
    overrides: Option<HashMap<String, String>>,
}

impl Env {
    /// Reads the process environment.
    pub fn process() -> Self {
        Self { overrides: None }
    }

    /// Reads only the given pairs (for tests).
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self { overrides: Some(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect()) }
    }

    /// The raw value, `None` when unset or empty.
    pub fn get(&self, name: &str) -> Option<String> {
        let value = match &self.overrides {
            Some(map) => map.get(name).cloned(),
            None => std::env::var(name).ok(),
        };
        value.filter(|v| !v.trim().is_empty())
    }

    /// A string with a default.
    pub fn string(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or_else(|| default.to_string())
    }

    /// A required string.
    pub fn required(&self, name: &str) -> Result<String, ConfigError> {
        self.get(name).ok_or_else(|| error(name, "is required but not set"))
    }

    /// A parsed value with a default.
    pub fn parse<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw.trim().parse().map_err(|e| error(name, format!("{raw:?} is not valid: {e}"))),
        }
    }

    /// A positive integer (zero is refused) with a default.
    pub fn positive<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialEq + Default,
        T::Err: Display,
    {
        let value = self.parse(name, default)?;
        if value == T::default() {
            return Err(error(name, "must be greater than zero"));
        }
        Ok(value)
    }

    /// A duration given in milliseconds, with a default.
    pub fn millis(&self, name: &str, default_ms: u64) -> Result<Duration, ConfigError> {
        self.parse(name, default_ms).map(Duration::from_millis)
    }
}

/// Builds a [`ConfigError`] for `variable`.
pub fn error(variable: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { variable: variable.to_string(), message: message.into() }
}

/// `LOG_FORMAT`: how log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One JSON object a line (the default; what log shippers want).
    #[default]
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "pretty" => Ok(Self::Pretty),
            _ => Err("expected json or pretty".into()),
        }
    }
}

/// The settings every evp program shares: where Redis, MongoDB and the stream are, and logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommonConfig {
    /// `REDIS_URL`, default `redis://127.0.0.1:6379`; with `REDIS_CLUSTER=true`, comma-separated
    /// seed node URLs.
    pub redis_url: String,
    /// `REDIS_CLUSTER`, default false: talk to a Redis Cluster.
    pub redis_cluster: bool,
    /// `STREAM_PARTITIONS`, default 1 (at most [`crate::partitions::MAX_PARTITIONS`]).
    pub partitions: u32,
    /// `MONGODB_URI`, default `mongodb://127.0.0.1:27017`; `mongodb+srv://` (DNS seed lists, as
    /// hosted MongoDB hands out) is resolved by the driver.
    pub mongodb_uri: String,
    /// `MONGODB_DATABASE`, default `evp`.
    pub mongodb_database: String,
    /// `EVENTS_STREAM`, default `events`; dead letters go to `<EVENTS_STREAM>:dlq`.
    pub stream: String,
    /// `LOG_FORMAT`, default `json`.
    pub log_format: LogFormat,
}

impl CommonConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let redis_url = env.string("REDIS_URL", "redis://127.0.0.1:6379");
        let redis_cluster = env.parse("REDIS_CLUSTER", false)?;
        let seeds: Vec<&str> =
            if redis_cluster { redis_url.split(',').map(str::trim).collect() } else { vec![&redis_url] };
        if let Some(bad) = seeds.iter().find(|url| redis::parse_redis_url(url).is_none()) {
            let what =
                if redis_cluster { "a comma-separated list of redis:// URLs" } else { "a redis:// URL" };
            return Err(error("REDIS_URL", format!("{bad:?} in {redis_url:?} is not {what}")));
        }
        let partitions: u32 = env.positive("STREAM_PARTITIONS", 1)?;
        if partitions > crate::partitions::MAX_PARTITIONS {
            return Err(error(
                "STREAM_PARTITIONS",
                format!("{partitions} is more than {}", crate::partitions::MAX_PARTITIONS),
            ));
        }
        let stream = env.string("EVENTS_STREAM", "events");
        if redis_cluster && partitions == 1 && !crate::partitions::has_hash_tag(&stream) {
            // The dead-letter move is one MULTI over the stream and `<stream>:dlq`: on a cluster
            // both must hash to one slot.
            return Err(error(
                "EVENTS_STREAM",
                format!(
                    "{stream:?} needs a hash tag with REDIS_CLUSTER=true and STREAM_PARTITIONS=1 (e.g. \"{{{stream}}}\"), \
                     so that its dead-letter stream shares its slot; or set STREAM_PARTITIONS > 1"
                ),
            ));
        }
        let mongodb_uri = env.string("MONGODB_URI", "mongodb://127.0.0.1:27017");
        if !mongodb_uri.starts_with("mongodb://") && !mongodb_uri.starts_with("mongodb+srv://") {
            return Err(error(
                "MONGODB_URI",
                format!("{mongodb_uri:?} must start with mongodb:// or mongodb+srv://"),
            ));
        }
        Ok(Self {
            redis_url,
            redis_cluster,
            partitions,
            mongodb_uri,
            mongodb_database: env.string("MONGODB_DATABASE", "evp"),
            stream,
            log_format: env.parse("LOG_FORMAT", LogFormat::Json)?,
        })
    }

    /// Where Redis is (connects on first use).
    pub fn redis_target(&self) -> redis::RedisResult<crate::redis_conn::RedisTarget> {
        crate::redis_conn::RedisTarget::new(&self.redis_url, self.redis_cluster)
    }

    /// The stream partitions and their keys.
    pub fn partitions(&self) -> crate::partitions::Partitions {
        crate::partitions::Partitions::new(&self.stream, self.partitions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_variable() {
        let env = Env::from_pairs([("PORT", "eighty"), ("ZERO", "0"), ("EMPTY", " ")]);
        let e = env.parse::<u16>("PORT", 3000).unwrap_err();
        assert_eq!(e.variable, "PORT");
        assert!(e.to_string().starts_with("invalid configuration: PORT: \"eighty\" is not valid"), "{e}");
        assert_eq!(env.positive::<usize>("ZERO", 5).unwrap_err().variable, "ZERO");
        assert_eq!(env.required("EMPTY").unwrap_err().variable, "EMPTY");
        assert_eq!(env.parse::<u16>("UNSET", 7).unwrap(), 7);
        assert_eq!(env.parse::<LogFormat>("UNSET", LogFormat::Json).unwrap(), LogFormat::Json);
    }

    #[test]
    fn common_defaults_and_errors() {
        let c = CommonConfig::from_env(&Env::from_pairs::<[(&str, &str); 0], _, _>([])).unwrap();
        assert_eq!(c.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(c.mongodb_uri, "mongodb://127.0.0.1:27017");
        assert_eq!((c.mongodb_database.as_str(), c.stream.as_str()), ("evp", "events"));
        assert_eq!((c.redis_cluster, c.partitions), (false, 1));
        assert_eq!(c.partitions().get(0).unwrap().dlq, "events:dlq");
        let bad = |k: &str, v: &str| CommonConfig::from_env(&Env::from_pairs([(k, v)])).unwrap_err().variable;
        assert_eq!(bad("REDIS_URL", "localhost:6379"), "REDIS_URL");
        assert_eq!(bad("MONGODB_URI", "postgres://x"), "MONGODB_URI");
        let srv = Env::from_pairs([(
            "MONGODB_URI",
            "mongodb+srv://user:pw@cluster0.example.net/?retryWrites=true",
        )]);
        assert!(CommonConfig::from_env(&srv).unwrap().mongodb_uri.starts_with("mongodb+srv://"));
        assert_eq!(bad("LOG_FORMAT", "xml"), "LOG_FORMAT");
        assert_eq!(bad("STREAM_PARTITIONS", "0"), "STREAM_PARTITIONS");
        assert_eq!(bad("STREAM_PARTITIONS", "257"), "STREAM_PARTITIONS");
        assert_eq!(bad("REDIS_CLUSTER", "maybe"), "REDIS_CLUSTER");
        assert_eq!(bad("REDIS_URL", "redis://a:1,redis://b:2"), "REDIS_URL");
    }

    #[test]
    fn cluster_settings() {
        let env = |pairs: &[(&str, &str)]| CommonConfig::from_env(&Env::from_pairs(pairs.iter().copied()));
        let seeds = "redis://127.0.0.1:7000, redis://127.0.0.1:7001";
        let c = env(&[("REDIS_CLUSTER", "true"), ("REDIS_URL", seeds), ("STREAM_PARTITIONS", "8")]).unwrap();
        assert!(c.redis_cluster && c.redis_target().unwrap().is_cluster());
        assert_eq!(c.partitions().len(), 8);
        let bad = env(&[("REDIS_CLUSTER", "true"), ("REDIS_URL", "redis://a:1,nope")]).unwrap_err();
        assert_eq!(bad.variable, "REDIS_URL");
        // One partition on a cluster: the stream needs a hash tag for its dead letters' slot.
        let untagged = env(&[("REDIS_CLUSTER", "true"), ("REDIS_URL", seeds)]).unwrap_err();
        assert_eq!(untagged.variable, "EVENTS_STREAM");
        let tagged = env(&[("REDIS_CLUSTER", "true"), ("REDIS_URL", seeds), ("EVENTS_STREAM", "{events}")]);
        assert_eq!(tagged.unwrap().partitions().get(0).unwrap().dlq, "{events}:dlq");
    }
}
