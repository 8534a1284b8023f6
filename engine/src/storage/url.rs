//! Replica URLs, in Litestream's forms: parsed, checked, and told apart by location.

use std::fmt;
use std::path::{Path as FsPath, PathBuf};

use super::layout::Layout;

/// Where a replica lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaUrl {
    /// A local directory: a plain path or `file:///path`.
    File {
        /// The replica's root directory.
        root: PathBuf,
    },
    /// `s3://bucket/prefix?endpoint=...&region=...&forcePathStyle=true&skipVerify=true`.
    /// Credentials and anything not in the URL come from the standard `AWS_*` variables.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix inside the bucket (no leading or trailing slash).
        prefix: String,
        /// Endpoint of an S3-compatible server, e.g. `http://127.0.0.1:9000`.
        endpoint: Option<String>,
        /// Region; `AWS_REGION` or us-east-1 when absent.
        region: Option<String>,
        /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible servers
        /// need. strata uses it unless told `forcePathStyle=false`.
        force_path_style: bool,
        /// Accept invalid TLS certificates (self-signed test servers only).
        skip_verify: bool,
        /// An access key given in the config, used instead of the environment's.
        credentials: Option<S3Credentials>,
    },
    /// `gs://bucket/prefix`, Google Cloud Storage.
    #[cfg(feature = "gcs")]
    Gcs {
        /// Bucket name.
        bucket: String,
        /// Key prefix inside the bucket.
        prefix: String,
    },
    /// `abs://container/prefix`, Azure Blob Storage (account from `AZURE_STORAGE_*`).
    #[cfg(feature = "azure")]
    Azure {
        /// Container name.
        container: String,
        /// Key prefix inside the container.
        prefix: String,
    },
}

/// An S3 access key given in a config (Litestream's `access-key-id` and
/// `secret-access-key`). The secret is never printed, not even by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// The access key ID.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"(not shown)")
            .finish()
    }
}

/// A replica URL that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid replica URL {url:?}: {reason}")]
pub struct UrlError {
    url: String,
    reason: String,
}

fn url_error(url: &str, reason: impl Into<String>) -> UrlError {
    UrlError {
        url: redact_userinfo(url),
        reason: reason.into(),
    }
}

/// The URL with the user-info (`user:secret@`) of every `scheme://` in it (the URL's own and
/// an endpoint in its query) replaced, so an error never prints a credential.
fn redact_userinfo(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(at) = rest.find("://") {
        out.push_str(&rest[..at + 3]);
        rest = &rest[at + 3..];
        let authority_end = rest.find(['/', '?', '#', '&']).unwrap_or(rest.len());
        if let Some(user_end) = rest[..authority_end].rfind('@') {
            out.push_str("REDACTED@");
            rest = &rest[user_end + 1..];
        }
    }
    out.push_str(rest);
    out
}

