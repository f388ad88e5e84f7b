//! `usage`: when each key was last used, from the messages usage report grouped by `api_key_id`
//! (the API key object has no last-used field). Daily buckets over the lookback, plus hourly buckets
//! for the last 24 hours so that recent use is precise to the hour.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::api_keys::parse_time;
use super::{LastGood, Source, SourceKind, Update};
use crate::admin_api::model::UsageBucket;
use crate::admin_api::{ApiError, Endpoint, Session};

const DAY: i64 = 86_400;
const HOUR: i64 = 3_600;
/// The hourly window, in which last use is precise to the hour.
const HOURLY_WINDOW: i64 = 24 * HOUR;

/// The last complete usage report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageReport {
    /// Key id to the Unix time of its last use: the end of the latest bucket with use, capped at
    /// `reported_at`. Only keys used within the lookback.
    pub last_used: HashMap<String, f64>,
    /// When the report was read (Unix seconds).
    pub reported_at: f64,
    pub lookback: Duration,
}

#[derive(Debug)]
pub struct UsageSource {
    pub interval: Duration,
    pub lookback: Duration,
}

impl Source for UsageSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Usage
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    fn fetch<'a>(&'a self, session: &'a Session<'a>) -> BoxFuture<'a, Result<Update, ApiError>> {
        Box::pin(async move {
            let now = unix_now();
            let lookback = self.lookback.as_secs() as i64;
            let daily_start = (now - lookback).div_euclid(DAY) * DAY;
            let hourly_start = (now - HOURLY_WINDOW).div_euclid(HOUR) * HOUR;
            let mut daily = Vec::new();
            read_buckets(session, daily_start, "1d", "31", &mut daily).await?;
            let mut hourly = Vec::new();
            read_buckets(session, hourly_start, "1h", "168", &mut hourly).await?;
            let report = Arc::new(UsageReport {
                last_used: last_used(&daily, &hourly, hourly_start as f64, now as f64),
                reported_at: now as f64,
                lookback: self.lookback,
            });
            Ok(Box::new(move |last: &mut LastGood| last.usage = Some(report)) as Update)
        })
    }
}

/// One bucket's end and the keys used in it.
#[derive(Debug, Clone, PartialEq)]
struct UsedIn {
    ending_at: f64,
    keys: Vec<String>,
}

async fn read_buckets(
    session: &Session<'_>,
    starting_at: i64,
    bucket_width: &str,
    limit: &str,
    out: &mut Vec<UsedIn>,
) -> Result<(), ApiError> {
    let starting_at = OffsetDateTime::from_unix_timestamp(starting_at)
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_default();
    let query = [
        ("starting_at", starting_at.as_str()),
        ("bucket_width", bucket_width),
        ("group_by[]", "api_key_id"),
        ("limit", limit),
    ];
    session
        .report_pages(Endpoint::Usage, &query, |page: Vec<UsageBucket>| {
            for bucket in page {
                let ending_at = parse_time(Endpoint::Usage, "bucket ending_at", &bucket.ending_at)?;
                // NB: usage without a key (Console Workbench) has no key to attribute it to.
                let keys = bucket
                    .results
                    .into_iter()
                    .filter(|result| result.has_use())
                    .filter_map(|result| result.api_key_id)
                    .collect();
                out.push(UsedIn { ending_at, keys });
            }
            Ok(())
        })
        .await
}

/// The hourly buckets decide for keys used within them. A key only seen in daily buckets was not used
/// in the hourly window, so its last use is at most the window's start: daily and hourly agree.
fn last_used(
    daily: &[UsedIn],
    hourly: &[UsedIn],
    hourly_start: f64,
    now: f64,
) -> HashMap<String, f64> {
    let mut latest: HashMap<String, f64> = HashMap::new();
    let mut record = |keys: &[String], at: f64| {
        for key in keys {
            let entry = latest.entry(key.clone()).or_insert(at);
            *entry = entry.max(at);
        }
    };
    for bucket in daily {
        record(&bucket.keys, bucket.ending_at.min(hourly_start).min(now));
    }
    for bucket in hourly {
        record(&bucket.keys, bucket.ending_at.min(now));
    }
    latest
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|since| since.as_secs() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(ending_at: f64, keys: &[&str]) -> UsedIn {
        UsedIn {
            ending_at,
            keys: keys.iter().map(|key| (*key).to_owned()).collect(),
        }
    }

    #[test]
    fn hourly_buckets_refine_the_daily_ones_and_never_lie_in_the_future() {
        let now: f64 = 20_000.0 * 86_400.0 + 10.5 * 3_600.0; // 10:30 on some day
        let hourly_start = now.div_euclid(3_600.0) * 3_600.0 - 24.0 * 3_600.0;
        let today_end = (now / 86_400.0).ceil() * 86_400.0;
        let daily = [
            used(today_end - 86_400.0 * 20.0, &["old"]),
            used(today_end - 86_400.0, &["yesterday", "recent"]),
            used(today_end, &["recent"]),
        ];
        let hourly = [
            used(now.div_euclid(3_600.0) * 3_600.0 - 3_600.0, &["recent"]),
            used(now.div_euclid(3_600.0) * 3_600.0 + 3_600.0, &[]),
        ];
        let last = last_used(&daily, &hourly, hourly_start, now);
        assert_eq!(last["old"], today_end - 86_400.0 * 20.0);
        // Used yesterday but not in the last 24 hours: at most the hourly window's start.
        assert_eq!(last["yesterday"], hourly_start);
        // Used an hour ago: the hourly bucket decides, not today's daily bucket (which ends tonight).
        assert_eq!(last["recent"], now.div_euclid(3_600.0) * 3_600.0 - 3_600.0);
        assert!(last.values().all(|at| *at <= now));
        assert!(!last.contains_key("never"));
    }
}
