//! Litestream's control socket (`socket:` in the config): HTTP over a Unix socket, with
//! Litestream 0.5.17's requests and JSON answers, so `strata list`, `info`, `sync`,
//! `start`, `stop`, `register` and `unregister` (and Litestream's own commands) can ask a
//! running `strata replicate`: `GET /list`, `GET /info`, `POST /sync` with
//! `{"path", "wait", "timeout"}`, `POST /start`, `/stop` and `/unregister` with
//! `{"path", "timeout"}`, and `POST /register` with `{"path", "replica_url"}`.

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
use strata::storage::ReplicaUrl;
use strata::store::{Database, DbStatus, Store, StoreError};

/// Connections served at once.
const MAX_CONNECTIONS: usize = 64;
/// The largest request body read.
const MAX_BODY: usize = 64 << 10;
/// How long a request's body may take to arrive: a client that stalls midway gives up its
/// connection slot, so a few slow clients cannot lock the others out.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);
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

/// `POST /start`, `/stop` and `/unregister`: the database and how long to wait, in seconds
/// (0 or less: 30).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct PathRequest {
    pub path: String,
    #[serde(default)]
    pub timeout: i64,
}

/// The answer to `POST /start`, `/stop` and `/unregister`: what was done and the newest
/// TXID staged.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct StateResponse {
    pub status: String,
    pub path: String,
    pub txid: u64,
}

/// `POST /register`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RegisterRequest {
    pub path: String,
    pub replica_url: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RegisterResponse {
    pub status: String,
    pub path: String,
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
        ("POST", "/sync") => match body::<SyncRequest>(request).await {
            Ok(req) if req.path.is_empty() => error(StatusCode::BAD_REQUEST, "path required"),
            Ok(req) => sync(store, req).await,
            Err(answer) => answer,
        },
        ("POST", "/register") => match body::<RegisterRequest>(request).await {
            Ok(req) => register(store, req).await,
            Err(answer) => answer,
        },
        ("POST", verb @ ("/start" | "/stop" | "/unregister")) => {
            match body::<PathRequest>(request).await {
                Ok(req) if req.path.is_empty() => error(StatusCode::BAD_REQUEST, "path required"),
                Ok(req) => change(store, verb, req).await,
                Err(answer) => answer,
            }
        }
        _ => error(StatusCode::NOT_FOUND, format!("no {} {}", route.0, route.1)),
    }
}

/// The request's JSON body as `T`, or the answer refusing it.
async fn body<T: serde::de::DeserializeOwned>(
    request: Request<Incoming>,
) -> Result<T, Response<Full<Bytes>>> {
    let read = Limited::new(request.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(e)) => return Err(error(StatusCode::BAD_REQUEST, format!("request body: {e}"))),
        Err(_) => {
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            ));
        }
    };
    serde_json::from_slice(&body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
        )
    })
}

/// The store's status of the database `path` names, if it has it.
async fn find(store: &Store, path: &Path) -> Option<DbStatus> {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    store
        .status()
        .await
        .into_iter()
        .find(|s| s.path == canonical)
}

/// The newest TXID staged for the database: its capture's, or for one not captured now
/// (stopped) what its staging directory holds.
fn staged(status: Option<&DbStatus>) -> u64 {
    let Some(status) = status else { return 0 };
    match &status.capture {
        Some(c) => c.staged.get(),
        None => strata::capture::local_txid(&status.path)
            .ok()
            .flatten()
            .map_or(0, |t| t.get()),
    }
}

