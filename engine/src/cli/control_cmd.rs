//! `strata list`, `info`, `sync`, `start`, `stop`, `register` and `unregister`:
//! Litestream's commands that ask a running `strata replicate` over its control socket
//! (see `control_socket`), with Litestream's flags and output.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;

use super::control_socket::{
    ErrorResponse, InfoResponse, ListResponse, PathRequest, RegisterRequest, RegisterResponse,
    StateResponse, SyncRequest, SyncResponse,
};

/// The flags every control command takes.
#[derive(Debug, Args)]
pub struct SocketArgs {
    /// The control socket of the running `strata replicate` (its config's socket.path).
    #[arg(long, default_value = strata::config::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print JSON instead of text (Litestream's fields).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    socket: SocketArgs,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    #[command(flatten)]
    socket: SocketArgs,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// The database, as the running process names it.
    db: PathBuf,
    #[command(flatten)]
    socket: SocketArgs,
    /// Return once the replica holds everything committed (not only staged).
    #[arg(long)]
    wait: bool,
    /// Seconds to wait, at most.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
}

/// `start`, `stop` and `unregister`.
#[derive(Debug, Args)]
pub struct ChangeArgs {
    /// The database, as the running process names it.
    db: PathBuf,
    #[command(flatten)]
    socket: SocketArgs,
    /// Seconds to wait, at most.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The database to replicate from now on.
    db: PathBuf,
    /// Where to: a replica URL.
    #[arg(long)]
    replica: String,
    #[command(flatten)]
    socket: SocketArgs,
    /// Seconds to wait, at most.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
}

