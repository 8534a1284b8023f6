//! Configuration: durations in Litestream's form, and the YAML file `strata replicate
//! --config` reads, which accepts Litestream's keys for the same settings so an existing
//! `litestream.yml` works unchanged for them.

use std::path::PathBuf;
use std::time::Duration;

use yaml_rust2::{Yaml, YamlLoader};

use crate::storage::ReplicaUrl;

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

/// Parses a duration like Go's `time.ParseDuration` (Litestream's format): one or more
/// number-unit pairs, units `ns`, `us`, `ms`, `s`, `m`, `h`; e.g. `30s`, `5m`, `1h30m`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration like 30s, 5m, 24h or 1h30m");
    let mut rest = s.trim();
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    // A century is beyond any interval or retention; more is a typo, not a setting.
    Duration::try_from_secs_f64(total)
        .ok()
        .filter(|d| *d <= Duration::from_secs(100 * 365 * 86_400))
        .ok_or_else(|| format!("{s:?} is too long a duration"))
}

/// A duration that must not be zero: an interval of nothing would busy-loop a core.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err(format!("{s:?}: an interval must be longer than zero")),
        d => Ok(d),
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
}

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
        check_keys(
            map,
            "",
            &[
                "dbs",
                "levels",
                "snapshot",
                "l0-retention",
                "retention",
                "shutdown-sync-timeout",
                "addr",
                "heartbeat-url",
                "heartbeat-interval",
            ],
        )?;
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
                config.dbs.push(db_config(db, &format!("dbs[{i}]"))?);
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

/// The most bytes a config may hold (before and after expanding variables): far more than
/// thousands of databases need, and a bound on the memory reading one takes.
const MAX_CONFIG_BYTES: usize = 4 << 20;

/// The most a config may stand for once every alias is expanded, counting each node as
/// [`NODE_WEIGHT`] bytes plus the bytes of its text. Aliases are copied where they are
/// used, so a few lines that alias aliases (a "billion laughs"), or one long string aliased
/// many times, would otherwise expand to gigabytes.
const MAX_CONFIG_EXPANDED: u64 = 64 << 20;

/// What one node costs once loaded, besides its text.
const NODE_WEIGHT: u64 = 64;

/// Reads a config file, refusing one larger than [`MAX_CONFIG_BYTES`] without reading it all.
fn read_config(path: &std::path::Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| error(&name, e.to_string()))?;
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| error(&name, e.to_string()))?;
    if text.len() > MAX_CONFIG_BYTES {
        return Err(error(
            &name,
            format!("larger than {MAX_CONFIG_BYTES} bytes: not a config file"),
        ));
    }
    Ok(text)
}

/// Weighs what the YAML text stands for with every alias expanded, without expanding any,
/// and refuses more than [`MAX_CONFIG_EXPANDED`].
fn check_expansion(text: &str) -> Result<(), ConfigError> {
    use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
    use yaml_rust2::scanner::Marker;

    /// Weights per open collection and per anchor, and in all.
    #[derive(Default)]
    struct Weight {
        /// Open collections: (anchor, weight so far).
        open: Vec<(usize, u64)>,
        /// What each anchor weighs.
        anchors: std::collections::HashMap<usize, u64>,
        /// Everything so far, aliases expanded.
        all: u64,
    }
    impl Weight {
        /// `w` more in the innermost open collection.
        fn add(&mut self, w: u64) {
            self.all = self.all.saturating_add(w);
            if let Some((_, weight)) = self.open.last_mut() {
                *weight = weight.saturating_add(w);
            }
        }
    }
    impl MarkedEventReceiver for Weight {
        fn on_event(&mut self, event: Event, _: Marker) {
            if self.all > MAX_CONFIG_EXPANDED {
                return;
            }
            match event {
                Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                    self.all = self.all.saturating_add(NODE_WEIGHT);
                    self.open.push((anchor, NODE_WEIGHT));
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    if let Some((anchor, w)) = self.open.pop() {
                        if anchor > 0 {
                            self.anchors.insert(anchor, w);
                        }
                        // Counted in `all` as it came; now part of the enclosing one.
                        if let Some((_, weight)) = self.open.last_mut() {
                            *weight = weight.saturating_add(w);
                        }
                    }
                }
                Event::Scalar(value, _, anchor, _) => {
                    let w = NODE_WEIGHT + value.len() as u64;
                    if anchor > 0 {
                        self.anchors.insert(anchor, w);
                    }
                    self.add(w);
                }
                Event::Alias(anchor) => {
                    let w = self.anchors.get(&anchor).copied().unwrap_or(NODE_WEIGHT);
                    self.add(w);
                }
                _ => {}
            }
        }
    }
    let mut weight = Weight::default();
    Parser::new_from_str(text)
        .load(&mut weight, true)
        .map_err(|e| error("(file)", e.to_string()))?;
    if weight.all > MAX_CONFIG_EXPANDED {
        return Err(error(
            "(file)",
            format!(
                "the YAML stands for more than {} MiB once its aliases are resolved (aliases are copied where they are used): refused",
                MAX_CONFIG_EXPANDED >> 20
            ),
        ));
    }
    Ok(())
}

