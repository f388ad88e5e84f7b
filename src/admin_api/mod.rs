//! The Admin API client: authenticated, bounded and retrying requests, and complete pagination.
//!
//! Facts this relies on (endpoints, pagination, errors, SDK retry rules) are summarised in the README's
//! "How polling works" section. The client reports each request through [`RequestObserver`], an
//! interface it owns, so that it does not depend on the metrics that implement it.

pub mod model;
pub mod retry;
mod upstream_text;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use url::Url;

use crate::secret::{AdminKey, AdminKeyError, AdminKeySource};
use model::{ErrorEnvelope, Page, PageCursor, ReportPage};
pub use retry::RetryPolicy;
pub use upstream_text::{clean_request_id, clean_upstream_text};

/// The API version every request pins.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// The largest page size the API accepts, so that a large organization needs few requests.
pub const PAGE_LIMIT: u32 = 1000;
/// A list that needs more pages than this is treated as broken pagination: at 1000 keys a page it
/// would be a million keys.
pub const MAX_PAGES: u32 = 1000;
/// Responses larger than this are refused instead of being buffered: a page of 1000 keys is well
/// under 1 MiB, so anything near this limit is a misbehaving upstream, not an organization.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Error bodies are only read for their message.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// The Admin API endpoints the exporter calls; `label` is the `endpoint` label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    Organization,
    Workspaces,
    ApiKeys,
    Users,
    Usage,
}

impl Endpoint {
    pub const ALL: [Endpoint; 5] = [
        Endpoint::Organization,
        Endpoint::Workspaces,
        Endpoint::ApiKeys,
        Endpoint::Users,
        Endpoint::Usage,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Self::Organization => "/v1/organizations/me",
            Self::Workspaces => "/v1/organizations/workspaces",
            Self::ApiKeys => "/v1/organizations/api_keys",
            Self::Users => "/v1/organizations/users",
            Self::Usage => "/v1/organizations/usage_report/messages",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Organization => "organization",
            Self::Workspaces => "workspaces",
            Self::ApiKeys => "api_keys",
            Self::Users => "users",
            Self::Usage => "usage",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path())
    }
}

/// Why a poll failed, as the `reason` label of `anthropic_exporter_poll_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    Unauthorized,
    Forbidden,
    RateLimited,
    ServerError,
    ClientError,
    Redirect,
    Timeout,
    Network,
    Decode,
    Pagination,
    KeyFile,
}

impl FailureReason {
    pub const ALL: [FailureReason; 11] = [
        Self::Unauthorized,
        Self::Forbidden,
        Self::RateLimited,
        Self::ServerError,
        Self::ClientError,
        Self::Redirect,
        Self::Timeout,
        Self::Network,
        Self::Decode,
        Self::Pagination,
        Self::KeyFile,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::ServerError => "server_error",
            Self::ClientError => "client_error",
            Self::Redirect => "redirect",
            Self::Timeout => "timeout",
            Self::Network => "network",
            Self::Decode => "decode",
            Self::Pagination => "pagination",
            Self::KeyFile => "key_file",
        }
    }
}

