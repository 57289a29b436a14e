//! The ingest's one error type and its single mapping to status, code and JSON body.
//!
//! Every refusal a client can see is an [`ApiError`]; [`ApiError::into_response`] is the only place
//! that decides statuses. Bodies are `{"error":{"code","message","details"}}`. Internal causes
//! (Redis errors) travel with the response as a [`FailureCause`] extension, which the request
//! logging middleware writes to the log; they are never put in a response body.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use evp_events::{BodyError, Problem};
use serde::Serialize;
use utoipa::ToSchema;

use crate::metrics::FailureCause;

/// Seconds a client is asked to wait after a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidJson(String),
    #[error("{message}")]
    InvalidEvent { message: String, details: Vec<Problem> },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{message}")]
    PayloadTooLarge { message: String, details: Vec<Problem> },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unavailable(String),
    /// Redis refused the append or did not answer in time. The cause is logged with the request,
    /// never sent to the client. `maybe_stored`: the append may have landed (in part), so the
    /// message says so and tells how to retry safely.
    #[error("{}", if *maybe_stored {
        "the event store did not confirm the append: some or all events may have been stored; \
         retry with the same ids or Idempotency-Key"
    } else {
        "the event store is unreachable; nothing was accepted, retry later"
    })]
    StoreUnreachable { cause: String, maybe_stored: bool },
    /// A query parameter is unknown, repeated or has a bad value; `parameter` names it.
    #[error("{message}")]
    InvalidQuery { message: String, parameter: Option<&'static str> },
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with how the thing is configured (revoking a key from the environment).
    #[error("{0}")]
    Conflict(String),
    /// A valid key without the right to this route (a tenant key on `/admin/*`).
    #[error("{0}")]
    Forbidden(&'static str),
    /// The tenant is past its rate (or another of its shares): 429 with `Retry-After` when the
    /// request would fit later, and the IETF `RateLimit-Policy` / `RateLimit` headers.
    #[error("{message}")]
    RateLimited { message: String, retry_after: Option<std::time::Duration>, policy: Option<(f64, u64)> },
    /// The body did not arrive within `HTTP_BODY_TIMEOUT_MS`.
    #[error("{0}")]
    RequestTimeout(String),
    /// An `Idempotency-Key` sent again with a different body (Stripe's rule): nothing is enqueued.
    #[error(
        "this Idempotency-Key was first used with a different request body (within the last 24 hours); \
         send a new key for a new request, or the same body to retry"
    )]
    IdempotencyKeyReused,
    /// MongoDB did not answer a read. The cause is logged, never sent.
    #[error("the event store cannot be read right now; retry later")]
    ReadUnavailable { cause: String },
}

impl ApiError {
    /// The status and the stable code clients branch on.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            Self::InvalidEvent { .. } => (StatusCode::BAD_REQUEST, "invalid_event"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            Self::InvalidQuery { .. } => (StatusCode::BAD_REQUEST, "invalid_query"),
            Self::Unavailable(_) | Self::StoreUnreachable { .. } | Self::ReadUnavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable")
            }
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::IdempotencyKeyReused => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
            Self::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        }
    }

    /// The code alone, used as the `reason` label of rejected-event metrics.
    pub fn code(&self) -> &'static str {
        self.status_and_code().1
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::InvalidJson(message) => Self::InvalidJson(message),
            BodyError::InvalidEvents(details) => {
                let message = match details.len() {
                    1 => format!("invalid event: {}", details[0].message),
                    n => format!("{n} problems found; nothing was accepted"),
                };
                Self::InvalidEvent { message, details }
            }
            BodyError::TooLarge { message, problems } => Self::PayloadTooLarge { message, details: problems },
        }
    }
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "invalid_event", "message": "2 problems found; nothing was accepted",
    "details": [{"index": 3, "field": "type", "message": "type must be 1 to 128 characters of [A-Za-z0-9_.:-]"},
                {"index": 7, "field": "timestamp", "message": "timestamp must be an RFC 3339 date-time, got \"yesterday\""}]}}))]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code: `invalid_json`, `invalid_event`, `invalid_query`,
    /// `unauthorized`, `forbidden`, `payload_too_large`, `unsupported_media_type`,
    /// `idempotency_key_reused`, `request_timeout`, `rate_limited`, `service_unavailable`,
    /// `not_found`.
    #[schema(value_type = String)]
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// One entry per problem; for batches, `index` is the position of the offending event.
    pub details: Vec<Problem>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = self.to_string();
        let mut cause = None;
        let mut limited = None;
        if let Self::RateLimited { retry_after, policy, .. } = &self {
            limited = Some((*retry_after, *policy));
        }
        let details = match self {
            Self::InvalidEvent { details, .. } | Self::PayloadTooLarge { details, .. } => details,
            Self::StoreUnreachable { cause: c, .. } | Self::ReadUnavailable { cause: c } => {
                cause = Some(FailureCause(c));
                Vec::new()
            }
            Self::InvalidQuery { message, parameter } => {
                vec![Problem { index: None, field: parameter, message }]
            }
            _ => Vec::new(),
        };
        let mut response =
            (status, Json(ErrorResponse { error: ErrorBody { code, message, details } })).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        if let Some(cause) = cause {
            response.extensions_mut().insert(cause);
        }
        if let Some((retry_after, policy)) = limited {
            rate_limit_headers(response.headers_mut(), retry_after, policy);
        }
        response
    }
}

/// A 429's headers: `Retry-After` in whole seconds (rounded up) when the request would fit later,
/// and the IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers): the policy, `q` events per
/// `w` = 1 second, and what remains now (`r=0`) for the next `t` seconds.
fn rate_limit_headers(
    headers: &mut axum::http::HeaderMap,
    retry_after: Option<std::time::Duration>,
    policy: Option<(f64, u64)>,
) {
    let seconds = retry_after.map(|d| d.as_secs_f64().ceil().max(1.0) as u64);
    if let Some(seconds) = seconds {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let Some((rate, _burst)) = policy {
        let policy = format!("\"tenant\";q={};w=1", rate.ceil() as u64);
        if let Ok(value) = HeaderValue::from_str(&policy) {
            headers.insert("ratelimit-policy", value);
        }
        let now = format!("\"tenant\";r=0;t={}", seconds.unwrap_or(1));
        if let Ok(value) = HeaderValue::from_str(&now) {
            headers.insert("ratelimit", value);
        }
    }
}
