//! The LZ4 frame format, as much of it as legacy (flag 0) LTX page frames use.
//!
//! A legacy page frame holds one complete LZ4 frame with no length prefix, so a streaming
//! reader must parse the frame to learn where it ends. Parsing by hand also keeps the
//! decoder free of per-page allocations.

use std::io::{self, Read};

use lz4_flex::block::{CompressTable, DecompressError, compress_into_with_table};
use twox_hash::XxHash32;

const MAGIC: [u8; 4] = 0x184D_2204u32.to_le_bytes();
const FLG_VERSION_MASK: u8 = 0xC0;
const FLG_VERSION_01: u8 = 0x40;
const FLG_INDEPENDENT_BLOCKS: u8 = 0x20;
const FLG_BLOCK_CHECKSUM: u8 = 0x10;
const FLG_CONTENT_SIZE: u8 = 0x08;
const FLG_CONTENT_CHECKSUM: u8 = 0x04;
const FLG_RESERVED: u8 = 0x02;
const FLG_DICT_ID: u8 = 0x01;
const BD_RESERVED: u8 = 0x8F;
const BLOCK_UNCOMPRESSED: u32 = 0x8000_0000;

/// What the Go writer (pierrec/lz4 with Block64Kb) emits: FLG 0x64 = version 01,
/// independent blocks, content checksum; BD 0x40 = 64 KiB blocks; then the header checksum.
const GO_FLG: u8 = FLG_VERSION_01 | FLG_INDEPENDENT_BLOCKS | FLG_CONTENT_CHECKSUM;
const GO_BD: u8 = 0x40;

/// Frame bytes around the block data: header (7), block size (4), end mark (4), content
/// checksum (4).
const OVERHEAD: usize = 19;

/// Writes one LZ4 frame holding `page` into `out` and returns its length, the way the Go
/// writer does: one block, stored uncompressed when compression does not shrink it, and a
/// content checksum. `out` must hold [`OVERHEAD`] plus the maximum compressed size.
pub(crate) fn write(page: &[u8], table: &mut CompressTable, out: &mut [u8]) -> usize {
    const DATA_AT: usize = 11;
    out[..4].copy_from_slice(&MAGIC);
    out[4..7].copy_from_slice(&[GO_FLG, GO_BD, header_checksum(&[GO_FLG, GO_BD])]);
    let csize = compress_into_with_table(page, &mut out[DATA_AT..], table)
        .expect("output buffer has the maximum compressed size");
    let (block_size, len) = if csize < page.len() {
        (csize as u32, csize)
    } else {
        out[DATA_AT..DATA_AT + page.len()].copy_from_slice(page);
        (page.len() as u32 | BLOCK_UNCOMPRESSED, page.len())
    };
    out[7..DATA_AT].copy_from_slice(&block_size.to_le_bytes());
    let end = DATA_AT + len;
    out[end..end + 4].copy_from_slice(&[0; 4]);
    out[end + 4..end + 8].copy_from_slice(&XxHash32::oneshot(0, page).to_le_bytes());
    end + 8
}

/// Room [`write`] needs for a page of `page_len` bytes.
pub(crate) fn max_len(page_len: usize) -> usize {
    OVERHEAD + lz4_flex::block::get_maximum_output_size(page_len)
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The reader failed (including running out of bytes).
    Io(io::Error),
    /// The frame's structure is wrong.
    Syntax(String),
    /// A block's compressed data is corrupt.
    Block(String),
    /// The content is not exactly one page long.
    Length(usize),
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> FrameError {
        FrameError::Io(e)
    }
}