/// Refuses two databases replicated to one location: their files would mix, and each would
/// take the other's for its own. (A `dir` entry's replica is the root its databases go under.)
fn check_replicas_unshared(dbs: &[DbConfig]) -> Result<(), ConfigError> {
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, db) in dbs.iter().enumerate() {
        for url in &db.replicas {
            if let Some(&j) = seen.get(&url.location())
                && j != i
            {
                return Err(error(
                    &format!("dbs[{i}]"),
                    format!(
                        "{url} is also the replica of dbs[{j}] ({}): each database needs a replica of its own",
                        dbs[j].path.display()
                    ),
                ));
            }
            seen.insert(url.location(), i);
        }
    }
    Ok(())
}

fn db_config(db: &Yaml, key: &str) -> Result<DbConfig, ConfigError> {
    let m = as_map(db, key)?;
    check_keys(
        m,
        key,
        &[
            "path",
            "dir",
            "pattern",
            "recursive",
            "watch",
            "replica",
            "replicas",
            "monitor-interval",
            "checkpoint-interval",
            "min-checkpoint-page-count",
            "truncate-page-n",
        ],
    )?;
    let (path, dir) = match (string(m, key, "path")?, string(m, key, "dir")?) {
        (Some(path), None) => {
            for k in ["pattern", "recursive", "watch"] {
                if get(m, k).is_some() {
                    return Err(error(&format!("{key}.{k}"), "only with dir"));
                }
            }
            (path, None)
        }
        (None, Some(dir)) => {
            let pattern = string(m, key, "pattern")?
                .ok_or_else(|| error(&format!("{key}.pattern"), "required with dir"))?;
            let source = DirSource {
                pattern,
                recursive: boolean(m, key, "recursive")?.unwrap_or(false),
                watch: boolean(m, key, "watch")?.unwrap_or(false),
            };
            (dir, Some(source))
        }
        (Some(_), Some(_)) => return Err(error(key, "give either path or dir, not both")),
        (None, None) => return Err(error(&format!("{key}.path"), "required (or dir)")),
    };
    let replicas: Vec<(&Yaml, String)> = match (get(m, "replica"), get(m, "replicas")) {
        (Some(r), None) => vec![(r, format!("{key}.replica"))],
        (None, Some(list)) => {
            let list = as_list(list, &format!("{key}.replicas"))?;
            if list.is_empty() {
                return Err(error(&format!("{key}.replicas"), "lists no replica"));
            }
            list.iter()
                .enumerate()
                .map(|(i, r)| (r, format!("{key}.replicas[{i}]")))
                .collect()
        }
        (Some(_), Some(_)) => return Err(error(key, "give either replica or replicas, not both")),
        (None, None) => return Err(error(&format!("{key}.replica"), "required")),
    };
    // Litestream checks the WAL every `monitor-interval` and ships to the replica every
    // `sync-interval`; strata ships each L0 file as soon as it is written, so the slower of
    // the two is how often a file reaches the replica (the slowest replica's, with several).
    let monitor_interval = interval(m, key, "monitor-interval")?;
    let mut replica_interval = None;
    let mut urls = Vec::with_capacity(replicas.len());
    for (replica, replica_key) in &replicas {
        let i = interval(as_map(replica, replica_key)?, replica_key, "sync-interval")?;
        replica_interval = replica_interval.max(i);
        let url = replica_url(replica, replica_key)?;
        if urls.contains(&url) {
            return Err(error(replica_key, format!("{url} is listed twice")));
        }
        urls.push(url);
    }
    Ok(DbConfig {
        path: PathBuf::from(path),
        replicas: urls,
        sync_interval: monitor_interval.max(replica_interval),
        checkpoint_interval: interval(m, key, "checkpoint-interval")?,
        min_checkpoint_pages: number(m, key, "min-checkpoint-page-count")?,
        truncate_pages: number(m, key, "truncate-page-n")?,
        dir,
    })
}