fn store_error(e: StoreError) -> Response<Full<Bytes>> {
    match e {
        StoreError::Unknown(_) => error(StatusCode::NOT_FOUND, e.to_string()),
        StoreError::Disabled(_) => error(StatusCode::CONFLICT, e.to_string()),
        e => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `start`, `stop` or `unregister` of one database, within the request's timeout.
async fn change(store: &Store, verb: &str, req: PathRequest) -> Response<Full<Bytes>> {
    let path = Path::new(&req.path);
    let wait = match u64::try_from(req.timeout) {
        Ok(s) if s > 0 => Duration::from_secs(s),
        _ => DEFAULT_WAIT,
    };
    let before = find(store, path).await;
    let answer = |status: &str, txid: u64| {
        json(
            StatusCode::OK,
            &StateResponse {
                status: status.to_owned(),
                path: req.path.clone(),
                txid,
            },
        )
    };
    let Some(before) = before else {
        return match verb {
            "/unregister" => answer("already_unregistered", 0),
            _ => error(
                StatusCode::NOT_FOUND,
                format!("database not found: {}", req.path),
            ),
        };
    };
    let running = before.enabled && before.failed.is_none();
    let done = match verb {
        "/start" if running => return answer("already_running", staged(Some(&before))),
        "/stop" if !before.enabled => return answer("already_stopped", staged(Some(&before))),
        "/start" => {
            tokio::time::timeout(wait, async { store.enable(path).await.map(|()| None) }).await
        }
        "/stop" => tokio::time::timeout(wait, async { store.disable(path).await.map(Some) }).await,
        _ => tokio::time::timeout(wait, async { store.remove(path).await.map(Some) }).await,
    };
    let stopped = match done {
        Ok(Ok(stopped)) => stopped,
        Ok(Err(e)) => return store_error(e),
        Err(_) => {
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                format!("{} did not finish within {} s", &verb[1..], wait.as_secs()),
            );
        }
    };
    // A stopped capture's final TXID; a started one's as it is now.
    let txid = match stopped {
        Some(status) => status.staged.get().max(staged(Some(&before))),
        None => staged(find(store, path).await.as_ref()),
    };
    let status = match verb {
        "/start" => "started",
        "/stop" => "stopped",
        _ => "unregistered",
    };
    answer(status, txid)
}

/// `register`: a database replicated to `replica_url` from now on (until the config is
/// applied again at SIGHUP or the process stops), with the default settings.
async fn register(store: &Store, req: RegisterRequest) -> Response<Full<Bytes>> {
    if req.path.is_empty() {
        return error(StatusCode::BAD_REQUEST, "path required");
    }
    if req.replica_url.is_empty() {
        return error(StatusCode::BAD_REQUEST, "replica_url required");
    }
    let answer = |status: &str| {
        json(
            StatusCode::OK,
            &RegisterResponse {
                status: status.to_owned(),
                path: req.path.clone(),
            },
        )
    };
    if find(store, Path::new(&req.path)).await.is_some() {
        return answer("already_registered");
    }
    let url = match ReplicaUrl::parse(&req.replica_url) {
        Ok(url) => url,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, format!("invalid replica url: {e}"));
        }
    };
    match store.add(Database::new(&req.path, url)).await {
        Ok(_) => answer("registered"),
        // Registered by a request that ran at the same time.
        Err(StoreError::AlreadyAdded(_)) => answer("already_registered"),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to register database: {e}"),
        ),
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
    if !req.wait {
        // Capture stages each commit as it is made: what is committed is staged already.
        return match find(store, path).await {
            Some(s) if !s.enabled || s.failed.is_some() => error(
                StatusCode::CONFLICT,
                format!("database not open: {} is not being replicated", req.path),
            ),
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
            None => store_error(StoreError::Unknown(path.to_owned())),
        };
    }
    let wait = match req.timeout {
        0 => DEFAULT_WAIT,
        s => Duration::from_secs(s),
    };
    match tokio::time::timeout(wait, store.sync(path)).await {
        Ok(Ok(txid)) => json(
            StatusCode::OK,
            &SyncResponse {
                status: "synced".to_owned(),
                path: req.path.clone(),
                txid: txid.get(),
                replicated_txid: txid.get(),
            },
        ),
        Ok(Err(e)) => store_error(e),
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the replica did not hold everything committed within {} s",
                wait.as_secs()
            ),
        ),
    }
}
