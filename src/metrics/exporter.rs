//! The exporter's own health: whether each source of each organization succeeds, how long it takes,
//! why it fails, how many requests reach the Admin API, and whether the config file reloaded.
//!
//! An organization has about a hundred health series (every source, every failure reason, every
//! endpoint and code), and a fleet has a thousand organizations. So each organization keeps its own
//! health state, and renders and compresses it only when it changed since the last scrape, as its
//! key series are rendered when published; a scrape joins the parts. The process-wide series (build,
//! config reload, process) stay in a `prometheus` registry.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use prometheus::{Gauge, Opts, Registry};

use super::text::write_sample;
use super::{gzip, lock};
use crate::admin_api::{ApiError, Endpoint, FailureReason, RequestObserver, error_chain};
use crate::sources::SourceKind;

/// Metrics about polling, updated by the pollers and the Admin API clients. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ExporterMetrics {
    organizations: Arc<RwLock<BTreeMap<String, Arc<Mutex<Health>>>>>,
    reload_successful: Gauge,
    reload_success_timestamp: Gauge,
    build_info: Gauge,
}

/// A family of the per-organization health metrics.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
}

const fn gauge(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        help,
        kind: "gauge",
    }
}

const fn counter(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        help,
        kind: "counter",
    }
}

/// Every per-organization family, in the order of the exposition.
const FAMILIES: [Family; 11] = [
    counter(
        "anthropic_exporter_api_requests_total",
        "HTTP requests sent to the Admin API, by endpoint and HTTP status code (\"error\" when no response arrived).",
    ),
    gauge(
        "anthropic_exporter_last_successful_poll_timestamp_seconds",
        "Unix time at which the last successful background poll of the organization's API keys finished.",
    ),
    gauge(
        "anthropic_exporter_poll_duration_seconds",
        "Duration of the last background poll of the organization's API keys, retries included.",
    ),
    counter(
        "anthropic_exporter_poll_failures_total",
        "Background polls of the Admin API that failed, by source and reason.",
    ),
    gauge(
        "anthropic_exporter_poll_interval_seconds",
        "Configured interval between background polls of the organization's API keys, for staleness alerts.",
    ),
    counter(
        "anthropic_exporter_polls_total",
        "Background polls of the Admin API by source, successful or not.",
    ),
    gauge(
        "anthropic_exporter_source_duration_seconds",
        "Duration of the last poll of the source, retries and all pages included.",
    ),
    gauge(
        "anthropic_exporter_source_interval_seconds",
        "Configured interval between polls of the source, for staleness alerts.",
    ),
    gauge(
        "anthropic_exporter_source_last_success_timestamp_seconds",
        "Unix time at which the last successful poll of the source finished.",
    ),
    gauge(
        "anthropic_exporter_source_up",
        "Whether the last poll of the source succeeded (1) or failed (0); a failed source keeps its last good data.",
    ),
    gauge(
        "anthropic_up",
        "Whether the last background poll of the organization's API keys succeeded (1) or failed (0): the key inventory is current.",
    ),
];

/// (endpoint, code) pairs counted per organization, at most: codes come from the upstream.
const MAX_REQUEST_SERIES: usize = 200;

/// One organization's health. Series are absent until they have a value, as with the `prometheus`
/// crate: `anthropic_up` appears with the first key poll, the counters at zero from the start.
#[derive(Debug, Default)]
struct Health {
    up: Option<f64>,
    last_success: Option<f64>,
    poll_duration: Option<f64>,
    poll_interval: Option<f64>,
    /// By source label, so that the series come out in label order.
    sources: BTreeMap<&'static str, SourceHealth>,
    /// By (code, endpoint label): the order of the labels' names.
    requests: BTreeMap<(String, &'static str), u64>,
    /// The families as compressed at the last scrape that found a change; dropped by every change.
    gzipped: Option<Arc<[gzip::Deflated]>>,
}

#[derive(Debug, Default)]
struct SourceHealth {
    polls: u64,
    /// By failure reason, in the order of [`FailureReason::ALL`].
    failures: [u64; FailureReason::ALL.len()],
    up: Option<f64>,
    last_success: Option<f64>,
    duration: Option<f64>,
    interval: Option<f64>,
}

impl Health {
    fn source(&mut self, source: SourceKind) -> &mut SourceHealth {
        self.sources.entry(source.label()).or_default()
    }

