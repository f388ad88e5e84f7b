//! Wiring: builds the pollers, the metrics and the HTTP server from a [`Config`], binds the socket, and
//! runs everything until shutdown, reloading the organizations on SIGHUP and when the config file
//! changes.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::admin_api::{ClientSettings, HttpClient, ProxySetting};
use crate::config::{Config, ConfigError, OrganizationConfig};
use crate::demo::{self, FakeAdminApi};
use crate::fleet::Fleet;
use crate::http::web_config::{WebConfigError, WebConfigSource};
use crate::http::{AppState, router};
use crate::metrics::{ExporterMetrics, Exposition, SnapshotStore};
use crate::poller::{PollerHealth, Publishing};
use crate::secret::{AdminKey, AdminKeySource};
use crate::snapshot::BuildOptions;

/// How long in-flight HTTP requests may take to finish once shutdown has begun.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often the config file is checked for changes.
const CONFIG_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How often text kept for scrapes without gzip is dropped, and freed memory given back.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(5);
/// Text inflated for scrapes without gzip stays this long after the last such scrape.
const PLAIN_TEXT_KEPT_FOR: Duration = Duration::from_secs(10);

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the demo Admin API: {0}")]
    Demo(String),
    #[error("cannot set up the metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot set up the HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
    #[error("{0}")]
    WebConfig(#[from] WebConfigError),
    #[error("{0}")]
    Config(#[from] ConfigError),
}

/// Why the exporter stopped on its own rather than on a shutdown signal.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the HTTP server task ended unexpectedly: {0}")]
    ServerTask(#[source] tokio::task::JoinError),
    #[error("the background poller stopped unexpectedly")]
    PollerStopped,
}

/// Asks a running exporter to reload its configuration (what SIGHUP does).
#[derive(Debug, Clone, Default)]
pub struct ReloadHandle(Arc<Notify>);

impl ReloadHandle {
    pub fn reload(&self) {
        self.0.notify_one();
    }
}

/// A built, bound, not yet running exporter.
#[derive(Debug)]
pub struct App {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: AppState,
    fleet: Fleet,
    organizations: Vec<OrganizationConfig>,
    metrics: ExporterMetrics,
    shutdown: CancellationToken,
    reload: ReloadHandle,
    config: Arc<Config>,
}

impl App {
    /// Builds the exporter and binds its socket (port 0 picks a free port, see [`App::local_addr`]).
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let shutdown = CancellationToken::new();
        let organizations = if config.demo {
            vec![start_demo(&config, &shutdown).await?]
        } else {
            config.organizations(&|name| std::env::var(name).ok())?
        };
        let config = Arc::new(config);

        let metrics = ExporterMetrics::new()?;
        metrics.record_config_reload(true, SystemTime::now());
        let store = Arc::new(SnapshotStore::default());
        let health = Arc::new(PollerHealth::default());
        let exposition = Exposition::new(&metrics, Arc::clone(&store))?;
        let http = HttpClient::new(
            &ClientSettings {
                request_timeout: config.poll.request_timeout,
                retry: config.poll.retry,
            },
            &config.proxy,
        )?;
        let publishing = Publishing {
            store: Arc::clone(&store),
            metrics: metrics.clone(),
            health: Arc::clone(&health),
            options: BuildOptions {
                creator_labels: config.users.creator_labels,
            },
        };
        let fleet = Fleet::new(Arc::clone(&config), http, publishing, shutdown.clone());

        let listener = TcpListener::bind(config.listen_address)
            .await
            .map_err(|source| StartupError::Bind {
                address: config.listen_address,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartupError::Bind {
            address: config.listen_address,
            source,
        })?;
        let web_config = Arc::new(match &config.web_config_file {
            Some(path) => {
                WebConfigSource::load(path, config.server_limits.web_config_check_interval).await?
            }
            None => WebConfigSource::disabled(),
        });
        let state = AppState {
            exposition,
            store,
            health,
            telemetry_path: config.telemetry_path.clone(),
            web_config,
            max_requests: config.max_requests,
        };
        Ok(Self {
            listener,
            local_addr,
            state,
            fleet,
            organizations,
            metrics,
            shutdown,
            reload: ReloadHandle::default(),
            config,
        })
    }

    /// The address the HTTP server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The web configuration in force; [`WebConfigSource::reload_now`] reloads it at once (SIGHUP).
    pub fn web_config(&self) -> Arc<WebConfigSource> {
        Arc::clone(&self.state.web_config)
    }

    /// Cancelling this token shuts the exporter down gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Triggers a reload of the config file, as SIGHUP does.
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    /// Serves HTTP and polls until the shutdown token is cancelled, or until the server fails, in
    /// which case everything else is stopped too.
    pub async fn run_until_stopped(self) -> Result<(), RunError> {
        let Self {
            listener,
            local_addr,
            state,
            mut fleet,
            organizations,
            metrics,
            shutdown,
            reload,
            config,
        } = self;
        let names: Vec<&str> = organizations.iter().map(|o| o.name.as_str()).collect();
        tracing::info!(
            version = crate::VERSION,
            revision = crate::REVISION,
            listen_address = %local_addr,
            telemetry_path = %config.telemetry_path,
            organizations = %names.join(","),
            config_file = %config.config_file.as_deref().map_or_else(|| "none".to_owned(), |p| p.display().to_string()),
            base_url = %config.base_url,
            shard = config.shard.index,
            total_shards = config.shard.total,
            poll_interval = %humantime::format_duration(config.poll.interval),
            poll_concurrency = config.poll.concurrency,
            admin_key = %config.admin_key.as_ref().map_or_else(|| if config.demo { "demo".to_owned() } else { "per organization".to_owned() }, AdminKeySource::describe),
            demo = config.demo,
            web_config = %config
                .web_config_file
                .as_ref()
                .map_or_else(|| "none".to_owned(), |path| path.display().to_string()),
            "Starting anthropic-keys-exporter."
        );
        log_proxy(&config.proxy, &config.base_url);
        let change = fleet.apply(organizations).await;
        if config.shard.total > 1 {
            tracing::info!(
                shard = config.shard.index,
                total_shards = config.shard.total,
                polled = change.added.len(),
                other_shards = change.other_shards,
                "Polling this shard's organizations."
            );
        }

        let store = Arc::clone(&state.store);
        let web_config = Arc::clone(&state.web_config);
        tokio::spawn(Arc::clone(&web_config).watch(shutdown.clone()));
        let mut server = tokio::spawn(crate::http::server::serve(
            listener,
            router(state),
            Arc::clone(&web_config),
            config.server_limits.clone(),
            shutdown.clone(),
            SHUTDOWN_GRACE,
        ));

        let mut watched = config.config_file.as_deref().map(file_fingerprint);
        let mut check = tokio::time::interval(CONFIG_CHECK_INTERVAL);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcome = loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ok(()),
                served = &mut server => {
                    shutdown.cancel();
                    fleet.stop_all().await;
                    return served.map_err(RunError::ServerTask);
                }
                () = reload.0.notified() => {
                    // NB: the web config's own rules apply: a reload never removes TLS or auth.
                    web_config.reload_now();
                    reload_organizations(&config, &mut fleet, &metrics, "signal").await;
                    watched = config.config_file.as_deref().map(file_fingerprint);
                }
                _ = housekeeping.tick() => {
                    if store.drop_unused_text(PLAIN_TEXT_KEPT_FOR) {
                        crate::memory::note_freed();
                    }
                    // NB: a trim of a large heap takes milliseconds; not on an async worker.
                    tokio::task::spawn_blocking(crate::memory::release_freed);
                }
                _ = check.tick() => {
                    let Some(path) = config.config_file.as_deref() else { continue };
                    let now = file_fingerprint(path);
                    if watched.as_ref() != Some(&now) {
                        watched = Some(now);
                        reload_organizations(&config, &mut fleet, &metrics, "file change").await;
                    }
                }
            }
        };

        shutdown.cancel();
        fleet.stop_all().await;
        server.await.map_err(RunError::ServerTask)?;
        tracing::info!("Stopped.");
        outcome
    }
}

