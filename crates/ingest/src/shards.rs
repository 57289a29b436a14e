//! One server thread per core.
//!
//! The ingest does not serve on tokio's work-stealing runtime. Each of its server threads runs a
//! single-threaded runtime with its own copy of the app, and with it its own Redis connection and
//! coalescer ([`crate::state::AppState::on_this_runtime`]), so a request is parsed, appended to the
//! stream and answered on one thread. On the work-stealing runtime the request's task, the
//! coalescer and the Redis connection's task woke each other across threads and cost 10–40% more
//! CPU per single-event request, varying from one process to the next (docs/PERFORMANCE.md).
//!
//! One listening socket accepts connections on the caller's runtime and hands them to the threads
//! in turn, so every thread gets the same number of connections and the port behaves as any
//! single socket does (a second process cannot bind it; closing it refuses new connections).
//! A connection stays on its thread for its whole life. The acceptor admits a connection only
//! while the [`ConnectionCap`] has room (else closes it at once), and each thread serves its
//! connections with hyper within [`connections`](crate::connections)' time bounds.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use axum::extract::Request;
use axum::response::Response;
use axum::serve::Listener;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

use crate::connections::{ConnectionCap, ConnectionSlot, Phase, Timeouts, Watched};

/// How connections are bounded: in number, and in time.
#[derive(Debug, Clone)]
pub struct Bounds {
    pub cap: ConnectionCap,
    pub timeouts: Timeouts,
}

impl Bounds {
    /// The bounds `config` names (`MAX_CONNECTIONS`, `HTTP_HEADER_TIMEOUT_MS`, `HTTP_IDLE_TIMEOUT_MS`).
    pub fn of(config: &crate::IngestConfig) -> Self {
        Self { cap: ConnectionCap::new(config.max_connections), timeouts: config.timeouts }
    }
}

/// An accepted connection on its way to a server thread, with its place under the cap.
type Accepted = (std::net::TcpStream, SocketAddr, ConnectionSlot);

/// Accepted connections waiting for their thread; the acceptor waits when a thread falls this far
/// behind.
const HANDOFF_QUEUE: usize = 256;

/// Serves `listener` on `threads` server threads until `shutdown` is cancelled, then stops
/// accepting and gives in-flight requests up to `drain_timeout`.
///
/// `make_app` runs once on each thread's runtime (so the tasks it spawns live there) and returns
/// that thread's service. The call returns when every thread has stopped; the first failure of a
/// thread stops the others and is the error.
pub async fn serve<F, S>(
    listener: TcpListener,
    threads: usize,
    make_app: F,
    shutdown: CancellationToken,
    drain_timeout: Duration,
    bounds: Bounds,
) -> anyhow::Result<()>
where
    F: Fn() -> anyhow::Result<S> + Send + Sync + 'static,
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let local = listener.local_addr()?;
    let make_app = Arc::new(make_app);
    let mut handoffs = Vec::with_capacity(threads);
    let mut stopped = FuturesUnordered::new();
    for i in 0..threads.max(1) {
        let (handoff, connections) = mpsc::channel(HANDOFF_QUEUE);
        let (done, finished) = oneshot::channel();
        let incoming = Handoff { connections, local };
        let (make_app, stop, timeouts) = (make_app.clone(), shutdown.clone(), bounds.timeouts);
        let spawned = std::thread::Builder::new().name(format!("evp-ingest-{i}")).spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("server thread runtime")
                .and_then(|rt| {
                    rt.block_on(serve_thread(incoming, &*make_app, stop, drain_timeout, timeouts))
                });
            let _ = done.send(result);
        });
        if let Err(e) = spawned {
            shutdown.cancel(); // the threads already started stop too
            return Err(e).context("cannot start a server thread");
        }
        handoffs.push(handoff);
        stopped.push(finished);
    }
    tokio::spawn(accept(listener, handoffs, bounds.cap, shutdown.clone()));

    let mut first_error = None;
    while let Some(stopped) = stopped.next().await {
        let error = match stopped {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(_) => anyhow!("a server thread panicked"),
        };
        shutdown.cancel();
        first_error.get_or_insert(error);
    }
    first_error.map_or(Ok(()), Err)
}

/// Accepts connections and hands them to the server threads in turn, until shutdown; then drops
/// the listening socket, so new connections are refused.
async fn accept(
    mut listener: TcpListener,
    handoffs: Vec<mpsc::Sender<Accepted>>,
    cap: ConnectionCap,
    shutdown: CancellationToken,
) {
    let mut handoffs = handoffs.iter().cycle();
    loop {
        // axum's accept: logs and retries on errors (a full file table waits a second).
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = Listener::accept(&mut listener) => accepted,
        };
        let Some(slot) = cap.try_admit() else {
            // Every place is taken: closed at once, so the acceptor never waits.
            metrics::counter!(crate::metrics::CONNECTIONS_REFUSED).increment(1);
            drop(stream);
            continue;
        };
        let Some(handoff) = handoffs.next() else { return };
        // Leave this runtime's reactor; the server thread registers it with its own.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "could not hand over a connection; closing it");
                continue;
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            sent = handoff.send((stream, peer, slot)) => if sent.is_err() { return }, // the thread has stopped
        }
    }
}

