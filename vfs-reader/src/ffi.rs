//! The part of SQLite's C interface the VFS uses, declared here rather than taken from
//! `libsqlite3-sys`, so the loadable extension links no SQLite of its own: every SQLite
//! function is called through an [`Api`] table, filled either from the routines SQLite hands
//! a loadable extension or (feature `rusqlite`) from the SQLite linked into the process.

#![allow(non_camel_case_types, missing_docs)]

use std::ffi::{c_char, c_int, c_void};

pub(crate) const SQLITE_OK: c_int = 0;
pub(crate) const SQLITE_ERROR: c_int = 1;
pub(crate) const SQLITE_READONLY: c_int = 8;
pub(crate) const SQLITE_IOERR: c_int = 10;
pub(crate) const SQLITE_NOTFOUND: c_int = 12;
pub(crate) const SQLITE_CANTOPEN: c_int = 14;
pub(crate) const SQLITE_IOERR_READ: c_int = SQLITE_IOERR | (1 << 8);
pub(crate) const SQLITE_IOERR_SHORT_READ: c_int = SQLITE_IOERR | (2 << 8);
pub(crate) const SQLITE_OK_LOAD_PERMANENTLY: c_int = SQLITE_OK | (1 << 8);

pub(crate) const SQLITE_OPEN_READONLY: c_int = 0x0000_0001;
pub(crate) const SQLITE_OPEN_CREATE: c_int = 0x0000_0004;
pub(crate) const SQLITE_OPEN_MAIN_DB: c_int = 0x0000_0100;

pub(crate) const SQLITE_FCNTL_PRAGMA: c_int = 14;
/// A hint SQLite gives when it opens a database: a pointer to the field holding the
/// connection that uses the file (`sqlite3 **`).
pub(crate) const SQLITE_FCNTL_PDB: c_int = 30;

pub(crate) const SQLITE_UTF8: c_int = 1;
pub(crate) const SQLITE_NULL: c_int = 5;

/// `SQLITE_TRANSIENT`: SQLite copies the text before the call returns.
pub(crate) const SQLITE_TRANSIENT: isize = -1;

/// An opaque `sqlite3` connection.
#[repr(C)]
#[derive(Debug)]
pub struct sqlite3 {
    _opaque: [u8; 0],
}

/// An opaque `sqlite3_context`.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct sqlite3_context {
    _opaque: [u8; 0],
}

/// An opaque `sqlite3_value`.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct sqlite3_value {
    _opaque: [u8; 0],
}

/// `sqlite3_file`: the base every VFS file starts with.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct sqlite3_file {
    pub methods: *const sqlite3_io_methods,
}

/// `sqlite3_io_methods`, version 1 (no shared memory, no memory mapping).
#[repr(C)]
pub(crate) struct sqlite3_io_methods {
    pub version: c_int,
    pub close: Option<unsafe extern "C" fn(*mut sqlite3_file) -> c_int>,
    pub read: Option<unsafe extern "C" fn(*mut sqlite3_file, *mut c_void, c_int, i64) -> c_int>,
    pub write: Option<unsafe extern "C" fn(*mut sqlite3_file, *const c_void, c_int, i64) -> c_int>,
    pub truncate: Option<unsafe extern "C" fn(*mut sqlite3_file, i64) -> c_int>,
    pub sync: Option<unsafe extern "C" fn(*mut sqlite3_file, c_int) -> c_int>,
    pub file_size: Option<unsafe extern "C" fn(*mut sqlite3_file, *mut i64) -> c_int>,
    pub lock: Option<unsafe extern "C" fn(*mut sqlite3_file, c_int) -> c_int>,
    pub unlock: Option<unsafe extern "C" fn(*mut sqlite3_file, c_int) -> c_int>,
    pub check_reserved_lock: Option<unsafe extern "C" fn(*mut sqlite3_file, *mut c_int) -> c_int>,
    pub file_control: Option<unsafe extern "C" fn(*mut sqlite3_file, c_int, *mut c_void) -> c_int>,
    pub sector_size: Option<unsafe extern "C" fn(*mut sqlite3_file) -> c_int>,
    pub device_characteristics: Option<unsafe extern "C" fn(*mut sqlite3_file) -> c_int>,
}

