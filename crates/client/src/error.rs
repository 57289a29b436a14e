//! What can go wrong, typed.

use serde::Deserialize;

/// One problem the server found, as in its `details`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Detail {
    /// The event's position in the batch, when the problem is one event's.
    pub index: Option<usize>,
    /// The field (or parameter, or header) at fault.
    pub field: Option<String>,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused the request for good (a 4xx other than 429): retrying would not help.
    #[error("{status} {code}: {message}")]
    Api { status: u16, code: String, message: String, details: Vec<Detail>, attempts: u32 },
    /// The server stayed unavailable (503, 429, timeouts, connection errors) until the deadline.
    #[error("gave up after {attempts} attempt(s) within the deadline: {last}")]
    Unavailable { last: String, attempts: u32 },
    /// An earlier part of a split batch was accepted before a later one failed: `accepted` holds
    /// those ids. Sending the whole batch again is safe (the ids are fixed).
    #[error("{source} (after {} event(s) were accepted)", accepted.len())]
    Partial { accepted: Vec<String>, source: Box<Error> },
    /// A bad base URL or key, or an HTTP client that cannot be built.
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl Error {
    /// The server's error code (`invalid_event`, ...), when it answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            Self::Partial { source, .. } => source.code(),
            _ => None,
        }
    }
}
