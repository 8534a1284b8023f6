//! A read-only SQLite VFS named `strata` that serves a strata or Litestream replica straight
//! from object storage: `file:app.db?vfs=strata&replica=s3://bucket/app` (or the replica in
//! `STRATA_REPLICA_URL`, or Litestream's `LITESTREAM_REPLICA_URL`).
//!
//! Two ways in:
//! - the loadable extension, for any SQLite: `.load ./libstrata_vfs` in the `sqlite3` shell
//!   (entry point `sqlite3_stratavfs_init`). It links no SQLite of its own: every SQLite
//!   call goes through the routines SQLite hands the extension.
//! - in-process (feature `rusqlite`): `strata_vfs::register` once, then open connections with
//!   `vfs=strata`.
//!
//! On open the VFS plans the newest state with strata's restore planner and builds a page
//! map (page number to file, offset and frame size) from the planned files' page indexes;
//! reads are served from it through an LRU page cache, adjacent frames of one file in one
//! ranged read, with read-ahead that grows while access is sequential. While a connection
//! is in use, L0 is polled for new files; a newer state is shown from the next read
//! transaction, so each transaction sees one TXID. With `primary=http://HOST:PORT/NAME` (or
//! `STRATA_PRIMARY_URL`) it also reads the primary's live stream, and shows each file it
//! pushes (checked to continue the state held) without waiting for the replica. `PRAGMA
//! strata_txid = '<hex>'` and
//! `PRAGMA strata_time = '<RFC 3339 | 5 minutes ago | latest>'` pin a past state;
//! `PRAGMA strata_txid` and `PRAGMA strata_lag` read the TXID shown and the seconds since
//! the last successful poll; the SQL functions `strata_txid()`, `strata_lag()`,
//! `strata_time()` and `strata_set_time(text)` do the same, and every name also answers
//! with Litestream's `litestream_` prefix.
//!
//! Errors are SQLite errors (a failed open is `SQLITE_CANTOPEN`, a failed read
//! `SQLITE_IOERR_READ`, a write `SQLITE_READONLY`); their cause goes to SQLite's error log
//! and to standard error (`STRATA_VFS_LOG=off` silences the latter).

// What is public is the API: everything else is private to its module or the crate.
#![warn(unreachable_pub)]

mod cache;
mod db;
mod disk_cache;
mod ffi;
mod hydrate;
mod page_map;
mod runtime;
mod sql;
mod state;
mod vfs;

use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;
use std::time::Duration;

pub use state::{RestorePoint, VfsError};

/// How the VFS reads.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Options {
    /// Bytes of decoded pages kept per open database (10 MiB, as Litestream's).
    pub cache_size: usize,
    /// How often an open database in use looks for new files (1 s).
    pub poll_interval: Duration,
    /// How often the page map is planned afresh from a full listing, so a long-lived
    /// reader never points at files retention may delete (5 min).
    pub replan_interval: Duration,
    /// The longest any request to the replica may take before the SQLite call fails (30 s).
    pub timeout: Duration,
    /// Files up to this size are fetched whole (one GET instead of two for the header and
    /// index), their checksum verified, and kept (up to a quarter of `cache_size` in all): their
    /// pages then need no request, and still read if retention deletes the file while a
    /// transaction needs it. Most L0 files are this small (256 KiB).
    pub whole_file_max: u64,
    /// Hydration (off by default): restore the database into a local file in this
    /// directory in the background, then read from it, keeping it current by applying new
    /// files whole. The file is removed when the database is closed.
    pub hydrate_dir: Option<std::path::PathBuf>,
    /// An on-disk cache of fetched frames (off by default): ranged reads are kept under
    /// this directory, shared by every process that uses it, and survive restarts.
    pub disk_cache_dir: Option<std::path::PathBuf>,
    /// The most bytes the on-disk cache keeps (1 GiB); the oldest entries go first.
    pub disk_cache_size: u64,
    /// A primary's live stream, `http://HOST:PORT/NAME` (off by default): the files it
    /// pushes are shown from the next read transaction, without waiting for the replica;
    /// what it does not bring (the primary away, a gap) comes from the replica as without
    /// it. Pushed files are held in memory until the replica holds them (at most half of
    /// `cache_size`, and 32 MiB at least).
    pub primary: Option<strata::stream::PrimaryUrl>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            cache_size: 10 << 20,
            poll_interval: Duration::from_secs(1),
            replan_interval: Duration::from_secs(300),
            timeout: Duration::from_secs(30),
            whole_file_max: 256 << 10,
            hydrate_dir: None,
            disk_cache_dir: None,
            disk_cache_size: 1 << 30,
            primary: None,
        }
    }
}

