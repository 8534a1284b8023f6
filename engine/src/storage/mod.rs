//! Storage: a replica's LTX files in an object store.
//!
//! One client, [`Replica`], over any `object_store` backend (a local directory, S3 and
//! S3-compatible servers, an in-memory store for tests), reading and writing both of
//! Litestream's layouts. Behaviours are `ObjectStore` wrappers, as in `object_store` itself:
//! [`CountingStore`] counts requests, [`faults::FaultStore`] injects failures, and
//! `object_store::throttle::ThrottledStore` adds latency.

mod counting;
mod error;
pub mod faults;
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
mod http;
mod index;
mod layout;
mod location;
mod multipart;
mod replica;

pub use counting::{CountingStore, RequestCounter, RequestCounts};
pub use error::{ErrorKind, Operation, StorageError};
pub use index::{Indexed, LevelIndex, SharedIndex};
pub use layout::{Layout, Level};
pub use location::{ReplicaUrl, UrlError};
pub(crate) use location::{bucket_problem, normal_endpoint};
pub use multipart::UploadLimits;
pub use replica::{Clients, FileInfo, Replica};
