//! Large plain-text bodies handed to the kernel by reference (`vmsplice(2)` and `splice(2)`)
//! instead of being copied into the socket.
//!
//! A scrape without gzip of a 10,000-key organization is 10 MB. Written from the heap, every byte
//! is copied into the socket's buffer, and that copy was most of what such a scrape cost: 3.4 times
//! the CPU of nginx serving the same file with `sendfile`. So a large text is copied once into a
//! mapping of its own, made read-only: the rest of the program sees ordinary [`Bytes`], and
//! [`Stream`], the connection under hyper, recognises a slice of such a mapping when hyper writes
//! it and moves references to its pages through a pipe into the socket.
//!
//! A mapping asks for transparent huge pages for every whole 2 MiB its text fills. A memory file,
//! as with `sendfile`, is looked up and referenced page by page (shared memory gets 4 KiB pages
//! unless the administrator enables more), and a socket buffer of 2 MiB pages costs the receiver
//! less to copy out. On one loopback connection sending 10 MB bodies, sender and receiver together
//! spent 4.2–5.1 ms per body this way against 5.8–6.6 ms with `sendfile` of an ext4 file.
//!
//! Safe because the pages never change: a mapping is read-only from the moment it is listed and is
//! only ever unmapped, never reused, so pages still referenced by a pipe or a socket buffer when
//! the text is dropped keep what was sent (heap memory, which the allocator reuses, is never
//! spliced). Anywhere this cannot work (no `vmsplice`, out of file descriptors, TLS, another OS),
//! the text stays on the heap or is copied as before.

use std::collections::BTreeMap;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Texts shorter than this stay on the heap: each is a mapping of its own, and below this a scrape
/// saves too little for one more mapping per organization.
const MIN_SHARED_LEN: usize = 256 * 1024;

/// Slices shorter than this are written (copied) with the others around them, in one `writev`;
/// splicing each would cost more calls than the copy.
const MIN_SPLICE_LEN: usize = 64 * 1024;

/// At most this many connections hold a pipe at once (two file descriptors each, counted in the
/// open-file budget of `http::server`); the others copy. A pipe stays with its connection, and
/// Prometheus, which asks for gzip over a few connections, needs few.
pub const MAX_PIPES: usize = 64;

/// Pipes open now.
static OPEN_PIPES: AtomicUsize = AtomicUsize::new(0);

/// Every live mapping, by start address, with its length.
static MAPPINGS: RwLock<BTreeMap<usize, usize>> = RwLock::new(BTreeMap::new());

/// Bytes spliced so far, for tests to tell that a body went out this way.
static SPLICED: AtomicU64 = AtomicU64::new(0);

/// How many bytes connections have handed to the kernel by reference since the process started.
pub fn spliced() -> u64 {
    SPLICED.load(Ordering::Relaxed)
}

/// `parts` copied into one read-only mapping, one [`Bytes`] per part; `None` if they are too short
/// together to be worth it or the mapping cannot be made, and the caller keeps them on the heap.
///
/// `len` is their total length, known before they are produced: they are produced and copied one at
/// a time, so that only one is on the heap at once.
pub fn share<I>(len: usize, parts: I) -> Option<Vec<Bytes>>
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    if len < MIN_SHARED_LEN {
        return None;
    }
    match imp::Mapping::write(len, parts) {
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
            tracing::debug!(error = %error, "Cannot map a text for splicing; it stays on the heap.");
            None
        }
    }
}

/// Whether `slice` lies in a live mapping and is long enough to be spliced.
fn is_spliceable(mappings: &BTreeMap<usize, usize>, slice: &[u8]) -> bool {
    if slice.len() < MIN_SPLICE_LEN {
        return false;
    }
    let start = slice.as_ptr() as usize;
    mappings
        .range(..=start)
        .next_back()
        .is_some_and(|(&base, &len)| start + slice.len() <= base + len)
}

/// A TCP connection that splices slices of mapped texts into the socket; everything else is written
/// as by [`TcpStream`] itself.
#[derive(Debug)]
pub struct Stream {
    tcp: TcpStream,
    pipe: Pipe,
}

