//! Logging: one subscriber per process, JSON lines by default.
//!
//! `RUST_LOG` filters as usual (default `info`). In JSON, an event's fields are top-level keys of
//! its line (the ingest logs a request's `request_id`, `method`, `route` and `status` that way).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Call once, from `main`; a second call is a no-op.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => {
            builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init()
        }
        LogFormat::Pretty => builder.with_target(false).try_init(),
    };
}
