//! Prometheus metrics for a [`Store`](super::Store), in the OpenMetrics text format.
//!
//! Everything is read from the databases' status at each scrape: the counts live in one
//! place (the status an application reads too), and an idle store does no work for metrics
//! between scrapes. Names start with `strata_`; series carry `db` (the database path) and,
//! where they concern one replica, `replica` (its URL). What Litestream measures too is
//! also served under its name (see `litestream_metrics`).

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use super::DbStatus;
use crate::capture::ReplicaStatus;

pub(super) type Labels = Vec<(&'static str, String)>;

/// The metrics of `databases`, as of `now`, in the OpenMetrics text format.
pub(super) fn encode(databases: Vec<DbStatus>, now: jiff::Timestamp) -> String {
    let mut registry = Registry::default();
    registry
        .sub_registry_with_prefix("litestream")
        .register_collector(Box::new(super::litestream_metrics::Scrape::new(&databases)));
    registry
        .sub_registry_with_prefix("strata")
        .register_collector(Box::new(Scrape { databases, now }));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

#[derive(Debug)]
struct Scrape {
    databases: Vec<DbStatus>,
    now: jiff::Timestamp,
}

/// One metric family: its series, written under one descriptor.
pub(super) struct Family {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    counter: bool,
    series: Vec<(Labels, f64)>,
}

impl Family {
    pub(super) fn counter(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            unit: None,
            counter: true,
            series: Vec::new(),
        }
    }

    pub(super) fn gauge(name: &'static str, help: &'static str) -> Family {
        Family {
            counter: false,
            ..Family::counter(name, help)
        }
    }

    fn seconds(self) -> Family {
        Family {
            unit: Some(Unit::Seconds),
            ..self
        }
    }

    fn bytes(self) -> Family {
        Family {
            unit: Some(Unit::Bytes),
            ..self
        }
    }

    pub(super) fn add(&mut self, labels: Labels, value: f64) {
        self.series.push((labels, value));
    }

    pub(super) fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        if self.series.is_empty() {
            return Ok(());
        }
        let kind = if self.counter {
            MetricType::Counter
        } else {
            MetricType::Gauge
        };
        let mut metric =
            encoder.encode_descriptor(self.name, self.help, self.unit.as_ref(), kind)?;
        for (labels, value) in &self.series {
            let series = metric.encode_family(labels)?;
            if self.counter {
                ConstCounter::new(*value).encode(series)?;
            } else {
                ConstGauge::new(*value).encode(series)?;
            }
        }
        Ok(())
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let mut states = Family::gauge("databases", "Databases in the store, by state.");
        let (mut running, mut disabled, mut failed) = (0, 0, 0);
        let mut staged = Family::gauge("staged_txid", "The newest TXID staged locally.");
        let mut syncs = Family::counter("syncs", "Sync ticks run.");
        let mut sync_errors = Family::counter("sync_errors", "Sync ticks that failed.");
        let mut sync_time = Family::counter("sync", "Time spent syncing.").seconds();
        let mut last_sync = Family::gauge(
            "last_sync_timestamp",
            "When the last sync succeeded (Unix time).",
        )
        .seconds();
        let mut full_copies = Family::counter("full_copies", "Full copies of the database staged.");
        let mut replicas = Replicas::default();
        for db in &self.databases {
            let name = db.path.display().to_string();
            match (&db.failed, db.enabled) {
                (Some(_), _) => failed += 1,
                (None, true) => running += 1,
                (None, false) => disabled += 1,
            }
            let Some(capture) = &db.capture else {
                continue;
            };
            let labels = vec![("db", name.clone())];
            staged.add(labels.clone(), capture.staged.get() as f64);
            syncs.add(labels.clone(), capture.syncs as f64);
            sync_errors.add(labels.clone(), capture.failed_syncs as f64);
            sync_time.add(labels.clone(), capture.sync_busy.as_secs_f64());
            full_copies.add(labels.clone(), capture.full_copies as f64);
            if let Some(t) = capture.last_sync {
                last_sync.add(labels, unix_seconds(t));
            }
            for replica in &capture.replicas {
                replicas.add(&name, replica, self.now);
            }
        }
        for (state, n) in [
            ("running", running),
            ("disabled", disabled),
            ("failed", failed),
        ] {
            states.add(vec![("state", state.to_owned())], f64::from(n));
        }
        for family in [
            &states,
            &staged,
            &syncs,
            &sync_errors,
            &sync_time,
            &last_sync,
            &full_copies,
        ] {
            family.encode(&mut encoder)?;
        }
        replicas.encode(&mut encoder)
    }
}