/// A failed call to the Admin API. Messages carry the HTTP status and the `request-id` where there is
/// one, and never the admin key: every upstream string is cleaned by [`clean_upstream_text`] before it
/// is stored here.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot load the admin key: {0}")]
    AdminKey(#[source] AdminKeyError),
    #[error("the Admin API rejected the admin key (HTTP 401 from {endpoint}{}): {message}", fmt_request_id(.request_id))]
    Unauthorized {
        endpoint: Endpoint,
        request_id: Option<String>,
        message: String,
    },
    #[error("the admin key lacks permission (HTTP 403 from {endpoint}{}): {message}", fmt_request_id(.request_id))]
    Forbidden {
        endpoint: Endpoint,
        request_id: Option<String>,
        message: String,
    },
    #[error("rate limited by the Admin API (HTTP {status} from {endpoint}{}): {message}", fmt_request_id(.request_id))]
    RateLimited {
        endpoint: Endpoint,
        status: u16,
        request_id: Option<String>,
        message: String,
    },
    #[error("the Admin API failed (HTTP {status} from {endpoint}{}): {message}", fmt_request_id(.request_id))]
    Server {
        endpoint: Endpoint,
        status: u16,
        request_id: Option<String>,
        message: String,
    },
    #[error("the Admin API refused the request (HTTP {status} from {endpoint}{}): {message}", fmt_request_id(.request_id))]
    Client {
        endpoint: Endpoint,
        status: u16,
        request_id: Option<String>,
        message: String,
    },
    #[error(
        "the Admin API answered {endpoint} with a redirect (HTTP {status}) to {location}; redirects are never followed, since the admin key would go with them: check --anthropic.base-url"
    )]
    Redirect {
        endpoint: Endpoint,
        status: u16,
        /// The host of the `Location` header (never the full URL, which may carry tokens).
        location: String,
    },
    #[error("request to {endpoint} timed out after {}", humantime::format_duration(*.after))]
    RequestTimeout { endpoint: Endpoint, after: Duration },
    #[error("the poll did not finish within its deadline of {}", humantime::format_duration(*.deadline))]
    DeadlineExceeded { deadline: Duration },
    #[error("request to {endpoint} failed: {}", error_chain(.source))]
    Network {
        endpoint: Endpoint,
        #[source]
        source: reqwest::Error,
    },
    #[error("unusable response from {endpoint}{}: {detail}", fmt_request_id(.request_id))]
    Decode {
        endpoint: Endpoint,
        request_id: Option<String>,
        detail: String,
    },
    #[error("pagination of {endpoint} went wrong: {detail}")]
    Pagination { endpoint: Endpoint, detail: String },
}

impl ApiError {
    pub fn reason(&self) -> FailureReason {
        match self {
            Self::AdminKey(_) => FailureReason::KeyFile,
            Self::Unauthorized { .. } => FailureReason::Unauthorized,
            Self::Forbidden { .. } => FailureReason::Forbidden,
            Self::RateLimited { .. } => FailureReason::RateLimited,
            Self::Server { .. } => FailureReason::ServerError,
            Self::Client { .. } => FailureReason::ClientError,
            Self::Redirect { .. } => FailureReason::Redirect,
            Self::RequestTimeout { .. } | Self::DeadlineExceeded { .. } => FailureReason::Timeout,
            Self::Network { .. } => FailureReason::Network,
            Self::Decode { .. } => FailureReason::Decode,
            Self::Pagination { .. } => FailureReason::Pagination,
        }
    }

    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::Unauthorized { request_id, .. }
            | Self::Forbidden { request_id, .. }
            | Self::RateLimited { request_id, .. }
            | Self::Server { request_id, .. }
            | Self::Client { request_id, .. }
            | Self::Decode { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }
}

fn fmt_request_id(request_id: &Option<String>) -> String {
    request_id
        .as_deref()
        .map(|id| format!(", request-id {id}"))
        .unwrap_or_default()
}

/// Renders an error with its causes, `outer: inner: innermost`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Told about every HTTP request the client sends, with the HTTP status code or `error` when no
/// response arrived. The metrics implement it.
pub trait RequestObserver: Send + Sync + fmt::Debug {
    fn request_finished(&self, endpoint: Endpoint, code: &str);
}

/// How requests are sent: per-request timeout and the SDKs' retry policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientSettings {
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
}

/// Where requests go through: directly, an explicit proxy, or the proxy of the standard environment
/// variables (only when the operator says so, since the admin key travels through it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxySetting {
    Direct,
    Url(Url),
    FromEnvironment,
}

/// One HTTP connection pool for the whole process, shared by every organization's client.
#[derive(Debug, Clone)]
pub struct HttpClient(reqwest::Client);

