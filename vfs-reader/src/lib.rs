//! Read-only SQLite VFS over a strata or Litestream replica.
//!
//! Not implemented yet: this crate holds the workspace slot the VFS issue will fill.
