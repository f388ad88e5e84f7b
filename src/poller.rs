//! The background loop: poll once at start, then every interval, until shutdown. Each poll either
//! publishes a complete new snapshot or leaves the previous one in place and reports why.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::admin_api::{AdminApiClient, ApiError};
use crate::metrics::ExporterMetrics;
use crate::snapshot::{Snapshot, SnapshotStore};

/// Polls one organization.
#[derive(Debug)]
pub struct Poller {
    organization: String,
    client: AdminApiClient,
    store: Arc<SnapshotStore>,
    metrics: Arc<ExporterMetrics>,
    interval: Duration,
    deadline: Duration,
}

impl Poller {
    pub fn new(
        organization: &str,
        client: AdminApiClient,
        store: Arc<SnapshotStore>,
        metrics: Arc<ExporterMetrics>,
        interval: Duration,
        deadline: Duration,
    ) -> Self {
        Self {
            organization: organization.to_owned(),
            client,
            store,
            metrics,
            interval,
            deadline,
        }
    }

    /// Polls until `shutdown` is cancelled; an in-flight poll is abandoned at shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        // NB: after a slow poll, wait a full interval again rather than bursting to catch up.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                _ = self.poll_once() => {}
            }
        }
        tracing::debug!(organization = %self.organization, "Poller stopped.");
    }

    /// One complete poll. The error has already been counted and logged when this returns.
    pub async fn poll_once(&self) -> Result<(), ApiError> {
        let started = Instant::now();
        let result = match self.client.fetch_inventory(self.deadline).await {
            Ok(inventory) => Snapshot::from_inventory(inventory, SystemTime::now()),
            Err(error) => Err(error),
        };
        let duration = started.elapsed();
        let snapshot = match result {
            Ok(snapshot) => snapshot,
            Err(error) => {
                self.metrics
                    .record_poll_failure(&self.organization, &error, duration);
                return Err(error);
            }
        };
        let previous = self.store.get(&self.organization);
        let unknown_changed = previous
            .as_ref()
            .is_none_or(|previous| previous.unknown_statuses != snapshot.unknown_statuses);
        if unknown_changed && !snapshot.unknown_statuses.is_empty() {
            tracing::warn!(
                organization = %self.organization,
                statuses = ?snapshot.unknown_statuses,
                "Some keys have a status this exporter does not know; they are exported with status=\"unknown\"."
            );
        }
        let keys = snapshot.keys.len();
        let workspaces = snapshot.workspaces.len();
        self.store.publish(&self.organization, snapshot);
        self.metrics
            .record_poll_success(&self.organization, duration, SystemTime::now());
        if previous.is_none() {
            tracing::info!(
                organization = %self.organization,
                keys,
                workspaces,
                duration_ms = duration.as_millis() as u64,
                "First successful poll of the Admin API; the exporter is ready."
            );
        } else {
            tracing::debug!(
                organization = %self.organization,
                keys,
                workspaces,
                duration_ms = duration.as_millis() as u64,
                "Polled the Admin API."
            );
        }
        Ok(())
    }
}

/// How many pollers are running, for `/healthz`: a process whose poller died would otherwise serve a
/// frozen snapshot while looking healthy.
#[derive(Debug, Default)]
pub struct PollerHealth {
    expected: AtomicUsize,
    running: AtomicUsize,
}

impl PollerHealth {
    /// Marks a poller as running until the returned guard is dropped, which also happens when the
    /// poller's task panics.
    pub fn track(self: &Arc<Self>) -> RunningPoller {
        self.expected.fetch_add(1, Ordering::SeqCst);
        self.running.fetch_add(1, Ordering::SeqCst);
        RunningPoller {
            health: Arc::clone(self),
        }
    }

    pub fn all_running(&self) -> bool {
        let expected = self.expected.load(Ordering::SeqCst);
        expected > 0 && self.running.load(Ordering::SeqCst) == expected
    }
}

/// Held by a poller task for as long as it runs.
#[derive(Debug)]
pub struct RunningPoller {
    health: Arc<PollerHealth>,
}

impl Drop for RunningPoller {
    fn drop(&mut self) {
        self.health.running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_reports_a_poller_that_stopped_or_panicked() {
        let health = Arc::new(PollerHealth::default());
        assert!(!health.all_running(), "no poller has started yet");
        let running = health.track();
        assert!(health.all_running());
        let panicked = std::thread::spawn(move || {
            let _running = running;
            panic!("poller crashed");
        })
        .join();
        assert!(panicked.is_err());
        assert!(!health.all_running());
    }
}
