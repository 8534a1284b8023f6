//! The `sqlite3_vfs` and `sqlite3_io_methods` SQLite calls: the main database file is a
//! [`Db`]; temporary files and everything that is not a file go to the default VFS.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::db::Db;
use crate::ffi::{self, Api, sqlite3_file, sqlite3_io_methods, sqlite3_vfs};
use crate::sql;
use crate::state::{RestorePoint, VfsError};
use crate::{Options, report};

/// What the registered VFS carries (its `pAppData`).
struct VfsData {
    default: *mut sqlite3_vfs,
    options: Options,
}

/// The file SQLite allocates for a main database (`szOsFile` covers this and the default
/// VFS's own files, which temporary files are).
#[repr(C)]
struct StrataFile {
    base: sqlite3_file,
    db: *mut Db,
}

static IO_METHODS: sqlite3_io_methods = sqlite3_io_methods {
    version: 1,
    close: Some(x_close),
    read: Some(x_read),
    write: Some(x_write),
    truncate: Some(x_truncate),
    sync: Some(x_sync),
    file_size: Some(x_file_size),
    lock: Some(x_lock),
    unlock: Some(x_unlock),
    check_reserved_lock: Some(x_check_reserved_lock),
    file_control: Some(x_file_control),
    sector_size: Some(x_sector_size),
    device_characteristics: Some(x_device_characteristics),
};

/// Registers the VFS as `name` with `api`'s SQLite (not as the default VFS).
pub(crate) fn register(api: &Api, name: &CStr, options: Options) -> Result<(), String> {
    // SAFETY: vfs_find with null gives the default VFS, which lives as long as SQLite.
    let default = unsafe { (api.vfs_find)(std::ptr::null()) };
    if default.is_null() {
        return Err("SQLite has no default VFS to delegate temporary files to".to_owned());
    }
    // SAFETY: default is a registered VFS.
    let (default_size, max_pathname) =
        unsafe { ((*default).os_file_size, (*default).max_pathname) };
    let size = c_int::try_from(std::mem::size_of::<StrataFile>())
        .unwrap_or(c_int::MAX)
        .max(default_size);
    let data = Box::new(VfsData { default, options });
    // Registered once per name for the life of the process: SQLite keeps the pointer.
    let vfs = Box::new(sqlite3_vfs {
        version: 2,
        os_file_size: size,
        max_pathname: max_pathname.max(512),
        next: std::ptr::null_mut(),
        name: name.to_owned().into_raw(),
        app_data: Box::into_raw(data).cast(),
        open: Some(x_open),
        delete: Some(x_delete),
        access: Some(x_access),
        full_pathname: Some(x_full_pathname),
        dl_open: Some(x_dl_open),
        dl_error: Some(x_dl_error),
        dl_sym: Some(x_dl_sym),
        dl_close: Some(x_dl_close),
        randomness: Some(x_randomness),
        sleep: Some(x_sleep),
        current_time: Some(x_current_time),
        get_last_error: Some(x_get_last_error),
        current_time_int64: Some(x_current_time_int64),
        set_system_call: None,
        get_system_call: None,
        next_system_call: None,
    });
    // SAFETY: a complete VFS that is never freed.
    let rc = unsafe { (api.vfs_register)(Box::into_raw(vfs), 0) };
    if rc != ffi::SQLITE_OK {
        return Err(format!("sqlite3_vfs_register failed ({rc})"));
    }
    Ok(())
}

/// # Safety
/// `vfs` must be a VFS [`register`] made.
unsafe fn data<'a>(vfs: *mut sqlite3_vfs) -> &'a VfsData {
    // SAFETY: app_data is the VfsData register leaked.
    unsafe { &*(*vfs).app_data.cast::<VfsData>() }
}

/// # Safety
/// `file` must be a main database this VFS opened.
unsafe fn db<'a>(file: *mut sqlite3_file) -> &'a Db {
    // SAFETY: x_open wrote a StrataFile with a live Db for files using IO_METHODS.
    unsafe { &*(*file.cast::<StrataFile>()).db }
}

/// Runs a callback, turning a panic into an error code: no panic crosses into SQLite.
fn guard(what: &str, on_panic: c_int, f: impl FnOnce() -> c_int) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(rc) => rc,
        Err(_) => {
            report(
                ffi::SQLITE_ERROR,
                &format!("strata VFS: {what} panicked (a bug)"),
            );
            on_panic
        }
    }
}

