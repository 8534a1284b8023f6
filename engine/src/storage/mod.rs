//! Storage: a replica's LTX files in a directory or an object store.
//!
//! One client, [`Replica`], over one [`Backend`] trait, laid out as `object_store` lays
//! itself out: a backend per file ([`Directory`], [`ObjectBackend`] over any `object_store`
//! store: S3 and S3-compatible servers, GCS, Azure, memory), and behaviours as wrappers that
//! forward every method ([`Counting`] counts requests; `faults`, for tests, injects failures).
//! The replica reads and writes both of Litestream's layouts.

#[cfg(feature = "s3")]
mod aws_profile;
mod backend;
mod chunked_reader;
mod counting;
mod directory;
mod error;
#[cfg(any(test, feature = "test-support"))]
pub mod faults;
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
mod http;
mod layout;
mod ltx_read;
mod multipart;
mod object;
mod open;
mod replica;
mod url;

pub use backend::{Backend, Body, Capabilities, Listed};
pub use chunked_reader::ChunkedReader;
pub use counting::{Counting, RequestCounter, RequestCounts};
pub use directory::Directory;
pub use error::{BackendError, ErrorKind, Operation, StorageError};
pub use layout::{Layout, Level};
pub use ltx_read::LtxLayout;
pub use multipart::UploadLimits;
pub use object::ObjectBackend;
pub use replica::{Clients, FileInfo, Replica};
pub use url::{ReplicaUrl, S3Credentials, UrlError};
pub(crate) use url::{bucket_problem, normal_endpoint};