async fn serve_thread<F, S>(
    mut incoming: Handoff,
    make_app: &F,
    shutdown: CancellationToken,
    drain_timeout: Duration,
    timeouts: Timeouts,
) -> anyhow::Result<()>
where
    F: Fn() -> anyhow::Result<S>,
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let app = make_app()?;
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, slot) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = incoming.next() => match accepted {
                Some(accepted) => accepted,
                None => break,
            },
        };
        let phase = Phase::new(timeouts);
        let service = {
            let (app, phase) = (app.clone(), phase.clone());
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                phase.request_started();
                let (app, phase) = (app.clone(), phase.clone());
                async move {
                    let response = app.oneshot(request.map(axum::body::Body::new)).await;
                    phase.request_finished();
                    response
                }
            })
        };
        let connection = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(Watched::new(stream, phase.clone())), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            tokio::select! {
                _ = connection => {}
                _ = phase.expired() => {} // dropped: the socket is closed
            }
            drop(slot);
        });
    }
    // Stop accepting; let the requests in flight finish (idle connections close at once).
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain_timeout) => {
            tracing::warn!(?drain_timeout, "in-flight requests did not finish in time; exiting anyway");
        }
    }
    Ok(())
}

/// A server thread's side of the handoff.
struct Handoff {
    connections: mpsc::Receiver<Accepted>,
    local: SocketAddr,
}

impl Handoff {
    /// The next connection, registered with this thread's reactor; `None` once the acceptor has
    /// stopped (shutdown has begun).
    async fn next(&mut self) -> Option<(TcpStream, ConnectionSlot)> {
        loop {
            let (stream, _peer, slot) = self.connections.recv().await?;
            match TcpStream::from_std(stream) {
                Ok(stream) => return Some((stream, slot)),
                Err(e) => {
                    tracing::warn!(error = %e, local = %self.local, "could not take over a connection; closing it")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::routing::get;

    use super::*;

    fn bounds() -> Bounds {
        let timeouts = Timeouts { header: Duration::from_secs(10), idle: Duration::from_secs(60) };
        Bounds { cap: ConnectionCap::new(100), timeouts }
    }

    /// Answers with the name of the thread that served the request.
    fn thread_name_app() -> anyhow::Result<Router> {
        let name = || async { std::thread::current().name().unwrap_or("unnamed").to_owned() };
        Ok(Router::new().route("/", get(name)))
    }

    #[tokio::test]
    async fn connections_go_to_the_threads_in_turn_and_stay_there_then_shutdown_closes_the_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            3,
            thread_name_app,
            shutdown.clone(),
            Duration::from_secs(5),
            bounds(),
        ));

        let mut served_by = Vec::new();
        for _ in 0..6 {
            // A client of its own: a new connection, then a second request on the same one.
            let client = reqwest::Client::new();
            let first = client.get(&url).send().await.unwrap().text().await.unwrap();
            let second = client.get(&url).send().await.unwrap().text().await.unwrap();
            assert_eq!(first, second, "a connection moved between threads");
            served_by.push(first);
        }
        served_by.sort();
        let expected =
            ["evp-ingest-0", "evp-ingest-0", "evp-ingest-1", "evp-ingest-1", "evp-ingest-2", "evp-ingest-2"];
        assert_eq!(served_by, expected);

        shutdown.cancel();
        let stopped =
            tokio::time::timeout(Duration::from_secs(5), server).await.expect("serve did not return");
        assert!(stopped.unwrap().is_ok());
        assert!(reqwest::get(&url).await.is_err(), "the port must be closed after shutdown");
    }

    #[tokio::test]
    async fn a_thread_that_cannot_build_its_app_stops_the_others_and_is_the_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let calls = AtomicUsize::new(0);
        let make_app = move || match calls.fetch_add(1, Ordering::Relaxed) {
            1 => Err(anyhow!("no Redis client for this thread")),
            _ => thread_name_app(),
        };
        let shutdown = CancellationToken::new();
        let served = serve(listener, 3, make_app, shutdown.clone(), Duration::from_secs(5), bounds());
        let error = tokio::time::timeout(Duration::from_secs(5), served).await.expect("serve did not return");
        assert_eq!(error.unwrap_err().to_string(), "no Redis client for this thread");
        assert!(shutdown.is_cancelled());
    }
}