/// A replica as Litestream writes it: `url`, or `type` with `path` (file) or `bucket`,
/// `path`, `endpoint`, `region`, `force-path-style`, `skip-verify` (s3).
fn replica_url(r: &Yaml, key: &str) -> Result<ReplicaUrl, ConfigError> {
    let m = as_map(r, key)?;
    check_keys(
        m,
        key,
        &[
            "url",
            "type",
            "path",
            "bucket",
            "endpoint",
            "region",
            "force-path-style",
            "skip-verify",
            "sync-interval",
        ],
    )?;
    if let Some(url) = string(m, key, "url")? {
        let mut parsed =
            ReplicaUrl::parse(&url).map_err(|e| error(&format!("{key}.url"), e.to_string()))?;
        match &mut parsed {
            // Settings beside an S3 URL complete it, as in Litestream (an endpoint or region
            // in the URL itself wins).
            ReplicaUrl::S3 {
                endpoint,
                region,
                force_path_style,
                skip_verify,
                ..
            } => {
                check_keys(
                    m,
                    key,
                    &[
                        "url",
                        "endpoint",
                        "region",
                        "force-path-style",
                        "skip-verify",
                        "sync-interval",
                    ],
                )?;
                if endpoint.is_none() {
                    *endpoint = endpoint_value(m, key)?;
                }
                if region.is_none() {
                    *region = string(m, key, "region")?;
                }
                if let Some(b) = boolean(m, key, "force-path-style")? {
                    *force_path_style = b;
                }
                if let Some(b) = boolean(m, key, "skip-verify")? {
                    *skip_verify = b;
                }
            }
            // Anything else beside another URL would be silently ignored: an error.
            _ => check_keys(m, key, &["url", "sync-interval"])?,
        }
        return Ok(parsed);
    }
    let kind = string(m, key, "type")?.unwrap_or_else(|| "file".into());
    let path = string(m, key, "path")?;
    match kind.as_str() {
        "file" => {
            // An S3 setting on a file replica is a mistake, not something to ignore.
            check_keys(m, key, &["type", "path", "sync-interval"])?;
            let path =
                path.ok_or_else(|| error(&format!("{key}.path"), "required for a file replica"))?;
            Ok(ReplicaUrl::File {
                root: PathBuf::from(path),
            })
        }
        "s3" => Ok(ReplicaUrl::S3 {
            bucket: string(m, key, "bucket")?
                .ok_or_else(|| error(&format!("{key}.bucket"), "required for an s3 replica"))
                .and_then(|b| match crate::storage::bucket_problem(&b) {
                    Some(problem) => Err(error(&format!("{key}.bucket"), problem)),
                    None => Ok(b),
                })?,
            prefix: path.unwrap_or_default().trim_matches('/').to_owned(),
            endpoint: endpoint_value(m, key)?,
            region: string(m, key, "region")?,
            force_path_style: boolean(m, key, "force-path-style")?.unwrap_or(true),
            skip_verify: boolean(m, key, "skip-verify")?.unwrap_or(false),
        }),
        other => Err(error(
            &format!("{key}.type"),
            format!("unsupported replica type {other:?} (file or s3)"),
        )),
    }
}

/// `endpoint`, checked and in its normal form.
fn endpoint_value(m: &Map, key: &str) -> Result<Option<String>, ConfigError> {
    string(m, key, "endpoint")?
        .map(|e| {
            crate::storage::normal_endpoint(&e).map_err(|p| error(&format!("{key}.endpoint"), p))
        })
        .transpose()
}

type Map = yaml_rust2::yaml::Hash;

fn get<'a>(m: &'a Map, key: &str) -> Option<&'a Yaml> {
    m.get(&Yaml::String(key.to_owned()))
        .filter(|v| !matches!(v, Yaml::Null))
}

fn check_keys(m: &Map, at: &str, known: &[&str]) -> Result<(), ConfigError> {
    for k in m.keys() {
        let name = k.as_str().unwrap_or("?");
        if !known.contains(&name) {
            let key = if at.is_empty() {
                name.to_owned()
            } else {
                format!("{at}.{name}")
            };
            return Err(error(
                &key,
                format!("unknown key (known here: {})", known.join(", ")),
            ));
        }
    }
    Ok(())
}

fn as_map<'a>(y: &'a Yaml, key: &str) -> Result<&'a Map, ConfigError> {
    y.as_hash().ok_or_else(|| error(key, "expected a mapping"))
}

