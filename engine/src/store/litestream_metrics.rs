//! What strata and Litestream 0.5.17 both measure, under Litestream's metric names and
//! labels, so its dashboards keep working: `litestream_txid`, `litestream_sync_count`,
//! `litestream_sync_error_count`, `litestream_sync_seconds`, `litestream_db_size`,
//! `litestream_wal_size` per `db`, and `litestream_replica_operation_total` and
//! `litestream_replica_operation_bytes` per `replica_type` and `operation`.
//!
//! Each is served as a gauge: the OpenMetrics format would suffix a counter's name with
//! `_total`, and the name is what a dashboard's query holds.

use std::collections::BTreeMap;
use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::DbStatus;
use super::metrics::Family;

#[derive(Debug)]
pub(super) struct Scrape {
    databases: Vec<Database>,
    /// (replica type, operation) to (requests, bytes).
    operations: BTreeMap<(&'static str, &'static str), (u64, Option<u64>)>,
}

/// One database's series.
#[derive(Debug)]
struct Database {
    path: String,
    txid: u64,
    syncs: u64,
    failed_syncs: u64,
    sync_seconds: f64,
    size: Option<u64>,
    wal_size: Option<u64>,
}

impl Scrape {
    /// Reads what it serves from `databases` (and the sizes of their files, now).
    pub(super) fn new(databases: &[DbStatus]) -> Scrape {
        let mut scrape = Scrape {
            databases: Vec::new(),
            operations: BTreeMap::new(),
        };
        for db in databases {
            let Some(capture) = &db.capture else {
                continue;
            };
            let size = |suffix: &str| {
                let mut path = db.path.clone().into_os_string();
                path.push(suffix);
                std::fs::metadata(path).ok().map(|m| m.len())
            };
            scrape.databases.push(Database {
                path: db.path.display().to_string(),
                txid: capture.staged.get(),
                syncs: capture.syncs,
                failed_syncs: capture.failed_syncs,
                sync_seconds: capture.sync_busy.as_secs_f64(),
                size: size(""),
                wal_size: size("-wal"),
            });
            for replica in &capture.replicas {
                let kind = replica_type(&replica.replica);
                let q = &replica.requests;
                for (operation, n, bytes) in [
                    ("GET", q.get, Some(q.get_bytes)),
                    ("PUT", q.put, None),
                    ("DELETE", q.delete, None),
                    ("LIST", q.list, None),
                ] {
                    let entry = scrape.operations.entry((kind, operation)).or_default();
                    entry.0 += n;
                    if let Some(b) = bytes {
                        *entry.1.get_or_insert(0) += b;
                    }
                }
            }
        }
        scrape
    }
}

/// Litestream's `replica_type` of a replica URL.
fn replica_type(url: &str) -> &'static str {
    match url.split_once("://").map(|(scheme, _)| scheme) {
        Some("s3") => "s3",
        Some("gs") => "gs",
        Some("abs") => "abs",
        _ => "file",
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let mut txid = Family::gauge("txid", "The current transaction ID");
        let mut syncs = Family::gauge("sync_count", "Number of sync operations performed");
        let mut errors = Family::gauge(
            "sync_error_count",
            "Number of sync errors that have occurred",
        );
        let mut seconds = Family::gauge("sync_seconds", "Time spent syncing, in seconds");
        let mut db_size = Family::gauge("db_size", "The current size of the real DB");
        let mut wal_size = Family::gauge("wal_size", "The current size of the real WAL");
        for db in &self.databases {
            let labels = vec![("db", db.path.clone())];
            txid.add(labels.clone(), db.txid as f64);
            syncs.add(labels.clone(), db.syncs as f64);
            errors.add(labels.clone(), db.failed_syncs as f64);
            seconds.add(labels.clone(), db.sync_seconds);
            if let Some(size) = db.size {
                db_size.add(labels.clone(), size as f64);
            }
            wal_size.add(labels, db.wal_size.unwrap_or(0) as f64);
        }
        let mut total = Family::gauge(
            "replica_operation_total",
            "The number of replica operations performed",
        );
        let mut bytes = Family::gauge(
            "replica_operation_bytes",
            "The number of bytes used by replica operations",
        );
        for ((kind, operation), (n, b)) in &self.operations {
            let labels = vec![
                ("replica_type", (*kind).to_owned()),
                ("operation", (*operation).to_owned()),
            ];
            total.add(labels.clone(), *n as f64);
            if let Some(b) = b {
                bytes.add(labels, *b as f64);
            }
        }
        for family in [
            &txid, &syncs, &errors, &seconds, &db_size, &wal_size, &total, &bytes,
        ] {
            family.encode(&mut encoder)?;
        }
        Ok(())
    }
}
