//! One gzip stream assembled from parts compressed at different times: the parts of `/metrics` that
//! only change when a snapshot is published are compressed once, at publish time, and only what
//! changes per scrape is compressed per scrape.
//!
//! Each part is raw deflate data ending in a sync flush (byte-aligned, not final), so the parts can be
//! concatenated into the body of a single gzip member: a gzip header, the parts, a final empty block,
//! and the CRC-32 (combined from the parts' CRCs) and length. A single member, rather than one member
//! per part, because not every reader reads multi-member streams (curl 7.88 stops after the first).

use std::io::Write as _;

use bytes::Bytes;
use flate2::write::DeflateEncoder;
use flate2::{Compression, Crc};

/// For text compressed once per snapshot: worth the CPU, since every scrape reuses it.
pub(crate) const AT_PUBLISH: Compression = Compression::new(6);
/// For text compressed per scrape: the fastest level, since CPU is what a scrape costs.
pub(crate) const PER_SCRAPE: Compression = Compression::fast();

/// The gzip header: deflate, no name, no time, unknown OS.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// A final, empty block with fixed Huffman codes: ends the deflate data after the last sync flush.
const FINAL_EMPTY_BLOCK: [u8; 2] = [0x03, 0x00];

/// A part of the body, compressed.
#[derive(Debug)]
pub(crate) struct Deflated {
    bytes: Bytes,
    crc: Crc,
}

impl Deflated {
    /// Compresses `text` as a part that may be followed by others.
    pub(crate) fn new(text: &[u8], level: Compression) -> Self {
        let mut crc = Crc::new();
        crc.update(text);
        if text.is_empty() {
            return Self {
                bytes: Bytes::new(),
                crc,
            };
        }
        let mut encoder = DeflateEncoder::new(Vec::with_capacity(text.len() / 8 + 64), level);
        // NB: writing into a Vec cannot fail; flush() is a sync flush, which leaves the stream
        // byte-aligned and open for the next part.
        let _ = encoder.write_all(text);
        let _ = encoder.flush();
        let bytes = Bytes::from(std::mem::take(encoder.get_mut()));
        Self { bytes, crc }
    }
}

/// A response body being assembled, as text or as one gzip member.
#[derive(Debug)]
pub(crate) enum Body {
    Plain(Vec<Bytes>),
    Gzip { chunks: Vec<Bytes>, crc: Crc },
}

impl Body {
    pub(crate) fn plain() -> Self {
        Self::Plain(Vec::new())
    }

    pub(crate) fn gzip() -> Self {
        Self::Gzip {
            chunks: vec![Bytes::from_static(&HEADER)],
            crc: Crc::new(),
        }
    }

    /// Appends one part, given in both forms; the body uses the one it needs.
    pub(crate) fn push(&mut self, plain: &Bytes, deflated: &Deflated) {
        match self {
            Self::Plain(chunks) => {
                if !plain.is_empty() {
                    chunks.push(plain.clone());
                }
            }
            Self::Gzip { chunks, crc } => {
                if !deflated.bytes.is_empty() {
                    chunks.push(deflated.bytes.clone());
                    crc.combine(&deflated.crc);
                }
            }
        }
    }

    /// Appends text computed for this response only.
    pub(crate) fn push_text(&mut self, text: Bytes) {
        match self {
            Self::Plain(chunks) => chunks.push(text),
            Self::Gzip { .. } => {
                let deflated = Deflated::new(&text, PER_SCRAPE);
                self.push(&text, &deflated);
            }
        }
    }

    pub(crate) fn finish(self) -> Vec<Bytes> {
        match self {
            Self::Plain(chunks) => chunks,
            Self::Gzip { mut chunks, crc } => {
                let mut trailer = Vec::with_capacity(10);
                trailer.extend_from_slice(&FINAL_EMPTY_BLOCK);
                trailer.extend_from_slice(&crc.sum().to_le_bytes());
                trailer.extend_from_slice(&crc.amount().to_le_bytes());
                chunks.push(Bytes::from(trailer));
                chunks
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn parts_compressed_apart_read_back_as_one_gzip_member() {
        let parts: [&[u8]; 4] = [
            b"# HELP a x\n",
            b"",
            "a{b=\"\u{e9}\"} 1\n".as_bytes(),
            &[b'z'; 100_000],
        ];
        let mut body = Body::gzip();
        for part in parts {
            let plain = Bytes::copy_from_slice(part);
            body.push(&plain, &Deflated::new(part, AT_PUBLISH));
        }
        body.push_text(Bytes::from_static(b"end\n"));
        let stream: Vec<u8> = body.finish().concat();
        // A single-member reader must see everything, and the CRC and length must check out.
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(&stream[..])
            .read_to_end(&mut text)
            .unwrap();
        let mut expected: Vec<u8> = parts.concat();
        expected.extend_from_slice(b"end\n");
        assert_eq!(text, expected);
    }
}
