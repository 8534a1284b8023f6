//! A follower's status over HTTP (`restore -f --addr`): `GET /status` as text and
//! `GET /metrics` for Prometheus. One request per connection, a few at a time, each bounded
//! in time; nothing runs between requests.

use std::convert::Infallible;
use std::fmt::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use strata::follow::FollowStatus;
use tokio::sync::watch;

/// Connections served at once; more are closed as they arrive.
const MAX_CONNECTIONS: usize = 16;
/// How long a connection may stay open.
const CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds `addr` and serves the status `status` shows of the follower of `db`, from a task.
pub async fn start(
    addr: &str,
    status: watch::Receiver<FollowStatus>,
    db: PathBuf,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(super::serve::listen_addr(addr))
        .await
        .with_context(|| format!("cannot listen on --addr {addr}"))?;
    let bound = listener.local_addr()?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let db = Arc::new(db);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let (status, db) = (status.clone(), db.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let service = hyper::service::service_fn(move |request: Request<_>| {
                    let answer = respond(request.uri().path(), &status.borrow(), &db);
                    async move { Ok::<_, Infallible>(answer) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(CONNECTION_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            });
        }
    });
    Ok(bound)
}

fn respond(path: &str, status: &FollowStatus, db: &std::path::Path) -> Response<Full<Bytes>> {
    let (code, content_type, body) = match path {
        "/status" => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            render(status, db),
        ),
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics(status, db),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /status or /metrics\n".to_owned(),
        ),
    };
    Response::builder()
        .status(code)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

/// How many TXIDs the database is behind the newest the source is known to hold.
fn lag_txids(s: &FollowStatus) -> u64 {
    s.newest.get().saturating_sub(s.txid.get())
}

/// The status as text, a field a line.
fn render(s: &FollowStatus, db: &std::path::Path) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "db: {}", db.display());
    let _ = writeln!(out, "txid: {}", s.txid);
    let _ = writeln!(out, "newest: {} (the source's newest known)", s.newest);
    let _ = writeln!(out, "lag: {} TXIDs", lag_txids(s));
    if let Some(committed) = s.committed {
        let _ = writeln!(
            out,
            "committed: {committed} (on the primary, the TXID held)"
        );
    }
    let _ = writeln!(
        out,
        "uploaded: {} (the primary's replicas hold)",
        s.uploaded
    );
    let _ = writeln!(out, "connected: {}", if s.connected { "yes" } else { "no" });
    let _ = writeln!(
        out,
        "applied: {} files from the primary's stream, {} transactions from the replica, {} rebuilds",
        s.streamed, s.from_replica, s.rebuilds
    );
    if let Some(e) = &s.error {
        let _ = writeln!(out, "error: {e}");
    }
    if s.stopped {
        let _ = writeln!(out, "stopped");
    }
    out
}

/// The status in the OpenMetrics text format.
fn metrics(s: &FollowStatus, db: &std::path::Path) -> String {
    let label = db
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        let _ = writeln!(out, "{name}{{db=\"{label}\"}} {value}");
    };
    gauge(
        "strata_follow_txid",
        "The TXID the database holds.",
        s.txid.get(),
    );
    gauge(
        "strata_follow_newest_txid",
        "The newest TXID the source is known to hold.",
        s.newest.get(),
    );
    gauge(
        "strata_follow_lag_txids",
        "TXIDs the database is behind the newest known.",
        lag_txids(s),
    );
    gauge(
        "strata_follow_connected",
        "Whether the primary's stream is connected.",
        u64::from(s.connected),
    );
    gauge(
        "strata_follow_failing",
        "Whether the last step failed.",
        u64::from(s.error.is_some()),
    );
    gauge(
        "strata_follow_streamed_files",
        "Files applied from the primary's stream.",
        s.streamed,
    );
    gauge(
        "strata_follow_replica_transactions",
        "Transactions applied from the replica.",
        s.from_replica,
    );
    gauge(
        "strata_follow_rebuilds",
        "Rebuilds from the replica.",
        s.rebuilds,
    );
    out.push_str("# EOF\n");
    out
}