impl Options {
    /// The defaults, overridden by `STRATA_VFS_CACHE_SIZE` (or Litestream's
    /// `LITESTREAM_CACHE_SIZE`) and `STRATA_VFS_WHOLE_FILE_MAX` (bytes), `STRATA_PRIMARY_URL`,
    /// `STRATA_VFS_POLL_INTERVAL`, `STRATA_VFS_REPLAN_INTERVAL` and `STRATA_VFS_TIMEOUT`
    /// (durations such as `500ms` or `2s`). A value that does not parse is an error.
    pub fn from_env() -> Result<Options, String> {
        let mut o = Options::default();
        for name in ["STRATA_VFS_CACHE_SIZE", "LITESTREAM_CACHE_SIZE"] {
            if let Some(v) = env(name) {
                o.cache_size = v
                    .parse()
                    .map_err(|_| format!("{name}={v:?} is not a number of bytes"))?;
                break;
            }
        }
        o.disk_cache_dir = env("STRATA_VFS_DISK_CACHE_DIR").map(Into::into);
        if let Some(v) = env("STRATA_PRIMARY_URL") {
            o.primary = Some(
                strata::stream::PrimaryUrl::parse(&v)
                    .map_err(|e| format!("STRATA_PRIMARY_URL: {e}"))?,
            );
        }
        if let Some(v) = env("STRATA_VFS_DISK_CACHE_SIZE") {
            o.disk_cache_size = v.parse().map_err(|_| {
                format!("STRATA_VFS_DISK_CACHE_SIZE={v:?} is not a number of bytes")
            })?;
        }
        if let Some(v) = env("STRATA_VFS_WHOLE_FILE_MAX") {
            o.whole_file_max = v
                .parse()
                .map_err(|_| format!("STRATA_VFS_WHOLE_FILE_MAX={v:?} is not a number of bytes"))?;
        }
        o.hydrate_dir = match env("STRATA_VFS_HYDRATE_DIR") {
            Some(dir) => Some(dir.into()),
            // Litestream's switch; its path names a file, so its directory is used.
            None if env("LITESTREAM_HYDRATION_ENABLED").is_some_and(|v| v == "true") => {
                Some(hydration_dir(env("LITESTREAM_HYDRATION_PATH").as_deref()))
            }
            None => None,
        };
        if env("LITESTREAM_WRITE_ENABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Err("LITESTREAM_WRITE_ENABLED=true: strata's VFS reads only (Litestream's write mode is not supported yet)".into());
        }
        if let Some(v) = env("LITESTREAM_POLL_INTERVAL") {
            o.poll_interval = parse_duration(&v).filter(|d| !d.is_zero()).ok_or_else(|| {
                format!("LITESTREAM_POLL_INTERVAL={v:?} is not a duration such as 500ms or 2s")
            })?;
        }
        for (name, slot) in [
            ("STRATA_VFS_POLL_INTERVAL", &mut o.poll_interval),
            ("STRATA_VFS_REPLAN_INTERVAL", &mut o.replan_interval),
            ("STRATA_VFS_TIMEOUT", &mut o.timeout),
        ] {
            if let Some(v) = env(name) {
                *slot = parse_duration(&v)
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| format!("{name}={v:?} is not a duration such as 500ms or 2s"))?;
            }
        }
        Ok(o)
    }
}

/// Where hydrated files go for Litestream's `hydration_path`, which names a file: its
/// directory (the system's temporary directory if it names none).
fn hydration_dir(path: Option<&str>) -> std::path::PathBuf {
    path.map(std::path::PathBuf::from)
        .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(std::env::temp_dir)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let n: f64 = number.trim().parse().ok()?;
    (n.is_finite() && n >= 0.0).then(|| Duration::from_secs_f64(n * scale))
}

/// The SQLite functions, set once by whichever way the VFS was registered first.
static API: OnceLock<ffi::Api> = OnceLock::new();

