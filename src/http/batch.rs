//! Response bodies handed to hyper as batches of frames, so that a response whose frames are ready at
//! once goes out in one vectored write rather than one write per frame.
//!
//! hyper flushes each frame that does not fit its write buffer (as large as the request header limit)
//! with a system call of its own, and a gzip scrape of 10,000 keys is about twenty shared parts. Sent
//! one part at a time, the client sees each response arrive in bursts with gaps between them, and
//! under load a response that arrived in part waits behind others: the exporter's gzip p99 was 1.4
//! to 1.9 times that of nginx sending the same bytes with one `sendfile`, and fell below it when the
//! parts were written together (see `docs/performance.md`).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper::body::{Body, Frame, SizeHint};

/// Frames shorter than this are copied together into one segment rather than given a slot of the
/// vectored write each: a body of many organizations has thousands of them.
const SMALL_FRAME: usize = 16 * 1024;
/// The most a joined segment holds.
const JOINED_SEGMENT: usize = 64 * 1024;
/// A batch ends after this many segments: one vectored write takes 64 slices in hyper, and the
/// response head takes one.
const MAX_SEGMENTS: usize = 63;
/// A batch ends once this much of it was copied: what a response in flight holds beyond the shared
/// parts it points to, so that memory does not grow much with the number of concurrent scrapers.
const MAX_COPIED: usize = 4 * JOINED_SEGMENT;

/// A body whose frames are collected into batches: every frame that is ready when hyper asks for
/// data, up to the limits above. Trailers and errors come after the data before them.
#[derive(Debug)]
pub(super) struct Batched<B: Body> {
    inner: B,
    /// A trailers frame or an error that came after a batch was started, for the next poll.
    held: Option<Result<Frame<Bytes>, B::Error>>,
}

impl<B: Body<Data = Bytes>> Batched<B> {
    pub(super) fn new(inner: B) -> Self {
        Self { inner, held: None }
    }
}

// NB: nothing in it is pinned: the inner body is polled through `Pin::new`, and is itself `Unpin`.
impl<B: Body + Unpin> Unpin for Batched<B> {}

impl<B> Body for Batched<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Batch;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Batch>, B::Error>>> {
        let this = &mut *self;
        if let Some(held) = this.held.take() {
            return Poll::Ready(Some(held.map(|frame| frame.map_data(Batch::from))));
        }
        let mut batch = BatchBuilder::default();
        while !batch.is_full() {
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(error))) if !batch.is_empty() => {
                    this.held = Some(Err(error));
                    break;
                }
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Pending | Poll::Ready(None) if !batch.is_empty() => break,
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
            };
            match frame.into_data() {
                Ok(data) => {
                    let last = this.inner.is_end_stream();
                    batch.push(data, last);
                    if last {
                        break;
                    }
                }
                Err(trailers) if batch.is_empty() => {
                    return Poll::Ready(Some(Ok(trailers.map_data(Batch::from))));
                }
                Err(trailers) => {
                    this.held = Some(Ok(trailers));
                    break;
                }
            }
        }
        Poll::Ready(Some(Ok(Frame::data(batch.finish()))))
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // NB: a batch is handed over whole as it is made, so what is left is the inner body's.
        self.inner.size_hint()
    }
}

/// Frames of a body, to be written with one vectored write: large frames by reference, runs of
/// small ones copied together.
#[derive(Debug, Default)]
pub(super) struct Batch {
    segments: VecDeque<Bytes>,
    remaining: usize,
}

impl From<Bytes> for Batch {
    fn from(bytes: Bytes) -> Self {
        let mut batch = Self::default();
        batch.push(bytes);
        batch
    }
}

impl Batch {
    fn push(&mut self, segment: Bytes) {
        if !segment.is_empty() {
            self.remaining += segment.len();
            self.segments.push_back(segment);
        }
    }
}

