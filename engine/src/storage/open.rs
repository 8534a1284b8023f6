//! The backend a replica URL names: a directory, or a client for its bucket.

#[cfg(feature = "s3")]
use std::path::Path as FsPath;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::Path;

use super::backend::Backend;
use super::directory::Directory;
use super::error::{ErrorKind, Operation, StorageError};
use super::object::ObjectBackend;
use super::url::ReplicaUrl;

impl ReplicaUrl {
    /// Opens the replica's backend. For a directory, `create` makes it if missing; otherwise
    /// a missing directory is an error (a restore from a mistyped path should not look empty).
    pub(crate) fn open_backend(&self, create: bool) -> Result<Arc<dyn Backend>, StorageError> {
        let ReplicaUrl::File { root } = self else {
            let (_, prefix) = self.client_key().expect("only a directory has no client");
            return Ok(Arc::new(self.object_backend(self.open_store()?, prefix)));
        };
        let name = self.to_string();
        let open_error =
            |kind, message: String| StorageError::new(&name, Operation::Open, "", kind, message);
        if create {
            std::fs::create_dir_all(root).map_err(|e| {
                open_error(
                    ErrorKind::Other,
                    format!("cannot create directory {}: {e}", root.display()),
                )
            })?;
        } else if !root.is_dir() {
            return Err(open_error(
                ErrorKind::NotFound,
                format!("no replica directory at {}", root.display()),
            ));
        }
        let directory = Directory::new(root)
            .map_err(|e| StorageError::from_backend(&name, Operation::Open, "", e))?;
        Ok(Arc::new(directory))
    }

    /// The replica under `prefix` in `store`, a client [`ReplicaUrl::open_store`] made for
    /// this URL's bucket (perhaps for another replica in it).
    pub(crate) fn object_backend(
        &self,
        store: Arc<dyn ObjectStore>,
        prefix: &str,
    ) -> ObjectBackend {
        let backend = ObjectBackend::new(store, Path::from(prefix));
        if matches!(self, ReplicaUrl::S3 { .. }) {
            backend.with_timestamp_metadata()
        } else {
            backend
        }
    }

    /// A client for the URL's bucket or container.
    pub(crate) fn open_store(&self) -> Result<Arc<dyn ObjectStore>, StorageError> {
        let name = self.to_string();
        let open_error =
            |kind, message: String| StorageError::new(&name, Operation::Open, "", kind, message);
        match self {
            ReplicaUrl::File { .. } => Err(open_error(
                ErrorKind::Other,
                "a directory has no object store client".into(),
            )),
            #[cfg(feature = "s3")]
            ReplicaUrl::S3 {
                bucket,
                endpoint,
                region,
                force_path_style,
                skip_verify,
                credentials,
                ..
            } => {
                use object_store::aws::{AmazonS3Builder, S3CopyIfNotExists};
                install_tls_provider();
                // Virtual-hosted requests to an endpoint of one's own name the bucket in the
                // host, as AWS's SDKs do: `http://bucket.host:port` (object_store takes the
                // endpoint as given); an endpoint that is an IP address takes path-style
                // requests, as AWS's SDKs fall back to.
                let (virtual_hosted, endpoint) = match endpoint {
                    Some(e) if !force_path_style => match virtual_hosted_endpoint(e, bucket) {
                        Some(hosted) => (true, Some(hosted)),
                        None => (false, Some(e.clone())),
                    },
                    other => (!force_path_style, other.clone()),
                };
                let endpoint = &endpoint;
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_virtual_hosted_style_request(virtual_hosted)
                    .with_client_options(
                        client_options(*skip_verify)
                            .map_err(|m| open_error(ErrorKind::Other, m))?,
                    )
                    .with_retry(retry_config())
                    .with_http_connector(super::http::Connector)
                    // Files too large for one PUT are uploaded, then copied into place
                    // with a conditional multipart copy (see `multipart`).
                    .with_copy_if_not_exists(S3CopyIfNotExists::Multipart);
                if let Some(endpoint) = endpoint {
                    b = b
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                } else if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL")
                    .or_else(|_| std::env::var("AWS_ENDPOINT_URL_S3"))
                    .or_else(|_| std::env::var("AWS_ENDPOINT"))
                {
                    // Checked here too: the client panics on one without a scheme.
                    let endpoint = super::url::normal_endpoint(&endpoint).map_err(|m| {
                        open_error(ErrorKind::Other, format!("AWS_ENDPOINT_URL: {m}"))
                    })?;
                    b = b
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_endpoint(endpoint);
                }
                let profile = super::aws_profile::shared_profile();
                if let Some(c) = credentials {
                    b = b
                        .with_access_key_id(&c.access_key_id)
                        .with_secret_access_key(&c.secret_access_key);
                } else if std::env::var_os("AWS_ACCESS_KEY_ID").is_none()
                    && let Some((key, secret, token)) = profile.credentials()
                {
                    b = b.with_access_key_id(key).with_secret_access_key(secret);
                    if let Some(token) = token {
                        b = b.with_token(token);
                    }
                }
                let region = region.clone().or_else(|| {
                    // AWS_REGION is read by from_env; otherwise the older variable or the profile.
                    std::env::var_os("AWS_REGION")
                        .is_none()
                        .then(|| {
                            std::env::var("AWS_DEFAULT_REGION")
                                .ok()
                                .or_else(|| profile.region())
                        })
                        .flatten()
                });
                if let Some(region) = region {
                    b = b.with_region(region);
                }
                built(&name, b.build())
            }
            #[cfg(not(feature = "s3"))]
            ReplicaUrl::S3 { .. } => Err(open_error(
                ErrorKind::Other,
                "this build of strata has no S3 support (feature \"s3\")".into(),
            )),
            #[cfg(feature = "gcs")]
            ReplicaUrl::Gcs { bucket, .. } => {
                install_tls_provider();
                let store = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry_config())
                    .with_http_connector(super::http::Connector)
                    .build();
                built(&name, store)
            }
            #[cfg(feature = "azure")]
            ReplicaUrl::Azure { container, .. } => {
                install_tls_provider();
                let store = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(container)
                    .with_retry(retry_config())
                    .with_http_connector(super::http::Connector)
                    .build();
                built(&name, store)
            }
        }
    }
}

