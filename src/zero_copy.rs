//! Large plain-text bodies sent with `sendfile(2)` instead of being copied into the socket.
//!
//! A scrape without gzip of a 10,000-key organization is 10 MB. Written from the heap, every byte is
//! copied into the socket's buffer, and that copy is most of what such a scrape costs: measured at
//! 3.4 times the CPU of nginx serving the same file with `sendfile`. So a large text is written once
//! into a sealed memory file (`memfd_create(2)`) and mapped: the rest of the program sees ordinary
//! [`Bytes`], and [`Stream`], the connection under hyper, recognises a slice of such a mapping when
//! hyper writes it and hands the kernel the file's pages instead.
//!
//! The pages are immutable (the file is sealed) and the kernel holds its own reference to those in
//! flight, so a text dropped while a response is still being sent cannot change or free what is sent.
//! Anywhere this cannot work (no `memfd_create`, out of file descriptors, TLS, another OS), the text
//! stays on the heap or is copied as before.

use std::collections::BTreeMap;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Texts shorter than this stay on the heap: each mapping holds a file descriptor, and below this the
/// copy costs less than the system calls saved.
const MIN_SHARED_LEN: usize = 1 << 20;

/// Slices shorter than this are written (copied) with the others around them, in one `writev`;
/// sending each with its own `sendfile` would cost more calls than the copy.
const MIN_SENDFILE_LEN: usize = 64 * 1024;

/// Every live mapping, by start address, with its length and file descriptor.
static MAPPINGS: RwLock<BTreeMap<usize, (usize, i32)>> = RwLock::new(BTreeMap::new());

/// Bytes sent from memory files so far, for tests to tell that a body went out this way.
static SENT_FROM_FILES: AtomicU64 = AtomicU64::new(0);

/// How many bytes connections have sent from memory files since the process started.
pub fn sent_from_files() -> u64 {
    SENT_FROM_FILES.load(Ordering::Relaxed)
}

/// `parts` written into one memory file and mapped, one [`Bytes`] per part; `None` if they are too
/// short together to be worth it or the file cannot be made, and the caller keeps them on the heap.
///
/// `len` is their total length, known before they are produced: they are produced and written one
/// at a time, so that only one is on the heap at once.
pub fn share<I>(len: usize, parts: I) -> Option<Vec<Bytes>>
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    if len < MIN_SHARED_LEN {
        return None;
    }
    match imp::Mapping::write(parts) {
        Ok((mapping, ends)) => {
            let whole = Bytes::from_owner(mapping);
            let mut start = 0;
            Some(
                ends.into_iter()
                    .map(|end| {
                        let part = whole.slice(start..end);
                        start = end;
                        part
                    })
                    .collect(),
            )
        }
        Err(error) => {
            tracing::debug!(error = %error, "Cannot map a text for sendfile; it stays on the heap.");
            None
        }
    }
}

/// Where `slice` lies in a live mapping: its file descriptor and offset, if the slice is long enough
/// to be sent from the file.
fn find(mappings: &BTreeMap<usize, (usize, i32)>, slice: &[u8]) -> Option<(i32, usize)> {
    if slice.len() < MIN_SENDFILE_LEN {
        return None;
    }
    let start = slice.as_ptr() as usize;
    let (&base, &(len, fd)) = mappings.range(..=start).next_back()?;
    (start + slice.len() <= base + len).then_some((fd, start - base))
}

/// A TCP connection that sends slices of mapped texts from their files; everything else is written
/// as by [`TcpStream`] itself.
#[derive(Debug)]
pub struct Stream {
    tcp: TcpStream,
}

impl Stream {
    pub fn new(tcp: TcpStream) -> Self {
        Self { tcp }
    }

