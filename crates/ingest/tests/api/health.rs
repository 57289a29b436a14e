//! Health, readiness, Redis outages and recovery, and the OpenAPI document.

use std::time::{Duration, Instant};

use evp_testkit::MongoServer;
use serde_json::Value;

use crate::helpers::{TestApp, expect_error};

#[tokio::test]
async fn health_reports_each_dependency_and_redis_outage_is_503_then_recovers() {
    let mongo = MongoServer::start().await;
    let mut app = TestApp::spawn_with(mongo.uri(), |_| {}).await;

    let resp = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["dependencies"]["redis"]["status"], "up");
    assert_eq!(body["dependencies"]["mongodb"]["status"], "up");
    assert_eq!(app.http.get(app.url("/health/ready")).send().await.unwrap().status(), 200);
    assert_eq!(app.http.get(app.url("/health/live")).send().await.unwrap().status(), 200);

    app.redis.stop();

    let started = Instant::now();
    let resp = app.post("/events", "key-acme", r#"{"type":"during_outage"}"#).await;
    assert!(started.elapsed() < Duration::from_secs(5), "a request must not hang while Redis is down");
    assert_eq!(resp.headers()["retry-after"], "1");
    expect_error(resp, 503, "service_unavailable").await;
    let resp = app.post("/events/batch", "key-acme", r#"[{"type":"a"},{"type":"b"}]"#).await;
    expect_error(resp, 503, "service_unavailable").await;

    let resp = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["dependencies"]["redis"]["status"], "down", "{body}");
    assert_eq!(body["dependencies"]["mongodb"]["status"], "up", "{body}");
    assert_eq!(app.http.get(app.url("/health/ready")).send().await.unwrap().status(), 503);
    assert_eq!(app.http.get(app.url("/health/live")).send().await.unwrap().status(), 200);

    // Same port, empty server: the ingest reconnects by itself.
    app.redis.restart();
    let mut status = 0;
    for _ in 0..100 {
        status =
            app.post("/events", "key-acme", r#"{"type":"after_outage","id":"back"}"#).await.status().as_u16();
        if status == 202 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 202, "the ingest did not recover after Redis came back");
    let entries = app.entries().await;
    assert_eq!(entries.len(), 1, "only the event sent after recovery is in the new stream");
    assert_eq!(entries[0]["id"], "back");
    assert_eq!(app.http.get(app.url("/health/ready")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn health_is_503_when_mongodb_is_down() {
    let app = TestApp::spawn().await;
    let resp = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["dependencies"]["redis"]["status"], "up", "{body}");
    assert_eq!(body["dependencies"]["mongodb"]["status"], "down", "{body}");
    assert_eq!(body["keys_stale"], true, "the keys made at runtime cannot be reloaded: {body}");
    // Readiness is about accepting events, which needs only Redis.
    assert_eq!(app.http.get(app.url("/health/ready")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn openapi_documents_every_route_and_the_api_key_scheme() {
    let app = TestApp::spawn().await;
    let doc: Value = app.http.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    let expected = [
        "/admin/dlq",
        "/admin/dlq/purge",
        "/admin/dlq/replay",
        "/admin/keys",
        "/admin/keys/{id}",
        "/aggregates/{aggregate_id}/events",
        "/analytics/metrics",
        "/dashboard",
        "/events",
        "/events/batch",
        "/events/{id}",
        "/health",
        "/health/live",
        "/health/ready",
        "/metrics",
        "/subscriptions",
        "/subscriptions/{name}",
        "/subscriptions/{name}/ack",
        "/subscriptions/{name}/nack",
        "/subscriptions/{name}/poll",
        "/subscriptions/{name}/reset",
        "/whoami",
    ];
    assert_eq!(paths, expected, "the document lists every route");
    let scheme = &doc["components"]["securitySchemes"]["api_key"];
    assert_eq!(scheme["type"], "apiKey");
    assert_eq!(scheme["in"], "header");
    assert_eq!(scheme["name"], "x-api-key");
    // Every operation of every path: it is served (what it answers is one of its documented
    // statuses), and when it needs a key it says so, documents 401 and answers 401 without one;
    // an operator route documents and answers 403 to a tenant key.
    let mut operations = 0;
    for (path, methods) in doc["paths"].as_object().unwrap() {
        let url = app.url(&path.replace("{id}", "k").replace("{aggregate_id}", "agg").replace("{name}", "s"));
        for (method, op) in methods.as_object().unwrap() {
            operations += 1;
            let documented = |status: u16| op["responses"][status.to_string()].is_object();
            let request = |key: Option<&str>| {
                let mut r = app
                    .http
                    .request(method.to_uppercase().parse().unwrap(), &url)
                    .header("content-type", "application/json");
                if let Some(key) = key {
                    r = r.header("x-api-key", key);
                }
                if method == "post" { r.body("{}") } else { r }
            };
            let keyed = op["security"][0]["api_key"] == serde_json::json!([]);
            if keyed {
                assert!(documented(401), "{method} {path} does not document 401");
                expect_error(request(None).send().await.unwrap(), 401, "unauthorized").await;
                if path.starts_with("/admin") {
                    assert!(documented(403), "{method} {path} does not document 403");
                    expect_error(request(Some("key-acme")).send().await.unwrap(), 403, "forbidden").await;
                }
            } else {
                let status = request(None).send().await.unwrap().status().as_u16();
                assert!(documented(status), "{method} {path} answered {status}, which it does not document");
            }
            assert!(
                op["responses"].as_object().unwrap().keys().any(|s| s.starts_with('2')),
                "{method} {path}"
            );
        }
    }
    assert_eq!(operations, 26);
    for path in ["/events", "/events/batch"] {
        let op = &doc["paths"][path]["post"];
        for status in ["202", "400", "401", "408", "413", "415", "422", "429", "503"] {
            assert!(op["responses"][status].is_object(), "{path} does not document {status}");
        }
    }
    for schema in ["EventRequest", "BatchRequest", "Accepted", "ErrorResponse"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "schema {schema} missing");
    }
    assert!(doc["components"]["schemas"]["EventRequest"]["example"].is_object(), "examples are documented");

    let ui = app.http.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(ui.status(), 200);
    assert!(ui.text().await.unwrap().to_lowercase().contains("swagger"));
    let unknown = app.http.get(app.url("/nowhere")).send().await.unwrap();
    expect_error(unknown, 404, "not_found").await;
}

#[tokio::test]
async fn cancelling_the_shutdown_token_stops_serving_and_run_returns_ok() {
    let app = TestApp::spawn().await;
    assert_eq!(app.post("/events", "key-acme", r#"{"type":"a"}"#).await.status(), 202);
    app.shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(5), app.task).await.expect("run did not return");
    assert!(result.unwrap().is_ok());
    let after = reqwest::Client::new().get(format!("http://{}/health/live", app.addr)).send().await;
    assert!(after.is_err(), "the listener must be closed after shutdown");
}
