//! `GET /analytics/metrics` against a real MongoDB-protocol server and Redis: counts per tenant,
//! type and bucket, empty buckets, the type filter, tenant isolation, and every bad parameter.
//! (The rollup job that fills `event_counts` is tested with real workers in evp-worker's fleet
//! tests; here nothing is rolled up yet, so every count comes from the not-yet-rolled tail.)

use serde_json::{Value, json};

use crate::helpers::{TestApp, expect_error};
use crate::read::{OPS_KEY, ReadApp};

/// `minutes` after 09:00 on 2026-11-20, plus `second` seconds.
fn at(minutes: u32, second: u32) -> String {
    format!("2026-11-20T{:02}:{:02}:{second:02}Z", 9 + minutes / 60, minutes % 60)
}

#[tokio::test]
async fn counts_per_type_and_bucket_are_the_tenants_own() {
    let r = ReadApp::start().await;
    let mut acme = Vec::new();
    for i in 0..30 {
        let event_type = ["view", "click", "buy"][i % 3];
        acme.push(json!({"type": event_type, "timestamp": at((i % 4) as u32 * 20, i as u32)}));
    }
    // globex: same types and minutes, other counts; one event far in the past.
    let globex: Vec<Value> = (0..7)
        .map(|i| json!({"type": "view", "timestamp": at(0, i)}))
        .chain([json!({"type": "view", "timestamp": "1999-01-01T00:00:00Z"})])
        .collect();
    r.send("key-acme", &acme).await;
    r.send("key-globex", &globex).await;
    r.store_stream().await;

    let window = "from=2026-11-20T09:00:00Z&to=2026-11-20T11:00:00Z";
    let body = r.page("key-acme", &format!("/analytics/metrics?{window}&bucket=hour")).await;
    assert_eq!(body["total"], 30, "{body}");
    assert_eq!(
        body["by_type"],
        json!([{"type": "buy", "count": 10}, {"type": "click", "count": 10}, {"type": "view", "count": 10}])
    );
    let series = body["series"].as_array().unwrap();
    assert_eq!(series.len(), 2, "one point per hour: {body}");
    assert_eq!(series[0]["start"], "2026-11-20T09:00:00Z");
    // i % 4 == 3 (7 of the 30) is at 10:00.
    assert_eq!((series[0]["count"].as_i64(), series[1]["count"].as_i64()), (Some(23), Some(7)));
    let later = r
        .page("key-acme", "/analytics/metrics?from=2026-11-20T11:00:00Z&to=2026-11-20T13:00:00Z&bucket=hour")
        .await;
    assert_eq!(
        later["series"],
        json!([{"start": "2026-11-20T11:00:00Z", "count": 0, "by_type": {}},
        {"start": "2026-11-20T12:00:00Z", "count": 0, "by_type": {}}]),
        "empty buckets are listed"
    );

    // Minutes: i % 4 picks minute 0, 20, 40 or 60 (= 10:00).
    let body = r.page("key-acme", &format!("/analytics/metrics?{window}&bucket=minute&type=view")).await;
    let series = body["series"].as_array().unwrap();
    assert_eq!(series.len(), 120);
    let nonzero: Vec<(String, i64)> = series
        .iter()
        .filter(|p| p["count"] != 0)
        .map(|p| (p["start"].as_str().unwrap().to_owned(), p["count"].as_i64().unwrap()))
        .collect();
    // view is i % 3 == 0: i = 0,3,..,27 → minutes (i % 4)·20.
    let mut expected = std::collections::BTreeMap::<String, i64>::new();
    for i in (0..30).step_by(3) {
        let m = (i % 4) * 20;
        let start =
            if m == 60 { "2026-11-20T10:00:00Z".to_owned() } else { format!("2026-11-20T09:{m:02}:00Z") };
        *expected.entry(start).or_default() += 1;
    }
    assert_eq!(nonzero, expected.into_iter().collect::<Vec<_>>(), "{body}");
    assert_eq!(body["by_type"], json!([{"type": "view", "count": 10}]));

    let globex_body = r.page("key-globex", &format!("/analytics/metrics?{window}")).await;
    assert_eq!(globex_body["total"], 7, "globex sees its own counts only: {globex_body}");
    let past = r
        .page("key-globex", "/analytics/metrics?from=1999-01-01T00:00:00Z&to=1999-01-02T00:00:00Z&bucket=day")
        .await;
    assert_eq!(past["total"], 1, "an old timestamp lands in its own day: {past}");
    let default_tenant = r.page("key-default", &format!("/analytics/metrics?{window}")).await;
    assert_eq!(default_tenant["total"], 0);
    let operator = r.page(OPS_KEY, &format!("/analytics/metrics?{window}")).await;
    assert_eq!(operator["total"], 37, "an operator key counts every tenant: {operator}");
    assert!(
        operator["pipeline"]["consumers"].is_array() && body["rollup"]["lag_seconds"].is_number(),
        "{body}"
    );
}

