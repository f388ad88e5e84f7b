//! One gzip stream assembled from parts compressed at different times: the parts of `/metrics` that
//! only change when a snapshot is published are compressed once, at publish time, and only what
//! changes per scrape is compressed per scrape.
//!
//! Each part is raw deflate data ending in a sync flush (byte-aligned, not final), so the parts can be
//! concatenated into the body of a single gzip member: a gzip header, the parts, a final empty block,
//! and the CRC-32 (combined from the parts' CRCs) and length. A single member, rather than one member
//! per part, because not every reader reads multi-member streams (curl 7.88 stops after the first).

use bytes::Bytes;
use flate2::{Compress, Compression, Crc, Decompress, FlushCompress, FlushDecompress};

/// For text compressed once per snapshot: worth the CPU, since every scrape reuses it.
pub(crate) const AT_PUBLISH: Compression = Compression::new(6);
/// For text compressed per scrape: the fastest level, since CPU is what a scrape costs.
pub(crate) const PER_SCRAPE: Compression = Compression::fast();

/// The gzip header: deflate, no name, no time, unknown OS.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// A final, empty block with fixed Huffman codes: ends the deflate data after the last sync flush.
const FINAL_EMPTY_BLOCK: [u8; 2] = [0x03, 0x00];

/// The largest stored deflate block.
const STORED_BLOCK: usize = u16::MAX as usize;

/// Text is handed to the compressor in pieces of about this size, so that a part is never held
/// uncompressed in full while it is written.
const PIECE: usize = 64 * 1024;

/// A part of the body, compressed.
#[derive(Debug)]
pub(crate) struct Deflated {
    bytes: Bytes,
    crc: Crc,
    /// What a CRC of the text before this part is multiplied by to combine it with this part's.
    shift: u32,
}

impl Deflated {
    fn with_crc(bytes: Bytes, crc: Crc) -> Self {
        let shift = crc32::shift(crc.amount());
        Self { bytes, crc, shift }
    }

    /// Compresses `text` as a part that may be followed by others.
    pub(crate) fn new(text: &[u8], level: Compression) -> Self {
        let mut writer = PartWriter::new(level);
        writer.write_bytes(text);
        writer.finish()
    }

    /// `text` as stored (uncompressed) deflate blocks, which need no compressor: for the few
    /// kilobytes computed per scrape, preparing a compressor (clearing its tables) cost more than
    /// the bytes compression would save.
    pub(crate) fn stored(text: &[u8]) -> Self {
        let mut crc = Crc::new();
        crc.update(text);
        let mut bytes = Vec::with_capacity(text.len() + text.len() / STORED_BLOCK * 5 + 5);
        for block in text.chunks(STORED_BLOCK) {
            // NB: the parts before end byte-aligned (a sync flush), so the block header's three bits
            // (not final, stored) and its padding make one zero byte.
            let len = block.len() as u16;
            bytes.push(0);
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&(!len).to_le_bytes());
            bytes.extend_from_slice(block);
        }
        Self::with_crc(Bytes::from(bytes), crc)
    }

    /// The length of the text this part holds.
    pub(crate) fn text_len(&self) -> usize {
        self.crc.amount() as usize
    }

    /// The text back, for the rare scrape that does not accept gzip.
    pub(crate) fn inflate(&self) -> Bytes {
        let mut text = Vec::with_capacity(self.text_len());
        let mut inflater = Decompress::new(false);
        // NB: the data ends in a sync flush, not a final block, so inflation ends when the input
        // does, never with StreamEnd; the output was sized to hold everything.
        while (inflater.total_in() as usize) < self.bytes.len() {
            let before = (inflater.total_in(), inflater.total_out());
            let input = &self.bytes[inflater.total_in() as usize..];
            if text.capacity() == text.len() {
                text.reserve(PIECE);
            }
            match inflater.decompress_vec(input, &mut text, FlushDecompress::Sync) {
                Ok(_) if (inflater.total_in(), inflater.total_out()) != before => {}
                // Cannot happen for data this module compressed; an empty text beats a panic.
                _ => return Bytes::new(),
            }
        }
        Bytes::from(text)
    }
}