/// `sqlite3_vfs`, version 3.
#[repr(C)]
pub(crate) struct sqlite3_vfs {
    pub version: c_int,
    pub os_file_size: c_int,
    pub max_pathname: c_int,
    pub next: *mut sqlite3_vfs,
    pub name: *const c_char,
    pub app_data: *mut c_void,
    pub open: Option<
        unsafe extern "C" fn(
            *mut sqlite3_vfs,
            *const c_char,
            *mut sqlite3_file,
            c_int,
            *mut c_int,
        ) -> c_int,
    >,
    pub delete: Option<unsafe extern "C" fn(*mut sqlite3_vfs, *const c_char, c_int) -> c_int>,
    pub access:
        Option<unsafe extern "C" fn(*mut sqlite3_vfs, *const c_char, c_int, *mut c_int) -> c_int>,
    pub full_pathname:
        Option<unsafe extern "C" fn(*mut sqlite3_vfs, *const c_char, c_int, *mut c_char) -> c_int>,
    pub dl_open: Option<unsafe extern "C" fn(*mut sqlite3_vfs, *const c_char) -> *mut c_void>,
    pub dl_error: Option<unsafe extern "C" fn(*mut sqlite3_vfs, c_int, *mut c_char)>,
    pub dl_sym: Option<
        unsafe extern "C" fn(
            *mut sqlite3_vfs,
            *mut c_void,
            *const c_char,
        ) -> Option<unsafe extern "C" fn()>,
    >,
    pub dl_close: Option<unsafe extern "C" fn(*mut sqlite3_vfs, *mut c_void)>,
    pub randomness: Option<unsafe extern "C" fn(*mut sqlite3_vfs, c_int, *mut c_char) -> c_int>,
    pub sleep: Option<unsafe extern "C" fn(*mut sqlite3_vfs, c_int) -> c_int>,
    pub current_time: Option<unsafe extern "C" fn(*mut sqlite3_vfs, *mut f64) -> c_int>,
    pub get_last_error: Option<unsafe extern "C" fn(*mut sqlite3_vfs, c_int, *mut c_char) -> c_int>,
    pub current_time_int64: Option<unsafe extern "C" fn(*mut sqlite3_vfs, *mut i64) -> c_int>,
    pub set_system_call: Option<unsafe extern "C" fn()>,
    pub get_system_call: Option<unsafe extern "C" fn()>,
    pub next_system_call: Option<unsafe extern "C" fn()>,
}

pub(crate) type XFunc = unsafe extern "C" fn(*mut sqlite3_context, c_int, *mut *mut sqlite3_value);

/// The SQLite functions the VFS calls.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Api {
    pub vfs_find: unsafe extern "C" fn(*const c_char) -> *mut sqlite3_vfs,
    pub vfs_register: unsafe extern "C" fn(*mut sqlite3_vfs, c_int) -> c_int,
    #[allow(clippy::type_complexity)]
    pub create_function_v2: unsafe extern "C" fn(
        *mut sqlite3,
        *const c_char,
        c_int,
        c_int,
        *mut c_void,
        Option<XFunc>,
        Option<XFunc>,
        Option<unsafe extern "C" fn(*mut sqlite3_context)>,
        Option<unsafe extern "C" fn(*mut c_void)>,
    ) -> c_int,
    pub result_int64: unsafe extern "C" fn(*mut sqlite3_context, i64),
    /// The last argument is a destructor; the VFS passes [`SQLITE_TRANSIENT`].
    pub result_text: unsafe extern "C" fn(*mut sqlite3_context, *const c_char, c_int, isize),
    pub result_error: unsafe extern "C" fn(*mut sqlite3_context, *const c_char, c_int),
    pub value_text: unsafe extern "C" fn(*mut sqlite3_value) -> *const u8,
    pub value_type: unsafe extern "C" fn(*mut sqlite3_value) -> c_int,
    pub malloc: unsafe extern "C" fn(c_int) -> *mut c_void,
    pub context_db_handle: unsafe extern "C" fn(*mut sqlite3_context) -> *mut sqlite3,
    pub file_control:
        unsafe extern "C" fn(*mut sqlite3, *const c_char, c_int, *mut c_void) -> c_int,
    pub uri_parameter: unsafe extern "C" fn(*const c_char, *const c_char) -> *const c_char,
    pub auto_extension: unsafe extern "C" fn(Option<unsafe extern "C" fn()>) -> c_int,
    pub log: unsafe extern "C" fn(c_int, *const c_char, ...),
    pub get_autocommit: unsafe extern "C" fn(*mut sqlite3) -> c_int,
}