/// The per-replica families.
struct Replicas {
    txid: Family,
    lag: Family,
    stopped: Family,
    uploads: Family,
    upload_errors: Family,
    upload_time: Family,
    requests: Family,
    get_bytes: Family,
    level_files: Family,
    level_bytes: Family,
    passes: Family,
    pass_errors: Family,
    pass_time: Family,
    written_files: Family,
    written_bytes: Family,
    retention_passes: Family,
    retention_errors: Family,
    retention_time: Family,
    deleted: Family,
}

impl Default for Replicas {
    fn default() -> Replicas {
        Replicas {
            txid: Family::gauge("replica_txid", "The newest TXID the replica holds."),
            lag: Family::gauge(
                "replica_lag",
                "How long the replica has lacked something staged (0: it holds everything).",
            )
            .seconds(),
            stopped: Family::gauge(
                "replica_stopped",
                "1 if the replica is no longer written to (another history found in it).",
            ),
            uploads: Family::counter("uploads", "Upload rounds run."),
            upload_errors: Family::counter("upload_errors", "Upload rounds that failed."),
            upload_time: Family::counter("upload", "Time spent uploading.").seconds(),
            requests: Family::counter("requests", "Requests made to the replica, by kind."),
            get_bytes: Family::counter("get", "Bytes received by GET requests.").bytes(),
            level_files: Family::gauge("level_files", "Files in each level of the replica."),
            level_bytes: Family::gauge("level", "Bytes in each level of the replica.").bytes(),
            passes: Family::counter("compaction_passes", "Compaction passes run, by level."),
            pass_errors: Family::counter(
                "compaction_errors",
                "Compaction passes that failed, by level.",
            ),
            pass_time: Family::counter("compaction", "Time spent compacting, by level.").seconds(),
            written_files: Family::counter(
                "compaction_files_written",
                "Files compaction wrote, by level.",
            ),
            written_bytes: Family::counter(
                "compaction_written",
                "Bytes compaction wrote, by level.",
            )
            .bytes(),
            retention_passes: Family::counter("retention_passes", "Retention passes run."),
            retention_errors: Family::counter("retention_errors", "Retention passes that failed."),
            retention_time: Family::counter("retention", "Time spent in retention.").seconds(),
            deleted: Family::counter("retention_deleted_files", "Files retention deleted."),
        }
    }
}

impl Replicas {
    fn add(&mut self, db: &str, r: &ReplicaStatus, now: jiff::Timestamp) {
        let labels = vec![("db", db.to_owned()), ("replica", r.replica.clone())];
        let with = |key: &'static str, value: String| {
            let mut l = labels.clone();
            l.push((key, value));
            l
        };
        self.txid.add(labels.clone(), r.uploaded.get() as f64);
        self.lag.add(labels.clone(), r.lag(now).as_secs_f64());
        self.stopped
            .add(labels.clone(), f64::from(u8::from(r.stopped.is_some())));
        self.uploads.add(labels.clone(), r.uploads as f64);
        self.upload_errors
            .add(labels.clone(), r.failed_uploads as f64);
        self.upload_time
            .add(labels.clone(), r.upload_busy.as_secs_f64());
        let q = &r.requests;
        for (kind, n) in [
            ("list", q.list),
            ("get", q.get),
            ("put", q.put),
            ("delete", q.delete),
        ] {
            self.requests.add(with("kind", kind.to_owned()), n as f64);
        }
        self.get_bytes.add(labels.clone(), q.get_bytes as f64);
        for (level, files) in &r.levels {
            let l = with("level", level.get().to_string());
            self.level_files.add(l.clone(), files.files as f64);
            self.level_bytes.add(l, files.bytes as f64);
        }
        let Some(c) = &r.compaction else {
            return;
        };
        for (level, s) in &c.levels {
            let l = with("level", level.get().to_string());
            self.passes.add(l.clone(), s.passes as f64);
            self.pass_errors.add(l.clone(), s.failed_passes as f64);
            self.pass_time.add(l.clone(), s.busy.as_secs_f64());
            self.written_files.add(l.clone(), s.files_written as f64);
            self.written_bytes.add(l, s.bytes_written as f64);
        }
        self.retention_passes
            .add(labels.clone(), c.retention_passes as f64);
        self.retention_errors
            .add(labels.clone(), c.failed_retention_passes as f64);
        self.retention_time
            .add(labels.clone(), c.retention_busy.as_secs_f64());
        self.deleted.add(labels, c.deleted as f64);
    }

    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        for family in [
            &self.txid,
            &self.lag,
            &self.stopped,
            &self.uploads,
            &self.upload_errors,
            &self.upload_time,
            &self.requests,
            &self.get_bytes,
            &self.level_files,
            &self.level_bytes,
            &self.passes,
            &self.pass_errors,
            &self.pass_time,
            &self.written_files,
            &self.written_bytes,
            &self.retention_passes,
            &self.retention_errors,
            &self.retention_time,
            &self.deleted,
        ] {
            family.encode(encoder)?;
        }
        Ok(())
    }
}

fn unix_seconds(t: jiff::Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}
