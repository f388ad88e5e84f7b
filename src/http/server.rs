//! The HTTP(S) server: accepts connections, terminates TLS when the web config asks for it, and serves
//! the router with limits that keep a slow or hostile client from holding up anyone else: a bounded
//! number of connections (with a few slots kept for probes), header, idle, handshake and write
//! timeouts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::batch::Batched;
use super::is_probe_path;
use super::web_config::WebConfigSource;

/// A client must send its request headers within this time (slow-loris protection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A TLS handshake must finish within this time.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Request line and headers larger than this are refused with 431. Scrapes send a few hundred bytes.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// How many connections the server holds open and how long it waits for each client.
///
/// Only `max_connections` is a flag; the timeouts are fixed in production and shortened by tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Open connections beyond this are closed at once, except for a few reserved slots that answer
    /// health and readiness probes only.
    pub max_connections: usize,
    /// A client must send its request headers within this time of connecting or of the previous
    /// response, so an idle keep-alive connection is closed after it too.
    pub header_read_timeout: Duration,
    /// A TLS handshake must finish within this time.
    pub tls_handshake_timeout: Duration,
    /// A connection whose writes make no progress for this long (a client that does not read its
    /// response) is dropped.
    pub write_timeout: Duration,
    /// How often the web config file and the files it names are checked for changes.
    pub web_config_check_interval: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: HEADER_READ_TIMEOUT,
            tls_handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
            write_timeout: Duration::from_secs(30),
            web_config_check_interval: Duration::from_secs(1),
        }
    }
}

/// Connections beyond `max_connections` that still get served, for health and readiness probes only,
/// one request each: a kubelet must see a live process even while clients hold every slot.
pub const PROBE_SLOTS: usize = 4;
/// A connection on a probe slot must send its request (and finish its TLS handshake) this quickly.
const PROBE_SLOT_TIMEOUT: Duration = Duration::from_secs(1);
/// Repeated warnings (accept errors, refused connections) are logged at most this often, with the
/// number left out since the last line.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets open requests finish for up to
/// `grace`. Whether connections speak TLS is decided once, by the web config in force at start-up.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    web_config: Arc<WebConfigSource>,
    limits: ServerLimits,
    shutdown: CancellationToken,
    grace: Duration,
) {
    warn_if_above_the_open_file_limit(limits.max_connections);
    let graceful = GracefulShutdown::new();
    let probe_timeout = limits.header_read_timeout.min(PROBE_SLOT_TIMEOUT);
    let full = http_builder(limits.header_read_timeout, true);
    let probe_only = http_builder(probe_timeout, false);
    let probe_router = router.clone().layer(axum::middleware::from_fn(only_probes));
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let probe_slots = Arc::new(Semaphore::new(PROBE_SLOTS));
    let mut accept_errors = Throttle::new(WARNING_INTERVAL);
    let mut refusals = Throttle::new(WARNING_INTERVAL);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    if let Some(suppressed) = accept_errors.allow(Instant::now()) {
                        tracing::warn!(
                            error = %error,
                            suppressed,
                            "Cannot accept a connection (suppressed: similar errors since the last such line)."
                        );
                    }
                    // NB: running out of file descriptors must not spin the loop; wait a little.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (slot, http, service, handshake_timeout) = match Arc::clone(&connections)
            .try_acquire_owned()
        {
            Ok(slot) => (
                slot,
                full.clone(),
                router.clone(),
                limits.tls_handshake_timeout,
            ),
            Err(_) => match Arc::clone(&probe_slots).try_acquire_owned() {
                Ok(slot) => (
                    slot,
                    probe_only.clone(),
                    probe_router.clone(),
                    limits.tls_handshake_timeout.min(probe_timeout),
                ),
                Err(_) => {
                    drop(stream);
                    if let Some(suppressed) = refusals.allow(Instant::now()) {
                        tracing::warn!(
                            max_connections = limits.max_connections,
                            suppressed,
                            "Too many open connections; closing new ones at once (suppressed: closed since the last such line)."
                        );
                    }
                    continue;
                }
            },
        };
        let tls = match (web_config.serves_tls(), web_config.current().tls.clone()) {
            (false, _) => None,
            (true, Some(tls)) => Some(tls),
            (true, None) => {
                // NB: cannot happen (a reload never turns TLS off); fail closed all the same.
                tracing::error!(
                    "The TLS listener has no TLS configuration; closing the connection."
                );
                continue;
            }
        };
        let mut stream = TimeoutStream::new(crate::zero_copy::Stream::new(stream));
        stream.set_write_timeout(Some(limits.write_timeout));
        let stream = Box::pin(stream);
        let service = TowerToHyperService::new(
            ServiceExt::<Request<hyper::body::Incoming>>::map_response(service, batched),
        );
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            let served = match tls {
                None => {
                    watcher
                        .watch(http.serve_connection(TokioIo::new(stream), service))
                        .await
                }
                Some(tls) => {
                    let handshake = tokio::time::timeout(
                        handshake_timeout,
                        TlsAcceptor::from(tls).accept(stream),
                    )
                    .await;
                    match handshake {
                        Ok(Ok(stream)) => {
                            watcher
                                .watch(http.serve_connection(TokioIo::new(stream), service))
                                .await
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, error = %error, "TLS handshake failed.");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out.");
                            return;
                        }
                    }
                }
            };
            if let Err(error) = served {
                tracing::debug!(%peer, error = %error, "Connection ended with an error.");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_seconds = grace.as_secs(),
            "Open HTTP connections did not finish in time; stopping anyway."
        );
    }
}