/// Where each function sits in `sqlite3_api_routines` (sqlite3ext.h): the struct is a list
/// of function pointers, in an order SQLite never changes, only appends to. The highest slot
/// used (`auto_extension`) came with SQLite 3.8.7.
mod slot {
    pub(super) const GET_AUTOCOMMIT: usize = 60;
    pub(super) const MALLOC: usize = 68;
    pub(super) const RESULT_ERROR: usize = 80;
    pub(super) const RESULT_INT64: usize = 83;
    pub(super) const RESULT_TEXT: usize = 85;
    pub(super) const VALUE_TEXT: usize = 109;
    pub(super) const VALUE_TYPE: usize = 113;
    pub(super) const FILE_CONTROL: usize = 127;
    pub(super) const VFS_FIND: usize = 141;
    pub(super) const VFS_REGISTER: usize = 142;
    pub(super) const CONTEXT_DB_HANDLE: usize = 149;
    pub(super) const CREATE_FUNCTION_V2: usize = 162;
    pub(super) const LOG: usize = 167;
    pub(super) const URI_PARAMETER: usize = 189;
    pub(super) const AUTO_EXTENSION: usize = 192;
}

/// A function pointer of type `F` from an untyped one.
///
/// # Safety
/// `p` must point to a function whose C signature `F` spells out.
unsafe fn cast<F: Copy>(p: *const c_void) -> F {
    assert_eq!(
        std::mem::size_of::<F>(),
        std::mem::size_of::<*const c_void>()
    );
    // SAFETY: F is a function pointer type of pointer size (asserted), per the caller.
    unsafe { std::mem::transmute_copy(&p) }
}

impl Api {
    /// The table from the `sqlite3_api_routines` SQLite passes a loadable extension's entry
    /// point; `None` if `routines` is null or a slot used is empty.
    ///
    /// # Safety
    /// `routines` must be the pointer SQLite passed to the entry point.
    pub(crate) unsafe fn from_routines(routines: *const c_void) -> Option<Api> {
        if routines.is_null() {
            return None;
        }
        let slots = routines.cast::<*const c_void>();
        // SAFETY: the struct is at least as long as the highest slot read (SQLite >= 3.8.7).
        let at = |i: usize| unsafe { slots.add(i).read() };
        let used = [
            slot::GET_AUTOCOMMIT,
            slot::MALLOC,
            slot::RESULT_ERROR,
            slot::RESULT_INT64,
            slot::RESULT_TEXT,
            slot::VALUE_TEXT,
            slot::VALUE_TYPE,
            slot::FILE_CONTROL,
            slot::VFS_FIND,
            slot::VFS_REGISTER,
            slot::CONTEXT_DB_HANDLE,
            slot::CREATE_FUNCTION_V2,
            slot::LOG,
            slot::URI_PARAMETER,
            slot::AUTO_EXTENSION,
        ];
        if used.iter().any(|&i| at(i).is_null()) {
            return None;
        }
        // SAFETY: each slot holds the function sqlite3ext.h declares there, whose C type
        // the field's type spells out.
        unsafe {
            Some(Api {
                vfs_find: cast(at(slot::VFS_FIND)),
                vfs_register: cast(at(slot::VFS_REGISTER)),
                create_function_v2: cast(at(slot::CREATE_FUNCTION_V2)),
                result_int64: cast(at(slot::RESULT_INT64)),
                result_text: cast(at(slot::RESULT_TEXT)),
                result_error: cast(at(slot::RESULT_ERROR)),
                value_text: cast(at(slot::VALUE_TEXT)),
                value_type: cast(at(slot::VALUE_TYPE)),
                malloc: cast(at(slot::MALLOC)),
                context_db_handle: cast(at(slot::CONTEXT_DB_HANDLE)),
                file_control: cast(at(slot::FILE_CONTROL)),
                uri_parameter: cast(at(slot::URI_PARAMETER)),
                auto_extension: cast(at(slot::AUTO_EXTENSION)),
                log: cast(at(slot::LOG)),
                get_autocommit: cast(at(slot::GET_AUTOCOMMIT)),
            })
        }
    }

