//! The HTTP surface: metrics, health and readiness, and a landing page.

pub mod auth;
pub mod server;
pub mod web_config;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::CompressionLevel;
use tower_http::compression::CompressionLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use self::web_config::WebConfigSource;
use crate::metrics::Exposition;
use crate::poller::PollerHealth;
use crate::snapshot::SnapshotStore;

/// Paths the telemetry path may not take.
pub const RESERVED_PATHS: [&str; 5] = ["/", "/healthz", "/readyz", "/-/healthy", "/-/ready"];

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
pub fn router(state: AppState) -> Router {
    let mut metrics = Router::new()
        .route(&state.telemetry_path, get(metrics))
        // NB: the fastest level: a large organization's scrape is megabytes, and CPU is what scrapes cost.
        .layer(
            CompressionLayer::new()
                .gzip(true)
                .quality(CompressionLevel::Fastest),
        );
    if state.max_requests > 0 {
        metrics = limit_concurrency(metrics, state.max_requests);
    }
    let web_config = Arc::clone(&state.web_config);
    Router::new()
        .route("/", get(landing_page))
        .route("/healthz", get(healthy))
        .route("/-/healthy", get(healthy))
        .route("/readyz", get(ready))
        .route("/-/ready", get(ready))
        .merge(metrics)
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            web_config,
            auth::authenticate,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Requests beyond `max` in flight are answered 503 at once: a scrape that waits in a queue would
/// only time out on the Prometheus side anyway, and the probes stay unaffected.
fn limit_concurrency<S: Clone + Send + Sync + 'static>(router: Router<S>, max: usize) -> Router<S> {
    router.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many concurrent scrapes; retry later\n",
                )
            }))
            .load_shed()
            // NB: a global limit: axum may build the route's service more than once, and a plain
            // `concurrency_limit` would give each copy a semaphore of its own.
            .layer(GlobalConcurrencyLimitLayer::new(max)),
    )
}

async fn metrics(State(state): State<AppState>) -> Response {
    // NB: rendering tens of thousands of series is CPU work; keep it off the async workers.
    let rendered = tokio::task::spawn_blocking(move || state.exposition.render_chunks()).await;
    match rendered {
        Ok(Ok(chunks)) => {
            let stream = futures_util::stream::iter(
                chunks.into_iter().map(Ok::<_, std::convert::Infallible>),
            );
            (
                [(header::CONTENT_TYPE, TEXT_FORMAT)],
                axum::body::Body::from_stream(stream),
            )
                .into_response()
        }
        Ok(Err(error)) => {
            tracing::error!(error = %error, "Cannot render the metrics.");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot render the metrics\n",
            )
                .into_response()
        }
        Err(error) => {
            tracing::error!(error = %error, "Rendering the metrics panicked.");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot render the metrics\n",
            )
                .into_response()
        }
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
    use axum::body::Body;
    use axum::extract::Request;
    use tokio::sync::Notify;
    use tower::ServiceExt;

    #[tokio::test]
    async fn requests_beyond_the_limit_get_503_while_others_are_in_flight() {
        // Arrange: a handler that stays in flight until released.
        let release = Arc::new(Notify::new());
        let entered = Arc::new(Notify::new());
        let (release_in, entered_in) = (Arc::clone(&release), Arc::clone(&entered));
        let router: Router = limit_concurrency(
            Router::new().route(
                "/slow",
                get(move || {
                    let (release, entered) = (Arc::clone(&release_in), Arc::clone(&entered_in));
                    async move {
                        entered.notify_one();
                        release.notified().await;
                        "done"
                    }
                }),
            ),
            1,
        );
        let request = || Request::builder().uri("/slow").body(Body::empty()).unwrap();
        let first = tokio::spawn(router.clone().oneshot(request()));
        entered.notified().await;

        // Act
        let second = router.clone().oneshot(request()).await.unwrap();
        release.notify_one();
        let first = first.await.unwrap().unwrap();
        let third = tokio::spawn(router.clone().oneshot(request()));
        entered.notified().await;
        release.notify_one();
        let third = third.await.unwrap().unwrap();

        // Assert
        assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(third.status(), StatusCode::OK, "the permit comes back");
    }
}