impl HttpClient {
    pub fn new(settings: &ClientSettings, proxy: &ProxySetting) -> Result<Self, reqwest::Error> {
        let builder = reqwest::Client::builder()
            .user_agent(concat!(
                "anthropic-keys-exporter/",
                env!("CARGO_PKG_VERSION")
            ))
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
            .tcp_keepalive(Duration::from_secs(60))
            // NB: the Admin API does not redirect; following one would send the admin key to whatever
            // host the Location names.
            .redirect(reqwest::redirect::Policy::none());
        let builder = match proxy {
            ProxySetting::Direct => builder.no_proxy(),
            ProxySetting::Url(url) => builder.proxy(reqwest::Proxy::all(url.as_str())?),
            ProxySetting::FromEnvironment => builder,
        };
        Ok(Self(builder.build()?))
    }
}

/// A client for one organization's Admin API. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AdminApiClient {
    inner: Arc<ClientInner>,
}

#[derive(Debug)]
struct ClientInner {
    http: reqwest::Client,
    base_url: String,
    key_source: AdminKeySource,
    settings: ClientSettings,
    observer: Arc<dyn RequestObserver>,
    /// Bounds the requests in flight across every organization (`--poll.concurrency`).
    permits: Arc<Semaphore>,
}

/// What a single attempt tells the retry loop.
struct FailedAttempt {
    error: ApiError,
    retryable: bool,
    server_delay: Option<Duration>,
}

/// The requests of one source's fetch: one key, read once, and one deadline for all of them.
#[derive(Debug)]
pub struct Session<'a> {
    client: &'a AdminApiClient,
    key: AdminKey,
    deadline: Instant,
}

impl AdminApiClient {
    pub fn new(
        http: &HttpClient,
        base_url: &Url,
        key_source: AdminKeySource,
        settings: ClientSettings,
        observer: Arc<dyn RequestObserver>,
        permits: Arc<Semaphore>,
    ) -> Self {
        Self {
            inner: Arc::new(ClientInner {
                http: http.0.clone(),
                base_url: base_url.as_str().trim_end_matches('/').to_owned(),
                key_source,
                settings,
                observer,
                permits,
            }),
        }
    }

