//! The HTTP endpoint on `addr:` (Litestream's key): `GET /metrics` for Prometheus,
//! `GET /status` for `strata status`, and `GET /NAME?txid=T`, the live stream of database
//! NAME for a follower (see `strata::stream`). Served with hyper, one task per connection
//! and one request per connection; nothing runs between requests. Connections are bounded
//! in number, and a client has a few seconds to send its request, so clients that connect
//! and say nothing cannot take the descriptors replication needs; a follower that stops
//! reading its stream is cut off.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use strata::store::{Store, StoreError};
use strata::stream;

/// Connections served at once (followers' streams included); more are closed as they
/// arrive.
const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long an answer other than a stream may take to make.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a connection other than a follower's stream may stay open.
const CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A response body: a whole answer, or a follower's stream.
type Body = BoxBody<Bytes, Infallible>;

/// `addr:` as a socket address to listen on: Go's `:9090` (every interface) is accepted
/// as Litestream accepts it.
pub(super) fn listen_addr(addr: &str) -> String {
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
                let streaming = Arc::new(AtomicBool::new(false));
                let service = {
                    let streaming = streaming.clone();
                    hyper::service::service_fn(move |request| {
                        let (store, streaming) = (store.clone(), streaming.clone());
                        async move {
                            let response = respond(&store, &request).await;
                            if response.headers().get(hyper::header::CONTENT_TYPE)
                                == Some(&hyper::header::HeaderValue::from_static(
                                    stream::CONTENT_TYPE,
                                ))
                            {
                                streaming.store(true, Ordering::Relaxed);
                            }
                            Ok::<_, Infallible>(response)
                        }
                    })
                };
                // One request per connection: a connection lasts as long as its answer,
                // at most CONNECTION_TIMEOUT unless it is a follower's stream (which
                // ends when the follower stops reading).
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                let mut connection = std::pin::pin!(connection);
                tokio::select! {
                    _ = &mut connection => {}
                    () = tokio::time::sleep(CONNECTION_TIMEOUT) => {
                        if streaming.load(Ordering::Relaxed) {
                            let _ = connection.await;
                        }
                    }
                }
            });
        }
    });
    Ok(bound)
}

async fn respond(store: &Store, request: &Request<Incoming>) -> Response<Body> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)).boxed())
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
    let answer = async {
        match request.uri().path() {
            "/metrics" => Some(reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                store.metrics().await,
            )),
            "/status" => Some(reply(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                super::status_report::render(&store.status().await, jiff::Timestamp::now()),
            )),
            _ => None,
        }
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Some(response)) => return response,
        Ok(None) => {}
        Err(_) => {
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "the answer took too long\n".into(),
            );
        }
    }
    stream(store, request)
        .await
        .unwrap_or_else(|(status, why)| {
            reply(status, "text/plain; charset=utf-8", format!("{why}\n"))
        })
}

/// `GET /NAME?txid=T`: the live stream of database NAME for a follower at TXID T.
async fn stream(
    store: &Store,
    request: &Request<Incoming>,
) -> Result<Response<Body>, (StatusCode, String)> {
    let raw = request.uri().path().trim_start_matches('/');
    let name = percent_decode(raw).ok_or_else(|| {
        (
            StatusCode::BAD_REQUEST,
            format!("{raw}: not a valid percent-encoded name"),
        )
    })?;
    let txid = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("txid="))
        .map(ltx::Txid::from_hex)
        .transpose()
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("txid: {e}")))?
        .unwrap_or(ltx::Txid::ZERO);
    let feed = store.feed(&name).await.map_err(|e| match e {
        StoreError::Unknown(_) => (
            StatusCode::NOT_FOUND,
            format!("no database named {name:?} here: try /metrics, /status, or /NAME for a database's stream"),
        ),
        StoreError::Ambiguous { .. } => (StatusCode::CONFLICT, e.to_string()),
        other => (StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    })?;
    let frames = stream::follower_body(feed, txid).map(|bytes| Ok(Frame::data(bytes)));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(hyper::header::CONTENT_TYPE, stream::CONTENT_TYPE)
        .header(hyper::header::CACHE_CONTROL, "no-store")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .expect("a valid response"))
}

/// `%XX` sequences decoded; `None` if one is malformed or the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