/// URI parameter `key` of the main database file `name`.
fn uri_parameter(api: &Api, name: *const c_char, key: &CStr) -> Option<String> {
    if name.is_null() {
        return None;
    }
    // SAFETY: name is the filename SQLite passed to xOpen (URI parameters follow it).
    let p = unsafe { (api.uri_parameter)(name, key.as_ptr()) };
    // SAFETY: a NUL-terminated parameter value.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// The replica URL of the environment: `STRATA_REPLICA_URL`, then Litestream's
/// `LITESTREAM_REPLICA_URL`.
fn environment_replica() -> Option<String> {
    ["STRATA_REPLICA_URL", "LITESTREAM_REPLICA_URL"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
}

/// What a database name opened on this VFS is.
enum Kind {
    /// A replica, at this URL.
    Replica(String),
    /// Asked for as a replica (`vfs=strata` in its URI) with no replica given.
    NoReplica,
    /// An ordinary local database (an ATTACH by plain name, the target of VACUUM INTO):
    /// the default VFS serves it.
    Local,
}

/// Which names are replicas: one with `replica=URL` is that replica; one with `vfs=strata`
/// in its URI is the environment's replica. Anything else is a local file.
fn kind_by_uri(api: &Api, name: *const c_char) -> Kind {
    let given =
        uri_parameter(api, name, c"replica").or_else(|| uri_parameter(api, name, c"replica_url"));
    if let Some(url) = given {
        return Kind::Replica(url);
    }
    if uri_parameter(api, name, c"vfs").is_some() {
        return environment_replica().map_or(Kind::NoReplica, Kind::Replica);
    }
    Kind::Local
}

/// The full pathnames given to replicas (see [`x_full_pathname`]), and their URLs.
fn replica_names() -> &'static std::sync::Mutex<std::collections::HashMap<String, String>> {
    static NAMES: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, String>>> =
        std::sync::OnceLock::new();
    NAMES.get_or_init(Default::default)
}

/// The replica a name opened as a main database is, if it is one: a full pathname given to
/// a replica, or (see [`kind_by_uri`]) a name whose URI says so. A name opened through the
/// VFS by name (no URI) with the environment's replica set is that replica when it is
/// opened read-only and no local file has that name.
fn kind_at_open(api: &Api, name: *const c_char, flags: c_int) -> Kind {
    if name.is_null() {
        return Kind::Local;
    }
    // SAFETY: a NUL-terminated name.
    let text = unsafe { CStr::from_ptr(name) }.to_string_lossy();
    if let Some(url) = replica_names().lock().unwrap().get(text.as_ref()) {
        return Kind::Replica(url.clone());
    }
    match kind_by_uri(api, name) {
        Kind::Local => match environment_replica() {
            Some(url)
                if flags & ffi::SQLITE_OPEN_CREATE == 0
                    && !std::path::Path::new(text.as_ref()).exists() =>
            {
                Kind::Replica(url)
            }
            _ => Kind::Local,
        },
        kind => kind,
    }
}

fn open_db(api: &Api, data: &VfsData, name: *const c_char, url: String) -> Result<Db, VfsError> {
    let parsed = strata::storage::ReplicaUrl::parse(&url)
        .map_err(|e| VfsError::Config(format!("replica {url}: {e}")))?;
    let replica = crate::runtime::run(data.options.timeout, async move {
        Ok(strata::storage::Replica::open(&parsed)?)
    })?;
    let mut options = data.options.clone();
    // `hydrate=DIR` turns hydration on for this database (an empty value turns it off).
    if let Some(dir) = uri_parameter(api, name, c"hydrate") {
        options.hydrate_dir = (!dir.is_empty()).then(|| dir.into());
    }
    litestream_uri_parameters(api, name, &mut options)?;
    // `primary=URL` follows a primary's live stream (an empty value turns it off).
    if let Some(url) = uri_parameter(api, name, c"primary") {
        options.primary = match url.as_str() {
            "" => None,
            url => Some(strata::stream::PrimaryUrl::parse(url).map_err(VfsError::Config)?),
        };
    }
    Db::open(replica, options, RestorePoint::Latest)
}

/// Litestream's VFS settings as URI parameters: `hydration_enabled` (with `hydration_path`,
/// a file name whose directory is used), `poll_interval`, `cache_size`; `write_enabled=true`
/// is refused (this VFS reads only).
fn litestream_uri_parameters(
    api: &Api,
    name: *const c_char,
    options: &mut crate::Options,
) -> Result<(), VfsError> {
    let flag = |key: &CStr| -> Result<Option<bool>, VfsError> {
        let Some(v) = uri_parameter(api, name, key) else {
            return Ok(None);
        };
        go_bool(&v).map(Some).ok_or_else(|| {
            VfsError::Config(format!("{}={v:?}: true or false", key.to_string_lossy()))
        })
    };
    if flag(c"write_enabled")? == Some(true) {
        return Err(VfsError::Config(
            "write_enabled: strata's VFS reads only (Litestream's write mode is not supported yet)"
                .into(),
        ));
    }
    match flag(c"hydration_enabled")? {
        Some(true) => {
            options.hydrate_dir = Some(crate::hydration_dir(
                uri_parameter(api, name, c"hydration_path").as_deref(),
            ));
        }
        Some(false) => options.hydrate_dir = None,
        None => {}
    }
    if let Some(v) = uri_parameter(api, name, c"poll_interval") {
        options.poll_interval = crate::parse_duration(&v)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                VfsError::Config(format!(
                    "poll_interval={v:?} is not a duration such as 500ms or 2s"
                ))
            })?;
    }
    if let Some(v) = uri_parameter(api, name, c"cache_size") {
        options.cache_size = v
            .parse()
            .map_err(|_| VfsError::Config(format!("cache_size={v:?} is not a number of bytes")))?;
    }
    Ok(())
}

