//! The Redis stream entry: how one accepted event is stored between ingest and worker.
//!
//! An entry has a single field, [`FIELD`], holding compact JSON with the tenant, the event id, the
//! event time and the receive time (Unix milliseconds), the optional strings, and `data` as sent.
//! One field keeps XADD small and lets the worker decode with one parse; `v` versions the layout so
//! a future change can be rolled out while old entries are still in the stream.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use std::borrow::Cow;

/// Name of the stream-entry field holding the encoded event.
pub const FIELD: &str = "e";
/// Layout version written by [`encode`] and accepted by [`decode`].
pub const VERSION: u8 = 1;

/// An event ready for XADD: its id (returned to the client) and the entry payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEvent {
    pub id: String,
    /// Its `type` (for the per-tenant cap on distinct types).
    pub event_type: String,
    pub payload: Vec<u8>,
    /// [`route_hash`] of its `aggregate_id`, else its `id`: which partition it goes to.
    pub route: u64,
}

/// FNV-1a (64 bit) of an event's routing key (its `aggregate_id`, else its `id`); the partition
/// is this mod `STREAM_PARTITIONS`. Stable across processes, versions and machines.
pub fn route_hash(key: &str) -> u64 {
    use std::hash::Hasher;
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(key.as_bytes());
    hasher.finish()
}

/// An event that passed validation ([`crate::input`]); `id` and `timestamp` are filled in.
#[derive(Debug, Clone)]
pub struct ValidEvent<'a> {
    pub id: Cow<'a, str>,
    pub event_type: Cow<'a, str>,
    /// Event time in Unix milliseconds (BSON dates have millisecond precision).
    pub timestamp_ms: i64,
    pub source: Option<Cow<'a, str>>,
    pub aggregate_id: Option<Cow<'a, str>>,
    pub correlation_id: Option<Cow<'a, str>>,
    pub causation_id: Option<Cow<'a, str>>,
    /// Raw JSON object; `None` means `{}`.
    pub data: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct EntryOut<'a> {
    v: u8,
    tenant: &'a str,
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    ts: i64,
    rcv: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aggregate_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    causation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
}

/// An event decoded from a stream entry, as the worker stores it.
#[derive(Debug, Deserialize)]
pub struct StoredEvent {
    #[serde(rename = "v")]
    pub version: u8,
    pub tenant: String,
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// Event time, Unix milliseconds.
    #[serde(rename = "ts")]
    pub timestamp_ms: i64,
    /// Time the ingest received it, Unix milliseconds.
    #[serde(rename = "rcv")]
    pub received_at_ms: i64,
    pub source: Option<String>,
    pub aggregate_id: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    /// Raw JSON object; `None` means `{}`.
    pub data: Option<Box<RawValue>>,
}

/// Why an entry could not be decoded. Such an entry goes to the dead-letter stream.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("entry has no field {FIELD:?}")]
    MissingField,
    #[error("entry is not a valid encoded event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("entry layout version {0} is not supported (this build reads {VERSION})")]
    UnsupportedVersion(u8),
}

/// Encodes a validated event for `tenant`, received at `received_at_ms`.
pub fn encode(event: &ValidEvent<'_>, tenant: &str, received_at_ms: i64) -> EncodedEvent {
    let out = EntryOut {
        v: VERSION,
        tenant,
        id: &event.id,
        event_type: &event.event_type,
        ts: event.timestamp_ms,
        rcv: received_at_ms,
        source: event.source.as_deref(),
        aggregate_id: event.aggregate_id.as_deref(),
        correlation_id: event.correlation_id.as_deref(),
        causation_id: event.causation_id.as_deref(),
        data: event.data,
    };
    // Sized for the common case (nothing to escape) so the buffer is allocated once: the field
    // names and numbers take under 128 bytes.
    let strings = [out.source, out.aggregate_id, out.correlation_id, out.causation_id]
        .iter()
        .flatten()
        .map(|s| s.len() + 20)
        .sum::<usize>();
    let capacity = 128 + tenant.len() + out.id.len() + out.event_type.len() + strings + data_len(out.data);
    let mut payload = Vec::with_capacity(capacity);
    // Serializing plain strings, integers and already-valid raw JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut payload, &out);
    let route = route_hash(event.aggregate_id.as_deref().unwrap_or(&event.id));
    EncodedEvent {
        id: event.id.clone().into_owned(),
        event_type: event.event_type.to_string(),
        payload,
        route,
    }
}

fn data_len(data: Option<&RawValue>) -> usize {
    data.map_or(0, |d| d.get().len())
}

/// Decodes an entry payload written by [`encode`].
pub fn decode(payload: &[u8]) -> Result<StoredEvent, DecodeError> {
    let event: StoredEvent = serde_json::from_slice(payload)?;
    if event.version != VERSION {
        return Err(DecodeError::UnsupportedVersion(event.version));
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::{Admission, Limits, admit_one};

    #[test]
    fn round_trip_keeps_every_field() {
        let body = br#"{"type":"order.placed","id":"o-1","timestamp":"2024-01-01T00:00:00Z","source":"web",
            "aggregate_id":"agg","correlation_id":"cor","causation_id":"cau","data":{"n":1,"nested":{"a":[1,2]}}}"#;
        let adm = Admission::new("t1", 5, Limits::default());
        let e = admit_one(body, &adm).unwrap();
        let s = decode(&e.payload).unwrap();
        assert_eq!((s.tenant.as_str(), s.id.as_str(), s.event_type.as_str()), ("t1", "o-1", "order.placed"));
        assert_eq!((s.timestamp_ms, s.received_at_ms), (1_704_067_200_000, 5));
        assert_eq!(s.source.as_deref(), Some("web"));
        assert_eq!(s.aggregate_id.as_deref(), Some("agg"));
        assert_eq!(s.correlation_id.as_deref(), Some("cor"));
        assert_eq!(s.causation_id.as_deref(), Some("cau"));
        assert_eq!(s.data.unwrap().get(), r#"{"n":1,"nested":{"a":[1,2]}}"#);
    }

    #[test]
    fn decode_rejects_garbage_and_unknown_versions() {
        assert!(matches!(decode(b"not json"), Err(DecodeError::Json(_))));
        assert!(matches!(decode(br#"{"v":1}"#), Err(DecodeError::Json(_))));
        let future = br#"{"v":9,"tenant":"t","id":"i","type":"x","ts":1,"rcv":1}"#;
        assert!(matches!(decode(future), Err(DecodeError::UnsupportedVersion(9))));
    }
}
