//! The `strata` command.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Before SQLite initialises: no up-front page-cache block per connection (about 87 KiB
    // for 4 KiB pages). strata's connections read a page or two, and with hundreds of
    // databases that block is most of the process's memory. Pages are allocated as read.
    // SAFETY: sqlite3_config before any other SQLite call, with SQLITE_CONFIG_PAGECACHE's
    // documented arguments (no buffer: SQLite allocates pages itself).
    unsafe {
        rusqlite::ffi::sqlite3_config(
            rusqlite::ffi::SQLITE_CONFIG_PAGECACHE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            0 as std::ffi::c_int,
            0 as std::ffi::c_int,
        );
    }
    cli::run()
}