    /// Runs `fetch` with the admin key read afresh (a rotated key file is used at once), all of it
    /// within `deadline`, the key file read included: a key file on a stalled mount cannot freeze
    /// the poller.
    pub async fn fetch<T, F>(&self, deadline: Duration, fetch: F) -> Result<T, ApiError>
    where
        F: AsyncFnOnce(&Session<'_>) -> Result<T, ApiError>,
    {
        let until = Instant::now() + deadline;
        let work = async {
            let key = self
                .inner
                .key_source
                .load()
                .await
                .map_err(ApiError::AdminKey)?;
            let session = Session {
                client: self,
                key,
                deadline: until,
            };
            fetch(&session).await
        };
        tokio::time::timeout_at(until, work)
            .await
            .unwrap_or(Err(ApiError::DeadlineExceeded { deadline }))
    }
}

impl Session<'_> {
    /// Follows `after_id = last_id` while `has_more`, refusing a cursor seen before and stopping after
    /// [`MAX_PAGES`] pages. `on_page` takes each page's items as they arrive, so no page is kept; an
    /// error from it (items the API sent but the source cannot use) ends the listing with that error.
    ///
    /// A page's items are decoded on a blocking thread while the next page is fetched: decoding a
    /// page of keys costs a good part of fetching it, and one after the other a poll waits for both.
    /// The cursor is read first from the page's envelope alone.
    pub async fn list_all<T: DeserializeOwned + Send + 'static>(
        &self,
        endpoint: Endpoint,
        extra_query: &[(&str, &str)],
        id_of: impl Fn(&T) -> &str,
        mut on_page: impl FnMut(Vec<T>) -> Result<(), ApiError>,
    ) -> Result<(), ApiError> {
        let limit = PAGE_LIMIT.to_string();
        let fetch = |after_id: Option<String>| {
            let limit = &limit;
            async move {
                let mut query: Vec<(&str, &str)> = vec![("limit", limit)];
                query.extend_from_slice(extra_query);
                if let Some(after_id) = &after_id {
                    query.push(("after_id", after_id));
                }
                self.get_body(endpoint, &query).await
            }
        };
        let mut seen_cursors = HashSet::new();
        let mut fetched = fetch(None).await?;
        for page_number in 1..=MAX_PAGES {
            let (body, request_id) = fetched;
            let envelope: PageCursor = decode(&body, endpoint, request_id.clone(), &self.key)?;
            let next = envelope.last_id.filter(|_| envelope.has_more);
            if let Some(next) = &next {
                self.check_new_cursor(endpoint, &mut seen_cursors, next, page_number)?;
            }
            let decoding =
                tokio::task::spawn_blocking(move || serde_json::from_slice::<Page<T>>(&body));
            let prefetch = next.filter(|_| page_number < MAX_PAGES);
            let prefetched = prefetch.is_some();
            let (decoded, next_page) = tokio::join!(decoding, async {
                match prefetch {
                    Some(after_id) => Some(fetch(Some(after_id)).await),
                    None => None,
                }
            });
            let page = match decoded {
                Ok(Ok(page)) => page,
                Ok(Err(error)) => {
                    return Err(decode_error(&error, endpoint, request_id, &self.key));
                }
                Err(_) => {
                    return Err(ApiError::Decode {
                        endpoint,
                        request_id,
                        detail: "decoding the page failed unexpectedly".to_owned(),
                    });
                }
            };
            tracing::debug!(
                endpoint = endpoint.label(),
                page = page_number,
                items = page.data.len(),
                has_more = page.has_more,
                "Fetched a page."
            );
            // NB: the reference documents `last_id`; when it is missing the last item's id is the same
            // cursor, which is what the SDKs would have to fall back to as well.
            let fallback = match (page.has_more, prefetched) {
                (true, false) => page.data.last().map(|item| id_of(item).to_owned()),
                _ => None,
            };
            on_page(page.data)?;
            if !page.has_more {
                return Ok(());
            }
            fetched = match next_page {
                Some(next_page) => next_page?,
                None if page_number == MAX_PAGES => break,
                None => {
                    let Some(next) = fallback else {
                        return Err(ApiError::Pagination {
                            endpoint,
                            detail: format!("page {page_number} says has_more but gives no cursor"),
                        });
                    };
                    self.check_new_cursor(endpoint, &mut seen_cursors, &next, page_number)?;
                    fetch(Some(next)).await?
                }
            };
        }
        Err(too_many_pages(endpoint))
    }

    /// Follows the report style of pagination: `page = next_page` while `has_more`; `on_page` as for
    /// [`Session::list_all`].
    pub async fn report_pages<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        query: &[(&str, &str)],
        mut on_page: impl FnMut(Vec<T>) -> Result<(), ApiError>,
    ) -> Result<(), ApiError> {
        let mut token: Option<String> = None;
        let mut seen_tokens = HashSet::new();
        for page_number in 1..=MAX_PAGES {
            let mut page_query: Vec<(&str, &str)> = query.to_vec();
            if let Some(token) = &token {
                page_query.push(("page", token));
            }
            let page: ReportPage<T> = self.get_json(endpoint, &page_query).await?;
            let next = page.next_page.filter(|token| !token.is_empty());
            on_page(page.data)?;
            if !page.has_more {
                return Ok(());
            }
            let Some(next) = next else {
                return Err(ApiError::Pagination {
                    endpoint,
                    detail: format!("page {page_number} says has_more but gives no next_page"),
                });
            };
            self.check_new_cursor(endpoint, &mut seen_tokens, &next, page_number)?;
            token = Some(next);
        }
        Err(too_many_pages(endpoint))
    }

    fn check_new_cursor(
        &self,
        endpoint: Endpoint,
        seen: &mut HashSet<String>,
        cursor: &str,
        page_number: u32,
    ) -> Result<(), ApiError> {
        if seen.insert(cursor.to_owned()) {
            return Ok(());
        }
        Err(ApiError::Pagination {
            endpoint,
            detail: format!(
                "cursor {} came back a second time on page {page_number}",
                clean_upstream_text(cursor, &self.key)
            ),
        })
    }

    /// One logical request, decoded.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        query: &[(&str, &str)],
    ) -> Result<T, ApiError> {
        let (body, request_id) = self.get_body(endpoint, query).await?;
        decode(&body, endpoint, request_id, &self.key)
    }

    /// One logical request: retried on transient failures with the SDKs' backoff, as long as the retry
    /// still fits before the deadline. The body and the request id.
    async fn get_body(
        &self,
        endpoint: Endpoint,
        query: &[(&str, &str)],
    ) -> Result<(Vec<u8>, Option<String>), ApiError> {
        let policy = self.client.inner.settings.retry;
        let mut retry = 0;
        loop {
            let failure = match self.send_once(endpoint, query).await {
                Ok(fetched) => return Ok(fetched),
                Err(failure) => failure,
            };
            if !failure.retryable || retry >= policy.max_retries {
                return Err(failure.error);
            }
            let delay = failure
                .server_delay
                .unwrap_or_else(|| retry::backoff(&policy, retry));
            if Instant::now() + delay >= self.deadline {
                return Err(failure.error);
            }
            tracing::debug!(
                endpoint = endpoint.label(),
                retry = retry + 1,
                delay_ms = delay.as_millis() as u64,
                error = %failure.error,
                "Retrying a failed request."
            );
            tokio::time::sleep(delay).await;
            retry += 1;
        }
    }

    async fn send_once(
        &self,
        endpoint: Endpoint,
        query: &[(&str, &str)],
    ) -> Result<(Vec<u8>, Option<String>), FailedAttempt> {
        let inner = &self.client.inner;
        let url = format!("{}{}", inner.base_url, endpoint.path());
        let mut key_header =
            HeaderValue::from_str(self.key.expose()).map_err(|_| FailedAttempt {
                error: ApiError::AdminKey(AdminKeyError::InvalidCharacters {
                    origin: inner.key_source.describe(),
                }),
                retryable: false,
                server_delay: None,
            })?;
        key_header.set_sensitive(true);
        // NB: a permit per attempt, not per poll: backoff sleeps must not hold one.
        let _permit = inner.permits.acquire().await.ok();
        let timeout = inner.settings.request_timeout;
        let sent = inner
            .http
            .get(&url)
            .query(query)
            .header("x-api-key", key_header)
            .header("anthropic-version", ANTHROPIC_VERSION)
            .header("accept", "application/json")
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(source) => {
                inner.observer.request_finished(endpoint, "error");
                return Err(FailedAttempt {
                    error: transport_error(endpoint, source, timeout),
                    retryable: true,
                    server_delay: None,
                });
            }
        };
        let status = response.status();
        inner.observer.request_finished(endpoint, status.as_str());
        let headers = response.headers().clone();
        let request_id = headers
            .get("request-id")
            .and_then(|value| value.to_str().ok())
            .and_then(clean_request_id);
        if status.is_success() {
            let body =
                read_body(response, MAX_BODY_BYTES)
                    .await
                    .map_err(|error| FailedAttempt {
                        retryable: matches!(error, BodyError::Transport(_)),
                        error: error.into_api_error(endpoint, request_id.clone(), timeout),
                        server_delay: None,
                    })?;
            return Ok((body, request_id));
        }
        if status.is_redirection() {
            let location = headers
                .get(reqwest::header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .map(|location| location_host(&url, location, &self.key))
                .unwrap_or_else(|| "a missing Location".to_owned());
            return Err(FailedAttempt {
                error: ApiError::Redirect {
                    endpoint,
                    status: status.as_u16(),
                    location,
                },
                retryable: false,
                server_delay: None,
            });
        }
        // NB: the message of an error response is a nicety; a body we cannot read must not hide the status.
        let body = read_body(response, MAX_ERROR_BODY_BYTES)
            .await
            .unwrap_or_default();
        let envelope = serde_json::from_slice::<ErrorEnvelope>(&body).ok();
        let request_id = request_id.or_else(|| {
            envelope
                .as_ref()
                .and_then(|e| e.request_id.as_deref())
                .and_then(clean_request_id)
        });
        let message = error_message(envelope.as_ref(), &headers, &self.key);
        Err(FailedAttempt {
            error: status_error(endpoint, status, request_id, message),
            retryable: retry::is_retryable(status, &headers),
            server_delay: retry::server_delay(&headers, SystemTime::now()),
        })
    }
}

