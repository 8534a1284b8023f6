//! Configuration: durations in Litestream's form, and the YAML file `strata replicate
//! --config` reads, which accepts Litestream's keys for the same settings so an existing
//! `litestream.yml` works unchanged for them.

mod accepted;
mod databases;
mod duration;
mod replica_defaults;
#[cfg(test)]
mod tests;
mod text;
mod yaml;

use std::path::PathBuf;
use std::time::Duration;

use yaml_rust2::{Yaml, YamlLoader};

use crate::storage::ReplicaUrl;
use databases::{check_replicas_unshared, db_config};
pub use duration::{parse_duration, parse_interval};
use replica_defaults::ReplicaDefaults;
use text::{MAX_CONFIG_BYTES, check_expansion, expand_env, read_config};
use yaml::{as_list, as_map, boolean, check_keys, duration, get, interval, string};

/// A configuration problem, naming the key (`dbs[0].replica.url`) it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// Where in the file.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

fn error(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// One database to replicate.
#[derive(Clone, Debug, PartialEq)]
pub struct DbConfig {
    /// The database file.
    pub path: PathBuf,
    /// Where it is replicated: one replica or more (`replica`, or `replicas` with one entry
    /// or several), in the order given.
    pub replicas: Vec<ReplicaUrl>,
    /// How often a sync writes an L0 file: the larger of the database's `monitor-interval`
    /// and its replica's `sync-interval`, if either is set.
    pub sync_interval: Option<Duration>,
    /// Per-database checkpoint settings, if set.
    pub checkpoint_interval: Option<Duration>,
    /// `min-checkpoint-page-count`.
    pub min_checkpoint_pages: Option<u32>,
    /// `truncate-page-n`.
    pub truncate_pages: Option<u32>,
    /// `busy-timeout`: how long capture waits for the database's locks.
    pub busy_timeout: Option<Duration>,
    /// `max-sync-wal-bytes`: the most WAL bytes one L0 file takes.
    pub max_wal_bytes: Option<u64>,
    /// `restore-if-db-not-exists`: restore it from its first replica before starting if
    /// the file does not exist.
    pub restore_if_missing: bool,
    /// Directory mode (`dir`, `pattern`, `recursive`, `watch`): `path` is then the directory
    /// and `replica` the root under which each database found gets its own.
    pub dir: Option<DirSource>,
}

/// A directory of databases (Litestream's `dir`, `pattern`, `recursive`, `watch`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DirSource {
    /// Glob matched against file names (`*` and `?`, as in `*.db`).
    pub pattern: String,
    /// Look in subdirectories too.
    pub recursive: bool,
    /// Keep looking: databases created later are added, deleted ones removed.
    pub watch: bool,
}

impl DirSource {
    /// Files matching `pattern`, not recursive, not watched.
    pub fn new(pattern: impl Into<String>) -> DirSource {
        DirSource {
            pattern: pattern.into(),
            recursive: false,
            watch: false,
        }
    }
}

impl DbConfig {
    /// `path` replicated to `replica`, with the defaults for everything else.
    pub fn new(path: impl Into<PathBuf>, replica: ReplicaUrl) -> DbConfig {
        DbConfig {
            path: path.into(),
            replicas: vec![replica],
            sync_interval: None,
            checkpoint_interval: None,
            min_checkpoint_pages: None,
            truncate_pages: None,
            busy_timeout: None,
            max_wal_bytes: None,
            restore_if_missing: false,
            dir: None,
        }
    }
}

/// A compaction level's interval (levels 1 and up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LevelConfig {
    /// How often the level compacts.
    pub interval: Duration,
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    /// Databases.
    pub dbs: Vec<DbConfig>,
    /// Compaction levels 1 and up (`levels`).
    pub levels: Vec<LevelConfig>,
    /// Snapshot interval (`snapshot.interval`).
    pub snapshot_interval: Option<Duration>,
    /// Snapshot retention (`snapshot.retention`).
    pub snapshot_retention: Option<Duration>,
    /// L0 retention (`l0-retention`).
    pub l0_retention: Option<Duration>,
    /// Whether retention deletes files (`retention.enabled`).
    pub retention_enabled: Option<bool>,
    /// How long a file that makes others unnecessary must have been in the replica before
    /// they are deleted (`retention.grace`, strata's own key).
    pub retention_grace: Option<Duration>,
    /// How long a shutdown may spend on the final sync and upload (`shutdown-sync-timeout`).
    pub shutdown_sync_timeout: Option<Duration>,
    /// Where `strata replicate` serves `/metrics` and `/status` (`addr`, e.g. `:9090` or
    /// `127.0.0.1:9090`).
    pub addr: Option<String>,
    /// A URL fetched every `heartbeat_interval` while every database is replicating and its
    /// replicas are caught up (`heartbeat-url`).
    pub heartbeat_url: Option<String>,
    /// See `heartbeat_url` (`heartbeat-interval`, default 5m).
    pub heartbeat_interval: Option<Duration>,
    /// The control socket (`socket:` with `enabled: true`), if served.
    pub socket: Option<SocketConfig>,
    /// A command `strata replicate` runs while replicating (`exec`, as its `--exec`).
    pub exec: Option<String>,
}

