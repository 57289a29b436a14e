//! The request-body extractor for event endpoints.
//!
//! It enforces, in order: a JSON content type (415), a supported content encoding (415), the
//! `HTTP_BODY_TIMEOUT_MS` deadline on the whole body (408), the `MAX_BODY_BYTES` cap on the bytes
//! received (413), and the same cap on the bytes a gzip body
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
        let deadline = state.config.body_timeout;
        let read = tokio::time::timeout(deadline, to_bytes(req.into_body(), limit)).await.map_err(|_| {
            ApiError::RequestTimeout(format!(
                "the body did not arrive within {} ms (HTTP_BODY_TIMEOUT_MS); nothing was accepted",
                deadline.as_millis()
            ))
        })?;
        let raw = read.map_err(|e| match e.into_inner().downcast::<http_body_util::LengthLimitError>() {
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
    let essence = value.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") || is_json_suffix_type(essence) {
        Ok(())
    } else if value.is_empty() {
        Err(ApiError::UnsupportedMediaType("Content-Type must be application/json (none was sent)".into()))
    } else {
        Err(ApiError::UnsupportedMediaType(format!("Content-Type must be application/json, not {value:?}")))
    }
}

/// `application/<anything>+json`, in any case (compared without allocating: this runs on every
/// request).
fn is_json_suffix_type(essence: &str) -> bool {
    let (prefix, suffix) = ("application/", "+json");
    essence.len() >= prefix.len() + suffix.len()
        && essence.get(..prefix.len()).is_some_and(|p| p.eq_ignore_ascii_case(prefix))
        && essence.get(essence.len() - suffix.len()..).is_some_and(|s| s.eq_ignore_ascii_case(suffix))
}

fn is_gzip(headers: &HeaderMap) -> Result<bool, ApiError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else { return Ok(false) };
    let value = value.to_str().unwrap_or("").trim();
    if value.is_empty() || value.eq_ignore_ascii_case("identity") {
        Ok(false)
    } else if value.eq_ignore_ascii_case("gzip") || value.eq_ignore_ascii_case("x-gzip") {
        Ok(true)
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Encoding {:?} is not supported; use gzip or none",
            value.to_ascii_lowercase()
        )))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn json_content_types_are_recognised_in_any_case_and_with_parameters() {
        for accepted in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            " application/json ;charset=UTF-8",
            "application/cloudevents+json",
            "APPLICATION/VND.ACME+JSON",
        ] {
            assert!(check_content_type(&headers(header::CONTENT_TYPE, accepted)).is_ok(), "{accepted}");
        }
        for refused in
            ["text/plain", "application/jsonx", "application/+jso", "text/x+json", "json", "application/"]
        {
            let error = check_content_type(&headers(header::CONTENT_TYPE, refused)).unwrap_err();
            assert!(matches!(error, ApiError::UnsupportedMediaType(_)), "{refused}");
        }
        assert!(check_content_type(&HeaderMap::new()).is_err());
    }

    #[test]
    fn gzip_and_identity_encodings_are_recognised_in_any_case() {
        let gzip = |value: &str| is_gzip(&headers(header::CONTENT_ENCODING, value)).ok();
        assert_eq!(is_gzip(&HeaderMap::new()).ok(), Some(false));
        assert_eq!((gzip("identity"), gzip(""), gzip(" IDENTITY ")), (Some(false), Some(false), Some(false)));
        assert_eq!((gzip("gzip"), gzip("GZip"), gzip("x-gzip")), (Some(true), Some(true), Some(true)));
        assert_eq!((gzip("br"), gzip("deflate"), gzip("gzip, br")), (None, None, None));
    }
}