fn too_many_pages(endpoint: Endpoint) -> ApiError {
    ApiError::Pagination {
        endpoint,
        detail: format!("still has_more after {MAX_PAGES} pages"),
    }
}

/// The host a redirect points at, for the log line: never the path or query, which may carry tokens.
fn location_host(request_url: &str, location: &str, key: &AdminKey) -> String {
    let resolved = Url::parse(request_url).and_then(|base| base.join(location));
    match resolved {
        Ok(url) => {
            let host = url.host_str().unwrap_or("no host");
            let port = url
                .port()
                .map(|port| format!(":{port}"))
                .unwrap_or_default();
            clean_upstream_text(&format!("{}://{host}{port}", url.scheme()), key)
        }
        Err(_) => "an unparseable Location".to_owned(),
    }
}

fn status_error(
    endpoint: Endpoint,
    status: StatusCode,
    request_id: Option<String>,
    message: String,
) -> ApiError {
    let code = status.as_u16();
    match code {
        401 => ApiError::Unauthorized {
            endpoint,
            request_id,
            message,
        },
        403 => ApiError::Forbidden {
            endpoint,
            request_id,
            message,
        },
        429 => ApiError::RateLimited {
            endpoint,
            status: code,
            request_id,
            message,
        },
        _ if status.is_server_error() => ApiError::Server {
            endpoint,
            status: code,
            request_id,
            message,
        },
        _ => ApiError::Client {
            endpoint,
            status: code,
            request_id,
            message,
        },
    }
}

