//! The organizations this replica polls, and their life cycle: started when they appear in the
//! configuration (and belong to this shard), stopped when they leave it (their series vanish at once),
//! restarted when their settings change.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admin_api::{AdminApiClient, ClientSettings, HttpClient};
use crate::config::{Config, OrganizationConfig};
use crate::poller::{HEALTH_SLACK, Poller, Publishing};
use crate::sources::sources_for;

/// How long a stopped organization's poller may take to let go.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FleetChange {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub restarted: Vec<String>,
    /// Organizations of the configuration that other shards poll.
    pub other_shards: usize,
}

#[derive(Debug)]
struct Running {
    config: OrganizationConfig,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The running pollers.
#[derive(Debug)]
pub struct Fleet {
    config: Arc<Config>,
    http: HttpClient,
    permits: Arc<Semaphore>,
    publishing: Publishing,
    epoch: Instant,
    running: BTreeMap<String, Running>,
    shutdown: CancellationToken,
}

impl Fleet {
    pub fn new(
        config: Arc<Config>,
        http: HttpClient,
        publishing: Publishing,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(config.poll.concurrency.max(1))),
            config,
            http,
            publishing,
            epoch: Instant::now(),
            running: BTreeMap::new(),
            shutdown,
        }
    }

    /// Makes the running pollers match `organizations` (of every shard; those of other shards are
    /// skipped).
    pub async fn apply(&mut self, organizations: Vec<OrganizationConfig>) -> FleetChange {
        let mut change = FleetChange::default();
        let mut wanted = BTreeMap::new();
        for organization in organizations {
            if self.config.shard.owns(&organization.name) {
                wanted.insert(organization.name.clone(), organization);
            } else {
                change.other_shards += 1;
            }
        }
        let gone: Vec<String> = self
            .running
            .iter()
            .filter(|(name, running)| wanted.get(*name) != Some(&running.config))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.stop(&name).await;
            if wanted.contains_key(&name) {
                change.restarted.push(name);
            } else {
                change.removed.push(name);
            }
        }
        for (name, organization) in wanted {
            if self.running.contains_key(&name) {
                continue;
            }
            if !change.restarted.contains(&name) {
                change.added.push(name.clone());
            }
            self.start(organization);
        }
        change
    }

    /// The organizations being polled.
    pub fn organizations(&self) -> Vec<String> {
        self.running.keys().cloned().collect()
    }

    fn start(&mut self, organization: OrganizationConfig) {
        let name = organization.name.clone();
        let metrics = &self.publishing.metrics;
        let sources = sources_for(&organization, &self.config);
        let intervals: Vec<_> = sources
            .iter()
            .map(|source| (source.kind(), source.interval()))
            .collect();
        metrics.add_organization(&name, &intervals);
        self.publishing.store.add(&name);
        let client = AdminApiClient::new(
            &self.http,
            &organization.base_url,
            organization.admin_key.clone(),
            ClientSettings {
                request_timeout: self.config.poll.request_timeout,
                retry: self.config.poll.retry,
            },
            metrics.request_observer(&name),
            Arc::clone(&self.permits),
        );
        let allowed = organization.poll_interval + self.config.poll.deadline + HEALTH_SLACK;
        let running = self.publishing.health.track(&name, allowed);
        let poller = Poller::new(
            &name,
            client,
            sources,
            self.config.poll.deadline,
            self.publishing.clone(),
            self.epoch,
        );
        let stop = self.shutdown.child_token();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let _running = running;
            poller.run(token).await;
        });
        self.running.insert(
            name,
            Running {
                config: organization,
                stop,
                task,
            },
        );
    }

    async fn stop(&mut self, name: &str) {
        let Some(running) = self.running.remove(name) else {
            return;
        };
        running.stop.cancel();
        let abort = running.task.abort_handle();
        if tokio::time::timeout(STOP_TIMEOUT, running.task)
            .await
            .is_err()
        {
            abort.abort();
        }
        // NB: only now, with the poller gone, can its series be removed for good.
        self.publishing.store.remove(name);
        self.publishing.metrics.remove_organization(name);
        self.publishing.health.untrack(name);
        crate::memory::note_freed();
    }

    /// Stops every poller.
    pub async fn stop_all(&mut self) {
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            self.stop(&name).await;
        }
    }
}