/// Reads one LZ4 frame from `r` and decompresses it into `out`, which it must fill exactly.
/// `scratch` holds compressed block data; it grows to the largest block once.
pub(crate) fn read<R: Read>(
    r: &mut R,
    out: &mut [u8],
    scratch: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    if magic != MAGIC {
        return Err(FrameError::Syntax(format!(
            "LZ4 frame magic is {magic:02x?}, expected 04 22 4d 18"
        )));
    }
    // FLG, BD, then optional content size (8) and dictionary ID (4), then the header checksum.
    let mut desc = [0u8; 2 + 8 + 4];
    r.read_exact(&mut desc[..2])?;
    let (flg, bd) = (desc[0], desc[1]);
    if flg & FLG_VERSION_MASK != FLG_VERSION_01 || flg & FLG_RESERVED != 0 || bd & BD_RESERVED != 0
    {
        return Err(FrameError::Syntax(format!(
            "unsupported LZ4 frame descriptor FLG {flg:#04x} BD {bd:#04x}"
        )));
    }
    if flg & FLG_DICT_ID != 0 {
        return Err(FrameError::Syntax("LZ4 frame needs a dictionary".into()));
    }
    let mut desc_len = 2;
    if flg & FLG_CONTENT_SIZE != 0 {
        r.read_exact(&mut desc[2..10])?;
        desc_len = 10;
        let size = u64::from_le_bytes(desc[2..10].try_into().unwrap());
        if size != out.len() as u64 {
            return Err(FrameError::Length(
                usize::try_from(size).unwrap_or(usize::MAX),
            ));
        }
    }
    let mut hc = [0u8; 1];
    r.read_exact(&mut hc)?;
    if hc[0] != header_checksum(&desc[..desc_len]) {
        return Err(FrameError::Syntax(
            "LZ4 frame header checksum mismatch".into(),
        ));
    }
    let max_block = 1usize << (8 + 2 * ((bd >> 4) & 0x7));
    if max_block < 1 << 16 {
        return Err(FrameError::Syntax(format!(
            "LZ4 frame block size code {bd:#04x} is invalid"
        )));
    }

    let mut filled = 0usize;
    loop {
        let mut word = [0u8; 4];
        r.read_exact(&mut word)?;
        let raw = u32::from_le_bytes(word);
        if raw == 0 {
            break;
        }
        let len = (raw & !BLOCK_UNCOMPRESSED) as usize;
        if len > max_block {
            return Err(FrameError::Syntax(format!(
                "LZ4 block of {len} bytes exceeds the frame's maximum of {max_block}"
            )));
        }
        scratch.resize(len, 0);
        r.read_exact(scratch)?;
        if flg & FLG_BLOCK_CHECKSUM != 0 {
            r.read_exact(&mut word)?;
            if u32::from_le_bytes(word) != XxHash32::oneshot(0, scratch) {
                return Err(FrameError::Block("LZ4 block checksum mismatch".into()));
            }
        }
        let (done, rest) = out.split_at_mut(filled);
        let n = if raw & BLOCK_UNCOMPRESSED != 0 {
            if len > rest.len() {
                return Err(FrameError::Length(filled + len));
            }
            rest[..len].copy_from_slice(scratch);
            len
        } else if flg & FLG_INDEPENDENT_BLOCKS != 0 {
            lz4_flex::block::decompress_into(scratch, rest).map_err(|e| block_error(e, filled))?
        } else {
            lz4_flex::block::decompress_into_with_dict(scratch, rest, done)
                .map_err(|e| block_error(e, filled))?
        };
        filled += n;
    }
    if flg & FLG_CONTENT_CHECKSUM != 0 {
        let mut word = [0u8; 4];
        r.read_exact(&mut word)?;
        if filled == out.len() && u32::from_le_bytes(word) != XxHash32::oneshot(0, out) {
            return Err(FrameError::Block("LZ4 content checksum mismatch".into()));
        }
    }
    if filled != out.len() {
        return Err(FrameError::Length(filled));
    }
    Ok(())
}

fn block_error(e: DecompressError, filled: usize) -> FrameError {
    match e {
        DecompressError::OutputTooSmall { expected, .. } => FrameError::Length(filled + expected),
        e => FrameError::Block(e.to_string()),
    }
}

/// The frame descriptor checksum: the second byte of xxHash32 of the descriptor.
fn header_checksum(descriptor: &[u8]) -> u8 {
    (XxHash32::oneshot(0, descriptor) >> 8) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_matches_what_go_writes() {
        let mut out = vec![0u8; max_len(512)];
        write(&[7u8; 512], &mut CompressTable::small(), &mut out);
        assert_eq!(out[..7], [0x04, 0x22, 0x4D, 0x18, 0x64, 0x40, 0xA7]);
    }

    #[test]
    fn round_trips_compressible_and_random_pages() {
        let mut table = CompressTable::small();
        let mut random = vec![0u8; 4096];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for b in &mut random {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        for page in [vec![b'a'; 4096], random] {
            let mut framed = vec![0u8; max_len(page.len())];
            let n = write(&page, &mut table, &mut framed);
            framed.truncate(n);
            let mut out = vec![0u8; 4096];
            let mut src = &framed[..];
            read(&mut src, &mut out, &mut Vec::new()).unwrap();
            assert!(src.is_empty(), "reader stops at the frame's end");
            assert_eq!(out, page);
        }
    }

    #[test]
    fn reads_frames_from_lz4_flex_encoder() {
        use std::io::Write;
        let page: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let info = lz4_flex::frame::FrameInfo::new()
            .block_size(lz4_flex::frame::BlockSize::Max64KB)
            .content_checksum(true);
        let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
        enc.write_all(&page).unwrap();
        let framed = enc.finish().unwrap();
        let mut out = vec![0u8; 4096];
        read(&mut &framed[..], &mut out, &mut Vec::new()).unwrap();
        assert_eq!(out, page);
    }

    #[test]
    fn detects_corruption() {
        let page = vec![b'z'; 1024];
        let mut framed = vec![0u8; max_len(page.len())];
        let n = write(&page, &mut CompressTable::small(), &mut framed);
        framed.truncate(n);
        let last = framed.len() - 1;
        let mut bad = framed.clone();
        bad[last] ^= 1;
        let mut out = vec![0u8; 1024];
        assert!(matches!(
            read(&mut &bad[..], &mut out, &mut Vec::new()),
            Err(FrameError::Block(_))
        ));
        let mut short = vec![0u8; 512];
        assert!(matches!(
            read(&mut &framed[..], &mut short, &mut Vec::new()),
            Err(FrameError::Length(_))
        ));
        assert!(matches!(
            read(&mut &framed[..framed.len() - 3], &mut out, &mut Vec::new()),
            Err(FrameError::Io(_))
        ));
    }
}