/// File descriptors the process needs besides its connections: the listener, logs, the Admin API
/// client's connections, the runtime's own, and the pipes that connections splice through.
const OTHER_FILES: usize = 64 + 2 * crate::zero_copy::MAX_PIPES;

/// With an open-file limit below the connection limit, connections are refused by the kernel before
/// the connection limit closes any, and probes starve again: say so at start-up.
fn warn_if_above_the_open_file_limit(max_connections: usize) {
    let Some(limit) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| soft_open_file_limit(&limits))
    else {
        return;
    };
    let needed = max_connections + PROBE_SLOTS + OTHER_FILES;
    if needed as u64 > limit {
        tracing::warn!(
            max_connections,
            open_file_limit = limit,
            "--web.max-connections is too close to the open-file limit: connections would fail before the limit closes any, and health probes could starve; lower --web.max-connections or raise the limit (ulimit -n)."
        );
    }
}

/// The soft limit from the `Max open files` line of `/proc/self/limits`.
fn soft_open_file_limit(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn http_builder(header_read_timeout: Duration, keep_alive: bool) -> http1::Builder {
    let mut http = http1::Builder::new();
    // NB: hyper restarts the header read timeout when a keep-alive connection goes idle, so it is
    // the idle timeout as well.
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(keep_alive);
    http
}

/// Frames that are ready together are written together (see [`super::batch`]).
fn batched(response: Response) -> Response<Batched<axum::body::Body>> {
    response.map(Batched::new)
}

/// On a probe slot, only health and readiness are answered.
async fn only_probes(request: Request, next: Next) -> Response {
    if is_probe_path(request.uri().path()) {
        next.run(request).await
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many open connections; retry later\n",
        )
            .into_response()
    }
}

/// Lets one event through per interval and counts the others, so that a condition that repeats many
/// times a second (out of file descriptors) logs a line every few seconds, not a flood.
#[derive(Debug)]
struct Throttle {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(events left out since the last one let through)`, or `None` to leave this one out.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use axum::body::{Body, Bytes};
    use axum::routing::get;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

    use super::*;

    /// The server's end of an in-memory connection that takes every write whole, counting them: how
    /// many times hyper flushed.
    struct CountingWrites {
        inner: DuplexStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for CountingWrites {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CountingWrites {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            let mut written = 0;
            for buf in bufs {
                match Pin::new(&mut self.inner).poll_write(cx, buf) {
                    Poll::Ready(Ok(n)) if n == buf.len() => written += n,
                    Poll::Ready(Ok(n)) => return Poll::Ready(Ok(written + n)),
                    other if written == 0 => return other,
                    _ => break,
                }
            }
            Poll::Ready(Ok(written))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn a_response_of_many_parts_is_handed_to_one_vectored_write() {
        // Arrange: a body of parts each larger than hyper's write buffer, as a gzip scrape's are.
        let parts: Vec<Bytes> = (0..40u8)
            .map(|i| Bytes::from(vec![b'a' + i % 26; 20_000]))
            .collect();
        let expected = parts.concat();
        let router = Router::new().route(
            "/",
            get(move || {
                let parts = parts.clone();
                async move { Body::new(super::super::Chunks::new(parts)) }
            }),
        );
        let (mut client, server) = tokio::io::duplex(4 << 20);
        let writes = Arc::new(AtomicUsize::new(0));
        let server = CountingWrites {
            inner: server,
            writes: Arc::clone(&writes),
        };
        let service = TowerToHyperService::new(
            ServiceExt::<Request<hyper::body::Incoming>>::map_response(router, batched),
        );
        let serving = tokio::spawn(
            http_builder(HEADER_READ_TIMEOUT, false)
                .serve_connection(TokioIo::new(server), service),
        );

        // Act
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        client.read_to_end(&mut response).await.unwrap();
        serving.await.unwrap().unwrap();

        // Assert
        assert!(response.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(response.ends_with(&expected), "the whole body, in order");
        assert_eq!(
            writes.load(Ordering::Relaxed),
            1,
            "the head and 40 parts in one write"
        );
    }

    #[test]
    fn the_soft_open_file_limit_is_read_from_proc() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
Max processes             127431               127431               processes\n\
Max open files            1024                 524288               files\n";
        assert_eq!(soft_open_file_limit(limits), Some(1024));
        assert_eq!(
            soft_open_file_limit("Max open files  unlimited  unlimited  files\n"),
            None,
            "no limit, nothing to warn about"
        );
    }

    #[test]
    fn a_repeated_warning_is_let_through_once_per_interval_with_a_count() {
        let mut throttle = Throttle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(throttle.allow(start), Some(0));
        let left_out = (1..100)
            .filter(|i| {
                throttle
                    .allow(start + Duration::from_millis(i * 50))
                    .is_none()
            })
            .count();
        assert_eq!(left_out, 99, "nothing within the interval");
        assert_eq!(throttle.allow(start + Duration::from_secs(10)), Some(99));
        assert_eq!(throttle.allow(start + Duration::from_secs(11)), None);
        assert_eq!(throttle.allow(start + Duration::from_secs(25)), Some(1));
    }
}
