//! An application that embeds strata: it replicates its own database, waits for each write
//! to be in the replica before acknowledging it, and shuts down cleanly. Then it restores the
//! replica beside the database and checks the two hold the same rows.
//!
//! ```text
//! cargo run --release --example embedded -- [REPLICA_URL] [WRITES]
//! ```
//!
//! With no URL the replica is a directory next to a temporary database. Prints the latency
//! of `Store::sync` (commit to durable in the replica) at p50 and p99.

use std::sync::Arc;
use std::time::{Duration, Instant};

use strata::capture::CaptureOptions;
use strata::restore::{NoProgress, RestoreOptions, RestorePoint};
use strata::storage::{Replica, ReplicaUrl};
use strata::store::{Database, Store, StoreOptions};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("embedded: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let work = tempfile::tempdir()?;
    let url: ReplicaUrl = match args.next() {
        Some(url) => url.parse()?,
        None => ReplicaUrl::File {
            root: work.path().join("replica"),
        },
    };
    let writes: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(200);
    let db_path = work.path().join("app.db");
    let app = rusqlite::Connection::open(&db_path)?;
    app.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE orders(id INTEGER PRIMARY KEY, item TEXT NOT NULL, at TEXT NOT NULL);",
    )?;

    // The embedding: a store on this runtime, one database in it.
    let store = Store::new(StoreOptions::default());
    let db = store
        .add(Database::new(&db_path, url.clone()).with_options(CaptureOptions::default()))
        .await?;

    let mut latencies = Vec::with_capacity(writes);
    for i in 0..writes {
        app.execute(
            "INSERT INTO orders(item, at) VALUES (?1, datetime('now'))",
            [format!("item {i}")],
        )?;
        // Acknowledge the order only once it is in the replica.
        let started = Instant::now();
        let txid = tokio::time::timeout(Duration::from_secs(30), store.sync(&db)).await??;
        latencies.push(started.elapsed());
        if i + 1 == writes {
            println!("{writes} writes durable through TXID {txid}");
        }
    }
    for status in store.status().await {
        let capture = status.capture.unwrap_or_default();
        println!(
            "{}: staged {}, in the replica {}",
            status.path.display(),
            capture.staged,
            capture.uploaded
        );
    }
    for (path, result) in store.shutdown().await {
        result.map_err(|e| format!("{}: {e}", path.display()))?;
    }
    latencies.sort();
    let at = |p: usize| latencies[(latencies.len() - 1) * p / 100];
    println!(
        "store.sync latency to {url}: p50 {:.1} ms, p99 {:.1} ms",
        at(50).as_secs_f64() * 1e3,
        at(99).as_secs_f64() * 1e3
    );

    // The replica restores to the rows the application wrote.
    let restored = work.path().join("restored.db");
    let replica = Replica::open(&url)?;
    strata::restore::restore(
        &replica,
        RestorePoint::Latest,
        &restored,
        &RestoreOptions::default(),
        Arc::new(NoProgress),
    )
    .await?;
    let rows = |conn: &rusqlite::Connection| -> rusqlite::Result<Vec<(i64, String, String)>> {
        let mut stmt = conn.prepare("SELECT id, item, at FROM orders ORDER BY id")?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect()
    };
    let (ours, theirs) = (rows(&app)?, rows(&rusqlite::Connection::open(&restored)?)?);
    if ours != theirs || ours.len() != writes {
        return Err(format!(
            "the restored replica holds {} rows, the database {} ({} written)",
            theirs.len(),
            ours.len(),
            writes
        )
        .into());
    }
    println!("restored replica equals the database: {} rows", ours.len());
    Ok(())
}