impl ReplicaUrl {
    /// Parses a replica URL the way Litestream accepts it.
    pub fn parse(s: &str) -> Result<ReplicaUrl, UrlError> {
        let Some((scheme, _)) = s.split_once("://") else {
            if s.is_empty() {
                return Err(url_error(s, "empty"));
            }
            if s.starts_with("file:") {
                return Err(url_error(s, "a file URL is file:///absolute/path"));
            }
            return Ok(ReplicaUrl::File {
                root: PathBuf::from(s),
            });
        };
        let url = url::Url::parse(s).map_err(|e| url_error(s, e.to_string()))?;
        if url.fragment().is_some() {
            return Err(url_error(
                s,
                "a replica URL takes no fragment: percent-encode '#' in a path as %23",
            ));
        }
        // Decoded, as Go's url.Parse gives Litestream its path: `a%20b` is the prefix `a b`.
        let key_prefix = || {
            percent_encoding::percent_decode_str(url.path().trim_matches('/'))
                .decode_utf8()
                .map(|p| p.into_owned())
                .map_err(|_| url_error(s, "the path is not UTF-8 once percent-decoded"))
        };
        let bucket = || match url.host_str() {
            Some(h) if !h.is_empty() => check_bucket(s, h).map(|()| h.to_owned()),
            _ => Err(url_error(s, "missing bucket name")),
        };
        match scheme {
            "file" => {
                if url
                    .host_str()
                    .is_some_and(|h| !h.is_empty() && h != "localhost")
                {
                    return Err(url_error(
                        s,
                        "file URLs take no host: use file:///absolute/path",
                    ));
                }
                if url.query().is_some() {
                    return Err(url_error(s, "file URLs take no query parameters"));
                }
                let root = url
                    .to_file_path()
                    .map_err(|()| url_error(s, "not a valid file path"))?;
                Ok(ReplicaUrl::File { root })
            }
            "s3" => {
                let (mut endpoint, mut region, mut force_path_style, mut skip_verify) =
                    (None, None, true, false);
                for (k, v) in url.query_pairs() {
                    match k.as_ref() {
                        "endpoint" => {
                            endpoint =
                                Some(normal_endpoint(&v).map_err(|problem| url_error(s, problem))?);
                        }
                        "region" => region = Some(v.into_owned()),
                        "forcePathStyle" => force_path_style = parse_bool(s, &k, &v)?,
                        "skipVerify" => skip_verify = parse_bool(s, &k, &v)?,
                        other => {
                            return Err(url_error(
                                s,
                                format!(
                                    "unknown query parameter {other:?} (known: endpoint, region, \
                                     forcePathStyle, skipVerify)"
                                ),
                            ));
                        }
                    }
                }
                Ok(ReplicaUrl::S3 {
                    bucket: bucket()?,
                    prefix: key_prefix()?,
                    endpoint,
                    region,
                    force_path_style,
                    skip_verify,
                    credentials: None,
                })
            }
            #[cfg(feature = "gcs")]
            "gs" => Ok(ReplicaUrl::Gcs {
                bucket: bucket()?,
                prefix: key_prefix()?,
            }),
            #[cfg(feature = "azure")]
            "abs" => Ok(ReplicaUrl::Azure {
                container: bucket()?,
                prefix: key_prefix()?,
            }),
            other => Err(url_error(
                s,
                format!(
                    "unsupported scheme {other:?} (supported: a path, file://, {})",
                    supported_schemes()
                ),
            )),
        }
    }

    /// Where the replica is, one string for every spelling of it (a relative or absolute
    /// path, `file://`, a prefix with or without slashes): two databases replicated to one
    /// location would mix their files. Credentials and client options are not part of it.
    pub fn location(&self) -> String {
        let prefix = |p: &str| {
            p.split('/')
                .filter(|part| !part.is_empty())
                .collect::<Vec<_>>()
                .join("/")
        };
        match self {
            ReplicaUrl::File { root } => {
                let absolute = std::fs::canonicalize(root)
                    .or_else(|_| std::path::absolute(root))
                    .unwrap_or_else(|_| root.clone());
                let mut normal = PathBuf::new();
                for c in absolute.components() {
                    match c {
                        std::path::Component::CurDir => {}
                        std::path::Component::ParentDir => {
                            normal.pop();
                        }
                        c => normal.push(c),
                    }
                }
                format!("file://{}", normal.display())
            }
            ReplicaUrl::S3 {
                bucket,
                prefix: p,
                endpoint,
                ..
            } => {
                let endpoint = endpoint.as_deref().map_or("", |e| e.trim_end_matches('/'));
                format!("s3://{endpoint}/{bucket}/{}", prefix(p))
            }
            #[cfg(feature = "gcs")]
            ReplicaUrl::Gcs { bucket, prefix: p } => format!("gs://{bucket}/{}", prefix(p)),
            #[cfg(feature = "azure")]
            ReplicaUrl::Azure {
                container,
                prefix: p,
            } => {
                format!("abs://{container}/{}", prefix(p))
            }
        }
    }

    /// The layout Litestream uses for this backend, which strata writes.
    pub fn layout(&self) -> Layout {
        match self {
            ReplicaUrl::S3 { .. } => Layout::S3,
            _ => Layout::File,
        }
    }

    /// The replica at `rel` (a relative path, `/`-separated) under this one: directory
    /// mode's replica of one database.
    pub fn join(&self, rel: &str) -> ReplicaUrl {
        let under = |prefix: &str| {
            let rel = rel.trim_matches('/');
            if prefix.is_empty() {
                rel.to_owned()
            } else {
                format!("{prefix}/{rel}")
            }
        };
        let mut joined = self.clone();
        match &mut joined {
            ReplicaUrl::File { root } => *root = root.join(rel),
            ReplicaUrl::S3 { prefix, .. } => *prefix = under(prefix),
            #[cfg(feature = "gcs")]
            ReplicaUrl::Gcs { prefix, .. } => *prefix = under(prefix),
            #[cfg(feature = "azure")]
            ReplicaUrl::Azure { prefix, .. } => *prefix = under(prefix),
        }
        joined
    }