    /// The table for the SQLite linked into this process (`libsqlite3-sys`, rusqlite's).
    #[cfg(feature = "rusqlite")]
    pub(crate) fn linked() -> Api {
        use libsqlite3_sys as sys;
        // SAFETY: each function has the C signature the field's type spells out; only the
        // pointee types differ (sys's opaque structs against these).
        unsafe {
            Api {
                vfs_find: cast(sys::sqlite3_vfs_find as *const c_void),
                vfs_register: cast(sys::sqlite3_vfs_register as *const c_void),
                create_function_v2: cast(sys::sqlite3_create_function_v2 as *const c_void),
                result_int64: cast(sys::sqlite3_result_int64 as *const c_void),
                result_text: cast(sys::sqlite3_result_text as *const c_void),
                result_error: cast(sys::sqlite3_result_error as *const c_void),
                value_text: cast(sys::sqlite3_value_text as *const c_void),
                value_type: cast(sys::sqlite3_value_type as *const c_void),
                malloc: cast(sys::sqlite3_malloc as *const c_void),
                context_db_handle: cast(sys::sqlite3_context_db_handle as *const c_void),
                file_control: cast(sys::sqlite3_file_control as *const c_void),
                uri_parameter: cast(sys::sqlite3_uri_parameter as *const c_void),
                auto_extension: cast(sys::sqlite3_auto_extension as *const c_void),
                log: cast(sys::sqlite3_log as *const c_void),
                get_autocommit: cast(sys::sqlite3_get_autocommit as *const c_void),
            }
        }
    }

    /// `text` copied into memory from `sqlite3_malloc` (what SQLite frees), NUL-terminated;
    /// null if out of memory.
    pub(crate) fn malloc_text(&self, text: &str) -> *mut c_char {
        let Ok(len) = c_int::try_from(text.len() + 1) else {
            return std::ptr::null_mut();
        };
        // SAFETY: a fresh allocation of len bytes, written within bounds.
        unsafe {
            let p = (self.malloc)(len).cast::<u8>();
            if !p.is_null() {
                std::ptr::copy_nonoverlapping(text.as_ptr(), p, text.len());
                p.add(text.len()).write(0);
            }
            p.cast()
        }
    }

    /// Sets a function's result to `text`.
    ///
    /// # Safety
    /// `ctx` must be the context SQLite passed to the function being run.
    pub(crate) unsafe fn result_str(&self, ctx: *mut sqlite3_context, text: &str) {
        let len = c_int::try_from(text.len()).unwrap_or(c_int::MAX);
        // SAFETY: SQLITE_TRANSIENT makes SQLite copy the bytes before returning.
        unsafe { (self.result_text)(ctx, text.as_ptr().cast(), len, SQLITE_TRANSIENT) }
    }

    /// Sets a function's result to an error with `message`.
    ///
    /// # Safety
    /// As for [`Api::result_str`].
    pub(crate) unsafe fn result_err(&self, ctx: *mut sqlite3_context, message: &str) {
        let len = c_int::try_from(message.len()).unwrap_or(c_int::MAX);
        // SAFETY: SQLite copies the message.
        unsafe { (self.result_error)(ctx, message.as_ptr().cast(), len) }
    }

    /// Writes `message` to SQLite's error log (`sqlite3_log`, `SQLITE_CONFIG_LOG`).
    pub(crate) fn log_message(&self, code: c_int, message: &str) {
        let text = std::ffi::CString::new(message.replace('\0', " ")).unwrap_or_default();
        // SAFETY: a "%s" format with one NUL-terminated string argument.
        unsafe { (self.log)(code, c"%s".as_ptr(), text.as_ptr()) }
    }
}
