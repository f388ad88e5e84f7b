//! The exporter's own health: whether polls succeed, how long they take, why they fail, and how many
//! requests reach the Admin API.

use std::time::{Duration, SystemTime};

use prometheus::{Gauge, GaugeVec, IntCounterVec, Opts, Registry};

use crate::admin_api::{ApiError, Endpoint, FailureReason, error_chain};

/// Metrics about polling, updated by the poller and the Admin API client.
#[derive(Debug, Clone)]
pub struct ExporterMetrics {
    up: GaugeVec,
    last_success: GaugeVec,
    poll_duration: GaugeVec,
    poll_interval: GaugeVec,
    polls: IntCounterVec,
    poll_failures: IntCounterVec,
    api_requests: IntCounterVec,
    build_info: Gauge,
}

impl ExporterMetrics {
    /// Creates the metrics with every per-organization counter and failure reason at zero, so that
    /// `rate()` and `increase()` work from the first scrape.
    pub fn new<'a>(
        organizations: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, prometheus::Error> {
        let metrics = Self {
            up: GaugeVec::new(
                Opts::new(
                    "anthropic_up",
                    "Whether the last background poll of the Admin API succeeded (1) or failed (0).",
                ),
                &["organization"],
            )?,
            last_success: GaugeVec::new(
                Opts::new(
                    "anthropic_exporter_last_successful_poll_timestamp_seconds",
                    "Unix time at which the last successful background poll of the Admin API finished.",
                ),
                &["organization"],
            )?,
            poll_duration: GaugeVec::new(
                Opts::new(
                    "anthropic_exporter_poll_duration_seconds",
                    "Duration of the last background poll of the Admin API, retries included.",
                ),
                &["organization"],
            )?,
            poll_interval: GaugeVec::new(
                Opts::new(
                    "anthropic_exporter_poll_interval_seconds",
                    "Configured interval between background polls of the Admin API, for staleness alerts.",
                ),
                &["organization"],
            )?,
            polls: IntCounterVec::new(
                Opts::new(
                    "anthropic_exporter_polls_total",
                    "Background polls of the Admin API, successful or not.",
                ),
                &["organization"],
            )?,
            poll_failures: IntCounterVec::new(
                Opts::new(
                    "anthropic_exporter_poll_failures_total",
                    "Background polls of the Admin API that failed, by reason.",
                ),
                &["organization", "reason"],
            )?,
            api_requests: IntCounterVec::new(
                Opts::new(
                    "anthropic_exporter_api_requests_total",
                    "HTTP requests sent to the Admin API, by endpoint and HTTP status code (\"error\" when no response arrived).",
                ),
                &["organization", "endpoint", "code"],
            )?,
            build_info: Gauge::with_opts(
                Opts::new(
                    "anthropic_exporter_build_info",
                    "A metric with a constant '1' value labelled by the version and revision of the exporter.",
                )
                .const_label("version", crate::VERSION)
                .const_label("revision", crate::REVISION),
            )?,
        };
        metrics.build_info.set(1.0);
        for organization in organizations {
            metrics.polls.with_label_values(&[organization]).reset();
            for reason in FailureReason::ALL {
                metrics
                    .poll_failures
                    .with_label_values(&[organization, reason.as_str()])
                    .reset();
            }
        }
        Ok(metrics)
    }

    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.up.clone()))?;
        registry.register(Box::new(self.last_success.clone()))?;
        registry.register(Box::new(self.poll_duration.clone()))?;
        registry.register(Box::new(self.poll_interval.clone()))?;
        registry.register(Box::new(self.polls.clone()))?;
        registry.register(Box::new(self.poll_failures.clone()))?;
        registry.register(Box::new(self.api_requests.clone()))?;
        registry.register(Box::new(self.build_info.clone()))?;
        Ok(())
    }

    pub fn set_poll_interval(&self, organization: &str, interval: Duration) {
        self.poll_interval
            .with_label_values(&[organization])
            .set(interval.as_secs_f64());
    }

    pub fn record_api_request(&self, organization: &str, endpoint: Endpoint, code: &str) {
        self.api_requests
            .with_label_values(&[organization, endpoint.label(), code])
            .inc();
    }

    pub fn record_poll_success(
        &self,
        organization: &str,
        duration: Duration,
        finished_at: SystemTime,
    ) {
        let timestamp = finished_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|since_epoch| since_epoch.as_secs_f64())
            .unwrap_or_default();
        // NB: `up` goes last, so a scrape that sees it at 1 also sees this poll's timestamp and
        // duration, never the previous poll's.
        self.last_success
            .with_label_values(&[organization])
            .set(timestamp);
        self.poll_duration
            .with_label_values(&[organization])
            .set(duration.as_secs_f64());
        self.polls.with_label_values(&[organization]).inc();
        self.up.with_label_values(&[organization]).set(1.0);
    }

    /// Counts, flags and logs a failed poll: the one place where poll failures are reported. A rejected
    /// or powerless admin key is an ERROR, since an operator must act; anything else is a WARN.
    pub fn record_poll_failure(&self, organization: &str, error: &ApiError, duration: Duration) {
        let reason = error.reason();
        // NB: the counters go last, so a scrape that sees this failure counted also sees `up` at 0.
        self.poll_duration
            .with_label_values(&[organization])
            .set(duration.as_secs_f64());
        self.up.with_label_values(&[organization]).set(0.0);
        self.polls.with_label_values(&[organization]).inc();
        self.poll_failures
            .with_label_values(&[organization, reason.as_str()])
            .inc();
        let request_id = error.request_id().unwrap_or("none");
        let message = error_chain(error);
        match reason {
            FailureReason::Unauthorized | FailureReason::Forbidden | FailureReason::KeyFile => {
                tracing::error!(
                    organization,
                    reason = reason.as_str(),
                    request_id,
                    error = %message,
                    "Poll of the Admin API failed: the admin key must be fixed; the last good data is kept."
                )
            }
            _ => tracing::warn!(
                organization,
                reason = reason.as_str(),
                request_id,
                error = %message,
                "Poll of the Admin API failed; the last good data is kept."
            ),
        }
    }
}
