//! The request-body extractor for event endpoints.
//!
//! It enforces, in order: a JSON content type (415), a supported content encoding (415), the
//! `MAX_BODY_BYTES` cap on the bytes received (413), and the same cap on the bytes a gzip body
//! decompresses to (413), so a small gzip bomb is refused after reading at most the cap plus one
//! byte, never by running out of memory.

use std::io::Read;

use axum::body::{Bytes, to_bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, header};

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON body, decompressed, within the size limit.
#[derive(Debug)]
pub struct EventBody(pub Bytes);

impl FromRequest<AppState> for EventBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.config.max_body_bytes;
        check_content_type(req.headers())?;
        let gzip = is_gzip(req.headers())?;
        let too_large = || ApiError::PayloadTooLarge {
            message: format!("the body is larger than {limit} bytes (MAX_BODY_BYTES)"),
            details: Vec::new(),
        };
        let raw = to_bytes(req.into_body(), limit).await.map_err(|e| match e
            .into_inner()
            .downcast::<http_body_util::LengthLimitError>(
        ) {
            Ok(_) => too_large(),
            Err(e) => ApiError::InvalidJson(format!("could not read the body: {e}")),
        })?;
        if !gzip {
            return Ok(Self(raw));
        }
        let mut out = Vec::with_capacity((raw.len() * 4).min(limit));
        let mut decoder = flate2::read::MultiGzDecoder::new(&raw[..]).take(limit as u64 + 1);
        decoder
            .read_to_end(&mut out)
            .map_err(|e| ApiError::InvalidJson(format!("the body is not valid gzip: {e}")))?;
        if out.len() > limit {
            return Err(ApiError::PayloadTooLarge {
                message: format!("the body decompresses to more than {limit} bytes (MAX_BODY_BYTES)"),
                details: Vec::new(),
            });
        }
        Ok(Self(out.into()))
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let value = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json")) {
        Ok(())
    } else if value.is_empty() {
        Err(ApiError::UnsupportedMediaType("Content-Type must be application/json (none was sent)".into()))
    } else {
        Err(ApiError::UnsupportedMediaType(format!("Content-Type must be application/json, not {value:?}")))
    }
}

fn is_gzip(headers: &HeaderMap) -> Result<bool, ApiError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else { return Ok(false) };
    match value.to_str().unwrap_or("").trim().to_ascii_lowercase().as_str() {
        "" | "identity" => Ok(false),
        "gzip" | "x-gzip" => Ok(true),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Encoding {other:?} is not supported; use gzip or none"
        ))),
    }
}