impl Buf for Batch {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.segments.front().map_or(&[], |segment| segment)
    }

    fn advance(&mut self, mut count: usize) {
        assert!(
            count <= self.remaining,
            "advanced {count} bytes past the {} left",
            self.remaining
        );
        self.remaining -= count;
        while let Some(front) = self.segments.front_mut() {
            if count < front.len() {
                front.advance(count);
                return;
            }
            count -= front.len();
            // NB: a segment is let go as soon as it is written, so that nothing sent is kept.
            self.segments.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let mut filled = 0;
        for (slice, segment) in slices.iter_mut().zip(&self.segments) {
            *slice = IoSlice::new(segment);
            filled += 1;
        }
        filled
    }
}

#[derive(Debug, Default)]
struct BatchBuilder {
    batch: Batch,
    /// Small frames not yet joined, and their length together.
    run: Vec<Bytes>,
    run_len: usize,
    copied: usize,
}

impl BatchBuilder {
    /// Adds a frame. The last frame of a body is never copied: whatever it owns (a request permit)
    /// then lives until it has been written.
    fn push(&mut self, frame: Bytes, last: bool) {
        if frame.len() >= SMALL_FRAME || last {
            self.end_run();
            self.batch.push(frame);
            return;
        }
        if self.run_len + frame.len() > JOINED_SEGMENT {
            self.end_run();
        }
        self.run_len += frame.len();
        self.run.push(frame);
    }

    /// Joins the run of small frames into one segment, allocated to its length.
    fn end_run(&mut self) {
        let segment = match self.run.as_slice() {
            [] => return,
            [single] => single.clone(),
            run => {
                let joined = run.concat();
                self.copied += joined.len();
                Bytes::from(joined)
            }
        };
        self.run.clear();
        self.run_len = 0;
        self.batch.push(segment);
    }

    fn is_empty(&self) -> bool {
        self.batch.segments.is_empty() && self.run.is_empty()
    }

    fn is_full(&self) -> bool {
        self.batch.segments.len() + usize::from(!self.run.is_empty()) >= MAX_SEGMENTS
            || self.copied + self.run_len >= MAX_COPIED
    }

    fn finish(mut self) -> Batch {
        self.end_run();
        self.batch
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::poll_fn;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// Frames that are all ready, ending with the last, as the metrics body's are.
    struct Ready(VecDeque<Frame<Bytes>>);

    impl Body for Ready {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }

        fn size_hint(&self) -> SizeHint {
            let data = self.0.iter().filter_map(Frame::data_ref).map(Bytes::len);
            SizeHint::with_exact(data.sum::<usize>() as u64)
        }
    }

    fn body_of(frames: impl IntoIterator<Item = Frame<Bytes>>) -> Batched<Ready> {
        Batched::new(Ready(frames.into_iter().collect()))
    }

    fn data(frames: impl IntoIterator<Item = Bytes>) -> Batched<Ready> {
        body_of(frames.into_iter().map(Frame::data))
    }

    async fn next(body: &mut Batched<Ready>) -> Option<Frame<Batch>> {
        poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
            .await
            .map(|frame| frame.unwrap_or_else(|never| match never {}))
    }

    async fn batches(mut body: Batched<Ready>) -> Vec<Batch> {
        let mut batches = Vec::new();
        while let Some(frame) = next(&mut body).await {
            batches.push(frame.into_data().unwrap());
        }
        batches
    }