fn as_list<'a>(y: &'a Yaml, key: &str) -> Result<&'a Vec<Yaml>, ConfigError> {
    y.as_vec().ok_or_else(|| error(key, "expected a list"))
}

fn full(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_owned()
    } else {
        format!("{at}.{name}")
    }
}

fn string(m: &Map, at: &str, name: &str) -> Result<Option<String>, ConfigError> {
    match get(m, name) {
        None => Ok(None),
        Some(Yaml::String(s)) => Ok(Some(s.clone())),
        Some(Yaml::Integer(i)) => Ok(Some(i.to_string())),
        Some(_) => Err(error(&full(at, name), "expected a string")),
    }
}

fn duration(m: &Map, at: &str, name: &str) -> Result<Option<Duration>, ConfigError> {
    match get(m, name) {
        None => Ok(None),
        Some(Yaml::String(s)) => parse_duration(s)
            .map(Some)
            .map_err(|e| error(&full(at, name), e)),
        Some(Yaml::Integer(0)) => Ok(Some(Duration::ZERO)),
        Some(_) => Err(error(
            &full(at, name),
            "expected a duration like 30s, 5m or 24h",
        )),
    }
}

/// Like [`duration`], for an interval: zero is refused.
fn interval(m: &Map, at: &str, name: &str) -> Result<Option<Duration>, ConfigError> {
    match duration(m, at, name)? {
        Some(Duration::ZERO) => Err(error(
            &full(at, name),
            "an interval must be longer than zero",
        )),
        d => Ok(d),
    }
}

fn number(m: &Map, at: &str, name: &str) -> Result<Option<u32>, ConfigError> {
    match get(m, name) {
        None => Ok(None),
        Some(Yaml::Integer(i)) => u32::try_from(*i)
            .map(Some)
            .map_err(|_| error(&full(at, name), "out of range")),
        Some(_) => Err(error(&full(at, name), "expected a number")),
    }
}

fn boolean(m: &Map, at: &str, name: &str) -> Result<Option<bool>, ConfigError> {
    match get(m, name) {
        None => Ok(None),
        Some(Yaml::Boolean(b)) => Ok(Some(*b)),
        Some(_) => Err(error(&full(at, name), "expected true or false")),
    }
}