/// The pipe a connection splices through, opened on its first long slice.
#[derive(Debug)]
enum Pipe {
    /// Not needed yet, or [`MAX_PIPES`] were open when it was.
    Unopened,
    Open {
        pipe: Budgeted,
        /// Bytes in the pipe, already accepted from hyper, not yet in the socket.
        queued: usize,
    },
    /// Splicing failed once on this connection (a sandbox without it, no descriptors left): it
    /// copies from then on.
    Unavailable,
}

impl Stream {
    pub fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            pipe: Pipe::Unopened,
        }
    }

    /// Moves what is queued in the pipe into the socket; ready once the pipe is empty.
    fn poll_send_queued(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Pipe::Open { pipe, queued } = &mut self.pipe else {
            return Poll::Ready(Ok(()));
        };
        while *queued > 0 {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self
                .tcp
                .try_io(Interest::WRITABLE, || pipe.send(&self.tcp, *queued))
            {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(sent) => *queued -= sent,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Whether the connection has a pipe, opening one if it has none and the budget allows.
    fn has_pipe(&mut self) -> bool {
        if matches!(self.pipe, Pipe::Unopened) {
            match Budgeted::open() {
                Ok(Some(pipe)) => self.pipe = Pipe::Open { pipe, queued: 0 },
                Ok(None) => {}
                Err(error) => {
                    tracing::debug!(error = %error, "Cannot open a pipe for splicing; this connection copies from now on.");
                    self.pipe = Pipe::Unavailable;
                }
            }
        }
        matches!(self.pipe, Pipe::Open { .. })
    }

    /// Queues as much of `slice` as the pipe takes and sends it on while the socket takes it: how much
    /// was accepted. An error means that splicing does not work here, and nothing was accepted.
    ///
    /// The caller holds the read lock of `mappings` and has found `slice` in it; the pipe is open and
    /// empty.
    fn splice(
        &mut self,
        cx: &mut Context<'_>,
        mappings: &BTreeMap<usize, usize>,
        slice: &[u8],
    ) -> io::Result<usize> {
        debug_assert!(is_spliceable(mappings, slice));
        let mut accepted = 0;
        while accepted < slice.len() {
            let Pipe::Open { pipe, queued } = &mut self.pipe else {
                unreachable!("the caller opened it");
            };
            let moved = match pipe.queue(&slice[accepted..]) {
                Ok(0) if accepted == 0 => return Err(io::Error::other("the pipe took nothing")),
                Ok(0) => break,
                Ok(moved) => moved,
                Err(error) if accepted == 0 => return Err(error),
                // NB: a lasting error comes back with the next write, which finds the pipe empty.
                Err(_) => break,
            };
            *queued += moved;
            accepted += moved;
            SPLICED.fetch_add(moved as u64, Ordering::Relaxed);
            // NB: the bytes accepted are no longer hyper's to resend; an error of the socket comes
            // back with the next write or flush.
            if !matches!(self.poll_send_queued(cx), Poll::Ready(Ok(()))) {
                break;
            }
        }
        Ok(accepted)
    }
}

/// A pipe counted in [`OPEN_PIPES`] while it is open.
#[derive(Debug)]
struct Budgeted(imp::Pipe);

impl Budgeted {
    /// A pipe, or `None` if [`MAX_PIPES`] are open.
    fn open() -> io::Result<Option<Self>> {
        if OPEN_PIPES.fetch_add(1, Ordering::Relaxed) >= MAX_PIPES {
            OPEN_PIPES.fetch_sub(1, Ordering::Relaxed);
            return Ok(None);
        }
        match imp::Pipe::open() {
            Ok(pipe) => Ok(Some(Self(pipe))),
            Err(error) => {
                OPEN_PIPES.fetch_sub(1, Ordering::Relaxed);
                Err(error)
            }
        }
    }
}

impl std::ops::Deref for Budgeted {
    type Target = imp::Pipe;

    fn deref(&self) -> &imp::Pipe {
        &self.0
    }
}

impl Drop for Budgeted {
    fn drop(&mut self) {
        OPEN_PIPES.fetch_sub(1, Ordering::Relaxed);
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
        // NB: what the pipe holds goes first, or the body would arrive out of order.
        ready!(this.poll_send_queued(cx))?;
        let mappings = MAPPINGS.read().unwrap_or_else(PoisonError::into_inner);
        let first = bufs
            .iter()
            .position(|buf| !buf.is_empty())
            .unwrap_or(bufs.len());
        let rest = &bufs[first..];
        if let Some(first) = rest.first()
            && is_spliceable(&mappings, first)
            && this.has_pipe()
        {
            match this.splice(cx, &mappings, first) {
                Ok(accepted) => return Poll::Ready(Ok(accepted)),
                Err(error) => {
                    tracing::debug!(error = %error, "Cannot splice into this connection; it copies from now on.");
                    this.pipe = Pipe::Unavailable;
                }
            }
        }
        // NB: up to the next slice that is spliced; the first is known not to be.
        let can_splice = !matches!(this.pipe, Pipe::Unavailable);
        let copied = rest
            .iter()
            .skip(1)
            .position(|buf| can_splice && is_spliceable(&mappings, buf))
            .map_or(rest.len(), |index| index + 1);
        drop(mappings);
        Pin::new(&mut this.tcp).poll_write_vectored(cx, &rest[..copied])
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_queued(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_queued(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::io;
    use std::os::fd::{AsFd, OwnedFd};
    use std::sync::PoisonError;

    use memmap2::{Advice, Mmap, MmapOptions};
    use rustix::pipe::{IoSliceRaw, PipeFlags, SpliceFlags};

    use super::MAPPINGS;

    /// The size of a transparent huge page on x86-64 and most arm64 kernels.
    const HUGE_PAGE: usize = 2 << 20;

    /// What a connection's pipe holds at most: references to 256 pages, not copies of them.
    const PIPE_CAPACITY: usize = 1 << 20;

    /// A read-only anonymous mapping holding a text, listed in [`MAPPINGS`] while it lives.
    pub(super) struct Mapping {
        map: Mmap,
        len: usize,
    }

    impl Mapping {
        /// Copies `parts`, `len` bytes together, one after the other; the mapping and where each
        /// part ends.
        pub(super) fn write<I>(len: usize, parts: I) -> io::Result<(Self, Vec<usize>)>
        where
            I: IntoIterator,
            I::Item: AsRef<[u8]>,
        {
            // NB: a length of whole huge pages makes the kernel align the mapping to them. Only the
            // huge pages the text fills are asked for; the rest of it is in 4 KiB pages, and the
            // rest of the mapping is never touched, so nothing is wasted.
            let huge_len = len / HUGE_PAGE * HUGE_PAGE;
            let mut map = MmapOptions::new()
                .len(if huge_len > 0 {
                    len.next_multiple_of(HUGE_PAGE)
                } else {
                    len
                })
                .map_anon()?;
            if huge_len > 0 {
                // NB: where transparent huge pages are off, this fails and 4 KiB pages work too.
                let _ = map.advise_range(Advice::HugePage, 0, huge_len);
                let _ = map.advise_range(Advice::NoHugePage, huge_len, map.len() - huge_len);
            }
            let mut ends = Vec::new();
            let mut written = 0;
            for part in parts {
                let part = part.as_ref();
                let end = written + part.len();
                map.get_mut(written..end)
                    .ok_or_else(|| io::Error::other("the parts are longer than announced"))?
                    .copy_from_slice(part);
                written = end;
                ends.push(written);
            }
            if written == 0 {
                return Err(io::Error::other("nothing to map"));
            }
            let map = map.make_read_only()?;
            MAPPINGS
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(map.as_ptr() as usize, written);
            Ok((Self { map, len: written }, ends))
        }
    }

    impl AsRef<[u8]> for Mapping {
        fn as_ref(&self) -> &[u8] {
            &self.map[..self.len]
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // NB: unlisted before it is unmapped, so that no connection splices from it meanwhile.
            MAPPINGS
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&(self.map.as_ptr() as usize));
        }
    }

    /// A non-blocking pipe: its write end takes references to mapped pages, its read end gives them
    /// to the socket.
    #[derive(Debug)]
    pub(super) struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
    }

    impl Pipe {
        pub(super) fn open() -> io::Result<Self> {
            let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
            // NB: with the default 64 KiB, a 10 MB scrape took about an eighth more CPU, in many
            // more system calls and wake-ups. Where the system allows less
            // (`/proc/sys/fs/pipe-max-size`, the pipe pages a user may have), the default works too.
            if let Err(error) = rustix::pipe::fcntl_setpipe_size(&write, PIPE_CAPACITY) {
                tracing::debug!(error = %error, "Cannot enlarge a pipe for splicing; it stays as it is.");
            }
            Ok(Self { read, write })
        }

        /// References to as many of `slice`'s pages as the pipe holds; how many bytes that is.
        ///
        /// The caller holds the read lock of [`MAPPINGS`] and has found `slice` in a listed mapping.
        pub(super) fn queue(&self, slice: &[u8]) -> io::Result<usize> {
            // SAFETY: `write` is the pipe's write end, so the kernel only reads `slice`. The pipe
            // refers to its pages after the call, and they never change: they belong to a listed
            // mapping, read-only since it was listed and only ever unmapped.
            #[allow(unsafe_code)]
            let queued = unsafe {
                rustix::pipe::vmsplice(
                    &self.write,
                    &[IoSliceRaw::from_slice(slice)],
                    SpliceFlags::NONBLOCK,
                )?
            };
            Ok(queued)
        }

        /// Moves up to `len` queued bytes into `socket`.
        pub(super) fn send(&self, socket: &impl AsFd, len: usize) -> io::Result<usize> {
            Ok(rustix::pipe::splice(
                &self.read,
                None,
                socket,
                None,
                len,
                SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
            )?)
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;

    pub(super) enum Mapping {}

    impl Mapping {
        pub(super) fn write<I>(_len: usize, _parts: I) -> io::Result<(Self, Vec<usize>)> {
            Err(io::Error::other("splicing is a Linux feature"))
        }
    }

    impl AsRef<[u8]> for Mapping {
        fn as_ref(&self) -> &[u8] {
            match *self {}
        }
    }

    #[derive(Debug)]
    pub(super) enum Pipe {}

    impl Pipe {
        pub(super) fn open() -> io::Result<Self> {
            Err(io::Error::other("splicing is a Linux feature"))
        }

        pub(super) fn queue(&self, _slice: &[u8]) -> io::Result<usize> {
            match *self {}
        }

        pub(super) fn send(
            &self,
            _socket: &impl std::os::fd::AsFd,
            _len: usize,
        ) -> io::Result<usize> {
            match *self {}
        }
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
        let shared = share(len, &parts).expect("a mapping on Linux");

        // Assert
        assert_eq!(shared.len(), 3);
        for (shared, part) in shared.iter().zip(&parts) {
            assert_eq!(shared[..], part[..]);
        }
        let mappings = MAPPINGS.read().unwrap();
        assert!(
            is_spliceable(&mappings, &shared[2]),
            "a long slice of a mapping"
        );
        assert!(
            !is_spliceable(&mappings, &shared[2][..100]),
            "too short to splice"
        );
        assert!(!is_spliceable(&mappings, &parts[2]), "heap memory");
        drop(mappings);
        let start = shared[0].as_ptr() as usize;
        drop(shared);
        assert!(
            !MAPPINGS.read().unwrap().contains_key(&start),
            "unlisted once the last part is dropped"
        );
    }

    /// A client and, accepted from it, the server side as a [`Stream`]; with `small_buffers`, both
    /// sockets' buffers are as small as the kernel allows, so that little fits in between.
    async fn connected(small_buffers: bool) -> (TcpStream, Stream) {
        let server = tokio::net::TcpSocket::new_v4().unwrap();
        let client = tokio::net::TcpSocket::new_v4().unwrap();
        if small_buffers {
            server.set_send_buffer_size(4096).unwrap();
            client.set_recv_buffer_size(4096).unwrap();
        }
        server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = server.listen(1).unwrap();
        let client = client.connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), Stream::new(accepted.unwrap().0))
    }

    #[tokio::test]
    async fn a_stream_splices_mapped_slices_and_writes_the_rest() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        // Arrange: a text several times a socket buffer, so that sending it blocks and resumes.
        let text: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
        let shared = share(text.len(), [&text]).unwrap().pop().unwrap();
        let (mut client, mut server) = connected(false).await;
        let sent_before = spliced();

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
            spliced() - sent_before >= (text.len() - 5) as u64,
            "the long slice was spliced"
        );
    }

    #[tokio::test]
    async fn a_text_dropped_while_its_bytes_are_in_flight_still_arrives_as_it_was() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        // Arrange: a slice more than the small socket buffers hold, and no more than the pipe.
        let text: Vec<u8> = (0..1 << 20).map(|i| (i % 241) as u8).collect();
        let slice_len = 768 * 1024;
        let shared = share(text.len(), [&text]).unwrap().pop().unwrap();
        let (mut client, mut server) = connected(true).await;
        let sent_before = spliced();

        // Act: hand the slice over, drop the text, and map others where it was, before reading.
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            server.write_all(&shared[..slice_len]),
        )
        .await
        .expect("the slice is accepted into the pipe without being read")
        .unwrap();
        let Pipe::Open { queued, .. } = server.pipe else {
            panic!("spliced");
        };
        drop(shared);
        let others: Vec<_> = (0..4)
            .map(|_| share(text.len(), [vec![0xff; text.len()]]).unwrap())
            .collect();
        let mut received = Vec::new();
        let (shut, read) = tokio::join!(server.shutdown(), client.read_to_end(&mut received));
        shut.unwrap();
        read.unwrap();

        // Assert
        assert!(queued > 0, "part of the slice was still in the pipe");
        assert!(spliced() - sent_before >= slice_len as u64);
        assert!(
            received[..] == text[..slice_len],
            "what was sent is what arrives"
        );
        drop(others);
    }

    #[tokio::test]
    async fn connections_beyond_the_pipe_budget_copy_and_a_closed_one_frees_its_pipe() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        // Arrange
        let text: Vec<u8> = (0..MIN_SHARED_LEN).map(|i| (i % 239) as u8).collect();
        let shared = share(text.len(), [&text]).unwrap().pop().unwrap();
        /// Sends the text over a new connection, which it returns with whether it holds a pipe.
        async fn send(shared: &Bytes, text: &[u8]) -> (Stream, bool) {
            let (mut client, mut server) = connected(false).await;
            let mut received = Vec::new();
            let send = async {
                server.write_all(shared).await.unwrap();
                server.shutdown().await.unwrap();
            };
            let (_, read) = tokio::join!(send, client.read_to_end(&mut received));
            read.unwrap();
            assert!(received == text, "the text arrives either way");
            let piped = matches!(server.pipe, Pipe::Open { .. });
            (server, piped)
        }

        // Act: connections that keep their pipes, until one gets none.
        let mut open = Vec::new();
        let without_pipe = loop {
            let (server, piped) = send(&shared, &text).await;
            if !piped {
                break server;
            }
            open.push(server);
            assert!(open.len() <= MAX_PIPES, "no more than the budget");
        };
        drop(open);
        let (_after, piped_after) = send(&shared, &text).await;

        // Assert: other tests running alongside hold a pipe or two at most.
        assert!(
            matches!(without_pipe.pipe, Pipe::Unopened),
            "may try again later"
        );
        assert!(piped_after, "closed connections give their pipes back");
    }

    #[test]
    fn short_texts_stay_on_the_heap() {
        assert_eq!(share(10, [b"0123456789"]), None);
    }

    #[test]
    fn parts_longer_than_announced_stay_on_the_heap() {
        let announced = MIN_SHARED_LEN;
        let parts = [vec![b'a'; announced], vec![b'b'; 4 << 20]];

        assert_eq!(share(announced, &parts), None);
    }
}
