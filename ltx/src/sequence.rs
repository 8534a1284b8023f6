//! Which page may come next in a file: the ordering rules the encoder enforces when
//! writing and a strict decoder enforces when reading.

use crate::error::{Error, Result};
use crate::header::Header;
use crate::page::PageNum;

/// Checks that `pgno` may follow page `last` (0 before the first page) in a file with header
/// `h`: pages strictly ascend, none lies above the commit or on the lock page, and a snapshot
/// holds every page. `offset` locates the frame in errors.
pub(crate) fn check_next_page(h: &Header, last: u32, pgno: PageNum, offset: u64) -> Result<()> {
    let n = pgno.get();
    let fail = |reason: String| Err(Error::page(offset, n, reason));
    if n <= last {
        return fail(format!(
            "pages must strictly ascend, but it follows page {last}"
        ));
    }
    if n > h.commit {
        return fail(format!("above the commit of {} pages", h.commit));
    }
    if pgno.is_lock_page(h.page_size) {
        return fail("the lock page is never stored".into());
    }
    if h.is_snapshot() {
        let expected = next_snapshot_page(last, h);
        if n != expected {
            return fail(format!(
                "snapshot is missing page {expected}: snapshots hold every page"
            ));
        }
    }
    Ok(())
}

/// The page a snapshot must hold after `last` (0 before the first), skipping the lock page.
fn next_snapshot_page(last: u32, h: &Header) -> u32 {
    let next = last + 1;
    if next == h.page_size.lock_page().get() {
        next + 1
    } else {
        next
    }
}

/// Checks that a snapshot whose last page is `last` is complete: it reached its commit,
/// or the page before the commit when the commit is the lock page.
pub(crate) fn check_snapshot_complete(h: &Header, last: u32) -> Result<()> {
    let expected = if h.commit == h.page_size.lock_page().get() {
        h.commit - 1
    } else {
        h.commit
    };
    if h.is_snapshot() && last != expected {
        return Err(Error::IncompleteSnapshot {
            last,
            commit: h.commit,
        });
    }
    Ok(())
}
