//! Litestream's top-level replica settings: keys given at the top of the config are
//! defaults for every replica that does not give its own (Go's `ReplicaSettings.SetDefaults`).

use yaml_rust2::Yaml;

use super::databases::endpoint_value;
use super::yaml::{Map, boolean, get, interval, string};
use super::{ConfigError, error};

/// The top-level keys that are defaults for replicas. All but `sync-interval` mean
/// something to an S3 replica only (a file replica given one would be refused, so it is not
/// given the default either).
pub(super) const KEYS: [&str; 8] = [
    "access-key-id",
    "secret-access-key",
    "region",
    "bucket",
    "endpoint",
    "force-path-style",
    "skip-verify",
    "sync-interval",
];

/// The defaults found at the top of a config, checked there (so that a bad value is named
/// by its own key, not by every replica it would have reached).
#[derive(Clone, Debug, Default)]
pub(super) struct ReplicaDefaults(Map);

impl ReplicaDefaults {
    pub(super) fn from_top(top: &Map) -> Result<ReplicaDefaults, ConfigError> {
        // An empty value is no default, as in Litestream (`bucket: ""`, an unset variable).
        let mut defaults = Map::new();
        for key in KEYS {
            if let Some(value) = get(top, key).filter(|v| v.as_str() != Some("")) {
                defaults.insert(Yaml::String(key.to_owned()), value.clone());
            }
        }
        let d = &defaults;
        string(d, "", "access-key-id")?;
        string(d, "", "secret-access-key")?;
        endpoint_value(d, "")?;
        string(d, "", "region")?;
        if let Some(bucket) = string(d, "", "bucket")?
            && let Some(problem) = crate::storage::bucket_problem(&bucket)
        {
            return Err(error("bucket", problem));
        }
        boolean(d, "", "force-path-style")?;
        boolean(d, "", "skip-verify")?;
        interval(d, "", "sync-interval")?;
        Ok(ReplicaDefaults(defaults))
    }

    /// `replica` completed with the defaults it does not set itself, key by key: the S3
    /// settings only for an S3 replica, the bucket only for one given by `type` rather than
    /// by a URL (whose bucket is in it).
    pub(super) fn apply(&self, replica: &Map) -> Map {
        let mut out = replica.clone();
        if self.0.is_empty() {
            return out;
        }
        let url = get(replica, "url").and_then(Yaml::as_str);
        let s3 = match url {
            Some(url) => url.starts_with("s3://"),
            None => get(replica, "type").and_then(Yaml::as_str) == Some("s3"),
        };
        for (key, value) in &self.0 {
            let name = key.as_str().unwrap_or_default();
            let wanted = get(replica, name).is_none()
                && (s3 || name == "sync-interval")
                && !(name == "bucket" && url.is_some());
            if wanted {
                out.insert(key.clone(), value.clone());
            }
        }
        out
    }
}
