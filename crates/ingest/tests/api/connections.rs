//! Connections bounded in number and time, against the real binary: slow sockets are closed
//! within the header timeout, more of them than the cap do not take the ingest down, idle
//! keep-alive connections are closed, and a body that does not arrive in time gets 408.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use evp_testkit::{ChildGuard, RedisServer, free_port, program};

const BIN: &str = env!("CARGO_BIN_EXE_evp-ingest");

/// The ingest under `ulimit -n <open_files>`, with `env`.
fn start(
    redis: &RedisServer,
    dir: &tempfile::TempDir,
    open_files: u32,
    env: &[(&str, &str)],
) -> (ChildGuard, u16) {
    let port = free_port();
    let (url, port_text) = (redis.url(), port.to_string());
    let base = [
        ("API_KEYS", "acme:k1"),
        ("REDIS_URL", url.as_str()),
        ("MONGODB_URI", "mongodb://127.0.0.1:9"),
        ("PORT", port_text.as_str()),
        ("LOG_FORMAT", "json"),
    ];
    let mut cmd = program("bash", base.into_iter().chain(env.iter().copied()));
    cmd.arg("-c").arg(format!("ulimit -n {open_files} && exec {BIN}"));
    (ChildGuard::serving("evp-ingest", cmd, &dir.path().join("ingest.log"), port), port)
}

/// A keyed single event on a new connection; `None` when the connection was closed unanswered.
fn keyed_post(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let body = r#"{"type":"after"}"#;
    let request = format!(
        "POST /events HTTP/1.1\r\nhost: x\r\nx-api-key: k1\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    answer.lines().next().map(str::to_string).filter(|l| !l.is_empty())
}

/// Waits until the server closes `s` (EOF or reset); returns how long that took, or `None` if it
/// is still open after `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0_u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => continue, // an answer (none expected here); keep reading to the close
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return None;
            }
            Err(_) => return Some(started.elapsed()), // reset
        }
    }
}

/// Whether the server has closed `s` already (without waiting).
fn is_closed_now(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0_u8; 64];
    let closed = match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

/// Everything the server sends until it closes the connection (or 5 s pass).
fn read_all(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0_u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn slow_sockets_past_the_cap_are_closed_and_a_keyed_client_is_served_again() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    // 400 open files: MAX_CONNECTIONS defaults to 400 - 256 = 144.
    let (mut ingest, port) = start(&redis, &dir, 400, &[("HTTP_HEADER_TIMEOUT_MS", "1500")]);
    assert_eq!(keyed_post(port).as_deref(), Some("HTTP/1.1 202 Accepted"));

    let opened = Instant::now();
    let mut slow: Vec<TcpStream> = (0..300)
        .filter_map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.write_all(b"POST /events HTTP/1.1\r\nHost: x\r\n").ok()?;
            Some(s)
        })
        .collect();
    assert!(slow.len() > 144, "only {} slow sockets were opened", slow.len());
    // Those past the cap are closed at once, well before the header timeout...
    std::thread::sleep(Duration::from_millis(300));
    let at_once = slow.iter_mut().map(is_closed_now).filter(|closed| *closed).count();
    assert!(opened.elapsed() < Duration::from_millis(1_500), "checked too late: {:?}", opened.elapsed());
    assert!(at_once >= slow.len() - 144 - 2, "{at_once} of {} closed at once", slow.len());
    assert!(at_once < slow.len(), "the ones under the cap wait for the header timeout");
    // ...and every other one within the header timeout plus a little.
    for s in &mut slow {
        closed_within(s, Duration::from_secs(4)).expect("a slow socket stayed open");
    }
    assert!(opened.elapsed() < Duration::from_millis(1_500 + 2_500), "{:?}", opened.elapsed());
    assert!(ingest.is_running(), "the ingest stays up");
    assert_eq!(keyed_post(port).as_deref(), Some("HTTP/1.1 202 Accepted"), "served again");

    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    let metrics = read_all(&mut s);
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("evp_ingest_connections_refused_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(refused >= (slow.len() - 144) as f64 - 2.0, "{refused} connections refused at the cap");
}

#[test]
fn an_idle_keep_alive_connection_is_closed_and_a_late_body_gets_408() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (_ingest, port) =
        start(&redis, &dir, 1024, &[("HTTP_IDLE_TIMEOUT_MS", "1000"), ("HTTP_BODY_TIMEOUT_MS", "1000")]);

    // One request answered, then nothing: closed after the idle timeout, not before.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut buf = [0_u8; 1024];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "answered first");
    let closed = closed_within(&mut s, Duration::from_secs(4)).expect("the idle connection stayed open");
    assert!(closed >= Duration::from_millis(800), "closed after {closed:?}, before the idle timeout");

    // A body announced as 100 bytes of which 10 arrive: 408 once the body deadline passes.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(
        b"POST /events HTTP/1.1\r\nhost: x\r\nx-api-key: k1\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"type\":\"",
    )
    .unwrap();
    let started = Instant::now();
    let answer = read_all(&mut s);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\"") && answer.contains("HTTP_BODY_TIMEOUT_MS"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(keyed_post(port).as_deref(), Some("HTTP/1.1 202 Accepted"));
}
