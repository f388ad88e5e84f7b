//! Gzip members. A gzip stream may consist of several members, each a complete gzip file, which every
//! reader (Prometheus, curl, Python's gzip module, flate2's `MultiGzDecoder`) decompresses as one: so
//! the parts of `/metrics` that only change when a snapshot is published are compressed once, at
//! publish time, and only what changes per scrape is compressed per scrape.

use std::io::Write as _;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;

/// For text compressed once per snapshot: worth the CPU, since every scrape reuses it.
pub(crate) const AT_PUBLISH: Compression = Compression::new(6);
/// For text compressed per scrape: the fastest level, since CPU is what a scrape costs.
pub(crate) const PER_SCRAPE: Compression = Compression::fast();

/// `text` as one gzip member; empty text gives no member at all.
pub(crate) fn member(text: &[u8], level: Compression) -> Bytes {
    if text.is_empty() {
        return Bytes::new();
    }
    let mut encoder = GzEncoder::new(Vec::with_capacity(text.len() / 8 + 64), level);
    // NB: writing into a Vec cannot fail.
    let _ = encoder.write_all(text);
    encoder.finish().map(Bytes::from).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn concatenated_members_read_back_as_the_concatenated_text() {
        let parts: [&[u8]; 3] = [b"# HELP a x\n", b"", "a{b=\"\u{e9}\"} 1\n".as_bytes()];
        let mut stream = Vec::new();
        for part in parts {
            stream.extend_from_slice(&member(part, PER_SCRAPE));
        }
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(&stream[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "# HELP a x\na{b=\"é\"} 1\n");
    }
}
