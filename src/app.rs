//! Wiring: builds the poller, the metrics and the HTTP server from a [`Config`], binds the socket, and
//! runs everything until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::admin_api::AdminApiClient;
use crate::config::Config;
use crate::demo::{self, FakeAdminApi};
use crate::http::web_config::{WebConfigError, WebConfigSource};
use crate::http::{AppState, router};
use crate::metrics::{ExporterMetrics, Exposition};
use crate::poller::{Poller, PollerHealth};
use crate::secret::{AdminKey, AdminKeySource};
use crate::snapshot::SnapshotStore;

/// How long in-flight HTTP requests may take to finish once shutdown has begun.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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
}

/// Why the exporter stopped on its own rather than on a shutdown signal.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the HTTP server task ended unexpectedly: {0}")]
    ServerTask(#[source] tokio::task::JoinError),
    #[error("the background poller stopped unexpectedly")]
    PollerStopped,
}

/// A built, bound, not yet running exporter.
#[derive(Debug)]
pub struct App {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: AppState,
    pollers: Vec<Poller>,
    shutdown: CancellationToken,
    base_url: Url,
    config: Config,
}

impl App {
    /// Builds the exporter and binds its socket (port 0 picks a free port, see [`App::local_addr`]).
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let shutdown = CancellationToken::new();
        let (base_url, key_source) = match &config.admin_key {
            Some(source) if !config.demo => (config.base_url.clone(), source.clone()),
            _ => {
                let dataset = demo::demo_dataset(time::OffsetDateTime::now_utc());
                let fake = FakeAdminApi::start(dataset, shutdown.child_token())
                    .await
                    .map_err(|error| StartupError::Demo(error.to_string()))?;
                let base_url = fake
                    .base_url()
                    .map_err(|error| StartupError::Demo(error.to_string()))?;
                let key = AdminKey::parse(demo::DEMO_ADMIN_KEY, "demo")
                    .map_err(|error| StartupError::Demo(error.to_string()))?;
                (base_url, AdminKeySource::Fixed(key))
            }
        };

        let organizations = [config.organization.as_str()];
        let metrics = Arc::new(ExporterMetrics::new(organizations)?);
        metrics.set_poll_interval(&config.organization, config.poll.interval);
        let store = Arc::new(SnapshotStore::new(organizations));
        let exposition = Exposition::new(&metrics, Arc::clone(&store))?;
        let client = AdminApiClient::new(
            &base_url,
            key_source,
            &config.poll,
            &config.organization,
            Arc::clone(&metrics),
        )?;
        let poller = Poller::new(
            &config.organization,
            client,
            Arc::clone(&store),
            metrics,
            config.poll.interval,
            config.poll.deadline,
        );

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
            health: Arc::new(PollerHealth::default()),
            telemetry_path: config.telemetry_path.clone(),
            web_config,
            max_requests: config.max_requests,
        };
        Ok(Self {
            listener,
            local_addr,
            state,
            pollers: vec![poller],
            shutdown,
            base_url,
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

    /// Serves HTTP and polls until the shutdown token is cancelled, or until the server or a poller
    /// fails, in which case everything else is stopped too.
    pub async fn run_until_stopped(self) -> Result<(), RunError> {
        let Self {
            listener,
            local_addr,
            state,
            pollers,
            shutdown,
            base_url,
            config,
        } = self;
        tracing::info!(
            version = crate::VERSION,
            revision = crate::REVISION,
            listen_address = %local_addr,
            telemetry_path = %config.telemetry_path,
            base_url = %base_url,
            organization = %config.organization,
            poll_interval = %humantime::format_duration(config.poll.interval),
            admin_key = %config.admin_key.as_ref().map_or_else(|| "demo".to_owned(), AdminKeySource::describe),
            demo = config.demo,
            web_config = %config
                .web_config_file
                .as_ref()
                .map_or_else(|| "none".to_owned(), |path| path.display().to_string()),
            "Starting anthropic-keys-exporter."
        );

        let mut poller_tasks = JoinSet::new();
        for poller in pollers {
            let running = state.health.track();
            let token = shutdown.clone();
            poller_tasks.spawn(async move {
                let _running = running;
                poller.run(token).await;
            });
        }

        let web_config = Arc::clone(&state.web_config);
        tokio::spawn(Arc::clone(&web_config).watch(shutdown.clone()));
        let mut server = tokio::spawn(crate::http::server::serve(
            listener,
            router(state),
            web_config,
            config.server_limits.clone(),
            shutdown.clone(),
            SHUTDOWN_GRACE,
        ));

        let outcome = tokio::select! {
            biased;
            () = shutdown.cancelled() => Ok(()),
            _ = poller_tasks.join_next() => {
                tracing::error!("The background poller stopped unexpectedly; shutting down.");
                Err(RunError::PollerStopped)
            }
            served = &mut server => {
                shutdown.cancel();
                poller_tasks.shutdown().await;
                return served.map_err(RunError::ServerTask);
            }
        };

        shutdown.cancel();
        poller_tasks.shutdown().await;
        server.await.map_err(RunError::ServerTask)?;
        tracing::info!("Stopped.");
        outcome
    }
}