/// A boolean as Go's `strconv.ParseBool` reads it (Litestream's parameters).
fn go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

unsafe extern "C" fn x_open(
    vfs: *mut sqlite3_vfs,
    name: *const c_char,
    file: *mut sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: vfs is ours.
    let data = unsafe { data(vfs) };
    let kind = match crate::api() {
        Some(api) if flags & ffi::SQLITE_OPEN_MAIN_DB != 0 => kind_at_open(api, name, flags),
        _ => Kind::Local,
    };
    let url = match kind {
        Kind::Replica(url) => url,
        Kind::NoReplica => {
            report(
                ffi::SQLITE_CANTOPEN,
                "strata VFS: no replica: give ?replica=URL in the file name or set STRATA_REPLICA_URL",
            );
            return ffi::SQLITE_CANTOPEN;
        }
        // Temporary databases, sort files, statement journals, and local databases: the
        // default VFS's.
        // SAFETY: the default VFS's xOpen on a buffer of at least its szOsFile.
        Kind::Local => {
            return unsafe {
                match (*data.default).open {
                    Some(open) => open(data.default, name, file, flags, out_flags),
                    None => ffi::SQLITE_CANTOPEN,
                }
            };
        }
    };
    guard("xOpen", ffi::SQLITE_CANTOPEN, || {
        // SAFETY: SQLite sets pMethods to null before xOpen; it stays null on failure.
        unsafe { (*file).methods = std::ptr::null() };
        let Some(api) = crate::api() else {
            return ffi::SQLITE_CANTOPEN;
        };
        match open_db(api, data, name, url) {
            Ok(db) => {
                // SAFETY: file has room for a StrataFile (szOsFile).
                unsafe {
                    file.cast::<StrataFile>().write(StrataFile {
                        base: sqlite3_file {
                            methods: &IO_METHODS,
                        },
                        db: Box::into_raw(Box::new(db)),
                    });
                    if !out_flags.is_null() {
                        *out_flags = ffi::SQLITE_OPEN_READONLY | ffi::SQLITE_OPEN_MAIN_DB;
                    }
                }
                ffi::SQLITE_OK
            }
            Err(e) => {
                report(
                    ffi::SQLITE_CANTOPEN,
                    &format!("strata VFS: cannot open the replica: {e}"),
                );
                ffi::SQLITE_CANTOPEN
            }
        }
    })
}