/// `$VAR` and `${VAR}` replaced by the variable's value. An unset variable becomes empty,
/// as in Litestream, with a warning naming it.
fn expand_env(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, used) = if let Some(body) = after.strip_prefix('{') {
            match body.find('}') {
                Some(end) => (&body[..end], end + 2),
                None => ("", 0),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        if name.is_empty() {
            out.push('$');
            rest = after;
            continue;
        }
        match std::env::var(name) {
            Ok(value) => out.push_str(&value),
            Err(_) => tracing::warn!(
                variable = name,
                "the config names an unset environment variable; it expands to nothing (-no-expand-env turns expansion off)"
            ),
        }
        rest = &after[used..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in [
            "",
            "30",
            "5 minutes",
            "1d",
            "s",
            "99999999999999999999h",
            "1e400s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_a_litestream_config() {
        let c = Config::parse(
            r#"
levels:
  - interval: 30s
  - interval: 5m
snapshot:
  interval: 24h
  retention: 72h
l0-retention: 5m
dbs:
  - path: /data/app.db
    replica:
      url: s3://bucket/app?endpoint=http://127.0.0.1:9000&region=us-east-1
  - path: /data/other.db
    monitor-interval: 500ms
    replicas:
      - type: file
        path: /backups/other
  - path: /data/third.db
    monitor-interval: 2s
    replica:
      sync-interval: 10s
      type: s3
      bucket: b
      path: /third/
      endpoint: http://localhost:9000
"#,
        )
        .unwrap();
        assert_eq!(c.levels.len(), 2);
        assert_eq!(c.snapshot_retention, Some(Duration::from_secs(72 * 3600)));
        assert_eq!(c.l0_retention, Some(Duration::from_secs(300)));
        assert_eq!(c.dbs.len(), 3);
        assert_eq!(
            c.dbs[1].replicas[0],
            ReplicaUrl::File {
                root: "/backups/other".into()
            }
        );
        assert_eq!(c.dbs[0].sync_interval, None);
        assert_eq!(c.dbs[1].sync_interval, Some(Duration::from_millis(500)));
        assert_eq!(c.dbs[2].sync_interval, Some(Duration::from_secs(10)));
        assert!(
            matches!(&c.dbs[2].replicas[0], ReplicaUrl::S3 { bucket, prefix, .. } if bucket == "b" && prefix == "third")
        );
    }

    #[test]
    fn aliases_that_multiply_are_refused_before_they_are_expanded() {
        // Nine levels of ten aliases each: 10^9 nodes from a few hundred bytes.
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        bomb.push_str("dbs: [{path: a, replica: {url: /x}}]\n");
        let started = std::time::Instant::now();
        let e = Config::parse(&bomb).unwrap_err().to_string();
        assert!(e.contains("aliases"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // Aliases used modestly still work (and are unknown keys here, named as such).
        let fine = "base: &b {url: /x}\ndbs: [{path: a, replica: *b}]\n";
        let e = Config::parse(fine).unwrap_err().to_string();
        assert!(e.contains("base"), "{e}");
        // One long string aliased many times is refused too.
        let mut long = format!("big: &b \"{}\"\nlst: [", "x".repeat(100_000));
        long.push_str(&vec!["*b"; 5_000].join(", "));
        long.push_str("]\ndbs: [{path: a, replica: {url: /x}}]\n");
        let e = Config::parse(&long).unwrap_err().to_string();
        assert!(e.contains("aliases"), "{e}");
        // Deep nesting and huge input are refused too, not crashed on.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(Config::parse(&deep).is_err());
        let huge = format!("dbs: []\n#{}\n", "x".repeat(MAX_CONFIG_BYTES));
        assert!(
            Config::parse(&huge)
                .unwrap_err()
                .to_string()
                .contains("at most")
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        for (yaml, key) in [
            (
                "dbs: [{path: a, replica: {url: /x}}]\nadress: ':9090'",
                "adress",
            ),
            (
                "dbs: [{path: a, replica: {url: /x, colour: red}}]",
                "dbs[0].replica.colour",
            ),
            (
                "dbs: [{path: a, replica: {url: /x}, monitor-interval: soon}]",
                "dbs[0].monitor-interval",
            ),
            (
                "dbs: [{path: a, replicas: [{url: /x, sync-interval: 1}]}]",
                "dbs[0].replicas[0].sync-interval",
            ),
            ("dbs: [{replica: {url: /x}}]", "dbs[0].path"),
            (
                "levels: [{interval: 1x}]\ndbs: [{path: a, replica: {url: /x}}]",
                "levels[0].interval",
            ),
            ("dbs: []", "dbs"),
            (
                "dbs: [{path: a, replica: {type: file, path: /x, bucket: b}}]",
                "dbs[0].replica.bucket",
            ),
            (
                "dbs: [{path: a, replica: {url: /x, bucket: r}}]",
                "dbs[0].replica.bucket",
            ),
            (
                "dbs: [{path: a, replica: {url: /x}, monitor-interval: 0s}]",
                "dbs[0].monitor-interval",
            ),
            (
                "dbs: [{path: a, replica: {url: /x}, checkpoint-interval: 0}]",
                "dbs[0].checkpoint-interval",
            ),
            (
                "dbs: [{path: a, replica: {url: /x, sync-interval: 0ms}}]",
                "dbs[0].replica.sync-interval",
            ),
            (
                "dbs: [{path: a, replica: {url: /x}, monitor-interval: 99999999999999999999h}]",
                "dbs[0].monitor-interval",
            ),
            (
                "snapshot: {interval: 0s}\ndbs: [{path: a, replica: {url: /x}}]",
                "snapshot.interval",
            ),
        ] {
            let e = Config::parse(yaml).unwrap_err();
            assert_eq!(e.key, key, "{yaml}: {e}");
        }
    }

    #[test]
    fn expands_environment_variables() {
        let home = std::env::var("HOME").unwrap_or_default();
        assert_eq!(
            expand_env("a: ${HOME}/x $HOME $"),
            format!("a: {home}/x {home} $")
        );
        // A `$` before a non-ASCII letter is no variable, and the text after it is intact.
        assert_eq!(expand_env("p: $é/ü $HOME!"), format!("p: $é/ü {home}!"));
        assert_eq!(
            expand_env("x: ${STRATA_SURELY_UNSET_VARIABLE}y"),
            "x: y",
            "unset is empty, as in Litestream"
        );
        let c = Config::parse_with("dbs: [{path: $HOME/a, replica: {url: /x}}]", false).unwrap();
        assert_eq!(c.dbs[0].path, PathBuf::from("$HOME/a"), "-no-expand-env");
    }
}
