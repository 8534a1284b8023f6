//! A history's identity: the node ID field of the header.
//!
//! Litestream leaves the field 0. strata writes there a random identity of the history a
//! file belongs to (a new one whenever a full copy restarts the history of a database), so
//! files of two histories, two databases replicated to one place by mistake, can be told
//! apart and are never joined. 0 means "unknown" and joins any history.

use crate::error::{Error, Result};
use crate::header::Header;

/// The identity files carry together: the node ID of every file that has one, or 0 if none
/// does. Files with two different node IDs belong to two histories: an error naming both.
pub fn common_node_id<'h>(headers: impl IntoIterator<Item = &'h Header>) -> Result<u64> {
    let mut seen: Option<&Header> = None;
    for h in headers.into_iter().filter(|h| h.node_id != 0) {
        match seen {
            Some(s) if s.node_id != h.node_id => {
                return Err(Error::TwoHistories {
                    first: s.txid_range(),
                    first_node: s.node_id,
                    second: h.txid_range(),
                    second_node: h.node_id,
                });
            }
            Some(_) => {}
            None => seen = Some(h),
        }
    }
    Ok(seen.map_or(0, |h| h.node_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PageSize, Txid, TxidRange};

    fn header(txid: u64, node_id: u64) -> Header {
        let mut h = Header::new(
            PageSize::new(512).unwrap(),
            1,
            TxidRange::single(Txid::new(txid)),
        );
        h.node_id = node_id;
        h
    }

    #[test]
    fn unknown_identities_join_anything_two_known_ones_never() {
        assert_eq!(common_node_id(&[header(1, 0), header(2, 0)]).unwrap(), 0);
        assert_eq!(
            common_node_id(&[header(1, 0), header(2, 7), header(3, 0), header(4, 7)]).unwrap(),
            7
        );
        let e = common_node_id(&[header(1, 7), header(2, 0), header(3, 8)]).unwrap_err();
        assert!(
            matches!(
                e,
                Error::TwoHistories {
                    first_node: 7,
                    second_node: 8,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("0000000000000003"), "{e}");
    }
}