#[tokio::test]
async fn a_tenant_sees_only_its_own_pipeline_figures_and_an_operator_sees_the_whole() {
    let r = ReadApp::start().await;
    // No worker runs: acme's 30 events stay unstored.
    r.send("key-acme", &(0..30).map(|i| json!({"type": "view", "id": format!("p-{i}")})).collect::<Vec<_>>())
        .await;
    let mut conn = r.app.redis.connection().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&r.app.stream)
        .arg("evp-workers-group")
        .arg("0")
        .query_async(&mut conn)
        .await
        .unwrap();
    // A worker that has read some entries, so there is a consumer to hide.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("evp-workers-group")
        .arg("worker-secret-name")
        .arg("COUNT")
        .arg(5)
        .arg("STREAMS")
        .arg(&r.app.stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();

    let acme_sees = || async { r.page("key-acme", "/analytics/metrics").await["pipeline"].clone() };
    let seen = evp_testkit::eventually(std::time::Duration::from_secs(10), || async {
        let p = acme_sees().await;
        p["unstored"] == 30 && p["ingest_rate"].as_f64().is_some_and(|rate| rate > 0.0)
    })
    .await;
    assert!(seen, "acme's own backlog and rate: {}", acme_sees().await);
    let acme = acme_sees().await;
    let mut fields: Vec<&str> = acme.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort();
    assert_eq!(
        fields,
        ["ingest_rate", "processing_rate", "unstored"],
        "nothing of the shared pipeline: {acme}"
    );

    let globex = r.page("key-globex", "/analytics/metrics").await;
    assert_eq!(globex["pipeline"]["unstored"], 0, "{globex}");
    assert_eq!(globex["pipeline"]["ingest_rate"], 0.0, "acme's events are not globex's rate: {globex}");
    assert!(!globex.to_string().contains("worker-secret-name"), "{globex}");

    let operator = r.page(OPS_KEY, "/analytics/metrics").await["pipeline"].clone();
    assert_eq!(operator["unstored"], 30, "{operator}");
    assert_eq!(operator["stream_length"], 30, "{operator}");
    assert_eq!((operator["pending"].as_u64(), operator["lag"].as_u64()), (Some(5), Some(25)), "{operator}");
    assert_eq!(operator["consumers"][0]["name"], "worker-secret-name", "{operator}");
}

#[tokio::test]
async fn every_bad_parameter_is_400_naming_it() {
    let r = ReadApp::start().await;
    for (query, named) in [
        ("bucket=week", Some("bucket")),
        ("from=yesterday", Some("from")),
        ("to=2026-13-01T00:00:00Z", Some("to")),
        ("from=2026-11-20T10:00:00Z&to=2026-11-20T10:00:00Z", Some("to")),
        ("from=2026-11-21T00:00:00Z&to=2026-11-20T00:00:00Z", Some("to")),
        ("from=2000-01-01T00:00:00Z&to=2026-01-01T00:00:00Z&bucket=hour", Some("bucket")),
        ("type=has%20space", Some("type")),
        ("limit=5", None),
        ("bucket=hour&bucket=day", None),
    ] {
        let resp = r.get("key-acme", &format!("/analytics/metrics?{query}")).await;
        let body = expect_error(resp, 400, "invalid_query").await;
        if let Some(name) = named {
            assert_eq!(body["error"]["details"][0]["field"], name, "{query}: {body}");
        }
    }
    let ok = r
        .get("key-acme", "/analytics/metrics?from=2000-01-01T00:00:00Z&to=2026-01-01T00:00:00Z&bucket=day")
        .await;
    assert_eq!(ok.status(), 200, "9,497 days is within 10,000 points");
    expect_error(r.app.http.get(r.app.url("/analytics/metrics")).send().await.unwrap(), 401, "unauthorized")
        .await;
}

#[tokio::test]
async fn analytics_gets_503_while_mongodb_is_down() {
    let app = TestApp::spawn().await;
    let resp =
        app.http.get(app.url("/analytics/metrics")).header("x-api-key", "key-acme").send().await.unwrap();
    assert_eq!(resp.headers()["retry-after"], "1");
    expect_error(resp, 503, "service_unavailable").await;
}