    /// Writes the organization's lines of family `index`.
    fn write_family(&self, index: usize, organization: &str, out: &mut String) {
        let org = ("organization", organization);
        let mut gauge = |name: &str, value: Option<f64>| {
            if let Some(value) = value {
                write_sample(out, name, &[org], value);
            }
        };
        let name = FAMILIES[index].name;
        match index {
            0 => {
                for ((code, endpoint), count) in &self.requests {
                    let labels = [("code", code.as_str()), ("endpoint", endpoint), org];
                    write_sample(out, name, &labels, *count as f64);
                }
            }
            1 => gauge(name, self.last_success),
            2 => gauge(name, self.poll_duration),
            3 => {
                for &(reason, position) in reasons_by_name() {
                    for (source, health) in &self.sources {
                        let labels = [org, ("reason", reason), ("source", source)];
                        write_sample(out, name, &labels, health.failures[position] as f64);
                    }
                }
            }
            4 => gauge(name, self.poll_interval),
            10 => gauge(name, self.up),
            _ => {
                for (source, health) in &self.sources {
                    let value = match index {
                        5 => Some(health.polls as f64),
                        6 => health.duration,
                        7 => health.interval,
                        8 => health.last_success,
                        _ => health.up,
                    };
                    if let Some(value) = value {
                        write_sample(out, name, &[org, ("source", source)], value);
                    }
                }
            }
        }
    }

    /// Every family's lines, in the order of [`FAMILIES`].
    fn family_texts(&self, organization: &str) -> Vec<String> {
        (0..FAMILIES.len())
            .map(|index| {
                let mut text = String::new();
                self.write_family(index, organization, &mut text);
                text
            })
            .collect()
    }

    fn compressed(&mut self, organization: &str) -> Arc<[gzip::Deflated]> {
        if let Some(gzipped) = &self.gzipped {
            return Arc::clone(gzipped);
        }
        let gzipped: Arc<[gzip::Deflated]> = self
            .family_texts(organization)
            .iter()
            .map(|text| gzip::Deflated::new(text.as_bytes(), gzip::PER_SCRAPE))
            .collect();
        self.gzipped = Some(Arc::clone(&gzipped));
        gzipped
    }
}

/// The failure reasons in the order of their names, with their position in [`FailureReason::ALL`].
fn reasons_by_name() -> &'static [(&'static str, usize)] {
    static SORTED: std::sync::OnceLock<Vec<(&'static str, usize)>> = std::sync::OnceLock::new();
    SORTED.get_or_init(|| {
        let mut sorted: Vec<(&'static str, usize)> = FailureReason::ALL
            .iter()
            .enumerate()
            .map(|(position, reason)| (reason.as_str(), position))
            .collect();
        sorted.sort_unstable();
        sorted
    })
}

fn position_of(reason: FailureReason) -> usize {
    FailureReason::ALL
        .iter()
        .position(|known| *known == reason)
        .unwrap_or_default()
}

/// The family headers, plain and compressed, built once for the whole process.
fn headers() -> &'static [(Bytes, gzip::Deflated)] {
    static HEADERS: std::sync::OnceLock<Vec<(Bytes, gzip::Deflated)>> = std::sync::OnceLock::new();
    HEADERS.get_or_init(|| {
        FAMILIES
            .iter()
            .map(|family| super::family_header(family.name, family.help, family.kind))
            .collect()
    })
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|since_epoch| since_epoch.as_secs_f64())
        .unwrap_or_default()
}

