//! Builds the router and the OpenAPI document together, from one list of handlers, so the
//! document cannot drift from what is served.

use axum::Router;
use axum::http::{HeaderName, Uri};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestId, PropagateRequestIdLayer, SetRequestId, SetRequestIdLayer,
};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::API_KEY_HEADER;
use crate::error::ApiError;
use crate::metrics::{REQUEST_ID, TrackRequestsLayer};
use crate::routes::{admin, analytics, dashboard, events, health, keys, read, subscriptions, whoami};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "evp ingest API", description = "Send events over HTTP. Every event answered with 202 \
        is in the Redis stream and will be stored in MongoDB exactly once per (tenant, id)."),
    modifiers(&ApiKeyScheme),
    tags((name = "events", description = "Ingest events"), (name = "read", description = "Read stored events back"),
        (name = "analytics", description = "Exact counts from the rollups, and the pipeline"),
        (name = "subscriptions", description = "Checkpointed readings of the tenant's stored events, for \
            projections: poll, process, acknowledge"),
        (name = "auth", description = "What the key sent may do"),
        (name = "admin", description = "Operators only (ADMIN_KEYS, or an operator key made here): dead letters and API keys"),
        (name = "health", description = "Health and metrics"))
)]
struct ApiDoc;

/// Adds the `x-api-key` header scheme, named `api_key`.
struct ApiKeyScheme;

impl Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                API_KEY_HEADER,
                "Your API key; it names your tenant.",
            ))),
        );
    }
}

/// The OpenAPI document, as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_routes().split_for_parts().1
}

fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(events::post_event))
        .routes(routes!(events::post_batch))
        .routes(routes!(read::list_events))
        .routes(routes!(read::get_event))
        .routes(routes!(read::aggregate_events))
        .routes(routes!(analytics::metrics))
        .routes(routes!(whoami::whoami))
        .routes(routes!(subscriptions::list))
        .routes(routes!(subscriptions::define, subscriptions::show, subscriptions::delete))
        .routes(routes!(subscriptions::poll))
        .routes(routes!(subscriptions::ack))
        .routes(routes!(subscriptions::nack))
        .routes(routes!(subscriptions::reset))
        .routes(routes!(admin::list))
        .routes(routes!(admin::replay))
        .routes(routes!(admin::purge))
        .routes(routes!(keys::create, keys::list))
        .routes(routes!(keys::revoke))
        .routes(routes!(dashboard::page))
        .routes(routes!(health::health))
        .routes(routes!(health::live))
        .routes(routes!(health::ready))
        .routes(routes!(health::metrics))
}

/// What [`router`] returns: the router wrapped in the request-id layers.
pub type App = SetRequestId<PropagateRequestId<Router>, MakeRequestUuid>;

/// The complete application: API routes, Swagger UI at `/docs`, the JSON 404, and the layers.
///
/// Outermost, around the whole router, the request id is set (when the client sent none) and
/// echoed on the response. Then, per route, [`TrackRequests`](crate::metrics::TrackRequests)
/// counts, times and logs the request; inside it a panic becomes a 500 (so it is counted and
/// logged like any other response).
pub fn router(state: AppState) -> App {
    let (api, openapi) = api_routes().split_for_parts();
    with_request_id(
        per_route_layers(
            api.merge(SwaggerUi::new("/docs").url("/openapi.json", openapi)).fallback(not_found),
        )
        .with_state(state),
    )
}

/// Wraps every route (and the fallback) in the metrics middleware and the panic catcher. These
/// must sit inside the routing: the middleware labels requests with the matched route.
fn per_route_layers<S: Clone + Send + Sync + 'static>(routes: Router<S>) -> Router<S> {
    routes.layer(ServiceBuilder::new().layer(TrackRequestsLayer::default()).layer(CatchPanicLayer::new()))
}

/// Wraps the router once, not per route as `Router::layer` would: each layer a route gets costs a
/// boxed future and a service clone per request.
fn with_request_id(router: Router) -> App {
    let request_id = HeaderName::from_static(REQUEST_ID);
    ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
        .layer(PropagateRequestIdLayer::new(request_id))
        .service(router)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    async fn boom() -> &'static str {
        panic!("boom")
    }

    async fn call(app: App, request: Request<Body>) -> axum::response::Response {
        app.oneshot(request).await.unwrap()
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_with_the_request_id() {
        let app = with_request_id(per_route_layers(Router::new().route("/boom", get(boom))));
        let resp =
            call(app, Request::get("/boom").header(REQUEST_ID, "p-1").body(Body::empty()).unwrap()).await;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(resp.headers()[REQUEST_ID], "p-1");
    }

    #[tokio::test]
    async fn a_request_without_an_id_gets_a_fresh_one() {
        let app = with_request_id(per_route_layers(Router::new().route("/ok", get(|| async { "ok" }))));
        let first = call(app.clone(), Request::get("/ok").body(Body::empty()).unwrap()).await;
        let second = call(app, Request::get("/ok").body(Body::empty()).unwrap()).await;
        assert_eq!(first.status(), StatusCode::OK);
        let (a, b) = (&first.headers()[REQUEST_ID], &second.headers()[REQUEST_ID]);
        assert_eq!(a.len(), 36, "{a:?}");
        assert_ne!(a, b);
    }
}
