//! What SQL sees of the VFS: the pragmas (`PRAGMA strata_txid`, `strata_time`, `strata_lag`,
//! `strata_hydrated`, and Litestream's `litestream_*` names for the same) and the SQL functions
//! (`strata_txid()`, `strata_lag()`, `strata_time()`, `strata_set_time(text)`, and the
//! `litestream_*` aliases).

use std::ffi::{CStr, c_char, c_int, c_void};

use ltx::Txid;

use crate::db::Db;
use crate::ffi::{self, Api};
use crate::state::RestorePoint;

/// A file-control op the VFS answers with its `Db` (how a SQL function finds the database
/// of its connection). Outside SQLite's own op codes.
pub(crate) const FCNTL_STRATA_DB: c_int = 0x5354_5201;

/// The pragma or function names, without the `strata_`/`litestream_` prefix.
fn unprefixed(name: &str) -> Option<&str> {
    let lower = name
        .strip_prefix("strata_")
        .or_else(|| name.strip_prefix("litestream_"))?;
    Some(lower)
}

/// Answers `PRAGMA <name>` or `PRAGMA <name> = <value>`: `Ok(None)` if the pragma is not
/// the VFS's, `Ok(Some(text))` with the result, `Err(message)` for a bad value or a failure.
pub(crate) fn pragma(db: &Db, name: &str, value: Option<&str>) -> Option<Result<String, String>> {
    let name = name.to_ascii_lowercase();
    let what = unprefixed(&name)?;
    Some(match (what, value) {
        ("txid", None) => Ok(db.txid().to_string()),
        ("txid", Some(v)) => parse_txid(v).and_then(|t| set(db, RestorePoint::Txid(t))),
        ("time", None) => Ok(describe(db.target())),
        ("time", Some(v)) => parse_time(v).and_then(|t| set(db, t)),
        ("lag", None) => Ok(lag(db).to_string()),
        ("lag", Some(_)) => Err(format!("{name} is read-only")),
        // The TXID the hydrated local copy in use holds, or nothing before it is ready.
        ("hydrated", None) => Ok(db.hydrated().map_or_else(String::new, |t| t.to_string())),
        ("hydrated", Some(_)) => Err(format!("{name} is read-only")),
        _ => return None,
    })
}

fn set(db: &Db, target: RestorePoint) -> Result<String, String> {
    Ok(db
        .set_target(target)
        .map_err(|e| e.to_string())?
        .to_string())
}

fn lag(db: &Db) -> i64 {
    db.lag().map_or(-1, |s| s as i64)
}

fn describe(target: RestorePoint) -> String {
    match target {
        RestorePoint::Latest => "latest".to_owned(),
        RestorePoint::Txid(t) => format!("txid {t}"),
        RestorePoint::Timestamp(ts) => ts.to_string(),
    }
}

/// A TXID as 16 hex digits (fewer are taken too).
pub(crate) fn parse_txid(text: &str) -> Result<Txid, String> {
    let t = text.trim();
    match u64::from_str_radix(t, 16) {
        Ok(n) if n > 0 && t.len() <= 16 => Ok(Txid::new(n)),
        _ => Err(format!(
            "{text:?} is not a TXID (up to 16 hex digits, not zero)"
        )),
    }
}

/// `latest`, an RFC 3339 time, or `<n> <seconds|minutes|hours|days> ago`.
pub(crate) fn parse_time(text: &str) -> Result<RestorePoint, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("latest") || t.eq_ignore_ascii_case("now") {
        return Ok(RestorePoint::Latest);
    }
    if let Ok(ts) = t.parse::<jiff::Timestamp>() {
        return Ok(RestorePoint::Timestamp(ts));
    }
    let bad = || {
        format!(
            "{text:?} is not a time: give latest, an RFC 3339 time (2026-01-02T03:04:05Z), a date (2026-01-02, midnight UTC) or \"5 minutes ago\""
        )
    };
    // A date alone is its first instant, in UTC.
    if let Ok(date) = t.parse::<jiff::civil::Date>() {
        return date
            .to_zoned(jiff::tz::TimeZone::UTC)
            .map(|z| RestorePoint::Timestamp(z.timestamp()))
            .map_err(|_| bad());
    }
    // A well-formed time past the last one representable (9999-12-30) is "the newest state
    // at or before the far future": every state.
    if t.len() >= 10 && t.as_bytes()[4] == b'-' && t[..4].parse::<u32>().is_ok_and(|y| y >= 9999) {
        return Ok(RestorePoint::Timestamp(jiff::Timestamp::MAX));
    }
    let words: Vec<&str> = t.split_whitespace().collect();
    let [n, unit, ago] = words[..] else {
        return Err(bad());
    };
    if !ago.eq_ignore_ascii_case("ago") {
        return Err(bad());
    }
    let n: i64 = n.parse().ok().filter(|n| *n >= 0).ok_or_else(bad)?;
    let unit = unit.to_ascii_lowercase();
    let seconds = match unit.trim_end_matches('s') {
        "second" | "sec" => 1,
        "minute" | "min" => 60,
        "hour" => 3600,
        "day" => 86_400,
        _ => return Err(bad()),
    };
    let span = jiff::SignedDuration::from_secs(n.checked_mul(seconds).ok_or_else(bad)?);
    jiff::Timestamp::now()
        .checked_sub(span)
        .map(RestorePoint::Timestamp)
        .map_err(|_| bad())
}

/// The SQL functions, each under both prefixes: (name, argument count, what it does).
const FUNCTIONS: [(&CStr, c_int, Function); 8] = [
    (c"strata_txid", 0, Function::Txid),
    (c"litestream_txid", 0, Function::Txid),
    (c"strata_lag", 0, Function::Lag),
    (c"litestream_lag", 0, Function::Lag),
    (c"strata_time", 0, Function::Time),
    (c"litestream_time", 0, Function::Time),
    (c"strata_set_time", 1, Function::SetTime),
    (c"litestream_set_time", 1, Function::SetTime),
];

