//! The `dbs` entries: each database's path or directory and its replicas, in Litestream's
//! keys, and the rule that no two databases share a replica.

use std::path::PathBuf;

use yaml_rust2::Yaml;

use super::accepted;
use super::replica_defaults::ReplicaDefaults;
use super::yaml::{
    Map, as_list, as_map, boolean, bytes, check_keys, full, get, interval, number, string,
};
use super::{ConfigError, DbConfig, DirSource, error};
use crate::storage::{ReplicaUrl, S3Credentials};

/// Refuses two databases replicated to one location: their files would mix, and each would
/// take the other's for its own. (A `dir` entry's replica is the root its databases go under.)
pub(super) fn check_replicas_unshared(dbs: &[DbConfig]) -> Result<(), ConfigError> {
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

/// `defaults`: the config's top-level replica settings, for replicas that give none.
pub(super) fn db_config(
    db: &Yaml,
    key: &str,
    defaults: &ReplicaDefaults,
) -> Result<DbConfig, ConfigError> {
    let m = as_map(db, key)?;
    let mut known = vec![
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
        "busy-timeout",
        "max-sync-wal-bytes",
        "restore-if-db-not-exists",
    ];
    known.extend(accepted::names(accepted::DB));
    check_keys(m, key, &known)?;
    accepted::warn(m, key, accepted::DB);
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
        let replica = Yaml::Hash(defaults.apply(as_map(replica, replica_key)?));
        let i = interval(as_map(&replica, replica_key)?, replica_key, "sync-interval")?;
        replica_interval = replica_interval.max(i);
        let url = replica_url(&replica, replica_key)?;
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
        busy_timeout: interval(m, key, "busy-timeout")?,
        max_wal_bytes: bytes(m, key, "max-sync-wal-bytes")?,
        restore_if_missing: boolean(m, key, "restore-if-db-not-exists")?.unwrap_or(false),
        dir,
    })
}

/// A replica as Litestream writes it: `url`, or `type` with `path` (file) or `bucket`,
/// `path`, `endpoint`, `region`, `force-path-style`, `skip-verify` (s3).
pub(super) fn replica_url(r: &Yaml, key: &str) -> Result<ReplicaUrl, ConfigError> {
    let m = as_map(r, key)?;
    for refused in accepted::REFUSED {
        if get(m, refused).is_some() {
            return Err(error(
                &format!("{key}.{refused}"),
                "server-side encryption is not supported yet: refused rather than writing objects unencrypted",
            ));
        }
    }
    // An unsupported type is named before its own keys are found unknown.
    if let Some(kind) = string(m, key, "type")?
        && !matches!(kind.as_str(), "file" | "s3")
    {
        return Err(unsupported_type(key, &kind));
    }
    let mut all = vec!["url", "type", "path", "bucket"];
    all.extend(S3_SETTINGS);
    check_replica_keys(m, key, &all)?;
    accepted::warn(m, key, accepted::REPLICA);
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
                credentials,
                ..
            } => {
                let mut known = vec!["url"];
                known.extend(S3_SETTINGS);
                check_replica_keys(m, key, &known)?;
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
                *credentials = self::credentials(m, key)?;
            }
            // Anything else beside another URL would be silently ignored: an error.
            _ => check_replica_keys(m, key, &["url", "sync-interval"])?,
        }
        return Ok(parsed);
    }
    let kind = string(m, key, "type")?.unwrap_or_else(|| "file".into());
    let path = string(m, key, "path")?;
    match kind.as_str() {
        "file" => {
            // An S3 setting on a file replica is a mistake, not something to ignore.
            check_replica_keys(m, key, &["type", "path", "sync-interval"])?;
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
            credentials: credentials(m, key)?,
        }),
        other => Err(unsupported_type(key, other)),
    }
}

fn unsupported_type(key: &str, kind: &str) -> ConfigError {
    error(
        &format!("{key}.type"),
        format!("replica type {kind:?} is not supported (file or s3; gs and abs as a url:)"),
    )
}

/// The settings an S3 replica takes besides where it is.
const S3_SETTINGS: [&str; 7] = [
    "endpoint",
    "region",
    "force-path-style",
    "skip-verify",
    "sync-interval",
    "access-key-id",
    "secret-access-key",
];

/// Refuses a key of replica `m` that is neither in `known` nor one strata accepts without
/// acting on (see `accepted`).
fn check_replica_keys(m: &Map, key: &str, known: &[&str]) -> Result<(), ConfigError> {
    let mut known = known.to_vec();
    known.extend(accepted::names(accepted::REPLICA));
    check_keys(m, key, &known)
}

/// `access-key-id` with `secret-access-key` in `m`: both or neither.
pub(super) fn credentials(m: &Map, key: &str) -> Result<Option<S3Credentials>, ConfigError> {
    let id = string(m, key, "access-key-id")?;
    let secret = string(m, key, "secret-access-key")?;
    match (id, secret) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Some(S3Credentials {
            access_key_id,
            secret_access_key,
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(error(
            &full(key, "secret-access-key"),
            "required with access-key-id",
        )),
        (None, Some(_)) => Err(error(
            &full(key, "access-key-id"),
            "required with secret-access-key",
        )),
    }
}

/// `endpoint`, checked and in its normal form.
pub(super) fn endpoint_value(m: &Map, key: &str) -> Result<Option<String>, ConfigError> {
    string(m, key, "endpoint")?
        .map(|e| crate::storage::normal_endpoint(&e).map_err(|p| error(&full(key, "endpoint"), p)))
        .transpose()
}
