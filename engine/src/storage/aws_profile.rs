//! The shared AWS files (`~/.aws/credentials` and `~/.aws/config`): the profile the AWS
//! SDKs, and so Litestream, read when the environment has no credentials.

use std::path::{Path as FsPath, PathBuf};

/// The `AWS_PROFILE` (or default) profile of the shared AWS files, which the AWS SDKs (and so
/// Litestream) read when the environment has no credentials.
pub(super) struct SharedProfile {
    credentials: Vec<(String, String)>,
    config: Vec<(String, String)>,
}

pub(super) fn shared_profile() -> SharedProfile {
    let name = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let file = |var: &str, default: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".aws").join(default))
    };
    // The credentials file names sections [name]; the config file [profile name], except
    // for [default].
    let config_section = if name == "default" {
        name.clone()
    } else {
        format!("profile {name}")
    };
    SharedProfile {
        credentials: ini_section(&file("AWS_SHARED_CREDENTIALS_FILE", "credentials"), &name),
        config: ini_section(&file("AWS_CONFIG_FILE", "config"), &config_section),
    }
}

impl SharedProfile {
    fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn credentials(&self) -> Option<(String, String, Option<String>)> {
        let c = &self.credentials;
        let key = Self::get(c, "aws_access_key_id")?;
        let secret = Self::get(c, "aws_secret_access_key")?;
        Some((
            key.into(),
            secret.into(),
            Self::get(c, "aws_session_token").map(Into::into),
        ))
    }

    pub(super) fn region(&self) -> Option<String> {
        Self::get(&self.config, "region").map(Into::into)
    }
}

/// The `key = value` lines of one `[section]` of an INI file; empty if either is missing.
fn ini_section(path: &FsPath, section: &str) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut inside = false;
    let mut pairs = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
        } else if inside && let Some((k, v)) = line.split_once('=') {
            pairs.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_section_of_the_shared_aws_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(
            &path,
            "[default]\naws_access_key_id = AKIA1\naws_secret_access_key=s1\n\n# other\n[work]\naws_access_key_id = AKIA2\n",
        )
        .unwrap();
        let default = ini_section(&path, "default");
        assert_eq!(
            default,
            [
                ("aws_access_key_id".into(), "AKIA1".into()),
                ("aws_secret_access_key".into(), "s1".into())
            ]
        );
        assert_eq!(ini_section(&path, "work").len(), 1);
        assert!(ini_section(&path, "missing").is_empty());
        assert!(ini_section(&dir.path().join("none"), "default").is_empty());
    }
}