    fn poll_send_file(
        &self,
        cx: &mut Context<'_>,
        file: i32,
        offset: usize,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.tcp.try_io(Interest::WRITABLE, || {
                imp::send_file(&self.tcp, file, offset, len)
            }) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Ok(sent) => {
                    SENT_FROM_FILES.fetch_add(sent as u64, Ordering::Relaxed);
                    return Poll::Ready(Ok(sent));
                }
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // NB: the read lock is held while the file is sent, so that the mapping (and its descriptor)
        // cannot be dropped in between; dropping one waits for the lock.
        let mappings = MAPPINGS.read().unwrap_or_else(PoisonError::into_inner);
        let first = bufs
            .iter()
            .position(|buf| !buf.is_empty())
            .unwrap_or(bufs.len());
        let rest = &bufs[first..];
        if let Some(first) = rest.first()
            && let Some((file, offset)) = find(&mappings, first)
        {
            return this.poll_send_file(cx, file, offset, first.len());
        }
        // NB: up to the next slice that is sent from a file; the first is known not to be.
        let copied = rest
            .iter()
            .skip(1)
            .position(|buf| find(&mappings, buf).is_some())
            .map_or(rest.len(), |index| index + 1);
        Pin::new(&mut this.tcp).poll_write_vectored(cx, &rest[..copied])
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::fs::File;
    use std::io::{self, Write};
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
    use std::sync::PoisonError;

    use memmap2::Mmap;
    use rustix::fs::{MemfdFlags, SealFlags};

    use super::MAPPINGS;

    /// A sealed memory file and its read-only mapping, listed in [`MAPPINGS`] while it lives.
    pub(super) struct Mapping {
        map: Mmap,
        // NB: kept open for sendfile; closed after the mapping is unlisted and unmapped.
        _file: File,
    }

    impl Mapping {
        /// Writes `parts` one after the other; the mapping and where each part ends.
        pub(super) fn write<I>(parts: I) -> io::Result<(Self, Vec<usize>)>
        where
            I: IntoIterator,
            I::Item: AsRef<[u8]>,
        {
            let file = File::from(rustix::fs::memfd_create(
                "anthropic-keys-exporter-text",
                MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
            )?);
            let mut writer = io::BufWriter::with_capacity(1 << 16, &file);
            let mut ends = Vec::new();
            let mut len = 0;
            for part in parts {
                let part = part.as_ref();
                writer.write_all(part)?;
                len += part.len();
                ends.push(len);
            }
            writer.flush()?;
            drop(writer);
            if len == 0 {
                return Err(io::Error::other("nothing to map"));
            }
            rustix::fs::fcntl_add_seals(
                &file,
                SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
            )?;
            // SAFETY: the file is sealed against writes and size changes, so the mapped bytes can
            // never change or vanish under the references handed out.
            #[allow(unsafe_code)]
            let map = unsafe { Mmap::map(&file)? };
            MAPPINGS
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(map.as_ptr() as usize, (map.len(), file.as_raw_fd()));
            Ok((Self { map, _file: file }, ends))
        }
    }

    impl AsRef<[u8]> for Mapping {
        fn as_ref(&self) -> &[u8] {
            &self.map
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // NB: unlisted before the fields are dropped, so that no writer finds an address that is
            // unmapped or a descriptor that is closed.
            MAPPINGS
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&(self.map.as_ptr() as usize));
        }
    }

