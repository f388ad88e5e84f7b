//! Schedules the sources of one organization. Each source runs on its own: its own interval,
//! deadline and outcome, and its own last good data, so a failing usage report never freezes the key
//! inventory. After every success the organization's snapshot is rebuilt from the last good data of
//! all sources, rendered, and published.
//!
//! Polls are spread over each interval: the first round runs at once (bounded by the global request
//! limit), then every source settles on a phase of its own within its interval, derived from the
//! organization's name, plus a little jitter, so that many organizations do not poll in lockstep.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admin_api::{AdminApiClient, ApiError};
use crate::metrics::{ExporterMetrics, RenderedOrganization, SnapshotStore};
use crate::snapshot::{BuildOptions, Snapshot};
use crate::sources::{LastGood, Source, SourceKind};

/// `/healthz` allows a key-inventory poll to be this late beyond its interval and deadline.
pub const HEALTH_SLACK: Duration = Duration::from_secs(60);

/// What every organization's poller publishes to.
#[derive(Debug, Clone)]
pub struct Publishing {
    pub store: Arc<SnapshotStore>,
    pub metrics: ExporterMetrics,
    pub health: Arc<PollerHealth>,
    pub options: BuildOptions,
}

/// Polls one organization.
#[derive(Debug)]
pub struct Poller {
    organization: String,
    client: AdminApiClient,
    sources: Vec<Arc<dyn Source>>,
    deadline: Duration,
    publishing: Publishing,
    /// Instant all phases are counted from, shared by every organization of the process.
    epoch: Instant,
    state: tokio::sync::Mutex<LastGood>,
}

impl Poller {
    pub fn new(
        organization: &str,
        client: AdminApiClient,
        sources: Vec<Arc<dyn Source>>,
        deadline: Duration,
        publishing: Publishing,
        epoch: Instant,
    ) -> Self {
        Self {
            organization: organization.to_owned(),
            client,
            sources,
            deadline,
            publishing,
            epoch,
            state: tokio::sync::Mutex::new(LastGood::default()),
        }
    }

