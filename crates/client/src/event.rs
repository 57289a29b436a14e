//! An event as sent (SPEC's "An event, as sent").

use serde::Serialize;

/// An event. Only `type` is required; the client gives events without an id a UUIDv7.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// RFC 3339; the server uses the receive time when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregate_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// A setter per optional text field: `Event::new("signed_up").source("web")`.
macro_rules! string_setters {
    ($($(#[$doc:meta])* $field:ident,)*) => {$(
        $(#[$doc])*
        pub fn $field(mut self, value: impl Into<String>) -> Self {
            self.$field = Some(value.into());
            self
        }
    )*};
}

impl Event {
    pub fn new(event_type: impl Into<String>) -> Self {
        Self {
            event_type: event_type.into(),
            id: None,
            timestamp: None,
            source: None,
            aggregate_id: None,
            correlation_id: None,
            causation_id: None,
            data: None,
        }
    }

    string_setters! {
        /// Your own id (the idempotency key); otherwise the client makes one.
        id,
        /// When it happened, RFC 3339; otherwise the server's receive time.
        timestamp,
        /// Where it came from.
        source,
        /// The entity it is about: its events are kept and delivered in order.
        aggregate_id,
        /// Ties the events of one flow together.
        correlation_id,
        /// The id of the event that caused this one.
        causation_id,
    }

    /// A JSON object.
    pub fn data(mut self, data: serde_json::Value) -> Self {
        self.data = Some(data);
        self
    }

    /// Gives the event a UUIDv7 id if it has none, and returns the id.
    pub(crate) fn ensure_id(&mut self) -> String {
        self.id.get_or_insert_with(|| uuid::Uuid::now_v7().to_string()).clone()
    }
}