    pub(super) fn send_file(
        socket: &impl AsFd,
        file: i32,
        offset: usize,
        len: usize,
    ) -> io::Result<usize> {
        // SAFETY: `file` is the descriptor of a mapping listed in MAPPINGS, and the caller holds the
        // read lock that keeps it listed, so it is open.
        #[allow(unsafe_code)]
        let file = unsafe { BorrowedFd::borrow_raw(file) };
        let mut offset = offset as u64;
        Ok(rustix::fs::sendfile(socket, file, Some(&mut offset), len)?)
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;

    pub(super) enum Mapping {}

    impl Mapping {
        pub(super) fn write<I>(_parts: I) -> io::Result<(Self, Vec<usize>)> {
            Err(io::Error::other("memory files are a Linux feature"))
        }
    }

    impl AsRef<[u8]> for Mapping {
        fn as_ref(&self) -> &[u8] {
            match *self {}
        }
    }

    pub(super) fn send_file(
        _socket: &impl std::os::fd::AsFd,
        _file: i32,
        _offset: usize,
        _len: usize,
    ) -> io::Result<usize> {
        Err(io::Error::other("sendfile is a Linux feature"))
    }
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use super::*;

    #[test]
    fn shared_parts_read_back_as_written_and_are_found_only_while_they_live() {
        // Arrange
        let parts = [vec![b'a'; MIN_SHARED_LEN], Vec::new(), vec![b'b'; 100_000]];
        let len = parts.iter().map(Vec::len).sum();

        // Act
        let shared = share(len, &parts).expect("a memory file on Linux");

        // Assert
        assert_eq!(shared.len(), 3);
        for (shared, part) in shared.iter().zip(&parts) {
            assert_eq!(shared[..], part[..]);
        }
        let mappings = MAPPINGS.read().unwrap();
        let (_, offset) = find(&mappings, &shared[2]).expect("a long slice of a mapping");
        assert_eq!(offset, MIN_SHARED_LEN);
        assert_eq!(
            find(&mappings, &shared[2][..100]),
            None,
            "too short to send"
        );
        assert_eq!(find(&mappings, &parts[2]), None, "heap memory");
        drop(mappings);
        let start = shared[0].as_ptr() as usize;
        drop(shared);
        assert!(
            !MAPPINGS.read().unwrap().contains_key(&start),
            "unlisted once the last part is dropped"
        );
    }

    /// A client and, accepted from it, the server side as a [`Stream`].
    async fn connected() -> (TcpStream, Stream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), Stream::new(accepted.unwrap().0))
    }

    #[tokio::test]
    async fn a_stream_sends_mapped_slices_from_their_file_and_the_rest_as_written() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        // Arrange: a text several times a socket buffer, so that sending it blocks and resumes.
        let text: Vec<u8> = (0..8 * MIN_SHARED_LEN).map(|i| (i % 251) as u8).collect();
        let shared = share(text.len(), [&text]).unwrap().pop().unwrap();
        let (mut client, mut server) = connected().await;
        let sent_before = sent_from_files();

        // Act
        let send = async move {
            server.write_all(b"header\n").await.unwrap();
            server.write_all(&shared[..5]).await.unwrap();
            server.write_all(&shared[5..]).await.unwrap();
            server.shutdown().await.unwrap();
        };
        let mut received = Vec::new();
        let (_, read) = tokio::join!(send, client.read_to_end(&mut received));
        read.unwrap();

        // Assert
        assert_eq!(&received[..7], b"header\n");
        assert!(
            received[7..] == text[..],
            "the text arrives as it was written"
        );
        assert!(
            sent_from_files() - sent_before >= (text.len() - 5) as u64,
            "the long slice went out from the file"
        );
    }

    #[tokio::test]
    async fn a_text_dropped_while_its_bytes_are_in_flight_still_arrives_as_it_was() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        // Arrange: a slice short enough to sit in the socket buffers with nobody reading.
        let text: Vec<u8> = (0..MIN_SHARED_LEN).map(|i| (i % 241) as u8).collect();
        let slice_len = 192 * 1024;
        let shared = share(text.len(), [&text]).unwrap().pop().unwrap();
        let (mut client, mut server) = connected().await;
        let sent_before = sent_from_files();

        // Act: send, drop the text and its file, and map others over where it was, before reading.
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            server.write_all(&shared[..slice_len]),
        )
        .await
        .expect("the slice fits in the socket buffers")
        .unwrap();
        drop(shared);
        let others: Vec<_> = (0..4)
            .map(|_| share(text.len(), [vec![0xff; text.len()]]).unwrap())
            .collect();
        server.shutdown().await.unwrap();
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();

        // Assert
        assert!(sent_from_files() - sent_before >= slice_len as u64);
        assert!(
            received[..] == text[..slice_len],
            "what was sent is what arrives"
        );
        drop(others);
    }

    #[test]
    fn short_texts_stay_on_the_heap() {
        assert_eq!(share(10, [b"0123456789"]), None);
    }
}