/// FNV-1a: a short stable name for a longer one (a replica URL) in file names.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn api() -> Option<&'static ffi::Api> {
    API.get()
}

/// Writes an error's cause to SQLite's log and (unless `STRATA_VFS_LOG=off`) standard
/// error: SQLite's own messages for VFS errors are generic.
fn report(code: c_int, message: &str) {
    if let Some(api) = api() {
        api.log_message(code, message);
    }
    static QUIET: OnceLock<bool> = OnceLock::new();
    if !*QUIET.get_or_init(|| env("STRATA_VFS_LOG").is_some_and(|v| v.eq_ignore_ascii_case("off")))
    {
        eprintln!("{message}");
    }
}

/// Registers the VFS (named `strata`) and the SQL functions on every connection opened
/// after, once per process.
fn register_with(api: ffi::Api, options: Options) -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let api = *API.get_or_init(|| api);
            vfs::register(&api, c"strata", options)?;
            // SAFETY: an entry point of the extension signature, as auto_extension expects.
            let rc = unsafe {
                (api.auto_extension)(Some(std::mem::transmute::<
                    unsafe extern "C" fn(
                        *mut ffi::sqlite3,
                        *mut *mut c_char,
                        *const c_void,
                    ) -> c_int,
                    unsafe extern "C" fn(),
                >(connection_init)))
            };
            if rc != ffi::SQLITE_OK {
                return Err(format!("sqlite3_auto_extension failed ({rc})"));
            }
            Ok(())
        })
        .clone()
}

/// Run by SQLite for every new connection: adds the SQL functions.
unsafe extern "C" fn connection_init(
    conn: *mut ffi::sqlite3,
    _err: *mut *mut c_char,
    _routines: *const c_void,
) -> c_int {
    match api() {
        // SAFETY: conn is the connection being opened.
        Some(api) => unsafe { sql::register_functions(api, conn) },
        None => ffi::SQLITE_ERROR,
    }
}

/// Registers the `strata` VFS with the SQLite linked into this process (rusqlite's).
/// Connections opened after it with `vfs=strata` read a replica, and
/// have the SQL functions. Calling it again does nothing.
///
/// ```no_run
/// strata_vfs::register(strata_vfs::Options::from_env().unwrap()).unwrap();
/// let conn = rusqlite::Connection::open_with_flags_and_vfs(
///     "file:app.db?replica=file:///var/backups/app",
///     rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
///     "strata",
/// )
/// .unwrap();
/// let txid: String = conn.query_row("SELECT strata_txid()", [], |r| r.get(0)).unwrap();
/// ```
#[cfg(feature = "rusqlite")]
pub fn register(options: Options) -> Result<(), String> {
    register_with(ffi::Api::linked(), options)
}

/// The loadable extension's entry point (`.load ./libstrata_vfs`): registers the VFS and
/// the SQL functions, on this connection and every later one, and keeps the library loaded.
///
/// # Safety
/// Called by SQLite's extension loader with its arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sqlite3_stratavfs_init(
    conn: *mut ffi::sqlite3,
    err: *mut *mut c_char,
    routines: *const c_void,
) -> c_int {
    let fail = |api: Option<&ffi::Api>, message: String| {
        if let (Some(api), false) = (api, err.is_null()) {
            // SAFETY: err takes a message from sqlite3_malloc, which SQLite frees.
            unsafe { *err = api.malloc_text(&message) };
        } else {
            eprintln!("{message}");
        }
        ffi::SQLITE_ERROR
    };
    // SAFETY: routines is what SQLite passed.
    let Some(api) = (unsafe { ffi::Api::from_routines(routines) }) else {
        return fail(
            None,
            "strata VFS: this SQLite is too old (3.8.7 or later needed)".to_owned(),
        );
    };
    let options = match Options::from_env() {
        Ok(o) => o,
        Err(e) => return fail(Some(&api), format!("strata VFS: {e}")),
    };
    if let Err(e) = register_with(api, options) {
        return fail(Some(&api), format!("strata VFS: {e}"));
    }
    // The connection loading the extension was opened before the auto-extension existed.
    // SAFETY: conn is the loading connection.
    let rc = unsafe { sql::register_functions(&api, conn) };
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    ffi::SQLITE_OK_LOAD_PERMANENTLY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("-1s"), None);
    }
}