/// A client as built, or why it could not be.
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
fn built(
    name: &str,
    store: Result<impl ObjectStore, object_store::Error>,
) -> Result<Arc<dyn ObjectStore>, StorageError> {
    match store {
        Ok(store) => Ok(Arc::new(store)),
        Err(e) => Err(StorageError::from_backend(
            name,
            Operation::Open,
            "",
            e.into(),
        )),
    }
}

/// The one retry layer for remote stores (see `backend`): the client retries a request that
/// timed out, failed on the server's side (5xx, 429) or lost its connection, and resumes a
/// body that broke mid-transfer from where it stopped, pinned to the object's ETag. Retries
/// share one budget: at most 4, none started after 60 s, with backoff from 100 ms to 5 s.
/// With the client's 120 s per request, a read fails in at most about three minutes.
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
fn retry_config() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: std::time::Duration::from_millis(100),
            max_backoff: std::time::Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 4,
        retry_timeout: std::time::Duration::from_secs(60),
    }
}

/// HTTP client settings; honours `AWS_CA_BUNDLE` (a PEM file of extra trusted roots).
#[cfg(feature = "s3")]
fn client_options(skip_verify: bool) -> Result<object_store::ClientOptions, String> {
    let mut opts = object_store::ClientOptions::new()
        .with_connect_timeout(std::time::Duration::from_secs(5))
        .with_timeout(std::time::Duration::from_secs(120))
        .with_allow_invalid_certificates(skip_verify);
    if let Some(bundle) = std::env::var_os("AWS_CA_BUNDLE").filter(|v| !v.is_empty()) {
        let pem = std::fs::read(&bundle).map_err(|e| {
            format!(
                "cannot read AWS_CA_BUNDLE {}: {e}",
                FsPath::new(&bundle).display()
            )
        })?;
        let certs = object_store::Certificate::from_pem_bundle(&pem).map_err(|e| {
            format!(
                "AWS_CA_BUNDLE {} is not a PEM bundle: {e}",
                FsPath::new(&bundle).display()
            )
        })?;
        for cert in certs {
            opts = opts.with_root_certificate(cert);
        }
    }
    Ok(opts)
}

/// rustls needs one crypto provider per process; strata uses ring.
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
fn install_tls_provider() {
    // Fails only if a provider is already installed, which is what we want anyway.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `endpoint` with `bucket` put in front of its host, for virtual-hosted requests; `None`
/// if the host is an IP address (no name to put the bucket in front of).
#[cfg(feature = "s3")]
fn virtual_hosted_endpoint(endpoint: &str, bucket: &str) -> Option<String> {
    let mut url = url::Url::parse(endpoint).ok()?;
    match url.host()? {
        url::Host::Domain(host) => {
            let hosted = format!("{bucket}.{host}");
            url.set_host(Some(&hosted)).ok()?;
            Some(url.as_str().trim_end_matches('/').to_owned())
        }
        url::Host::Ipv4(_) | url::Host::Ipv6(_) => None,
    }
}

#[cfg(all(test, feature = "s3"))]
mod tests {
    use super::virtual_hosted_endpoint;

    #[test]
    fn a_virtual_hosted_endpoint_puts_the_bucket_before_a_host_name_only() {
        let hosted = |e: &str| virtual_hosted_endpoint(e, "b");
        assert_eq!(
            hosted("http://minio.local:9000").as_deref(),
            Some("http://b.minio.local:9000")
        );
        assert_eq!(
            hosted("https://s3.example.com/").as_deref(),
            Some("https://b.s3.example.com")
        );
        assert_eq!(hosted("http://127.0.0.1:9000"), None);
        assert_eq!(hosted("http://[::1]:9000"), None);
    }
}
