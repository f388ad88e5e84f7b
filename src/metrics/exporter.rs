//! The exporter's own health: whether each source of each organization succeeds, how long it takes,
//! why it fails, how many requests reach the Admin API, and whether the config file reloaded.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus::{Gauge, GaugeVec, IntCounterVec, Opts, Registry};

use crate::admin_api::{ApiError, Endpoint, FailureReason, RequestObserver, error_chain};
use crate::sources::SourceKind;

/// Metrics about polling, updated by the pollers and the Admin API clients.
#[derive(Debug, Clone)]
pub struct ExporterMetrics {
    up: GaugeVec,
    last_success: GaugeVec,
    poll_duration: GaugeVec,
    poll_interval: GaugeVec,
    polls: IntCounterVec,
    poll_failures: IntCounterVec,
    source_up: GaugeVec,
    source_last_success: GaugeVec,
    source_duration: GaugeVec,
    source_interval: GaugeVec,
    api_requests: IntCounterVec,
    reload_successful: Gauge,
    reload_success_timestamp: Gauge,
    build_info: Gauge,
    /// (organization, endpoint, code) combinations counted, to remove them with their organization.
    requests_seen: Arc<Mutex<HashSet<(String, Endpoint, String)>>>,
}

const ORG: &[&str] = &["organization"];
const ORG_SOURCE: &[&str] = &["organization", "source"];

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> Result<GaugeVec, prometheus::Error> {
    GaugeVec::new(Opts::new(name, help), labels)
}

fn counter_vec(
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|since_epoch| since_epoch.as_secs_f64())
        .unwrap_or_default()
}

