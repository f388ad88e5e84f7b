//! The Admin API client: authenticated, bounded and retrying requests, and complete pagination.
//!
//! Facts this relies on (endpoints, pagination, errors, SDK retry rules) are summarised in the README's
//! "How polling works" section.

pub mod model;
mod retry;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use url::Url;

use crate::config::{PollSettings, RetryPolicy};
use crate::metrics::ExporterMetrics;
use crate::secret::{AdminKey, AdminKeyError, AdminKeySource};
use model::{ApiKey, ErrorEnvelope, Inventory, Organization, Page, Workspace};

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
/// Upstream text (error messages, decode details) is cut to this many characters before it is logged.
const MAX_DETAIL_CHARS: usize = 300;

/// The Admin API endpoints the exporter calls; `label` is the `endpoint` label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Organization,
    Workspaces,
    ApiKeys,
}

impl Endpoint {
    pub const ALL: [Endpoint; 3] = [
        Endpoint::Organization,
        Endpoint::Workspaces,
        Endpoint::ApiKeys,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Self::Organization => "/v1/organizations/me",
            Self::Workspaces => "/v1/organizations/workspaces",
            Self::ApiKeys => "/v1/organizations/api_keys",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Organization => "organization",
            Self::Workspaces => "workspaces",
            Self::ApiKeys => "api_keys",
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
    Timeout,
    Network,
    Decode,
    Pagination,
    KeyFile,
}

impl FailureReason {
    pub const ALL: [FailureReason; 10] = [
        Self::Unauthorized,
        Self::Forbidden,
        Self::RateLimited,
        Self::ServerError,
        Self::ClientError,
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
            Self::Timeout => "timeout",
            Self::Network => "network",
            Self::Decode => "decode",
            Self::Pagination => "pagination",
            Self::KeyFile => "key_file",
        }
    }
}

/// A failed call to the Admin API. Messages carry the HTTP status and the `request-id` where there is
/// one, and never the admin key (upstream text is scrubbed of it).
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

/// A client for the parts of the Admin API the exporter needs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AdminApiClient {
    inner: Arc<ClientInner>,
}

#[derive(Debug)]
struct ClientInner {
    http: reqwest::Client,
    base_url: String,
    key_source: AdminKeySource,
    retry: RetryPolicy,
    request_timeout: Duration,
    organization: String,
    metrics: Arc<ExporterMetrics>,
}

/// What a single attempt tells the retry loop.
struct FailedAttempt {
    error: ApiError,
    retryable: bool,
    server_delay: Option<Duration>,
}

/// Per-poll state shared by every request of that poll.
struct PollContext {
    key: AdminKey,
    deadline: Instant,
}

