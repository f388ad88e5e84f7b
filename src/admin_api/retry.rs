//! When and how long to wait before retrying a request, following the official Anthropic SDKs.

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

/// Retries as the official SDKs do them: exponential backoff from `initial_backoff` doubling up to
/// `max_backoff`, each delay shortened by up to 25 % jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 2,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
        }
    }
}

/// A server-given delay longer than this is ignored in favour of our own backoff, as the Python SDK
/// does: waiting minutes inside one poll would only hold up the next one.
const MAX_SERVER_DELAY: Duration = Duration::from_secs(60);

/// Whether a response with `status` may succeed when sent again. `x-should-retry` overrides the
/// status-based rule in both directions.
pub(crate) fn is_retryable(status: StatusCode, headers: &HeaderMap) -> bool {
    match headers
        .get("x-should-retry")
        .and_then(|value| value.to_str().ok())
    {
        Some("true") => return true,
        Some("false") => return false,
        _ => {}
    }
    matches!(status.as_u16(), 408 | 409 | 429) || status.is_server_error()
}

/// The delay the server asked for: `retry-after-ms` (milliseconds), else `retry-after` as seconds or
/// as an HTTP date. Only values in (0, 60 s] count.
pub(crate) fn server_delay(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
    };
    let delay = if let Some(millis) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        Duration::try_from_secs_f64(millis / 1000.0).ok()
    } else if let Some(value) = header("retry-after") {
        match value.parse::<f64>() {
            Ok(seconds) => Duration::try_from_secs_f64(seconds).ok(),
            Err(_) => httpdate::parse_http_date(value)
                .ok()
                .and_then(|at| at.duration_since(now).ok()),
        }
    } else {
        None
    };
    delay.filter(|delay| !delay.is_zero() && *delay <= MAX_SERVER_DELAY)
}

/// Exponential backoff for retry number `retry` (0 for the first retry): `initial * 2^retry`, capped,
/// then shortened by up to 25 % so that many exporters do not retry in lockstep.
pub(crate) fn backoff(policy: &RetryPolicy, retry: u32) -> Duration {
    let exponential = policy
        .initial_backoff
        .saturating_mul(2u32.saturating_pow(retry))
        .min(policy.max_backoff);
    exponential.mul_f64(1.0 - 0.25 * fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn statuses_are_retried_as_the_sdks_retry_them() {
        let none = HeaderMap::new();
        for code in [408, 409, 429, 500, 502, 503, 504, 529] {
            assert!(
                is_retryable(StatusCode::from_u16(code).unwrap(), &none),
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 413, 422] {
            assert!(
                !is_retryable(StatusCode::from_u16(code).unwrap(), &none),
                "{code}"
            );
        }
        assert!(!is_retryable(
            StatusCode::INTERNAL_SERVER_ERROR,
            &headers(&[("x-should-retry", "false")])
        ));
        assert!(is_retryable(
            StatusCode::BAD_REQUEST,
            &headers(&[("x-should-retry", "true")])
        ));
    }

    #[test]
    fn retry_after_ms_wins_over_retry_after() {
        let now = SystemTime::now();
        let map = headers(&[("retry-after-ms", "1500"), ("retry-after", "9")]);
        assert_eq!(server_delay(&map, now), Some(Duration::from_millis(1500)));
        assert_eq!(
            server_delay(&headers(&[("retry-after", "2.5")]), now),
            Some(Duration::from_millis(2500))
        );
    }

    #[test]
    fn retry_after_as_an_http_date_is_understood() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let date = httpdate::fmt_http_date(now + Duration::from_secs(20));
        assert_eq!(
            server_delay(&headers(&[("retry-after", &date)]), now),
            Some(Duration::from_secs(20))
        );
    }

    #[test]
    fn absurd_server_delays_are_ignored() {
        let now = SystemTime::now();
        for value in ["0", "-3", "3600", "soon", "NaN"] {
            assert_eq!(
                server_delay(&headers(&[("retry-after", value)]), now),
                None,
                "{value}"
            );
        }
    }

    #[test]
    fn backoff_doubles_from_half_a_second_up_to_eight_with_jitter() {
        let policy = RetryPolicy::default();
        for (retry, full) in [
            (0, 0.5),
            (1, 1.0),
            (2, 2.0),
            (3, 4.0),
            (4, 8.0),
            (9, 8.0),
            (40, 8.0),
        ] {
            for _ in 0..50 {
                let delay = backoff(&policy, retry).as_secs_f64();
                assert!(
                    delay <= full && delay >= full * 0.75,
                    "retry {retry}: {delay}"
                );
            }
        }
    }
}
