//! `GET /dashboard`: one HTML page, its CSS, its JavaScript and the vendored chart library
//! (uPlot, `assets/vendor/uplot`, MIT) embedded in the binary and inlined into one response, so the
//! page loads nothing from anywhere. It reads only the documented endpoints, with the key the user
//! types in (kept in the tab's session storage).

use std::sync::LazyLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const HTML: &str = include_str!("../../assets/dashboard.html");
const CSS: &str = include_str!("../../assets/dashboard.css");
const JS: &str = include_str!("../../assets/dashboard.js");
const UPLOT_JS: &str = include_str!("../../assets/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../assets/vendor/uplot/uPlot.min.css");

/// Inline scripts and styles only, requests to this origin only: nothing from outside can run.
const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

static PAGE: LazyLock<String> = LazyLock::new(|| {
    HTML.replace("/*UPLOT_CSS*/", UPLOT_CSS)
        .replace("/*DASHBOARD_CSS*/", CSS)
        .replace("/*UPLOT_JS*/", UPLOT_JS)
        .replace("/*DASHBOARD_JS*/", JS)
});

/// The live dashboard (HTML).
#[utoipa::path(get, path = "/dashboard", tag = "health",
    responses((status = 200, description = "The dashboard page", content_type = "text/html")))]
pub async fn page() -> Response {
    let mut response = PAGE.as_str().into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}
