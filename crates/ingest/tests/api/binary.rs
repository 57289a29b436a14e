//! The real `evp-ingest` binary: configuration errors, metrics, request ids, and SIGTERM draining.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use evp_testkit::{ChildGuard, RedisServer, free_port, program};

use crate::helpers::json_post;

const BIN: &str = env!("CARGO_BIN_EXE_evp-ingest");

fn ingest(env: &[(&str, &str)]) -> Command {
    program(BIN, env.iter().copied())
}

#[test]
fn a_bad_variable_stops_start_up_with_one_line_naming_it() {
    for (env, variable) in [
        (vec![("API_KEYS", "k"), ("PORT", "http")], "PORT"),
        (vec![("API_KEYS", "a:b:c")], "API_KEYS"),
        (vec![("API_KEYS", "k"), ("MAX_BODY_BYTES", "-1")], "MAX_BODY_BYTES"),
        (vec![("API_KEYS", "k"), ("STREAM_HIGH_WATER", "0")], "STREAM_HIGH_WATER"),
    ] {
        let out = ingest(&env).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{variable}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(variable), "{stderr}");
    }
}

/// A running `evp-ingest` binary with its own Redis (MongoDB unreachable: not needed here).
struct Ingest {
    redis: RedisServer,
    port: u16,
    child: ChildGuard,
    _dir: tempfile::TempDir,
}

fn start() -> Ingest {
    let (redis, port, dir) = (RedisServer::start(), free_port(), tempfile::tempdir().unwrap());
    let cmd = ingest(&[
        ("API_KEYS", "acme:k1"),
        ("REDIS_URL", &redis.url()),
        ("MONGODB_URI", "mongodb://127.0.0.1:9"),
        ("PORT", &port.to_string()),
        ("LOG_FORMAT", "json"),
    ]);
    let child = ChildGuard::serving("evp-ingest", cmd, &dir.path().join("ingest.log"), port);
    Ingest { redis, port, child, _dir: dir }
}

