//! The HTTP surface: metrics, health and readiness, and a landing page.

pub mod auth;
mod batch;
pub mod server;
pub mod web_config;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use self::web_config::WebConfigSource;
use crate::metrics::SnapshotStore;
use crate::metrics::{Encoding, Exposition};
use crate::poller::PollerHealth;

/// What a fixed route serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FixedRoute {
    Landing,
    Health,
    Ready,
}

/// Every route but the telemetry path: the one table the router and the validation of
/// `--web.telemetry-path` both read.
pub const FIXED_ROUTES: [(&str, FixedRoute); 5] = [
    ("/", FixedRoute::Landing),
    ("/healthz", FixedRoute::Health),
    ("/-/healthy", FixedRoute::Health),
    ("/readyz", FixedRoute::Ready),
    ("/-/ready", FixedRoute::Ready),
];

/// Whether the telemetry path may not take `path`.
pub fn is_reserved_path(path: &str) -> bool {
    FIXED_ROUTES.iter().any(|(fixed, _)| *fixed == path)
}

/// Health and readiness: open to probes without credentials (they reveal nothing), outside the
/// request limit, and answered on the connection slots reserved for them.
pub fn is_probe_path(path: &str) -> bool {
    FIXED_ROUTES
        .iter()
        .any(|(fixed, route)| *fixed == path && *route != FixedRoute::Landing)
}

/// The content type of the Prometheus text exposition format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A request that takes longer than this is answered with 408, so that no request can hold up shutdown.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub exposition: Exposition,
    pub store: Arc<SnapshotStore>,
    pub health: Arc<PollerHealth>,
    pub telemetry_path: String,
    /// TLS, basic auth and extra headers; reloaded when its files change.
    pub web_config: Arc<WebConfigSource>,
    /// Concurrent scrapes beyond this get 503 at once instead of queueing; 0 means no limit.
    pub max_requests: usize,
}

/// The application's routes. Pure: building it has no side effects, so tests can drive it directly.
///
/// Every request but the probes passes, in this order: the `--web.max-requests` limit (before
/// authentication, so that wrong passwords cannot queue up behind it), basic auth, the handler.
pub fn router(state: AppState) -> Router {
    let metrics = Router::new().route(&state.telemetry_path, get(metrics));
    let web_config = Arc::clone(&state.web_config);
    let authenticator =
        auth::Authenticator::new(Arc::clone(&web_config), auth::bcrypt_concurrency());
    let mut fixed = Router::new();
    for (path, route) in FIXED_ROUTES {
        fixed = match route {
            FixedRoute::Landing => fixed.route(path, get(landing_page)),
            FixedRoute::Health => fixed.route(path, get(healthy)),
            FixedRoute::Ready => fixed.route(path, get(ready)),
        };
    }
    let mut router =
        fixed
            .merge(metrics)
            .fallback(not_found)
            .layer(axum::middleware::from_fn_with_state(
                authenticator,
                auth::authenticate,
            ));
    if state.max_requests > 0 {
        router = limit_requests(router, state.max_requests);
    }
    router
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(axum::middleware::from_fn_with_state(
            web_config,
            add_configured_headers,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Requests beyond `max` in flight, probes aside, are answered 503 at once: a scrape that waits in a
/// queue would only time out on the Prometheus side anyway. A request counts until its response body
/// has been sent (or the connection dropped), so clients that do not read cannot get past the limit.
fn limit_requests<S: Clone + Send + Sync + 'static>(router: Router<S>, max: usize) -> Router<S> {
    router.layer(axum::middleware::from_fn_with_state(
        Arc::new(Semaphore::new(max)),
        hold_a_request_permit,
    ))
}

async fn hold_a_request_permit(
    State(permits): State<Arc<Semaphore>>,
    request: Request,
    next: Next,
) -> Response {
    if is_probe_path(request.uri().path()) {
        return next.run(request).await;
    }
    let Ok(permit) = permits.try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many concurrent requests; retry later\n",
        )
            .into_response();
    };
    next.run(request).await.map(|body| {
        Body::new(PermitBody {
            inner: body,
            permit: Some(permit),
        })
    })
}

/// A response body that holds a request permit until its last bytes have been written or it is
/// dropped.
struct PermitBody {
    inner: Body,
    permit: Option<OwnedSemaphorePermit>,
}

impl HttpBody for PermitBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            // NB: hyper drops the body once it has its last frame, before writing it; the permit
            // goes with that frame's bytes, which hyper lets go of once they are written.
            Poll::Ready(Some(Ok(frame))) if frame.is_data() && self.inner.is_end_stream() => {
                let permit = self.permit.take();
                Poll::Ready(Some(Ok(frame.map_data(|data| match permit {
                    Some(permit) => Bytes::from_owner(HoldingPermit {
                        data,
                        _permit: permit,
                    }),
                    None => data,
                }))))
            }
            polled @ Poll::Ready(None | Some(Err(_))) => {
                self.permit = None;
                polled
            }
            polled => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The last bytes of a response, holding its request permit until they have been written.