    /// Polls every source until `shutdown` is cancelled; in-flight polls are abandoned at shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        // NB: the key inventory's first poll waits for the first attempt of the sources listed before
        // it (workspaces, users...), so the first keys published already carry names; each of those
        // attempts is bounded by the deadline, and a failed one does not hold anything back.
        let first_round = Semaphore::new(0);
        let inventory_position = self
            .sources
            .iter()
            .position(|source| source.kind() == SourceKind::ApiKeys)
            .unwrap_or(0);
        let before_inventory = |index: usize, source: &dyn Source| {
            index < inventory_position && source.kind() != SourceKind::Usage
        };
        let waited_for = (self.sources.iter().enumerate())
            .filter(|(index, source)| before_inventory(*index, source.as_ref()))
            .count() as u32;
        let loops = self.sources.iter().enumerate().map(|(index, source)| {
            let waits_for = match source.kind() {
                SourceKind::ApiKeys => waited_for,
                _ => 0,
            };
            let releases = before_inventory(index, source.as_ref());
            self.run_source(source.as_ref(), &first_round, releases, waits_for)
        });
        tokio::select! {
            biased;
            () = shutdown.cancelled() => {}
            _ = futures_util::future::join_all(loops) => {}
        }
        tracing::debug!(organization = %self.organization, "Poller stopped.");
    }

    async fn run_source(
        &self,
        source: &dyn Source,
        first_round: &Semaphore,
        before_inventory: bool,
        waits_for: u32,
    ) {
        if waits_for > 0 {
            let _ = first_round.acquire_many(waits_for).await;
        }
        let phase = phase_of(&self.organization, source.kind(), source.interval());
        let mut first = true;
        loop {
            let started = Instant::now();
            // NB: a failure has been counted and logged; the next poll comes at the next interval.
            let _ = self.poll_source(source).await;
            if first && before_inventory {
                first_round.add_permits(1);
            }
            first = false;
            let next = next_start(self.epoch, started, source.interval(), phase);
            tokio::time::sleep_until(next).await;
        }
    }

    /// One poll of one source. The error has already been counted and logged when this returns.
    pub async fn poll_source(&self, source: &dyn Source) -> Result<(), ApiError> {
        let kind = source.kind();
        let started = Instant::now();
        let fetched = self
            .client
            .fetch(self.deadline, async |session| source.fetch(session).await)
            .await;
        let duration = started.elapsed();
        let metrics = &self.publishing.metrics;
        let update = match fetched {
            Ok(update) => update,
            Err(error) => {
                metrics.record_source_failure(&self.organization, kind, &error, duration);
                if kind == SourceKind::ApiKeys {
                    self.inventory_poll_finished(false);
                }
                return Err(error);
            }
        };
        let mut state = self.state.lock().await;
        let before = state.clone();
        update(&mut state);
        if kind == SourceKind::ApiKeys {
            self.warn_about_new_statuses(&state, &before);
        }
        // NB: what was fetched is what is published already (workspaces and the organization rarely
        // change, keys between two polls often do not): no new snapshot to join, render and compress.
        if *state == before {
            let keys = state
                .api_keys
                .as_ref()
                .map_or(0, |inventory| inventory.keys.len());
            drop(state);
            self.record_success(kind, duration, keys);
            return Ok(());
        }
        let last = state.clone();
        let organization = self.organization.clone();
        let options = self.publishing.options;
        let previous = self.publishing.store.get(&self.organization);
        // NB: joining and rendering tens of thousands of keys is CPU work; keep it off the async workers.
        let rendered = tokio::task::spawn_blocking(move || {
            let snapshot = Snapshot::build(&last, options);
            let rendered = RenderedOrganization::render(&organization, &snapshot);
            if let Some(previous) = previous {
                rendered.keep_plain_text_in_use(&previous);
            }
            (rendered, snapshot.keys.len())
        })
        .await;
        let Ok((rendered, keys)) = rendered else {
            tracing::error!(organization = %self.organization, "Rendering a snapshot panicked.");
            return Ok(());
        };
        self.publishing
            .store
            .publish(&self.organization, Arc::new(rendered));
        drop(state);
        // NB: the replaced snapshot and the poll's buffers are gone by now.
        crate::memory::note_freed();
        self.record_success(kind, duration, keys);
        Ok(())
    }

    /// Counts and logs a successful poll of a source whose data is published.
    fn record_success(&self, kind: SourceKind, duration: Duration, keys: usize) {
        self.publishing.metrics.record_source_success(
            &self.organization,
            kind,
            duration,
            SystemTime::now(),
        );
        if kind == SourceKind::ApiKeys {
            let first = self.inventory_poll_finished(true);
            let duration_ms = duration.as_millis() as u64;
            if first {
                tracing::info!(
                    organization = %self.organization,
                    keys,
                    duration_ms,
                    "First successful poll of the organization's API keys."
                );
            } else {
                tracing::debug!(organization = %self.organization, keys, duration_ms, "Polled the API keys.");
            }
        } else {
            tracing::debug!(organization = %self.organization, source = kind.label(), "Polled a source.");
        }
    }

    /// Records a finished key-inventory poll; true for the first successful one.
    fn inventory_poll_finished(&self, succeeded: bool) -> bool {
        self.publishing
            .health
            .inventory_poll_finished(&self.organization);
        self.publishing
            .store
            .record_inventory_poll(&self.organization, succeeded)
    }

    fn warn_about_new_statuses(&self, state: &LastGood, before: &LastGood) {
        let Some(now) = state.api_keys.as_ref().map(|i| &i.unknown_statuses) else {
            return;
        };
        let was = before.api_keys.as_ref().map(|i| &i.unknown_statuses);
        if !now.is_empty() && was != Some(now) {
            tracing::warn!(
                organization = %self.organization,
                statuses = ?now,
                "Some keys have a status this exporter does not know; they are exported with status=\"unknown\"."
            );
        }
    }
}