#[tokio::test]
async fn metrics_count_requests_and_events_and_responses_carry_a_request_id() {
    let running = start();
    let port = running.port;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let post = |path: &'static str, body: &'static str| {
        http.post(format!("{base}{path}"))
            .header("x-api-key", "k1")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let resp = post("/events/batch", r#"[{"type":"a"},{"type":"b"},{"type":"c"}]"#).await.unwrap();
    assert_eq!(resp.status(), 202);
    assert!(!resp.headers()["x-request-id"].is_empty());
    assert_eq!(post("/events", r#"{"type":"bad type"}"#).await.unwrap().status(), 400);
    assert_eq!(
        post("/events/batch", r#"[{"type":"ok"},{"type":"bad type"},{"type":"ok"}]"#).await.unwrap().status(),
        400
    );
    let singles = (0..50).map(|_| post("/events", r#"{"type":"single"}"#));
    for resp in futures::future::join_all(singles).await {
        assert_eq!(resp.unwrap().status(), 202);
    }
    let echoed =
        http.get(format!("{base}/health/live")).header("x-request-id", "trace-me-42").send().await.unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "trace-me-42");

    let text = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("evp_ingest_events_accepted_total 53"), "{text}");
    // Every accepted event went through exactly one Redis pipeline.
    assert!(text.contains("evp_ingest_redis_pipeline_events_sum 53"), "{text}");
    assert!(text.contains(r#"evp_ingest_requests_rejected_total{reason="invalid_event"} 2"#), "{text}");
    assert!(text.contains(r#"evp_ingest_events_rejected_total{reason="invalid_event"} 4"#), "{text}");
    assert!(
        text.contains(
            r#"evp_ingest_http_requests_total{route="/events/batch",method="POST",status="202"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"evp_ingest_http_requests_total{route="/events",method="POST",status="202"} 50"#),
        "{text}"
    );
    assert!(text.contains("evp_ingest_redis_xadd_duration_seconds_bucket"), "{text}");
    // No worker runs: the tenant's 53 events are its backlog (sampled in the background).
    let backlog = evp_testkit::eventually(Duration::from_secs(5), || async {
        let text = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines().any(|l| l.starts_with("evp_ingest_tenant_backlog{") && l.ends_with(" 53"))
    })
    .await;
    assert!(backlog, "evp_ingest_tenant_backlog of the tenant is 53");
}

#[tokio::test]
async fn a_failed_request_is_logged_once_with_its_request_id_route_and_cause() {
    let running = start();
    let (redis, port) = (&running.redis, running.port);
    // The stream's key holding a string makes Redis refuse every XADD (WRONGTYPE).
    let mut conn = redis.connection().await;
    let _: () = redis::cmd("SET").arg("events").arg("not a stream").query_async(&mut conn).await.unwrap();
    let http = reqwest::Client::new();
    let resp = json_post(&http, format!("http://127.0.0.1:{port}/events"), "k1", r#"{"type":"refused"}"#)
        .header("x-request-id", "failing-request-7")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body = resp.text().await.unwrap();
    assert!(!body.contains("WRONGTYPE"), "the internal cause must not reach the client: {body}");
    let ok = http.get(format!("http://127.0.0.1:{port}/health/live")).send().await.unwrap();
    assert_eq!(ok.status(), 200);

    let log = running.child.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.contains("failing-request-7"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(lines.len(), 1, "one line per failed request:\n{log}");
    let line = &lines[0];
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["request_id"], "failing-request-7", "{line}");
    assert_eq!(line["method"], "POST", "{line}");
    assert_eq!(line["route"], "/events", "{line}");
    assert_eq!(line["status"], 503, "{line}");
    assert!(line["latency_ms"].as_f64().is_some(), "{line}");
    assert!(
        line["error"].as_str().is_some_and(|e| e.contains("WRONGTYPE") && e.contains("1 event")),
        "{line}"
    );
    // Successful requests are logged at debug only, so not at the default level.
    assert!(!log.contains("/health/live"), "{log}");
}

#[tokio::test]
async fn sigterm_drains_the_request_in_flight_then_exits_0() {
    let mut running = start();
    let (redis, port) = (&running.redis, running.port);

    // A request whose body is still arriving when SIGTERM lands.
    let body = br#"{"type":"in_flight","id":"drained"}"#;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "POST /events HTTP/1.1\r\nhost: x\r\nx-api-key: k1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(&body[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let pid = running.child.pid().unwrap();
    assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    // The rest of the body goes only once the ingest has taken the signal (it logs it), so the
    // request is provably in flight during shutdown.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !running.child.log().contains("shutdown signal received") {
        assert!(
            std::time::Instant::now() < deadline,
            "the ingest never took SIGTERM:\n{}",
            running.child.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stream.write_all(&body[10..]).unwrap();
    let mut response = String::new();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 202"), "in-flight request was not drained: {response:?}");

    let code = running.child.signal_and_wait("TERM", Duration::from_secs(10));
    assert_eq!(code, Some(0), "log:\n{}", running.child.log());
    assert!(running.child.log().contains("evp-ingest stopped"));
    let mut conn = redis.connection().await;
    let len: usize = redis::cmd("XLEN").arg("events").query_async(&mut conn).await.unwrap();
    assert_eq!(len, 1);
    // New connections are refused once it has stopped.
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// `evp-ingest keys …` against the same MongoDB as a running ingest started without any key.
fn keys_cli(mongo_uri: &str, database: &str, args: &[&str]) -> (i32, String, String) {
    let out = ingest(&[("MONGODB_URI", mongo_uri), ("MONGODB_DATABASE", database)])
        .arg("keys")
        .args(args)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn an_ingest_without_keys_says_how_to_make_one_and_follows_keys_made_with_the_cli() {
    let (redis, mongo) = (RedisServer::start(), evp_testkit::MongoServer::start().await);
    let database = mongo.unique_database("cli");
    let (dir, port) = (tempfile::tempdir().unwrap(), free_port());
    let log = dir.path().join("ingest.log");
    let cmd = ingest(&[
        ("REDIS_URL", &redis.url()),
        ("MONGODB_URI", mongo.uri()),
        ("MONGODB_DATABASE", &database),
        ("PORT", &port.to_string()),
        ("KEY_REFRESH_MS", "200"),
        ("LOG_FORMAT", "json"),
    ]);
    let mut child = ChildGuard::spawn("evp-ingest", cmd, &log).unwrap();
    child.wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(10)).unwrap();
    let said = evp_testkit::eventually(Duration::from_secs(5), || async {
        std::fs::read_to_string(&log).unwrap_or_default().contains("evp-ingest keys create --tenant")
    })
    .await;
    assert!(said, "the log does not say how to make a key");

    let (code, out, err) =
        keys_cli(mongo.uri(), &database, &["create", "--tenant", "acme", "--name", "from the cli"]);
    assert_eq!(code, 0, "{err}");
    let created: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let (id, secret) = (created["id"].as_str().unwrap(), created["key"].as_str().unwrap());
    let http = reqwest::Client::new();
    let post = || {
        http.post(format!("http://127.0.0.1:{port}/events"))
            .header("x-api-key", secret)
            .header("content-type", "application/json")
            .body(r#"{"type":"cli"}"#)
            .send()
    };
    let accepted =
        evp_testkit::eventually(Duration::from_secs(3), || async { post().await.unwrap().status() == 202 })
            .await;
    assert!(accepted, "the running ingest never accepted the key made with the CLI");

    let (code, listed, _) = keys_cli(mongo.uri(), &database, &["list"]);
    assert_eq!(code, 0);
    assert!(listed.contains(id) && listed.contains("from the cli"), "{listed}");
    assert!(!listed.contains(secret.rsplit('_').next().unwrap()), "no secret in the list");
    assert!(
        !std::fs::read_to_string(&log).unwrap().contains(secret.rsplit('_').next().unwrap()),
        "nor in the log"
    );

    let (code, out, _) = keys_cli(mongo.uri(), &database, &["revoke", id]);
    assert_eq!((code, out.trim()), (0, format!("revoked {id}").as_str()));
    let refused =
        evp_testkit::eventually(Duration::from_secs(3), || async { post().await.unwrap().status() == 401 })
            .await;
    assert!(refused, "the running ingest still accepts a key revoked with the CLI");

    let (code, _, err) = keys_cli(mongo.uri(), &database, &["revoke", "0123456789abcdef"]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = keys_cli(mongo.uri(), &database, &["create", "--name", "no tenant"]);
    assert!(code != 0 && err.contains("tenant"), "{err}");
}