struct HoldingPermit {
    data: Bytes,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for HoldingPermit {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// `http_server_config.headers`, on every answer of the routes (401, 408 and 503 included).
async fn add_configured_headers(
    State(web_config): State<Arc<WebConfigSource>>,
    request: Request,
    next: Next,
) -> Response {
    let config = web_config.current();
    let mut response = next.run(request).await;
    for (name, value) in &config.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

/// Whether the client accepts gzip (`Accept-Encoding: gzip`, not with `q=0`), as Prometheus always does.
fn accepts_gzip(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|parameter| {
                parameter
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// From this many organizations on, a scrape is rendered on a blocking thread (see [`metrics`]).
const RENDER_APART_FROM_ORGANIZATIONS: usize = 50;

async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let encoding = match accepts_gzip(&headers) {
        true => Encoding::Gzip,
        false => Encoding::Identity,
    };
    // NB: rendered on the async worker: a scrape only copies reference-counted parts and computes the
    // exporter's own metrics (the key series were rendered and compressed when published), and a
    // blocking thread per concurrent scrape would cost a stack and a malloc arena each. Except with
    // many organizations: then a scrape joins thousands of parts, milliseconds of CPU, and on the
    // async workers concurrent scrapes would hold up the health probes queued behind them.
    let rendered = if state.store.organization_count() >= RENDER_APART_FROM_ORGANIZATIONS {
        // NB: one rendering per CPU at a time; more would only share the CPUs with the probes.
        static RENDERING: std::sync::LazyLock<tokio::sync::Semaphore> =
            std::sync::LazyLock::new(|| {
                tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
                )
            });
        let _rendering = RENDERING.acquire().await;
        let exposition = state.exposition.clone();
        tokio::task::spawn_blocking(move || exposition.render_encoded(encoding))
            .await
            .unwrap_or_else(|error| {
                Err(prometheus::Error::Msg(format!(
                    "the rendering thread failed: {error}"
                )))
            })
    } else {
        state.exposition.render_encoded(encoding)
    };
    match rendered {
        Ok(chunks) => {
            let mut response = (
                [
                    (header::CONTENT_TYPE, TEXT_FORMAT),
                    (header::VARY, "accept-encoding"),
                ],
                Body::new(Chunks::new(chunks)),
            )
                .into_response();
            if encoding == Encoding::Gzip {
                response.headers_mut().insert(
                    header::CONTENT_ENCODING,
                    axum::http::HeaderValue::from_static("gzip"),
                );
            }
            response
        }
        Err(error) => {
            tracing::error!(error = %error, "Cannot render the metrics.");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot render the metrics\n",
            )
                .into_response()
        }
    }
}

/// A body of chunks whose total length is known: sent with `Content-Length` rather than chunked, so
/// that hyper writes the shared chunks as they are, without framing each one. Each chunk is a frame;
/// [`batch::Batched`] hands them to hyper together.
#[derive(Debug)]
struct Chunks {
    chunks: std::vec::IntoIter<Bytes>,
    remaining: u64,
}

impl Chunks {
    fn new(chunks: Vec<Bytes>) -> Self {
        let remaining = chunks.iter().map(|chunk| chunk.len() as u64).sum();
        Self {
            chunks: chunks.into_iter(),
            remaining,
        }
    }
}

impl HttpBody for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let next = self.chunks.find(|chunk| !chunk.is_empty());
        if let Some(chunk) = &next {
            self.remaining -= chunk.len() as u64;
        }
        Poll::Ready(next.map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

async fn healthy(State(state): State<AppState>) -> Response {
    if state.health.all_running() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the background poller is not running\n",
        )
            .into_response()
    }
}

/// Ready once every organization has been polled successfully. A later failed poll does not make the
/// exporter unready: the last good data is still served and the failure shows in `anthropic_up`.
async fn ready(State(state): State<AppState>) -> Response {
    let waiting = state.store.not_ready();
    if waiting.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let message = format!(
            "not ready: no successful poll of the Admin API yet for organization {}\n",
            waiting.join(", ")
        );
        (StatusCode::SERVICE_UNAVAILABLE, message).into_response()
    }
}

async fn landing_page(State(state): State<AppState>) -> Html<String> {
    let path = html_escape(&state.telemetry_path);
    let status = match state.store.not_ready().is_empty() {
        true => "Polling the Admin API; data is available.",
        false => "Waiting for the first successful poll of the Admin API.",
    };
    Html(format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Anthropic keys exporter</title></head>\n\
<body>\n<h1>Anthropic keys exporter</h1>\n<p>Version {version}. {status}</p>\n<ul>\n\
<li><a href=\"{path}\">Metrics</a></li>\n<li><a href=\"/healthz\">Health</a></li>\n\
<li><a href=\"/readyz\">Readiness</a></li>\n</ul>\n</body>\n</html>\n",
        version = crate::VERSION,
    ))
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, "not found\n")
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_request_counts_against_the_limit_until_its_body_is_sent_or_dropped() {
        // Arrange
        let router: Router = limit_requests(
            Router::new()
                .route("/scrape", get(|| async { "done" }))
                .route("/healthz", get(|| async { "ok" })),
            1,
        );
        let request = |path: &str| Request::builder().uri(path).body(Body::empty()).unwrap();

        // Act
        let first = router.clone().oneshot(request("/scrape")).await.unwrap();
        let while_first_unsent = router.clone().oneshot(request("/scrape")).await.unwrap();
        let probe = router.clone().oneshot(request("/healthz")).await.unwrap();
        // NB: the permit goes with the last bytes; a copy lets go of them, as a written socket does.
        let body = axum::body::to_bytes(first.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        let after_first_sent = router.clone().oneshot(request("/scrape")).await.unwrap();
        let while_second_unsent = router.clone().oneshot(request("/scrape")).await.unwrap();
        drop(after_first_sent);
        let after_second_dropped = router.clone().oneshot(request("/scrape")).await.unwrap();

        // Assert
        assert_eq!(body, b"done");
        assert_eq!(while_first_unsent.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(probe.status(), StatusCode::OK, "probes are not counted");
        assert_eq!(
            while_second_unsent.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            after_second_dropped.status(),
            StatusCode::OK,
            "a dropped body gives the permit back"
        );
    }
}