    /// What identifies the client a remote replica needs (backend, endpoint, bucket and
    /// options, not the prefix), and the prefix; `None` for a directory.
    pub(crate) fn client_key(&self) -> Option<(String, &str)> {
        match self {
            ReplicaUrl::File { .. } => None,
            ReplicaUrl::S3 {
                bucket,
                prefix,
                endpoint,
                region,
                force_path_style,
                skip_verify,
                credentials,
            } => {
                // Another key is another client; the secret goes in only as a hash.
                let key = credentials.as_ref().map(|c| {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    c.secret_access_key.hash(&mut h);
                    (c.access_key_id.clone(), h.finish())
                });
                Some((
                    format!(
                        "s3://{bucket} {endpoint:?} {region:?} {force_path_style} {skip_verify} {key:?}"
                    ),
                    prefix,
                ))
            }
            #[cfg(feature = "gcs")]
            ReplicaUrl::Gcs { bucket, prefix } => Some((format!("gs://{bucket}"), prefix)),
            #[cfg(feature = "azure")]
            ReplicaUrl::Azure { container, prefix } => Some((format!("abs://{container}"), prefix)),
        }
    }
}

fn parse_bool(url: &str, key: &str, v: &str) -> Result<bool, UrlError> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(url_error(
            url,
            format!("{key} must be true or false, not {v:?}"),
        )),
    }
}

fn supported_schemes() -> &'static str {
    if cfg!(all(feature = "gcs", feature = "azure")) {
        "s3://, gs://, abs://"
    } else if cfg!(feature = "gcs") {
        "s3://, gs://"
    } else if cfg!(feature = "azure") {
        "s3://, abs://"
    } else {
        "s3://"
    }
}

impl std::str::FromStr for ReplicaUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<ReplicaUrl, UrlError> {
        ReplicaUrl::parse(s)
    }
}

impl fmt::Display for ReplicaUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicaUrl::File { root } => write!(f, "file://{}", display_path(root)),
            ReplicaUrl::S3 {
                bucket,
                prefix,
                endpoint,
                ..
            } => {
                write!(f, "s3://{bucket}/{prefix}")?;
                if let Some(e) = endpoint {
                    write!(f, " at {e}")?;
                }
                Ok(())
            }
            #[cfg(feature = "gcs")]
            ReplicaUrl::Gcs { bucket, prefix } => write!(f, "gs://{bucket}/{prefix}"),
            #[cfg(feature = "azure")]
            ReplicaUrl::Azure { container, prefix } => write!(f, "abs://{container}/{prefix}"),
        }
    }
}