/// Litestream's control socket: a Unix socket the `list`, `info` and `sync` commands ask.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SocketConfig {
    /// Where it is (`path`, default `/var/run/litestream.sock`).
    pub path: PathBuf,
    /// Its mode (`permissions`, octal, default 0600).
    pub permissions: u32,
}

/// Where Litestream puts the control socket when the config names no path.
pub const DEFAULT_SOCKET: &str = "/var/run/litestream.sock";

impl Config {
    /// Parses YAML text. Environment variables (`$VAR`, `${VAR}`) are expanded first, as
    /// Litestream does. Unknown keys are errors naming the key.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with(text, true)
    }

    /// Parses YAML text, expanding environment variables only if `expand` (Litestream's
    /// `-no-expand-env` turns it off).
    pub fn parse_with(text: &str, expand: bool) -> Result<Config, ConfigError> {
        Config::parse_inner(text, expand, true)
    }

    /// Reads the settings of a file that need not list databases (`strata compact`).
    pub fn load_settings(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = read_config(path)?;
        Config::parse_inner(&text, true, false).map_err(|e| ConfigError {
            key: format!("{}: {}", path.display(), e.key),
            reason: e.reason,
        })
    }

    fn parse_inner(text: &str, expand: bool, require_dbs: bool) -> Result<Config, ConfigError> {
        let text = if expand {
            expand_env(text)
        } else {
            text.to_owned()
        };
        if text.len() > MAX_CONFIG_BYTES {
            return Err(error(
                "(file)",
                format!(
                    "{} bytes after expanding variables; a config has at most {MAX_CONFIG_BYTES}",
                    text.len()
                ),
            ));
        }
        check_expansion(&text)?;
        let docs = YamlLoader::load_from_str(&text).map_err(|e| error("(file)", e.to_string()))?;
        let root = docs
            .into_iter()
            .next()
            .unwrap_or(Yaml::Hash(Default::default()));
        let map = as_map(&root, "(top level)")?;
        let mut known = vec![
            "socket",
            "exec",
            "dbs",
            "levels",
            "snapshot",
            "l0-retention",
            "retention",
            "shutdown-sync-timeout",
            "addr",
            "heartbeat-url",
            "heartbeat-interval",
        ];
        known.extend(accepted::names(accepted::TOP));
        // Litestream's settings for every replica that gives none of its own.
        known.extend(replica_defaults::KEYS);
        check_keys(map, "", &known)?;
        let replica_defaults = ReplicaDefaults::from_top(map)?;
        accepted::warn(map, "", accepted::TOP);
        let mut config = Config {
            dbs: Vec::new(),
            levels: Vec::new(),
            snapshot_interval: None,
            snapshot_retention: None,
            l0_retention: duration(map, "", "l0-retention")?,
            retention_enabled: None,
            retention_grace: None,
            shutdown_sync_timeout: duration(map, "", "shutdown-sync-timeout")?,
            addr: string(map, "", "addr")?,
            heartbeat_url: string(map, "", "heartbeat-url")?,
            heartbeat_interval: duration(map, "", "heartbeat-interval")?,
            socket: socket_config(map, &text)?,
            exec: string(map, "", "exec")?.filter(|e| !e.trim().is_empty()),
        };
        if let Some(levels) = get(map, "levels") {
            for (i, level) in as_list(levels, "levels")?.iter().enumerate() {
                let key = format!("levels[{i}]");
                let m = as_map(level, &key)?;
                check_keys(m, &key, &["interval"])?;
                let interval = interval(m, &key, "interval")?
                    .ok_or_else(|| error(&format!("{key}.interval"), "required"))?;
                config.levels.push(LevelConfig { interval });
            }
        }
        if config.levels.len() > 8 {
            return Err(error(
                "levels",
                format!(
                    "{} levels listed; at most 8 (levels 1 to 8; 9 holds snapshots)",
                    config.levels.len()
                ),
            ));
        }
        if let Some(retention) = get(map, "retention") {
            let m = as_map(retention, "retention")?;
            check_keys(m, "retention", &["enabled", "grace"])?;
            config.retention_enabled = boolean(m, "retention", "enabled")?;
            config.retention_grace = duration(m, "retention", "grace")?;
        }
        if let Some(snapshot) = get(map, "snapshot") {
            let m = as_map(snapshot, "snapshot")?;
            check_keys(m, "snapshot", &["interval", "retention"])?;
            config.snapshot_interval = interval(m, "snapshot", "interval")?;
            config.snapshot_retention = duration(m, "snapshot", "retention")?;
        }
        if let Some(dbs) = get(map, "dbs") {
            for (i, db) in as_list(dbs, "dbs")?.iter().enumerate() {
                config
                    .dbs
                    .push(db_config(db, &format!("dbs[{i}]"), &replica_defaults)?);
            }
        }
        if require_dbs && config.dbs.is_empty() {
            return Err(error("dbs", "at least one database is required"));
        }
        check_replicas_unshared(&config.dbs)?;
        Ok(config)
    }

    /// Compaction, snapshots and retention as configured, Litestream's defaults for what is
    /// not.
    pub fn compaction_options(&self) -> crate::compact::CompactionOptions {
        let mut options = crate::compact::CompactionOptions::default();
        if !self.levels.is_empty() {
            options.levels = self.levels.iter().map(|l| l.interval).collect();
        }
        if let Some(i) = self.snapshot_interval {
            options.snapshot_interval = i;
        }
        let r = &mut options.retention;
        if let Some(d) = self.snapshot_retention {
            r.snapshots = d;
        }
        if let Some(d) = self.l0_retention {
            r.l0 = d;
        }
        if let Some(enabled) = self.retention_enabled {
            r.enabled = enabled;
        }
        if let Some(grace) = self.retention_grace {
            r.grace = grace;
        }
        options
    }

    /// Reads and parses a file.
    pub fn load(path: &std::path::Path, expand_env: bool) -> Result<Config, ConfigError> {
        let text = read_config(path)?;
        Config::parse_with(&text, expand_env).map_err(|e| ConfigError {
            key: format!("{}: {}", path.display(), e.key),
            reason: e.reason,
        })
    }
}