/// Where within its interval a source of an organization polls, from a hash of both names: stable
/// across restarts, spread evenly over many organizations.
fn phase_of(organization: &str, source: SourceKind, interval: Duration) -> Duration {
    let digest = Sha256::new()
        .chain_update(organization.as_bytes())
        .chain_update([0])
        .chain_update(source.label().as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let fraction = u64::from_be_bytes(first) as f64 / u64::MAX as f64;
    interval.mul_f64(fraction)
}

/// The next start: the first point of the source's phase at least 9/10 of an interval after the last
/// start (so consecutive polls are never much closer than the interval), plus up to 2 % jitter.
fn next_start(epoch: Instant, last_start: Instant, interval: Duration, phase: Duration) -> Instant {
    let interval_s = interval.as_secs_f64().max(1e-3);
    let earliest = last_start + interval.mul_f64(0.9);
    let since = earliest.saturating_duration_since(epoch).as_secs_f64() - phase.as_secs_f64();
    let periods = (since / interval_s).ceil().max(0.0);
    let aligned = epoch + phase + Duration::from_secs_f64(periods * interval_s);
    aligned + interval.mul_f64(0.02 * fastrand::f64())
}

/// Whether every organization's poller is alive, for `/healthz`: a process whose poller died or hangs
/// would otherwise serve a frozen snapshot while looking healthy.
#[derive(Debug, Default)]
pub struct PollerHealth {
    organizations: Mutex<HashMap<String, Liveness>>,
    /// Tells the pollers of one organization apart across restarts.
    started: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Liveness {
    /// Which start of the organization's poller this is about.
    generation: u64,
    running: bool,
    /// When the last key-inventory poll finished, or when the poller started.
    last_finished: Instant,
    /// How long a key-inventory poll may take to finish: interval + deadline + slack.
    allowed: Duration,
}

impl PollerHealth {
    /// Marks an organization's poller as running until the returned guard is dropped, which also
    /// happens when the poller's task panics or is aborted.
    pub fn track(self: &Arc<Self>, organization: &str, allowed: Duration) -> RunningPoller {
        let generation = self
            .started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().insert(
            organization.to_owned(),
            Liveness {
                generation,
                running: true,
                last_finished: Instant::now(),
                allowed,
            },
        );
        RunningPoller {
            health: Arc::clone(self),
            organization: organization.to_owned(),
            generation,
        }
    }

    /// Forgets an organization that is no longer polled.
    pub fn untrack(&self, organization: &str) {
        self.lock().remove(organization);
    }

    fn inventory_poll_finished(&self, organization: &str) {
        if let Some(liveness) = self.lock().get_mut(organization) {
            liveness.last_finished = Instant::now();
        }
    }

    /// Every poller runs, and each has finished a key-inventory poll within its allowance.
    pub fn all_running(&self) -> bool {
        self.problems().is_empty()
    }

    /// The organizations whose poller died or is stuck, for the `/healthz` answer and the log.
    pub fn problems(&self) -> Vec<String> {
        let now = Instant::now();
        let mut problems: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, l)| !l.running || now.duration_since(l.last_finished) > l.allowed)
            .map(|(organization, _)| organization.clone())
            .collect();
        problems.sort();
        problems
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Liveness>> {
        self.organizations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Held by a poller task for as long as it runs.
#[derive(Debug)]
pub struct RunningPoller {
    health: Arc<PollerHealth>,
    organization: String,
    generation: u64,
}

impl Drop for RunningPoller {
    fn drop(&mut self) {
        // NB: an aborted poller's task may be dropped after its organization was restarted: its
        // guard must not mark the new poller as stopped.
        if let Some(liveness) = self.health.lock().get_mut(&self.organization)
            && liveness.generation == self.generation
        {
            liveness.running = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_reports_a_poller_that_stopped_or_panicked_or_hangs() {
        let health = Arc::new(PollerHealth::default());
        assert!(health.all_running(), "no organization, nothing wrong");
        let running = health.track("a", Duration::from_secs(3600));
        assert!(health.all_running());
        let panicked = std::thread::spawn(move || {
            let _running = running;
            panic!("poller crashed");
        })
        .join();
        assert!(panicked.is_err());
        assert_eq!(health.problems(), ["a"]);
        health.untrack("a");
        let _stuck = health.track("b", Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            health.problems(),
            ["b"],
            "no poll finished within its allowance"
        );
    }

    #[test]
    fn the_guard_of_a_replaced_poller_dropped_late_does_not_mark_the_new_one_stopped() {
        let health = Arc::new(PollerHealth::default());
        let aborted = health.track("a", Duration::from_secs(3600));
        // Restarted before the aborted task was dropped.
        health.untrack("a");
        let restarted = health.track("a", Duration::from_secs(3600));
        drop(aborted);
        assert!(health.all_running(), "{:?}", health.problems());
        drop(restarted);
        assert_eq!(health.problems(), ["a"]);
    }

    #[test]
    fn polls_keep_their_interval_and_spread_over_it() {
        let epoch = Instant::now();
        let interval = Duration::from_secs(300);
        let mut phases: Vec<f64> = (0..200)
            .map(|i| phase_of(&format!("org-{i}"), SourceKind::ApiKeys, interval).as_secs_f64())
            .collect();
        phases.sort_by(f64::total_cmp);
        // Spread: every fifth of the interval gets some organizations.
        for fifth in 0..5 {
            let (low, high) = (fifth as f64 * 60.0, (fifth + 1) as f64 * 60.0);
            assert!(phases.iter().any(|p| (low..high).contains(p)), "{fifth}");
        }
        let phase = Duration::from_secs(100);
        let mut start = epoch;
        for _ in 0..20 {
            let next = next_start(epoch, start, interval, phase);
            let gap = next.duration_since(start);
            assert!(gap >= interval.mul_f64(0.9), "{gap:?}");
            assert!(gap <= interval.mul_f64(1.95), "{gap:?}");
            start = next;
        }
    }
}
