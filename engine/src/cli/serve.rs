//! The HTTP endpoint on `addr:` (Litestream's key): `GET /metrics` for Prometheus and
//! `GET /status` for `strata status`. Served with hyper, one task per connection; nothing
//! runs between requests. Connections are bounded in number and in time, so clients that
//! connect and say nothing cannot take the descriptors replication needs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use strata::store::Store;

/// Connections served at once; more are closed as they arrive.
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long one connection may stay open.
const CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// `addr:` as a socket address to listen on: Go's `:9090` (every interface) is accepted
/// as Litestream accepts it.
fn listen_addr(addr: &str) -> String {
    if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_owned()
    }
}

/// `addr:` as an address to connect to (`:9090` is this host).
pub fn connect_addr(addr: &str) -> String {
    if addr.starts_with(':') {
        format!("127.0.0.1{addr}")
    } else {
        addr.to_owned()
    }
}

/// Binds `addr` (failing at once if it cannot) and serves `store` from a task. Returns the
/// address bound (a port of 0 picks one).
pub async fn start(addr: &str, store: Arc<Store>) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen_addr(addr))
        .await
        .with_context(|| format!("cannot listen on addr {addr}"))?;
    let bound = listener.local_addr()?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, say: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accepting a metrics connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let service = hyper::service::service_fn(move |request| {
                    let store = store.clone();
                    async move { Ok::<_, Infallible>(respond(&store, &request).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            });
        }
    });
    Ok(bound)
}

async fn respond(store: &Store, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    // HEAD is answered as GET without the body (hyper leaves it out).
    if request.method() != hyper::Method::GET && request.method() != hyper::Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET or HEAD only\n".into(),
        );
    }
    match request.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            store.metrics().await,
        ),
        "/status" => reply(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            super::status_report::render(&store.status().await, jiff::Timestamp::now()),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics or /status\n".into(),
        ),
    }
}