/// Writes one part: text goes into [`PartWriter::text`] and is compressed piece by piece.
pub(crate) struct PartWriter {
    compressor: Option<Compress>,
    level: Compression,
    out: Vec<u8>,
    crc: Crc,
    pending: String,
}

impl std::fmt::Debug for PartWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartWriter")
            .field("compressed", &self.out.len())
            .finish_non_exhaustive()
    }
}

/// Compressors kept per thread for reuse: a new one allocates and clears a few hundred kilobytes of
/// tables, which costs more than compressing the exporter's own metrics.
const POOLED_PER_LEVEL: usize = 2;

thread_local! {
    static COMPRESSORS: std::cell::RefCell<Vec<(u32, Compress)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn take_compressor(level: Compression) -> Compress {
    let pooled = COMPRESSORS.with(|pool| {
        let mut pool = pool.borrow_mut();
        let found = pool.iter().position(|(pooled, _)| *pooled == level.level());
        found.map(|index| pool.swap_remove(index).1)
    });
    pooled.unwrap_or_else(|| Compress::new(level, false))
}

fn return_compressor(level: Compression, mut compressor: Compress) {
    compressor.reset();
    COMPRESSORS.with(|pool| {
        let mut pool = pool.borrow_mut();
        let kept = pool
            .iter()
            .filter(|(pooled, _)| *pooled == level.level())
            .count();
        if kept < POOLED_PER_LEVEL {
            pool.push((level.level(), compressor));
        }
    });
}

impl PartWriter {
    pub(crate) fn new(level: Compression) -> Self {
        Self {
            compressor: None,
            level,
            out: Vec::new(),
            crc: Crc::new(),
            pending: String::new(),
        }
    }

    /// The buffer to append text to; compressed once it reaches a piece.
    pub(crate) fn text(&mut self) -> &mut String {
        if self.pending.len() >= PIECE {
            self.compress_pending();
        }
        &mut self.pending
    }

    fn write_bytes(&mut self, bytes: &[u8]) {
        self.compress_pending();
        self.deflate(bytes, FlushCompress::None);
    }

    fn compress_pending(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        self.deflate(pending.as_bytes(), FlushCompress::None);
        self.pending = pending;
        self.pending.clear();
    }

    fn deflate(&mut self, mut input: &[u8], flush: FlushCompress) {
        self.crc.update(input);
        let compressor = self
            .compressor
            .get_or_insert_with(|| take_compressor(self.level));
        loop {
            if self.out.capacity() - self.out.len() < 1024 {
                self.out.reserve(input.len() / 4 + 8 * 1024);
            }
            let (read, written) = (compressor.total_in(), compressor.total_out());
            // NB: compressing into a Vec with room to spare cannot fail.
            let _ = compressor.compress_vec(input, &mut self.out, flush);
            input = &input[(compressor.total_in() - read) as usize..];
            let stuck = compressor.total_in() == read && compressor.total_out() == written;
            // Done once the input is in and the output had room left: nothing more is pending.
            if input.is_empty() && (self.out.len() < self.out.capacity() || stuck) {
                return;
            }
        }
    }

    pub(crate) fn finish(mut self) -> Deflated {
        self.compress_pending();
        if self.crc.amount() == 0 {
            return Deflated::with_crc(Bytes::new(), self.crc);
        }
        // NB: a sync flush leaves the stream byte-aligned and open for the next part.
        self.deflate(&[], FlushCompress::Sync);
        if let Some(compressor) = self.compressor.take() {
            return_compressor(self.level, compressor);
        }
        let mut bytes = std::mem::take(&mut self.out);
        bytes.shrink_to_fit();
        Deflated::with_crc(Bytes::from(bytes), self.crc)
    }
}

/// A response body being assembled, as text or as one gzip member.
#[derive(Debug)]
pub(crate) enum Body {
    Plain(Vec<Bytes>),
    /// `crc` and `len` are those of the text so far.
    Gzip {
        chunks: Vec<Bytes>,
        crc: u32,
        len: u32,
    },
}

impl Body {
    pub(crate) fn plain() -> Self {
        Self::Plain(Vec::new())
    }

    pub(crate) fn gzip() -> Self {
        Self::Gzip {
            chunks: vec![Bytes::from_static(&HEADER)],
            crc: 0,
            len: 0,
        }
    }

    pub(crate) fn is_gzip(&self) -> bool {
        matches!(self, Self::Gzip { .. })
    }

    /// Makes room for `parts` more parts at once: a body of many organizations has thousands, and
    /// growing to them copied the list over and over.
    pub(crate) fn reserve(&mut self, parts: usize) {
        match self {
            Self::Plain(chunks) | Self::Gzip { chunks, .. } => chunks.reserve(parts),
        }
    }

    /// Appends one part, given in both forms; the body uses the one it needs.
    pub(crate) fn push(&mut self, plain: &Bytes, deflated: &Deflated) {
        match self {
            Self::Plain(_) => self.push_plain(plain),
            Self::Gzip { .. } => self.push_deflated(deflated),
        }
    }

    /// Appends a part to a plain body; a gzip body ignores it (see [`Body::is_gzip`]).
    pub(crate) fn push_plain(&mut self, plain: &Bytes) {
        if let Self::Plain(chunks) = self
            && !plain.is_empty()
        {
            chunks.push(plain.clone());
        }
    }

    /// Appends a part to a gzip body; a plain body ignores it (see [`Body::is_gzip`]).
    pub(crate) fn push_deflated(&mut self, deflated: &Deflated) {
        if let Self::Gzip { chunks, crc, len } = self
            && !deflated.bytes.is_empty()
        {
            chunks.push(deflated.bytes.clone());
            *crc = crc32::multiply(deflated.shift, *crc) ^ deflated.crc.sum();
            // NB: the gzip trailer holds the length modulo 2^32.
            *len = len.wrapping_add(deflated.crc.amount());
        }
    }

    /// Appends text computed for this response only, stored rather than compressed.
    pub(crate) fn push_text(&mut self, text: Bytes) {
        match self {
            Self::Plain(chunks) => chunks.push(text),
            Self::Gzip { .. } => {
                let stored = Deflated::stored(&text);
                self.push(&text, &stored);
            }
        }
    }

    pub(crate) fn finish(self) -> Vec<Bytes> {
        match self {
            Self::Plain(chunks) => chunks,
            Self::Gzip {
                mut chunks,
                crc,
                len,
            } => {
                let mut trailer = Vec::with_capacity(10);
                trailer.extend_from_slice(&FINAL_EMPTY_BLOCK);
                trailer.extend_from_slice(&crc.to_le_bytes());
                trailer.extend_from_slice(&len.to_le_bytes());
                chunks.push(Bytes::from(trailer));
                chunks
            }
        }
    }
}

/// Combining the CRC-32s of parts computed apart, as zlib's `crc32_combine_gen` and
/// `crc32_combine_op` do: CRC(A then B) is CRC(A) times x^(8·len B) plus CRC(B), modulo the CRC
/// polynomial. The factor depends on B's length only, so it is worked out once when B is made and a
/// scrape pays one multiplication per part; flate2's `Crc::combine` works it out again on every call,
/// which cost a scrape of 1,000 organizations (15,000 parts) several milliseconds.
mod crc32 {
    /// The CRC-32 polynomial, bit-reflected.
    const POLYNOMIAL: u32 = 0xedb8_8320;

    /// `a` times `b` modulo the polynomial, in CRC-32's reflected bit order.
    pub(super) fn multiply(a: u32, mut b: u32) -> u32 {
        let mut product = 0;
        let mut bit = 1 << 31;
        while bit != 0 && a & (bit | (bit - 1)) != 0 {
            if a & bit != 0 {
                product ^= b;
            }
            bit >>= 1;
            b = if b & 1 != 0 {
                (b >> 1) ^ POLYNOMIAL
            } else {
                b >> 1
            };
        }
        product
    }

    /// x^(8·`len`) modulo the polynomial: the factor for a part of `len` bytes.
    pub(super) fn shift(len: u32) -> u32 {
        // x^(2^k) for k = 3 (one byte) upwards, squared as the bits of `len` are read.
        let mut power: u32 = 1 << (31 - 8);
        let mut factor: u32 = 1 << 31;
        let mut rest = len;
        while rest != 0 {
            if rest & 1 != 0 {
                factor = multiply(power, factor);
            }
            power = multiply(power, power);
            rest >>= 1;
        }
        factor
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn crcs_combined_with_a_precomputed_shift_match_the_crc_of_the_whole() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            // Arrange: parts of assorted lengths, empty and longer than 64 KiB among them.
            let parts: Vec<Vec<u8>> = (0..rng.usize(1..6))
                .map(|_| {
                    let len = match rng.u8(0..4) {
                        0 => 0,
                        1 => rng.usize(1..16),
                        2 => rng.usize(16..5_000),
                        _ => rng.usize(60_000..200_000),
                    };
                    (0..len).map(|_| rng.u8(..)).collect()
                })
                .collect();

            // Act
            let mut combined = 0;
            for part in &parts {
                let mut crc = Crc::new();
                crc.update(part);
                combined = crc32::multiply(crc32::shift(crc.amount()), combined) ^ crc.sum();
            }

            // Assert
            let mut whole = Crc::new();
            whole.update(&parts.concat());
            assert_eq!(combined, whole.sum());
        }
    }

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

    #[test]
    fn stored_parts_between_compressed_ones_read_back_as_one_gzip_member() {
        // Empty, one block, and more than one block of text.
        let long: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        let mut body = Body::gzip();
        let mut expected = Vec::new();
        for (index, text) in [&b""[..], b"own 1\n", &long, b"tail\n"]
            .into_iter()
            .enumerate()
        {
            let compressed = format!("# family {index}\n");
            body.push_deflated(&Deflated::new(compressed.as_bytes(), AT_PUBLISH));
            body.push_text(Bytes::copy_from_slice(text));
            expected.extend_from_slice(compressed.as_bytes());
            expected.extend_from_slice(text);
        }
        let stream = body.finish().concat();
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(&stream[..])
            .read_to_end(&mut text)
            .unwrap();
        assert_eq!(text, expected);
        assert_eq!(Deflated::stored(&long).inflate(), long);
    }

    #[test]
    fn a_part_written_piece_by_piece_inflates_back_to_its_text() {
        // More than a few pieces, of text that compresses like labels do.
        let mut writer = PartWriter::new(AT_PUBLISH);
        let mut expected = String::new();
        for i in 0..20_000 {
            let line = format!("m{{id=\"k{i}\",name=\"n{}\"}} {i}\n", i * 7919 % 1000);
            writer.text().push_str(&line);
            expected.push_str(&line);
        }
        let part = writer.finish();

        assert!(expected.len() > 4 * PIECE);
        assert_eq!(part.text_len(), expected.len());
        assert!(part.bytes.len() * 4 < expected.len(), "compressed");
        assert_eq!(part.inflate(), expected.as_bytes());
        let mut body = Body::gzip();
        body.push_deflated(&part);
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(&body.finish().concat()[..])
            .read_to_end(&mut text)
            .unwrap();
        assert_eq!(text, expected.as_bytes());
    }
}