/// `socket:`: `enabled`, `path`, `permissions` (octal as Litestream reads it: `0600`, or a
/// string `"0600"`).
fn socket_config(map: &yaml::Map, text: &str) -> Result<Option<SocketConfig>, ConfigError> {
    let Some(socket) = get(map, "socket") else {
        return Ok(None);
    };
    let m = as_map(socket, "socket")?;
    check_keys(m, "socket", &["enabled", "path", "permissions"])?;
    if !boolean(m, "socket", "enabled")?.unwrap_or(false) {
        return Ok(None);
    }
    let permissions = match get(m, "permissions") {
        None => Some(0o600),
        // The YAML reader gives 0600 as 600 and 0o640 as 416: the mode is read from the
        // text as written, as Litestream's YAML 1.1 reads it (a leading 0 is octal).
        Some(Yaml::Integer(_) | Yaml::String(_)) => raw_value(text, "permissions").and_then(|v| {
            let v = v.trim_matches(|c| c == '"' || c == '\'');
            match v.strip_prefix("0o").or_else(|| v.strip_prefix('0')) {
                Some("") => Some(0),
                Some(octal) => u32::from_str_radix(octal, 8).ok(),
                None => v.parse().ok(),
            }
        }),
        Some(_) => None,
    }
    .filter(|p| *p <= 0o777)
    .ok_or_else(|| error("socket.permissions", "expected a mode such as 0600"))?;
    Ok(Some(SocketConfig {
        path: string(m, "socket", "path")?
            .unwrap_or_else(|| DEFAULT_SOCKET.to_owned())
            .into(),
        permissions,
    }))
}

/// The value of the first `key:` in `text` as written, in block or flow style (up to a
/// comma, brace or comment). Only for a key that appears once in a config (`permissions`).
fn raw_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let needle = format!("{key}:");
    text.lines().find_map(|line| {
        let at = line.find(&needle)?;
        let before = line[..at].trim_end();
        if !(before.is_empty() || before.ends_with('{') || before.ends_with(',')) {
            return None;
        }
        let rest = &line[at + needle.len()..];
        let end = rest.find([',', '}', '#']).unwrap_or(rest.len());
        let value = rest[..end].trim();
        (!value.is_empty()).then_some(value)
    })
}