/// One request to the socket: the status and the body of its answer.
async fn ask(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    let exchange = async {
        let stream = tokio::net::UnixStream::connect(socket).await.with_context(|| {
            format!(
                "failed to connect to control socket {}: is strata replicate running with socket: enabled?",
                socket.display()
            )
        })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .with_context(|| format!("no answer from {} within {timeout:?}", socket.display()))?
}

/// The answer's JSON as `T`, or the error it carries, named after `what`.
fn parse<T: serde::de::DeserializeOwned>(
    what: &str,
    (status, body): (hyper::StatusCode, Bytes),
) -> anyhow::Result<T> {
    if !status.is_success() {
        let reason = serde_json::from_slice::<ErrorResponse>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        bail!("{what} failed: {reason}");
    }
    serde_json::from_slice(&body).with_context(|| format!("failed to parse the {what} answer"))
}

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `GET path` on the socket, its answer as `T`.
async fn get<T: serde::de::DeserializeOwned>(
    socket: &Path,
    what: &str,
    timeout: u64,
) -> anyhow::Result<T> {
    let answer = ask(
        socket,
        "GET",
        &format!("/{what}"),
        None,
        Duration::from_secs(timeout),
    )
    .await?;
    parse(what, answer)
}

pub async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let list: ListResponse = get(&args.socket.socket, "list", args.timeout).await?;
    if args.socket.json {
        print_json(&list)?;
    } else if list.databases.is_empty() {
        println!("No databases configured");
    } else {
        for db in &list.databases {
            let at = db.last_sync_at.as_deref().unwrap_or("never");
            println!("{} [{}] (last sync: {at})", db.path, db.status);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn info(args: InfoArgs) -> anyhow::Result<ExitCode> {
    let info: InfoResponse = get(&args.socket.socket, "info", args.timeout).await?;
    if args.socket.json {
        print_json(&info)?;
    } else {
        println!("strata {}", info.version);
        println!("  PID:        {}", info.pid);
        println!("  Uptime:     {}s", info.uptime_seconds);
        println!("  Started at: {}", info.started_at);
        println!("  Databases:  {}", info.database_count);
    }
    Ok(ExitCode::SUCCESS)
}

/// What `sync` prints (Litestream's fields).
#[derive(Serialize)]
struct SyncResult {
    db_path: String,
    txid: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    replica_txid: Option<u64>,
    duration_ms: u128,
}

pub async fn sync(args: SyncArgs) -> anyhow::Result<ExitCode> {
    let path = std::path::absolute(&args.db)?;
    let request = SyncRequest {
        path: path.display().to_string(),
        wait: args.wait,
        timeout: args.timeout,
    };
    let started = Instant::now();
    let synced: SyncResponse = post(&args.socket.socket, "sync", &request, args.timeout).await?;
    let result = SyncResult {
        db_path: synced.path,
        txid: synced.txid,
        replica_txid: args.wait.then_some(synced.replicated_txid),
        duration_ms: started.elapsed().as_millis(),
    };
    if args.socket.json {
        print_json(&result)?;
    } else {
        println!("db_path: {}", result.db_path);
        println!("txid: {}", result.txid);
        if let Some(t) = result.replica_txid {
            println!("replica_txid: {t}");
        }
        println!("duration_ms: {}", result.duration_ms);
    }
    Ok(ExitCode::SUCCESS)
}

/// What `start` and `stop` print (Litestream's fields).
#[derive(Serialize)]
struct StateResult {
    status: String,
    db_path: String,
    state: &'static str,
    txid: u64,
    socket: String,
}

/// What `unregister` prints.
#[derive(Serialize)]
struct UnregisterResult {
    status: String,
    db_path: String,
    final_txid: u64,
    socket: String,
}

/// What `register` prints.
#[derive(Serialize)]
struct RegisterResult {
    status: String,
    db_path: String,
    replica: String,
    socket: String,
}

/// `POST verb` with `body`, waiting a moment more than the server may.
async fn post<T: serde::de::DeserializeOwned>(
    socket: &Path,
    verb: &str,
    body: &impl Serialize,
    timeout: u64,
) -> anyhow::Result<T> {
    let answer = ask(
        socket,
        "POST",
        &format!("/{verb}"),
        Some(serde_json::to_vec(body)?),
        Duration::from_secs(timeout).saturating_add(Duration::from_secs(5)),
    )
    .await?;
    parse(verb, answer)
}

/// Prints `fields` as `name: value` lines, or `value` as JSON.
fn print_fields<T: Serialize>(
    value: &T,
    json: bool,
    fields: &[(&str, String)],
) -> anyhow::Result<()> {
    if json {
        return print_json(value);
    }
    for (name, field) in fields {
        println!("{name}: {field}");
    }
    Ok(())
}

/// `start`, `stop` or `unregister` (`verb`).
pub async fn change(verb: &str, args: ChangeArgs) -> anyhow::Result<ExitCode> {
    let path = std::path::absolute(&args.db)?;
    let request = PathRequest {
        path: path.display().to_string(),
        timeout: i64::try_from(args.timeout).unwrap_or(i64::MAX),
    };
    let answer: StateResponse = post(&args.socket.socket, verb, &request, args.timeout).await?;
    let socket = args.socket.socket.display().to_string();
    if verb == "unregister" {
        let result = UnregisterResult {
            status: answer.status,
            db_path: answer.path,
            final_txid: answer.txid,
            socket,
        };
        let fields = [
            ("status", result.status.clone()),
            ("db_path", result.db_path.clone()),
            ("final_txid", result.final_txid.to_string()),
            ("socket", result.socket.clone()),
        ];
        print_fields(&result, args.socket.json, &fields)?;
    } else {
        let result = StateResult {
            status: answer.status,
            db_path: answer.path,
            state: if verb == "start" {
                "running"
            } else {
                "stopped"
            },
            txid: answer.txid,
            socket,
        };
        let fields = [
            ("status", result.status.clone()),
            ("db_path", result.db_path.clone()),
            ("state", result.state.to_owned()),
            ("txid", result.txid.to_string()),
            ("socket", result.socket.clone()),
        ];
        print_fields(&result, args.socket.json, &fields)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn register(args: RegisterArgs) -> anyhow::Result<ExitCode> {
    let path = std::path::absolute(&args.db)?;
    let request = RegisterRequest {
        path: path.display().to_string(),
        replica_url: args.replica.clone(),
    };
    let answer: RegisterResponse =
        post(&args.socket.socket, "register", &request, args.timeout).await?;
    let result = RegisterResult {
        status: answer.status,
        db_path: answer.path,
        replica: args.replica,
        socket: args.socket.socket.display().to_string(),
    };
    let shown = match result.status.as_str() {
        "already_registered" => "already registered".to_owned(),
        other => other.to_owned(),
    };
    let fields = [
        ("status", shown),
        ("db_path", result.db_path.clone()),
        ("replica", result.replica.clone()),
        ("socket", result.socket.clone()),
    ];
    print_fields(&result, args.socket.json, &fields)?;
    Ok(ExitCode::SUCCESS)
}
