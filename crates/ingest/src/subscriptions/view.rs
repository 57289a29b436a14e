//! What the subscription routes answer: a subscription as listed, and a poll's events.

use evp_store::reader::StoredRow;
use evp_store::subscriptions::Subscription;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::read::StoredEvent;

/// A delivered event: the stored event, and where it was appended.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionEvent {
    #[serde(flatten)]
    pub event: StoredEvent,
    /// The stream partition it was appended to.
    pub partition: i32,
    /// Its stream entry id (`<ms>-<n>`): events of a partition come in this order.
    #[schema(example = "1795474600000-0")]
    pub seq: String,
}

impl From<StoredRow> for SubscriptionEvent {
    fn from(row: StoredRow) -> Self {
        let (partition, seq) = row.position.map(|(p, seq)| (p, seq.to_string())).unwrap_or_default();
        Self { event: StoredEvent::from(row), partition, seq }
    }
}

/// One poll's answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"events": [{"id": "e-1", "type": "signed_up", "timestamp": "2026-11-22T10:15:00Z",
    "received_at": "2026-11-22T10:15:00.120Z", "aggregate_id": "user-42", "data": {"plan": "pro"},
    "partition": 0, "seq": "1795474600000-0"}], "ack": "djEuMC4wOjAwZmY"}))]
pub struct Delivered {
    /// In append order within each partition.
    pub events: Vec<SubscriptionEvent>,
    /// Pass to `…/ack` (or `…/nack`) once the events are processed; null when there are none.
    pub ack: Option<String>,
}

/// A consumer of a subscription.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConsumerView {
    pub name: String,
    /// The partitions it holds.
    pub partitions: Vec<i32>,
    /// When it last polled or acknowledged, RFC 3339.
    pub last_seen: String,
}

/// The last error a consumer handed back (nack).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorView {
    pub message: String,
    /// RFC 3339.
    pub at: String,
    pub consumer: String,
}

/// A subscription and how far it is.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"name": "active-users", "types": ["signed_up", "plan_changed"],
    "start": "beginning", "created_at": "2026-11-22T10:00:00Z", "lag_seconds": 0.0, "pending": 0,
    "consumers": [{"name": "projector-1", "partitions": [0, 1], "last_seen": "2026-11-22T10:15:00Z"}],
    "last_error": null}))]
pub struct SubscriptionView {
    pub name: String,
    /// Shown to operators, who see every tenant's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The event types it delivers; empty: every type.
    pub types: Vec<String>,
    /// `beginning` or `now`, as created.
    pub start: String,
    pub created_at: String,
    /// Append time of the newest deliverable event minus that of the oldest unacknowledged one;
    /// 0 when caught up.
    pub lag_seconds: f64,
    /// Events delivered and not yet acknowledged.
    pub pending: u64,
    pub consumers: Vec<ConsumerView>,
    pub last_error: Option<ErrorView>,
}

/// `GET /subscriptions`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionList {
    pub subscriptions: Vec<SubscriptionView>,
}

pub fn rfc3339_ms(ms: i64) -> String {
    mongodb::bson::DateTime::from_millis(ms).try_to_rfc3339_string().unwrap_or_default()
}

impl SubscriptionView {
    /// The view of `sub` at `now_ms`, with its lag (computed by the caller, which reads MongoDB).
    pub fn new(
        sub: &Subscription,
        lag_seconds: f64,
        now_ms: i64,
        timeout_ms: i64,
        with_tenant: bool,
    ) -> Self {
        let pending =
            sub.partitions.iter().filter_map(|p| p.delivery.as_ref()).map(|d| d.count.max(0) as u64).sum();
        let consumers = sub
            .consumers
            .iter()
            .filter(|c| c.last_seen + timeout_ms >= now_ms)
            .map(|c| ConsumerView {
                name: c.name.clone(),
                partitions: sub
                    .partitions
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.holder.as_deref() == Some(c.name.as_str()) && p.held_until >= now_ms)
                    .map(|(i, _)| i as i32)
                    .collect(),
                last_seen: rfc3339_ms(c.last_seen),
            })
            .collect();
        Self {
            name: sub.name.clone(),
            tenant: with_tenant.then(|| sub.tenant.clone()),
            types: sub.types.clone(),
            start: sub.start.clone(),
            created_at: sub.created_at.try_to_rfc3339_string().unwrap_or_default(),
            lag_seconds,
            pending,
            consumers,
            last_error: sub.last_error.as_ref().map(|e| ErrorView {
                message: e.message.clone(),
                at: e.at.try_to_rfc3339_string().unwrap_or_default(),
                consumer: e.consumer.clone(),
            }),
        }
    }
}