impl ExporterMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let metrics = Self {
            organizations: Arc::default(),
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
        };
        metrics.build_info.set(1.0);
        Ok(metrics)
    }

    /// Registers the process-wide series; the per-organization ones are written by
    /// [`ExporterMetrics::encode`].
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.reload_successful.clone()))?;
        registry.register(Box::new(self.reload_success_timestamp.clone()))?;
        registry.register(Box::new(self.build_info.clone()))?;
        Ok(())
    }

    /// Changes an organization's health, creating it if need be, and marks it for rendering.
    fn update(&self, organization: &str, change: impl FnOnce(&mut Health)) {
        let known = self
            .organizations
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(organization)
            .cloned();
        let health = known.unwrap_or_else(|| {
            let mut organizations = self
                .organizations
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            Arc::clone(organizations.entry(organization.to_owned()).or_default())
        });
        let mut health = lock(&health);
        change(&mut health);
        health.gzipped = None;
    }

    /// Creates an organization's series, with every poll counter and failure reason at zero so that
    /// `rate()` and `increase()` work from the first scrape.
    pub fn add_organization(&self, organization: &str, sources: &[(SourceKind, Duration)]) {
        self.update(organization, |health| {
            for (source, interval) in sources {
                let seconds = Some(interval.as_secs_f64());
                health.source(*source).interval = seconds;
                if *source == SourceKind::ApiKeys {
                    health.poll_interval = seconds;
                }
            }
        });
    }

    /// Removes every series of an organization that is no longer polled. Call it only once its pollers
    /// have stopped, or they would bring some back.
    pub fn remove_organization(&self, organization: &str) {
        self.organizations
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(organization);
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
        let timestamp = Some(unix_seconds(finished_at));
        let duration = Some(duration.as_secs_f64());
        self.update(organization, |health| {
            let of_source = health.source(source);
            of_source.last_success = timestamp;
            of_source.duration = duration;
            of_source.polls += 1;
            of_source.up = Some(1.0);
            if source == SourceKind::ApiKeys {
                health.last_success = timestamp;
                health.poll_duration = duration;
                health.up = Some(1.0);
            }
        });
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
        let seconds = Some(duration.as_secs_f64());
        self.update(organization, |health| {
            let of_source = health.source(source);
            of_source.duration = seconds;
            of_source.up = Some(0.0);
            of_source.polls += 1;
            of_source.failures[position_of(reason)] += 1;
            if source == SourceKind::ApiKeys {
                health.poll_duration = seconds;
                health.up = Some(0.0);
            }
        });
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

    /// Appends every organization's health families to `body`. A gzip body reuses what each
    /// organization compressed when it last changed; a plain body is written afresh, which is cheap.
    pub(crate) fn encode(&self, body: &mut gzip::Body) {
        let organizations: Vec<(String, Arc<Mutex<Health>>)> = self
            .organizations
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|(name, health)| (name.clone(), Arc::clone(health)))
            .collect();
        // NB: each organization's families are taken under one lock, so that one scrape never shows
        // half of a change.
        if body.is_gzip() {
            let parts: Vec<Arc<[gzip::Deflated]>> = organizations
                .iter()
                .map(|(name, health)| lock(health).compressed(name))
                .collect();
            super::push_families(
                body,
                headers(),
                &parts,
                |families, index| families[index].text_len() > 0,
                |body, families, index| body.push_deflated(&families[index]),
            );
        } else {
            let parts: Vec<Vec<Bytes>> = organizations
                .iter()
                .map(|(name, health)| {
                    let texts = lock(health).family_texts(name);
                    texts.into_iter().map(Bytes::from).collect()
                })
                .collect();
            super::push_families(
                body,
                headers(),
                &parts,
                |families, index| !families[index].is_empty(),
                |body, families, index| body.push_plain(&families[index]),
            );
        }
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
        self.metrics.update(&self.organization, |health| {
            let key = (code.to_owned(), endpoint.label());
            if health.requests.len() < MAX_REQUEST_SERIES || health.requests.contains_key(&key) {
                *health.requests.entry(key).or_default() += 1;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn scrape(metrics: &ExporterMetrics, gzip: bool) -> String {
        let mut body = if gzip {
            gzip::Body::gzip()
        } else {
            gzip::Body::plain()
        };
        metrics.encode(&mut body);
        let bytes = body.finish().concat();
        if !gzip {
            return String::from_utf8(bytes).unwrap();
        }
        let mut text = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .unwrap();
        text
    }

    #[test]
    fn a_change_after_a_scrape_shows_in_the_next_and_families_stay_grouped() {
        let metrics = ExporterMetrics::new().unwrap();
        let sources = [
            (SourceKind::ApiKeys, Duration::from_secs(300)),
            (SourceKind::Users, Duration::from_secs(600)),
        ];
        for organization in ["beta", "alpha"] {
            metrics.add_organization(organization, &sources);
        }
        let first = scrape(&metrics, true);
        assert!(!first.contains("anthropic_up{"), "no poll yet:\n{first}");

        metrics.record_source_success(
            "beta",
            SourceKind::ApiKeys,
            Duration::from_millis(250),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        );
        metrics
            .request_observer("alpha")
            .request_finished(Endpoint::Users, "429");

        let gzipped = scrape(&metrics, true);
        assert_eq!(gzipped, scrape(&metrics, false), "both encodings agree");
        assert!(gzipped.contains("anthropic_up{organization=\"beta\"} 1\n"));
        assert!(gzipped.contains(
            "anthropic_exporter_api_requests_total{code=\"429\",endpoint=\"users\",organization=\"alpha\"} 1\n"
        ));
        assert!(gzipped.contains(
            "anthropic_exporter_polls_total{organization=\"beta\",source=\"api_keys\"} 1\n"
        ));
        assert!(gzipped.contains(
            "anthropic_exporter_poll_failures_total{organization=\"alpha\",reason=\"timeout\",source=\"users\"} 0\n"
        ));
        // Every family is one block: its header, then the lines of every organization.
        let mut seen = Vec::new();
        for line in gzipped.lines().filter(|line| !line.starts_with('#')) {
            let family = line.split(['{', ' ']).next().unwrap();
            if seen.last() != Some(&family) {
                assert!(!seen.contains(&family), "{family} is split:\n{gzipped}");
                seen.push(family);
            }
        }
        assert_eq!(
            gzipped
                .matches("# TYPE anthropic_exporter_polls_total counter\n")
                .count(),
            1
        );

        metrics.remove_organization("beta");
        assert!(!scrape(&metrics, true).contains("beta"));
    }
}