impl ExporterMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let metrics = Self {
            up: gauge_vec(
                "anthropic_up",
                "Whether the last background poll of the organization's API keys succeeded (1) or failed (0): the key inventory is current.",
                ORG,
            )?,
            last_success: gauge_vec(
                "anthropic_exporter_last_successful_poll_timestamp_seconds",
                "Unix time at which the last successful background poll of the organization's API keys finished.",
                ORG,
            )?,
            poll_duration: gauge_vec(
                "anthropic_exporter_poll_duration_seconds",
                "Duration of the last background poll of the organization's API keys, retries included.",
                ORG,
            )?,
            poll_interval: gauge_vec(
                "anthropic_exporter_poll_interval_seconds",
                "Configured interval between background polls of the organization's API keys, for staleness alerts.",
                ORG,
            )?,
            polls: counter_vec(
                "anthropic_exporter_polls_total",
                "Background polls of the Admin API by source, successful or not.",
                ORG_SOURCE,
            )?,
            poll_failures: counter_vec(
                "anthropic_exporter_poll_failures_total",
                "Background polls of the Admin API that failed, by source and reason.",
                &["organization", "source", "reason"],
            )?,
            source_up: gauge_vec(
                "anthropic_exporter_source_up",
                "Whether the last poll of the source succeeded (1) or failed (0); a failed source keeps its last good data.",
                ORG_SOURCE,
            )?,
            source_last_success: gauge_vec(
                "anthropic_exporter_source_last_success_timestamp_seconds",
                "Unix time at which the last successful poll of the source finished.",
                ORG_SOURCE,
            )?,
            source_duration: gauge_vec(
                "anthropic_exporter_source_duration_seconds",
                "Duration of the last poll of the source, retries and all pages included.",
                ORG_SOURCE,
            )?,
            source_interval: gauge_vec(
                "anthropic_exporter_source_interval_seconds",
                "Configured interval between polls of the source, for staleness alerts.",
                ORG_SOURCE,
            )?,
            api_requests: counter_vec(
                "anthropic_exporter_api_requests_total",
                "HTTP requests sent to the Admin API, by endpoint and HTTP status code (\"error\" when no response arrived).",
                &["organization", "endpoint", "code"],
            )?,
            reload_successful: Gauge::with_opts(Opts::new(
                "anthropic_exporter_config_last_reload_successful",
                "Whether the last reload of the config file succeeded (1) or failed (0).",
            ))?,
            reload_success_timestamp: Gauge::with_opts(Opts::new(
                "anthropic_exporter_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful reload of the config file (start-up included).",
            ))?,
            build_info: Gauge::with_opts(
                Opts::new(
                    "anthropic_exporter_build_info",
                    "A metric with a constant '1' value labelled by the version and revision of the exporter.",
                )
                .const_label("version", crate::VERSION)
                .const_label("revision", crate::REVISION),
            )?,
            requests_seen: Arc::default(),
        };
        metrics.build_info.set(1.0);
        Ok(metrics)
    }

    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.up.clone()))?;
        registry.register(Box::new(self.last_success.clone()))?;
        registry.register(Box::new(self.poll_duration.clone()))?;
        registry.register(Box::new(self.poll_interval.clone()))?;
        registry.register(Box::new(self.polls.clone()))?;
        registry.register(Box::new(self.poll_failures.clone()))?;
        registry.register(Box::new(self.source_up.clone()))?;
        registry.register(Box::new(self.source_last_success.clone()))?;
        registry.register(Box::new(self.source_duration.clone()))?;
        registry.register(Box::new(self.source_interval.clone()))?;
        registry.register(Box::new(self.api_requests.clone()))?;
        registry.register(Box::new(self.reload_successful.clone()))?;
        registry.register(Box::new(self.reload_success_timestamp.clone()))?;
        registry.register(Box::new(self.build_info.clone()))?;
        Ok(())
    }

    /// Creates an organization's series, with every poll counter and failure reason at zero so that
    /// `rate()` and `increase()` work from the first scrape.
    pub fn add_organization(&self, organization: &str, sources: &[(SourceKind, Duration)]) {
        for (source, interval) in sources {
            let labels = [organization, source.label()];
            self.polls.with_label_values(&labels).reset();
            for reason in FailureReason::ALL {
                self.poll_failures
                    .with_label_values(&[organization, source.label(), reason.as_str()])
                    .reset();
            }
            self.source_interval
                .with_label_values(&labels)
                .set(interval.as_secs_f64());
            if *source == SourceKind::ApiKeys {
                self.poll_interval
                    .with_label_values(&[organization])
                    .set(interval.as_secs_f64());
            }
        }
    }

    /// Removes every series of an organization that is no longer polled. Call it only once its pollers
    /// have stopped, or they would bring some back.
    pub fn remove_organization(&self, organization: &str) {
        for vec in [
            &self.up,
            &self.last_success,
            &self.poll_duration,
            &self.poll_interval,
        ] {
            let _ = vec.remove_label_values(&[organization]);
        }
        for source in SourceKind::ALL {
            let labels = [organization, source.label()];
            let _ = self.polls.remove_label_values(&labels);
            for vec in [
                &self.source_up,
                &self.source_last_success,
                &self.source_duration,
                &self.source_interval,
            ] {
                let _ = vec.remove_label_values(&labels);
            }
            for reason in FailureReason::ALL {
                let _ = self.poll_failures.remove_label_values(&[
                    organization,
                    source.label(),
                    reason.as_str(),
                ]);
            }
        }
        let mut seen = self
            .requests_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.retain(|(seen_organization, endpoint, code)| {
            if seen_organization != organization {
                return true;
            }
            let _ = self
                .api_requests
                .remove_label_values(&[organization, endpoint.label(), code]);
            false
        });
    }

    /// What the Admin API client of `organization` reports its requests to.
    pub fn request_observer(&self, organization: &str) -> Arc<dyn RequestObserver> {
        Arc::new(OrganizationRequests {
            organization: organization.to_owned(),
            metrics: self.clone(),
        })
    }

    pub fn record_source_success(
        &self,
        organization: &str,
        source: SourceKind,
        duration: Duration,
        finished_at: SystemTime,
    ) {
        let timestamp = unix_seconds(finished_at);
        let labels = [organization, source.label()];
        // NB: `up` goes last, so a scrape that sees it at 1 also sees this poll's timestamp and
        // duration, never the previous poll's.
        self.source_last_success
            .with_label_values(&labels)
            .set(timestamp);
        self.source_duration
            .with_label_values(&labels)
            .set(duration.as_secs_f64());
        if source == SourceKind::ApiKeys {
            self.last_success
                .with_label_values(&[organization])
                .set(timestamp);
            self.poll_duration
                .with_label_values(&[organization])
                .set(duration.as_secs_f64());
        }
        self.polls.with_label_values(&labels).inc();
        self.source_up.with_label_values(&labels).set(1.0);
        if source == SourceKind::ApiKeys {
            self.up.with_label_values(&[organization]).set(1.0);
        }
    }

    /// Counts, flags and logs a failed poll of a source: the one place where poll failures are
    /// reported. A rejected or powerless admin key is an ERROR, since an operator must act; anything
    /// else is a WARN.
    pub fn record_source_failure(
        &self,
        organization: &str,
        source: SourceKind,
        error: &ApiError,
        duration: Duration,
    ) {
        let reason = error.reason();
        let labels = [organization, source.label()];
        // NB: the counters go last, so a scrape that sees this failure counted also sees `up` at 0.
        self.source_duration
            .with_label_values(&labels)
            .set(duration.as_secs_f64());
        self.source_up.with_label_values(&labels).set(0.0);
        if source == SourceKind::ApiKeys {
            self.poll_duration
                .with_label_values(&[organization])
                .set(duration.as_secs_f64());
            self.up.with_label_values(&[organization]).set(0.0);
        }
        self.polls.with_label_values(&labels).inc();
        self.poll_failures
            .with_label_values(&[organization, source.label(), reason.as_str()])
            .inc();
        let request_id = error.request_id().unwrap_or("none");
        let message = error_chain(error);
        let source = source.label();
        match reason {
            FailureReason::Unauthorized
            | FailureReason::Forbidden
            | FailureReason::KeyFile
            | FailureReason::Redirect => tracing::error!(
                organization,
                source,
                reason = reason.as_str(),
                request_id,
                error = %message,
                "Poll of the Admin API failed: the admin key or base URL must be fixed; the last good data is kept."
            ),
            _ => tracing::warn!(
                organization,
                source,
                reason = reason.as_str(),
                request_id,
                error = %message,
                "Poll of the Admin API failed; the last good data is kept."
            ),
        }
    }

    pub fn record_config_reload(&self, successful: bool, at: SystemTime) {
        if successful {
            self.reload_success_timestamp.set(unix_seconds(at));
        }
        self.reload_successful
            .set(if successful { 1.0 } else { 0.0 });
    }
}

/// Counts one organization's requests.
#[derive(Debug)]
struct OrganizationRequests {
    organization: String,
    metrics: ExporterMetrics,
}

impl RequestObserver for OrganizationRequests {
    fn request_finished(&self, endpoint: Endpoint, code: &str) {
        self.metrics
            .api_requests
            .with_label_values(&[&self.organization, endpoint.label(), code])
            .inc();
        let mut seen = self
            .metrics
            .requests_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.len() < 100_000 {
            seen.insert((self.organization.clone(), endpoint, code.to_owned()));
        }
    }
}
