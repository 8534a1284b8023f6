//! `heartbeat-url`: a GET to a monitoring service (healthchecks.io, Uptime Kuma and the
//! like) every `heartbeat-interval`, sent only while every database is replicating: no
//! sync or upload error, no replica lagging by more than the interval, none stopped. A
//! silent heartbeat is the alarm.

use std::sync::Arc;
use std::time::Duration;

use strata::store::{DbStatus, Store};

/// The default `heartbeat-interval` (Litestream's).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);

/// Starts pinging `url` from a task.
pub fn start(url: String, interval: Duration, store: Arc<Store>) -> anyhow::Result<()> {
    match url::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        Ok(_) => anyhow::bail!("heartbeat-url {url:?} is not an http:// or https:// URL"),
        Err(e) => anyhow::bail!("heartbeat-url {url:?} is not a URL: {e}"),
    }
    if interval.is_zero() {
        anyhow::bail!("heartbeat-interval must be above zero");
    }
    let client = super::http_client(interval.min(Duration::from_secs(30)))?;
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is at once: wait one interval, so a start that fails is not vouched for.
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let databases = store.status().await;
            if let Err(why) = healthy(&databases, interval, jiff::Timestamp::now()) {
                tracing::warn!(%why, "heartbeat not sent");
                continue;
            }
            match client.get(&url).send().await {
                Ok(r) if r.status().is_success() => tracing::debug!("heartbeat sent"),
                Ok(r) => tracing::warn!(status = %r.status(), "heartbeat refused"),
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
    });
    Ok(())
}

/// Whether every database is replicating and caught up to within `interval`; if not, why.
fn healthy(databases: &[DbStatus], interval: Duration, now: jiff::Timestamp) -> Result<(), String> {
    if databases.is_empty() {
        return Err("no databases".into());
    }
    for db in databases {
        let path = db.path.display();
        if let Some(e) = &db.failed {
            return Err(format!("{path}: stopped: {e}"));
        }
        // A disabled database is not being replicated, by choice.
        let Some(capture) = &db.capture else { continue };
        if let Some(e) = &capture.sync_error {
            return Err(format!("{path}: sync failing: {e}"));
        }
        for r in &capture.replicas {
            if let Some(e) = &r.stopped {
                return Err(format!("{path}: {} stopped: {e}", r.replica));
            }
            if let Some(e) = &r.upload_error {
                return Err(format!("{path}: {} failing: {e}", r.replica));
            }
            let lag = r.lag(now);
            if lag > interval {
                return Err(format!(
                    "{path}: {} {:.0} s behind",
                    r.replica,
                    lag.as_secs_f64()
                ));
            }
        }
    }
    Ok(())
}