unsafe extern "C" fn x_close(file: *mut sqlite3_file) -> c_int {
    guard("xClose", ffi::SQLITE_IOERR, || {
        // SAFETY: a main database file; its Db is freed once.
        unsafe {
            let f = file.cast::<StrataFile>();
            if !(*f).db.is_null() {
                drop(Box::from_raw((*f).db));
                (*f).db = std::ptr::null_mut();
            }
        }
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_read(
    file: *mut sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    guard("xRead", ffi::SQLITE_IOERR_READ, || {
        let (Ok(len), Ok(offset)) = (usize::try_from(amount), u64::try_from(offset)) else {
            return ffi::SQLITE_IOERR_READ;
        };
        // SAFETY: SQLite passes a buffer of `amount` bytes.
        let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
        // SAFETY: a main database file.
        match unsafe { db(file) }.read(out, offset) {
            Ok(true) => ffi::SQLITE_OK,
            Ok(false) => ffi::SQLITE_IOERR_SHORT_READ,
            Err(e) => {
                report(
                    ffi::SQLITE_IOERR_READ,
                    &format!("strata VFS: read failed: {e}"),
                );
                ffi::SQLITE_IOERR_READ
            }
        }
    })
}

unsafe extern "C" fn x_write(_: *mut sqlite3_file, _: *const c_void, _: c_int, _: i64) -> c_int {
    ffi::SQLITE_READONLY
}

unsafe extern "C" fn x_truncate(_: *mut sqlite3_file, _: i64) -> c_int {
    ffi::SQLITE_READONLY
}

unsafe extern "C" fn x_sync(_: *mut sqlite3_file, _: c_int) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_file_size(file: *mut sqlite3_file, size: *mut i64) -> c_int {
    guard("xFileSize", ffi::SQLITE_IOERR, || {
        // SAFETY: a main database file and an out pointer.
        unsafe { *size = i64::try_from(db(file).size()).unwrap_or(i64::MAX) };
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_lock(file: *mut sqlite3_file, level: c_int) -> c_int {
    guard("xLock", ffi::SQLITE_IOERR, || {
        // SAFETY: a main database file.
        match unsafe { db(file) }.set_lock(level) {
            Ok(()) => ffi::SQLITE_OK,
            Err(e) => {
                report(ffi::SQLITE_IOERR, &format!("strata VFS: {e}"));
                ffi::SQLITE_IOERR
            }
        }
    })
}

unsafe extern "C" fn x_unlock(file: *mut sqlite3_file, level: c_int) -> c_int {
    // SAFETY: as for x_lock.
    unsafe { x_lock(file, level) }
}

unsafe extern "C" fn x_check_reserved_lock(_: *mut sqlite3_file, out: *mut c_int) -> c_int {
    // SAFETY: an out pointer. Nobody writes through this VFS.
    unsafe { *out = 0 };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_file_control(file: *mut sqlite3_file, op: c_int, arg: *mut c_void) -> c_int {
    guard("xFileControl", ffi::SQLITE_ERROR, || {
        // SAFETY: a main database file.
        let db = unsafe { db(file) };
        match op {
            sql::FCNTL_STRATA_DB => {
                // SAFETY: the caller passes a *const Db to fill.
                unsafe { *arg.cast::<*const Db>() = db };
                ffi::SQLITE_OK
            }
            ffi::SQLITE_FCNTL_PDB => {
                db.set_connection(arg.cast());
                ffi::SQLITE_NOTFOUND
            }
            ffi::SQLITE_FCNTL_PRAGMA => {
                // SAFETY: SQLite passes char*[3]: result out, pragma name, value or null.
                unsafe { pragma(db, arg.cast::<*mut c_char>()) }
            }
            _ => ffi::SQLITE_NOTFOUND,
        }
    })
}

/// # Safety
/// `args` must be the `char*[3]` of `SQLITE_FCNTL_PRAGMA`.
unsafe fn pragma(db: &Db, args: *mut *mut c_char) -> c_int {
    let Some(api) = crate::api() else {
        return ffi::SQLITE_NOTFOUND;
    };
    // SAFETY: per SQLITE_FCNTL_PRAGMA, args[1] is the name and args[2] the value or null.
    let (name, value) = unsafe {
        let name = CStr::from_ptr(*args.add(1)).to_string_lossy();
        let value = (*args.add(2))
            .cast_const()
            .as_ref()
            .map(|v| CStr::from_ptr(v).to_string_lossy());
        (name, value)
    };
    let Some(result) = sql::pragma(db, &name, value.as_deref()) else {
        return ffi::SQLITE_NOTFOUND;
    };
    let (rc, text) = match result {
        Ok(text) => (ffi::SQLITE_OK, text),
        Err(message) => (ffi::SQLITE_ERROR, message),
    };
    // SAFETY: args[0] takes a string from sqlite3_malloc, which SQLite frees.
    unsafe { *args = api.malloc_text(&text) };
    rc
}

unsafe extern "C" fn x_sector_size(_: *mut sqlite3_file) -> c_int {
    4096
}

unsafe extern "C" fn x_device_characteristics(_: *mut sqlite3_file) -> c_int {
    0
}

unsafe extern "C" fn x_delete(vfs: *mut sqlite3_vfs, name: *const c_char, sync: c_int) -> c_int {
    // A replica's name has no files beside it to delete; a local database's journal does.
    if name.is_null() || belongs_to_replica(name) {
        return ffi::SQLITE_READONLY;
    }
    // SAFETY: delegated to the default VFS.
    unsafe {
        let default = data(vfs).default;
        match (*default).delete {
            Some(f) => f(default, name, sync),
            None => ffi::SQLITE_READONLY,
        }
    }
}

/// Whether `name` is a replica's full pathname or a file beside one (`-journal`, `-wal`,
/// `-shm`).
fn belongs_to_replica(name: *const c_char) -> bool {
    // SAFETY: a NUL-terminated name.
    let text = unsafe { CStr::from_ptr(name) }.to_string_lossy();
    let base = ["-journal", "-wal", "-shm"]
        .iter()
        .find_map(|s| text.strip_suffix(s))
        .unwrap_or(&text);
    replica_names().lock().unwrap().contains_key(base)
}

unsafe extern "C" fn x_access(
    vfs: *mut sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    // SAFETY: name is NUL-terminated.
    let n = unsafe { CStr::from_ptr(name) }.to_bytes();
    if [&b"-journal"[..], b"-wal", b"-shm"]
        .iter()
        .any(|s| n.ends_with(s))
        && belongs_to_replica(name)
    {
        // A replica has no journal or log beside it: nothing hot to roll back.
        // SAFETY: an out pointer.
        unsafe { *out = 0 };
        return ffi::SQLITE_OK;
    }
    // SAFETY: delegated to the default VFS.
    unsafe {
        let default = data(vfs).default;
        match (*default).access {
            Some(f) => f(default, name, flags, out),
            None => ffi::SQLITE_ERROR,
        }
    }
}

/// A replica's full pathname is its name and a hash of its URL: SQLite shares one cache
/// between connections of one full pathname (`cache=shared`), so two replicas opened under
/// one name must get two. A local database gets the default VFS's (an absolute path).
unsafe extern "C" fn x_full_pathname(
    vfs: *mut sqlite3_vfs,
    name: *const c_char,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    let url = match crate::api().map(|api| kind_by_uri(api, name)) {
        Some(Kind::Replica(url)) => Some(url),
        Some(Kind::NoReplica) => Some(String::new()),
        _ => None,
    };
    let Some(url) = url else {
        // SAFETY: delegated to the default VFS.
        return unsafe {
            let default = data(vfs).default;
            match (*default).full_pathname {
                Some(f) => f(default, name, n, out),
                None => ffi::SQLITE_CANTOPEN,
            }
        };
    };
    // SAFETY: name is NUL-terminated.
    let given = unsafe { CStr::from_ptr(name) }.to_string_lossy();
    let full = format!("{given}@{:016x}", crate::fnv1a(url.as_bytes()));
    let Ok(full_c) = std::ffi::CString::new(full.clone()) else {
        return ffi::SQLITE_CANTOPEN;
    };
    let bytes = full_c.as_bytes_with_nul();
    if bytes.len() > usize::try_from(n).unwrap_or(0) {
        return ffi::SQLITE_CANTOPEN;
    }
    if !url.is_empty() {
        replica_names().lock().unwrap().insert(full, url);
    }
    // SAFETY: out holds n bytes, checked above.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), out, bytes.len()) };
    ffi::SQLITE_OK
}

macro_rules! delegate {
    ($name:ident, $field:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty, $missing:expr) => {
        unsafe extern "C" fn $name(vfs: *mut sqlite3_vfs, $($arg: $ty),*) -> $ret {
            // SAFETY: the default VFS's own function, with SQLite's arguments.
            unsafe {
                let default = data(vfs).default;
                match (*default).$field {
                    Some(f) => f(default, $($arg),*),
                    None => $missing,
                }
            }
        }
    };
}

delegate!(x_dl_open, dl_open, (name: *const c_char) -> *mut c_void, std::ptr::null_mut());
delegate!(x_dl_error, dl_error, (n: c_int, out: *mut c_char) -> (), ());
delegate!(x_dl_sym, dl_sym, (handle: *mut c_void, symbol: *const c_char) -> Option<unsafe extern "C" fn()>, None);
delegate!(x_dl_close, dl_close, (handle: *mut c_void) -> (), ());
delegate!(x_randomness, randomness, (n: c_int, out: *mut c_char) -> c_int, 0);
delegate!(x_sleep, sleep, (micros: c_int) -> c_int, 0);
delegate!(x_current_time, current_time, (out: *mut f64) -> c_int, ffi::SQLITE_ERROR);
delegate!(x_get_last_error, get_last_error, (n: c_int, out: *mut c_char) -> c_int, 0);
delegate!(x_current_time_int64, current_time_int64, (out: *mut i64) -> c_int, ffi::SQLITE_ERROR);