impl AdminApiClient {
    pub fn new(
        base_url: &Url,
        key_source: AdminKeySource,
        poll: &PollSettings,
        organization: &str,
        metrics: Arc<ExporterMetrics>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!(
                "anthropic-keys-exporter/",
                env!("CARGO_PKG_VERSION")
            ))
            .timeout(poll.request_timeout)
            .connect_timeout(poll.request_timeout.min(Duration::from_secs(10)))
            .tcp_keepalive(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            inner: Arc::new(ClientInner {
                http,
                base_url: base_url.as_str().trim_end_matches('/').to_owned(),
                key_source,
                retry: poll.retry,
                request_timeout: poll.request_timeout,
                organization: organization.to_owned(),
                metrics,
            }),
        })
    }

    /// Reads the organization, all its workspaces and all its API keys. Either every page arrives before
    /// `deadline`, or the whole poll fails: a partial inventory is never returned.
    pub async fn fetch_inventory(&self, deadline: Duration) -> Result<Inventory, ApiError> {
        let key = self
            .inner
            .key_source
            .load()
            .await
            .map_err(ApiError::AdminKey)?;
        let context = PollContext {
            key,
            deadline: Instant::now() + deadline,
        };
        let fetch = async {
            let organization: Organization =
                self.get_json(&context, Endpoint::Organization, &[]).await?;
            let workspaces: Vec<Workspace> = self
                .list_all(
                    &context,
                    Endpoint::Workspaces,
                    &[("include_archived", "true"), ("include_default", "true")],
                    |workspace: &Workspace| &workspace.id,
                )
                .await?;
            let api_keys: Vec<ApiKey> = self
                .list_all(&context, Endpoint::ApiKeys, &[], |key: &ApiKey| &key.id)
                .await?;
            Ok(Inventory {
                organization,
                workspaces,
                api_keys,
            })
        };
        tokio::time::timeout_at(context.deadline, fetch)
            .await
            .unwrap_or(Err(ApiError::DeadlineExceeded { deadline }))
    }

    /// Follows `after_id = last_id` while `has_more`, refusing a cursor seen before and stopping after
    /// [`MAX_PAGES`] pages.
    async fn list_all<T: DeserializeOwned>(
        &self,
        context: &PollContext,
        endpoint: Endpoint,
        extra_query: &[(&str, &str)],
        id_of: impl Fn(&T) -> &String,
    ) -> Result<Vec<T>, ApiError> {
        let limit = PAGE_LIMIT.to_string();
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        let mut seen_cursors = HashSet::new();
        for page_number in 1..=MAX_PAGES {
            let mut query: Vec<(&str, &str)> = vec![("limit", &limit)];
            query.extend_from_slice(extra_query);
            if let Some(after_id) = &cursor {
                query.push(("after_id", after_id));
            }
            let page: Page<T> = self.get_json(context, endpoint, &query).await?;
            tracing::debug!(
                endpoint = endpoint.label(),
                page = page_number,
                items = page.data.len(),
                has_more = page.has_more,
                "Fetched a page."
            );
            // NB: the reference documents `last_id`; when it is missing the last item's id is the same
            // cursor, which is what the SDKs would have to fall back to as well.
            let next = page
                .last_id
                .clone()
                .or_else(|| page.data.last().map(|item| id_of(item).clone()));
            items.extend(page.data);
            if !page.has_more {
                return Ok(items);
            }
            let Some(next) = next else {
                return Err(ApiError::Pagination {
                    endpoint,
                    detail: format!("page {page_number} says has_more but gives no cursor"),
                });
            };
            if !seen_cursors.insert(next.clone()) {
                return Err(ApiError::Pagination {
                    endpoint,
                    detail: format!(
                        "cursor {} came back a second time on page {page_number}",
                        truncate(&next)
                    ),
                });
            }
            cursor = Some(next);
        }
        Err(ApiError::Pagination {
            endpoint,
            detail: format!("still has_more after {MAX_PAGES} pages"),
        })
    }

    /// One logical request: retried on transient failures with the SDKs' backoff, as long as the retry
    /// still fits before the poll's deadline.
    async fn get_json<T: DeserializeOwned>(
        &self,
        context: &PollContext,
        endpoint: Endpoint,
        query: &[(&str, &str)],
    ) -> Result<T, ApiError> {
        let mut retry = 0;
        loop {
            let failure = match self.send_once(context, endpoint, query).await {
                Ok((body, request_id)) => return decode(&body, endpoint, request_id, &context.key),
                Err(failure) => failure,
            };
            if !failure.retryable || retry >= self.inner.retry.max_retries {
                return Err(failure.error);
            }
            let delay = failure
                .server_delay
                .unwrap_or_else(|| retry::backoff(&self.inner.retry, retry));
            if Instant::now() + delay >= context.deadline {
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
        context: &PollContext,
        endpoint: Endpoint,
        query: &[(&str, &str)],
    ) -> Result<(Vec<u8>, Option<String>), FailedAttempt> {
        let inner = &self.inner;
        let url = format!("{}{}", inner.base_url, endpoint.path());
        let mut key_header =
            HeaderValue::from_str(context.key.expose()).map_err(|_| FailedAttempt {
                error: ApiError::AdminKey(AdminKeyError::InvalidCharacters {
                    origin: inner.key_source.describe(),
                }),
                retryable: false,
                server_delay: None,
            })?;
        key_header.set_sensitive(true);
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
                inner
                    .metrics
                    .record_api_request(&inner.organization, endpoint, "error");
                return Err(FailedAttempt {
                    error: transport_error(endpoint, source, inner.request_timeout),
                    retryable: true,
                    server_delay: None,
                });
            }
        };
        let status = response.status();
        inner
            .metrics
            .record_api_request(&inner.organization, endpoint, status.as_str());
        let headers = response.headers().clone();
        let request_id = header_text(&headers, "request-id");
        if status.is_success() {
            let body =
                read_body(response, MAX_BODY_BYTES)
                    .await
                    .map_err(|error| FailedAttempt {
                        retryable: matches!(error, BodyError::Transport(_)),
                        error: error.into_api_error(
                            endpoint,
                            request_id.clone(),
                            inner.request_timeout,
                        ),
                        server_delay: None,
                    })?;
            return Ok((body, request_id));
        }
        // NB: the message of an error response is a nicety; a body we cannot read must not hide the status.
        let body = read_body(response, MAX_ERROR_BODY_BYTES)
            .await
            .unwrap_or_default();
        let envelope = serde_json::from_slice::<ErrorEnvelope>(&body).ok();
        let request_id =
            request_id.or_else(|| envelope.as_ref().and_then(|e| e.request_id.clone()));
        let message = error_message(envelope.as_ref(), &headers, &context.key);
        Err(FailedAttempt {
            error: status_error(endpoint, status, request_id, message),
            retryable: retry::is_retryable(status, &headers),
            server_delay: retry::server_delay(&headers, SystemTime::now()),
        })
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
        Some(text) => truncate(&key.redact(&text)),
        None => {
            let content_type = header_text(headers, "content-type")
                .unwrap_or_else(|| "no content type".to_owned());
            format!(
                "response is not an Anthropic error object ({})",
                truncate(&content_type)
            )
        }
    }
}

fn decode<T: DeserializeOwned>(
    body: &[u8],
    endpoint: Endpoint,
    request_id: Option<String>,
    key: &AdminKey,
) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| ApiError::Decode {
        endpoint,
        request_id,
        detail: truncate(&key.redact(&format!("invalid JSON: {error}"))),
    })
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
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(|value| truncate(value.trim()))
        .filter(|value| !value.is_empty())
}

fn truncate(text: &str) -> String {
    let mut cut: String = text.chars().take(MAX_DETAIL_CHARS).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut.replace(['\n', '\r'], " ")
}
