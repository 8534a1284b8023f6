//! Merging several consecutive LTX files into one (a streaming k-way merge by page number).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{BufRead, Write};

use crate::checksum::Checksum;
use crate::decoder::Decoder;
use crate::encoder::{Encoded, Encoder};
use crate::error::{Error, Result};
use crate::frame::PageEncoding;
use crate::header::{Header, HeaderFlags};
use crate::history;

/// Choices for a compaction's output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactOptions {
    /// How the output's pages are compressed.
    pub encoding: PageEncoding,
    /// Accept inputs with gaps between their TXID ranges (Go's `AllowNonContiguousTXIDs`).
    pub allow_gaps: bool,
}

/// Merges `inputs`, sorted by TXID, into one file written to `w`.
///
/// For each page the copy from the latest input wins; pages above the last input's commit
/// are dropped. The output spans the first input's min TXID to the last input's max, takes
/// the last input's commit, timestamp and post-apply checksum and the first input's
/// pre-apply checksum; WAL fields are zero. The node ID is the one the inputs carry (0 if
/// none does): strata writes a history's identity there, so inputs carrying two different
/// node IDs belong to two histories and are refused (Go's compactor zeroes the field). It carries NoChecksum if any input
/// does (then both database checksums are zero). Every input is read to its end, so every
/// file checksum is verified before the output is finished.
///
/// Memory is one page per input plus the output's page index.
pub fn compact<R: BufRead, W: Write>(
    mut inputs: Vec<Decoder<R>>,
    w: W,
    options: CompactOptions,
) -> Result<Encoded<W>> {
    let header = output_header(&inputs, options)?;
    let page_size = header.page_size.bytes();
    let mut enc = Encoder::with_encoding(w, &header, options.encoding)?;

    // One page buffer per input; the heap orders (page, newest input first).
    let mut pages = vec![vec![0u8; page_size]; inputs.len()];
    let mut heap = BinaryHeap::with_capacity(inputs.len());
    for (i, input) in inputs.iter_mut().enumerate() {
        if let Some(pgno) = input.decode_page(&mut pages[i])? {
            heap.push(Reverse((pgno, Reverse(i))));
        }
    }
    let mut advance = Vec::with_capacity(inputs.len());
    while let Some(Reverse((pgno, Reverse(winner)))) = heap.pop() {
        // Older copies of the same page come off the heap next; skip them.
        advance.push(winner);
        while let Some(&Reverse((p, Reverse(i)))) = heap.peek() {
            if p != pgno {
                break;
            }
            heap.pop();
            advance.push(i);
        }
        if pgno.get() <= header.commit {
            enc.encode_page(pgno, &pages[winner])?;
        }
        for i in advance.drain(..) {
            if let Some(next) = inputs[i].decode_page(&mut pages[i])? {
                heap.push(Reverse((next, Reverse(i))));
            }
        }
    }

    let mut post_apply = Checksum::ZERO;
    for input in inputs {
        post_apply = input.finish()?.trailer.post_apply_checksum;
    }
    if header.no_checksum() {
        post_apply = Checksum::ZERO;
    }
    enc.finish(post_apply)
}

fn output_header<R: BufRead>(inputs: &[Decoder<R>], options: CompactOptions) -> Result<Header> {
    let (Some(first), Some(last)) = (inputs.first(), inputs.last()) else {
        return Err(Error::Compaction {
            reason: "no input files".into(),
        });
    };
    let (first, last) = (first.header(), last.header());
    for pair in inputs.windows(2) {
        let (prev, cur) = (pair[0].header(), pair[1].header());
        if cur.page_size != prev.page_size {
            return Err(Error::Compaction {
                reason: format!(
                    "{} has page size {}, {} has {}",
                    prev.txid_range(),
                    prev.page_size,
                    cur.txid_range(),
                    cur.page_size
                ),
            });
        }
        if !options.allow_gaps && !cur.txid_range().continues(prev.max_txid) {
            return Err(Error::Compaction {
                reason: format!(
                    "{} does not continue {}: inputs must be sorted by TXID without gaps",
                    cur.txid_range(),
                    prev.txid_range()
                ),
            });
        }
    }
    let node_id = history::common_node_id(inputs.iter().map(Decoder::header))?;
    let no_checksum = inputs.iter().any(|d| d.header().no_checksum());
    let mut header = Header::new(
        first.page_size,
        last.commit,
        crate::TxidRange::new(first.min_txid, last.max_txid),
    );
    header.timestamp = last.timestamp;
    header.node_id = node_id;
    if no_checksum {
        header.flags = HeaderFlags::NO_CHECKSUM;
    } else {
        header.pre_apply_checksum = first.pre_apply_checksum;
    }
    Ok(header)
}
