//! Litestream's control socket (`socket:` in the config): HTTP over a Unix socket, with
//! Litestream 0.5.17's requests and JSON answers, so `strata list`, `info` and `sync` (and
//! Litestream's own commands) can ask a running `strata replicate`:
//! `GET /list`, `GET /info`, and `POST /sync` with `{"path", "wait", "timeout"}`. The
//! commands that change what is replicated (start, stop, register, unregister, reset)
//! answer 501 for now.

use std::convert::Infallible;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use strata::store::{Store, StoreError};

/// Connections served at once.
const MAX_CONNECTIONS: usize = 64;
/// The largest request body read.
const MAX_BODY: usize = 64 << 10;
/// How long `sync -wait` waits when the request names no timeout (Litestream's 30 s).
const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// `GET /list`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ListResponse {
    pub databases: Vec<DatabaseSummary>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct DatabaseSummary {
    pub path: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sync_at: Option<String>,
}

/// `GET /info`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct InfoResponse {
    pub version: String,
    pub pid: u32,
    pub uptime_seconds: i64,
    pub started_at: String,
    pub database_count: usize,
}

/// `POST /sync`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SyncRequest {
    pub path: String,
    #[serde(default)]
    pub wait: bool,
    #[serde(default)]
    pub timeout: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SyncResponse {
    pub status: String,
    pub path: String,
    pub txid: u64,
    pub replicated_txid: u64,
}

/// An error answer.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ErrorResponse {
    pub error: String,
}

/// Binds the socket at `path` with mode `permissions` (a socket file left by a process
/// that is gone is replaced; a live one is an error) and serves `store` from a task.
pub async fn start(path: &Path, permissions: u32, store: Arc<Store>) -> anyhow::Result<()> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "the control socket {} is in use by another process",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(permissions))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    let started = jiff::Timestamp::now();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let service = hyper::service::service_fn(move |request| {
                    let store = store.clone();
                    async move { Ok::<_, Infallible>(respond(&store, request, started).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    json(
        status,
        &ErrorResponse {
            error: message.into(),
        },
    )
}

async fn respond(
    store: &Store,
    request: Request<Incoming>,
    started: jiff::Timestamp,
) -> Response<Full<Bytes>> {
    let route = (request.method().clone(), request.uri().path().to_owned());
    match (route.0.as_str(), route.1.as_str()) {
        ("GET", "/list") => json(StatusCode::OK, &list(store).await),
        ("GET", "/info") => json(
            StatusCode::OK,
            &InfoResponse {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                pid: std::process::id(),
                uptime_seconds: (jiff::Timestamp::now() - started).get_seconds(),
                started_at: format!("{started:.0}"),
                database_count: store.status().await.len(),
            },
        ),
        ("POST", "/sync") => {
            let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
                Ok(body) => body.to_bytes(),
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("request body: {e}")),
            };
            match serde_json::from_slice::<SyncRequest>(&body) {
                Ok(req) if req.path.is_empty() => error(StatusCode::BAD_REQUEST, "path required"),
                Ok(req) => sync(store, req).await,
                Err(e) => error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid request body: {e}"),
                ),
            }
        }
        ("POST", "/start" | "/stop" | "/register" | "/unregister" | "/reset") => error(
            StatusCode::NOT_IMPLEMENTED,
            format!(
                "{} is not served by strata yet: change the config and send SIGHUP",
                route.1
            ),
        ),
        _ => error(StatusCode::NOT_FOUND, format!("no {} {}", route.0, route.1)),
    }
}

async fn list(store: &Store) -> ListResponse {
    let mut databases: Vec<DatabaseSummary> = store
        .status()
        .await
        .into_iter()
        .map(|db| DatabaseSummary {
            path: db.path.display().to_string(),
            status: if db.failed.is_none() && db.enabled {
                "replicating"
            } else {
                "stopped"
            }
            .to_owned(),
            // When a replica last took an upload (Litestream's "last successful sync").
            last_sync_at: db
                .capture
                .and_then(|c| c.replicas.iter().filter_map(|r| r.last_upload).max())
                .map(|t| format!("{t:.0}")),
        })
        .collect();
    databases.sort_by(|a, b| a.path.cmp(&b.path));
    ListResponse { databases }
}

async fn sync(store: &Store, req: SyncRequest) -> Response<Full<Bytes>> {
    let path = Path::new(&req.path);
    let known = |e: StoreError| match e {
        StoreError::Unknown(_) => error(StatusCode::NOT_FOUND, e.to_string()),
        StoreError::Disabled(_) => error(StatusCode::CONFLICT, e.to_string()),
        e => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let now = |status: &str, txid: u64| {
        json(
            StatusCode::OK,
            &SyncResponse {
                status: status.to_owned(),
                path: req.path.clone(),
                txid,
                replicated_txid: txid,
            },
        )
    };
    if !req.wait {
        // Capture stages each commit as it is made: what is committed is staged already.
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        return match store
            .status()
            .await
            .into_iter()
            .find(|s| s.path == canonical)
        {
            Some(s) => {
                let (staged, uploaded) = s
                    .capture
                    .as_ref()
                    .map_or((0, 0), |c| (c.staged.get(), c.uploaded.get()));
                json(
                    StatusCode::OK,
                    &SyncResponse {
                        status: "synced_local".to_owned(),
                        path: req.path.clone(),
                        txid: staged,
                        replicated_txid: uploaded,
                    },
                )
            }
            None => known(StoreError::Unknown(canonical)),
        };
    }
    let wait = match req.timeout {
        0 => DEFAULT_WAIT,
        s => Duration::from_secs(s),
    };
    match tokio::time::timeout(wait, store.sync(path)).await {
        Ok(Ok(txid)) => now("synced", txid.get()),
        Ok(Err(e)) => known(e),
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the replica did not hold everything committed within {} s",
                wait.as_secs()
            ),
        ),
    }
}