    fn bytes_of(mut batch: Batch) -> Vec<u8> {
        let mut bytes = Vec::new();
        while batch.has_remaining() {
            let chunk = batch.chunk().to_vec();
            batch.advance(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        bytes
    }

    #[tokio::test]
    async fn frames_ready_at_once_go_out_as_one_batch_with_the_small_ones_joined() {
        // Arrange
        let mut frames = vec![Bytes::from_static(b"# HELP a\n"), Bytes::new()];
        frames.push(Bytes::from(vec![b'x'; 3 * SMALL_FRAME]));
        frames.extend((0..40).map(|i| Bytes::from(format!("{i:01000}\n"))));
        frames.push(Bytes::from(vec![b'y'; SMALL_FRAME]));
        frames.push(Bytes::from_static(b"end\n"));
        let expected: Vec<u8> = frames.concat();
        let body = data(frames);
        let size = body.size_hint().exact();

        // Act
        let batches = batches(body).await;

        // Assert
        assert_eq!(size, Some(expected.len() as u64));
        assert_eq!(batches.len(), 1);
        let segments: Vec<usize> = batches[0].segments.iter().map(Bytes::len).collect();
        assert_eq!(
            segments,
            [9, 3 * SMALL_FRAME, 40 * 1001, SMALL_FRAME, 4],
            "large frames by reference, small runs joined, the last one as it is"
        );
        assert_eq!(bytes_of(batches.into_iter().next().unwrap()), expected);
    }

    #[tokio::test]
    async fn a_batch_holds_a_bounded_copy_and_a_bounded_number_of_slices() {
        // Arrange: many small frames, then many large ones.
        let small: Vec<Bytes> = (0..2000)
            .map(|i| Bytes::from(format!("{i:0999}\n")))
            .collect();
        let large: Vec<Bytes> = (0..200)
            .map(|i| Bytes::from(vec![b'a' + (i % 26) as u8; SMALL_FRAME]))
            .collect();
        let expected = [small.concat(), large.concat()].concat();

        // Act
        let batches = batches(data(small.into_iter().chain(large))).await;

        // Assert
        for batch in &batches {
            assert!(batch.segments.len() <= MAX_SEGMENTS);
            let copied: usize = batch
                .segments
                .iter()
                .filter(|segment| segment.len() != SMALL_FRAME)
                .map(Bytes::len)
                .sum();
            assert!(copied < MAX_COPIED + JOINED_SEGMENT, "{copied}");
        }
        assert!(
            batches.len() >= 2_000_000 / (MAX_COPIED + JOINED_SEGMENT) + 200 / MAX_SEGMENTS,
            "{} batches",
            batches.len()
        );
        let sent: Vec<u8> = batches.into_iter().flat_map(bytes_of).collect();
        assert_eq!(sent, expected);
    }

    #[test]
    fn a_batch_is_written_in_slices_and_lets_go_of_what_was_written() {
        // Arrange
        let mut batch = Batch::default();
        for segment in ["abc", "", "defg", "h"] {
            batch.push(Bytes::from_static(segment.as_bytes()));
        }
        let mut slices = [IoSlice::new(&[]); 2];

        // Act
        let filled = batch.chunks_vectored(&mut slices);
        let first_two: Vec<Vec<u8>> = slices[..filled].iter().map(|s| s.to_vec()).collect();
        batch.advance(4);
        let after_four = (
            batch.remaining(),
            batch.segments.len(),
            batch.chunk().to_vec(),
        );
        batch.advance(4);

        // Assert
        assert_eq!(first_two, [b"abc".to_vec(), b"defg".to_vec()]);
        assert_eq!(after_four, (4, 2, b"efg".to_vec()));
        assert_eq!((batch.remaining(), batch.segments.len()), (0, 0));
    }

    #[tokio::test]
    async fn trailers_come_after_the_data_before_them() {
        // Arrange
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("x-done", hyper::header::HeaderValue::from_static("1"));
        let mut body = body_of([
            Frame::data(Bytes::from_static(b"one")),
            Frame::trailers(trailers.clone()),
        ]);

        // Act
        let first = next(&mut body).await.unwrap();
        let second = next(&mut body).await.unwrap();
        let third = next(&mut body).await;

        // Assert
        assert_eq!(bytes_of(first.into_data().unwrap()), b"one");
        assert_eq!(second.into_trailers().unwrap(), trailers);
        assert!(third.is_none());
    }

    #[tokio::test]
    async fn the_last_frame_is_not_copied_so_that_what_it_owns_lives_until_it_is_written() {
        // Arrange
        struct Owned(Arc<AtomicBool>);
        impl AsRef<[u8]> for Owned {
            fn as_ref(&self) -> &[u8] {
                b"last"
            }
        }
        impl Drop for Owned {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let body = data([
            Bytes::from_static(b"first "),
            Bytes::from_owner(Owned(Arc::clone(&dropped))),
        ]);

        // Act
        let mut batch = batches(body).await.pop().unwrap();
        let before_written = dropped.load(Ordering::SeqCst);
        batch.advance(batch.remaining());

        // Assert
        assert!(!before_written);
        assert!(dropped.load(Ordering::SeqCst));
    }
}