/// An S3 endpoint as a URL in its normal form (`http://host:port`, no trailing slash), or
/// what is wrong with it: it must be an absolute `http` or `https` URL with a host.
pub(crate) fn normal_endpoint(endpoint: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!("endpoint {endpoint:?} {why} (give it as http://host:port or https://host)")
    };
    let parsed = url::Url::parse(endpoint).map_err(|_| bad("is not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("is not an http or https URL"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("names no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("takes no query or fragment"));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

/// What is wrong with a bucket (or container) name, if anything: it takes letters, digits,
/// `.`, `-` and `_`, starts and ends with a letter or digit, has no `..` and at most 255
/// bytes. A name such as `..` would otherwise be normalised away in a path-style request
/// and address another bucket.
pub(crate) fn bucket_problem(name: &str) -> Option<String> {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let valid = name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && edge_ok(name.chars().next())
        && edge_ok(name.chars().last())
        && !name.contains("..");
    (!valid).then(|| {
        format!(
            "{name:?} is not a valid bucket name (letters, digits, '.', '-' and '_', starting and ending with a letter or digit, no '..')"
        )
    })
}

fn check_bucket(url: &str, name: &str) -> Result<(), UrlError> {
    match bucket_problem(name) {
        Some(problem) => Err(url_error(url, problem)),
        None => Ok(()),
    }
}

fn display_path(p: &FsPath) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_litestream_forms() {
        assert_eq!(
            ReplicaUrl::parse("/var/lib/replica").unwrap(),
            ReplicaUrl::File {
                root: "/var/lib/replica".into()
            }
        );
        assert_eq!(
            ReplicaUrl::parse("relative/dir").unwrap(),
            ReplicaUrl::File {
                root: "relative/dir".into()
            }
        );
        assert_eq!(
            ReplicaUrl::parse("file:///var/lib/replica").unwrap(),
            ReplicaUrl::File {
                root: "/var/lib/replica".into()
            }
        );
        let s3 = ReplicaUrl::parse(
            "s3://bucket/some/prefix?endpoint=http://127.0.0.1:5000&region=eu-west-1&forcePathStyle=true",
        )
        .unwrap();
        assert_eq!(
            s3,
            ReplicaUrl::S3 {
                bucket: "bucket".into(),
                prefix: "some/prefix".into(),
                endpoint: Some("http://127.0.0.1:5000".into()),
                region: Some("eu-west-1".into()),
                force_path_style: true,
                skip_verify: false,
                credentials: None,
            }
        );
        assert_eq!(s3.layout(), Layout::S3);
    }

    #[test]
    fn an_s3_prefix_is_percent_decoded_as_litestream_decodes_it() {
        let ReplicaUrl::S3 { prefix, .. } =
            ReplicaUrl::parse("s3://bucket/tenant%20a/db%2B1").unwrap()
        else {
            panic!("not S3")
        };
        assert_eq!(prefix, "tenant a/db+1");
        let bad = ReplicaUrl::parse("s3://bucket/%ff")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("not UTF-8"), "{bad}");
    }

    #[test]
    fn rejects_what_it_cannot_honour() {
        for (url, why) in [
            (
                "s3://bucket/p?endpont=x",
                "unknown query parameter \"endpont\"",
            ),
            ("s3://bucket/p?forcePathStyle=yes", "must be true or false"),
            ("ftp://host/x", "unsupported scheme \"ftp\""),
            ("file://host/x", "take no host"),
            ("file:///tmp/a#b", "no fragment"),
            ("file:/tmp/a", "file:///absolute/path"),
            ("", "empty"),
            // Normalised away in a path-style request, `..` would address another bucket.
            ("s3://../other/x", "not a valid bucket name"),
            ("s3://a..b/x", "not a valid bucket name"),
            ("s3://-bucket/x", "not a valid bucket name"),
            // object_store panics on an endpoint without a scheme: refused here instead.
            (
                "s3://b/x?endpoint=127.0.0.1:5555",
                "give it as http://host:port",
            ),
            (
                "s3://b/x?endpoint=localhost:5555",
                "give it as http://host:port",
            ),
            ("s3://b/x?endpoint=ftp://h:1", "is not an http or https URL"),
        ] {
            let e = ReplicaUrl::parse(url).unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
        }
    }

    #[test]
    fn every_spelling_of_one_place_is_one_location() {
        let location = |u: &str| ReplicaUrl::parse(u).unwrap().location();
        assert_eq!(location("/tmp/r"), location("file:///tmp/r/"));
        assert_eq!(location("/tmp/r"), location("/tmp/x/../r/."));
        assert_eq!(location("s3://b/app"), location("s3://b//app/"));
        assert_ne!(location("s3://b/app"), location("s3://b/app2"));
        assert_ne!(
            location("s3://b/app?endpoint=http://h:1"),
            location("s3://b/app?endpoint=http://h:2")
        );
        assert_eq!(
            location("s3://b/app?endpoint=http://h:0001/"),
            location("s3://b/app?endpoint=HTTP://H:1")
        );
    }

    #[test]
    fn errors_never_print_credentials() {
        for url in [
            "s3://AKIA:s3cr3t@bucket/db?bogus=1",
            "s3://bucket/db?endpoint=http://AKIA:s3cr3t@127.0.0.1:9000&bogus=1",
            "ftp://user:s3cr3t@host/x",
        ] {
            let e = ReplicaUrl::parse(url).unwrap_err().to_string();
            assert!(!e.contains("s3cr3t"), "{e}");
            assert!(e.contains("REDACTED@"), "{e}");
        }
    }
}