fn transport_error(endpoint: Endpoint, source: reqwest::Error, timeout: Duration) -> ApiError {
    if source.is_timeout() {
        ApiError::RequestTimeout {
            endpoint,
            after: timeout,
        }
    } else {
        ApiError::Network { endpoint, source }
    }
}

fn error_message(envelope: Option<&ErrorEnvelope>, headers: &HeaderMap, key: &AdminKey) -> String {
    let from_body = envelope
        .and_then(|envelope| envelope.error.as_ref())
        .map(
            |error| match (error.kind.as_deref(), error.message.as_deref()) {
                (Some(kind), Some(message)) => format!("{kind}: {message}"),
                (Some(kind), None) => kind.to_owned(),
                (None, Some(message)) => message.to_owned(),
                (None, None) => String::new(),
            },
        );
    match from_body.filter(|text| !text.is_empty()) {
        Some(text) => clean_upstream_text(&text, key),
        None => {
            let content_type = headers
                .get("content-type")
                .and_then(|value| value.to_str().ok())
                .map(|value| clean_upstream_text(value, key))
                .filter(|value| !value.is_empty())
                .unwrap_or_else(|| "no content type".to_owned());
            format!("response is not an Anthropic error object ({content_type})")
        }
    }
}

fn decode<T: DeserializeOwned>(
    body: &[u8],
    endpoint: Endpoint,
    request_id: Option<String>,
    key: &AdminKey,
) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| decode_error(&error, endpoint, request_id, key))
}

fn decode_error(
    error: &serde_json::Error,
    endpoint: Endpoint,
    request_id: Option<String>,
    key: &AdminKey,
) -> ApiError {
    ApiError::Decode {
        endpoint,
        request_id,
        detail: clean_upstream_text(&format!("invalid JSON: {error}"), key),
    }
}

enum BodyError {
    Transport(reqwest::Error),
    TooLarge { limit: usize },
}

impl BodyError {
    fn into_api_error(
        self,
        endpoint: Endpoint,
        request_id: Option<String>,
        timeout: Duration,
    ) -> ApiError {
        match self {
            Self::Transport(source) => transport_error(endpoint, source, timeout),
            Self::TooLarge { limit } => ApiError::Decode {
                endpoint,
                request_id,
                detail: format!("response body is larger than {} MiB", limit / (1024 * 1024)),
            },
        }
    }
}

/// Reads a body chunk by chunk and gives up as soon as it passes `limit`, so that a misbehaving
/// upstream costs at most `limit` bytes of memory.
async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = Vec::with_capacity(
        response
            .content_length()
            .map_or(0, |length| length as usize),
    );
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