#[derive(Clone, Copy)]
enum Function {
    Txid,
    Lag,
    Time,
    SetTime,
}

/// Registers the SQL functions on `conn`.
///
/// # Safety
/// `conn` must be an open connection of the SQLite `api` belongs to.
pub(crate) unsafe fn register_functions(api: &Api, conn: *mut ffi::sqlite3) -> c_int {
    for (name, args, function) in FUNCTIONS {
        let call: ffi::XFunc = match function {
            Function::Txid => txid_fn,
            Function::Lag => lag_fn,
            Function::Time => time_fn,
            Function::SetTime => set_time_fn,
        };
        // SAFETY: a static name, no user data, a scalar function.
        let rc = unsafe {
            (api.create_function_v2)(
                conn,
                name.as_ptr(),
                args,
                ffi::SQLITE_UTF8,
                std::ptr::null_mut(),
                Some(call),
                None,
                None,
                None,
            )
        };
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    ffi::SQLITE_OK
}

/// The `Db` of the function's connection's main database, if it is the VFS's.
///
/// # Safety
/// `ctx` must be the context SQLite passed to the running function.
unsafe fn db_of<'a>(api: &Api, ctx: *mut ffi::sqlite3_context) -> Option<&'a Db> {
    let mut db: *const Db = std::ptr::null();
    // SAFETY: the VFS answers FCNTL_STRATA_DB by writing its Db pointer; other VFSes return
    // SQLITE_NOTFOUND and leave it null.
    unsafe {
        let conn = (api.context_db_handle)(ctx);
        let rc = (api.file_control)(
            conn,
            c"main".as_ptr(),
            FCNTL_STRATA_DB,
            (&raw mut db).cast::<c_void>(),
        );
        if rc != ffi::SQLITE_OK || db.is_null() {
            return None;
        }
        Some(&*db)
    }
}

/// Runs `f` with the context's `Db`, or sets an error result.
unsafe fn with_db(ctx: *mut ffi::sqlite3_context, f: impl FnOnce(&Api, &Db)) {
    let Some(api) = crate::api() else { return };
    // SAFETY: ctx is the running function's context.
    match unsafe { db_of(api, ctx) } {
        Some(db) => f(api, db),
        // SAFETY: as above.
        None => unsafe {
            api.result_err(ctx, "the main database is not opened with the strata VFS");
        },
    }
}

unsafe extern "C" fn txid_fn(
    ctx: *mut ffi::sqlite3_context,
    _: c_int,
    _: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: called by SQLite with its context.
    unsafe { with_db(ctx, |api, db| api.result_str(ctx, &db.txid().to_string())) }
}

unsafe extern "C" fn lag_fn(
    ctx: *mut ffi::sqlite3_context,
    _: c_int,
    _: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: called by SQLite with its context.
    unsafe { with_db(ctx, |api, db| (api.result_int64)(ctx, lag(db))) }
}

unsafe extern "C" fn time_fn(
    ctx: *mut ffi::sqlite3_context,
    _: c_int,
    _: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: called by SQLite with its context.
    unsafe { with_db(ctx, |api, db| api.result_str(ctx, &describe(db.target()))) }
}

unsafe extern "C" fn set_time_fn(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: SQLite passes argc values in argv; value_text's result lives until the
    // function returns.
    unsafe {
        with_db(ctx, |api, db| {
            let text = if argc == 1 && (api.value_type)(*argv) != ffi::SQLITE_NULL {
                let p = (api.value_text)(*argv);
                (!p.is_null()).then(|| CStr::from_ptr(p.cast::<c_char>()).to_string_lossy())
            } else {
                None
            };
            let Some(text) = text else {
                api.result_err(
                    ctx,
                    "strata_set_time needs a time: latest, RFC 3339 or \"5 minutes ago\"",
                );
                return;
            };
            match parse_time(&text).and_then(|t| set(db, t)) {
                Ok(txid) => api.result_str(ctx, &txid),
                Err(e) => api.result_err(ctx, &e),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_txids_parse() {
        assert_eq!(parse_time("latest"), Ok(RestorePoint::Latest));
        assert_eq!(
            parse_time("2026-01-02T03:04:05Z"),
            Ok(RestorePoint::Timestamp(
                "2026-01-02T03:04:05Z".parse().unwrap()
            ))
        );
        let Ok(RestorePoint::Timestamp(t)) = parse_time("5 minutes ago") else {
            panic!("relative time");
        };
        let ago = jiff::Timestamp::now().duration_since(t).as_secs();
        assert!((299..=301).contains(&ago), "{ago}");
        assert!(parse_time("2 fortnights ago").is_err());
        assert!(
            parse_time("-5 minutes ago").is_err(),
            "not a time in the future"
        );
        assert_eq!(
            parse_time("2026-01-02"),
            Ok(RestorePoint::Timestamp(
                "2026-01-02T00:00:00Z".parse().unwrap()
            ))
        );
        assert_eq!(
            parse_time("9999-12-31T23:59:59Z"),
            Ok(RestorePoint::Timestamp(jiff::Timestamp::MAX))
        );
        assert!(parse_time("2999-06-01T00:00:00+02:00").is_ok());
        assert!(parse_time("soon").is_err());
        assert_eq!(parse_txid("000000000000000a"), Ok(Txid::new(10)));
        assert!(parse_txid("0").is_err());
        assert!(parse_txid("xyz").is_err());
        assert!(parse_txid("10000000000000000").is_err());
    }
}