async fn start_demo(
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<OrganizationConfig, StartupError> {
    let dataset = demo::demo_dataset(time::OffsetDateTime::now_utc());
    let fake = FakeAdminApi::start(dataset, shutdown.child_token())
        .await
        .map_err(|error| StartupError::Demo(error.to_string()))?;
    let base_url: Url = fake
        .base_url()
        .map_err(|error| StartupError::Demo(error.to_string()))?;
    let key = AdminKey::parse(demo::DEMO_ADMIN_KEY, "demo")
        .map_err(|error| StartupError::Demo(error.to_string()))?;
    Ok(OrganizationConfig {
        name: config.organization.clone(),
        admin_key: AdminKeySource::Fixed(key),
        base_url,
        poll_interval: config.poll.interval,
    })
}

/// Reloads the organizations; a configuration that does not load keeps the running one.
async fn reload_organizations(
    config: &Config,
    fleet: &mut Fleet,
    metrics: &ExporterMetrics,
    trigger: &str,
) {
    let Some(path) = config.config_file.as_deref() else {
        tracing::info!(
            trigger,
            "Reload requested; without --config.file there is nothing to reload (key files are re-read before every poll)."
        );
        return;
    };
    match config.organizations(&|name| std::env::var(name).ok()) {
        Ok(organizations) => {
            let change = fleet.apply(organizations).await;
            metrics.record_config_reload(true, SystemTime::now());
            tracing::info!(
                trigger,
                path = %path.display(),
                added = ?change.added,
                removed = ?change.removed,
                restarted = ?change.restarted,
                "Reloaded the config file."
            );
        }
        Err(error) => {
            metrics.record_config_reload(false, SystemTime::now());
            tracing::error!(
                trigger,
                error = %error,
                "The config file does not load; the running configuration stays in force."
            );
        }
    }
}

/// The file's content hash (missing or unreadable files hash to a marker), so that a Kubernetes
/// ConfigMap's symlink swap is noticed as well as an edit in place.
fn file_fingerprint(path: &Path) -> Option<[u8; 32]> {
    let text = std::fs::read(path).ok()?;
    Some(Sha256::digest(&text).into())
}

/// Names the proxy host (never its credentials) when the standard variables are in use.
fn log_proxy(proxy: &ProxySetting, base_url: &Url) {
    match proxy {
        ProxySetting::Direct => {}
        ProxySetting::Url(url) => tracing::info!(
            proxy_host = %url.host_str().unwrap_or("?"),
            "Admin API requests go through the proxy of --anthropic.proxy-url."
        ),
        ProxySetting::FromEnvironment => {
            let names: &[&str] = if base_url.scheme() == "https" {
                &["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
            } else {
                &["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
            };
            let found = names.iter().find_map(|name| {
                std::env::var(name)
                    .ok()
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| (name, v))
            });
            match found {
                Some((name, value)) => {
                    let host = Url::parse(value.trim())
                        .ok()
                        .and_then(|url| url.host_str().map(str::to_owned))
                        .unwrap_or_else(|| "an unparseable URL".to_owned());
                    tracing::warn!(
                        variable = name,
                        proxy_host = %host,
                        "Admin API requests, admin key included, go through the proxy named by the environment."
                    );
                }
                None => tracing::info!(
                    "--anthropic.proxy-from-env is set, but no proxy variable is; requests go directly."
                ),
            }
        }
    }
}
