//! The exporter under test: a configuration as the command line would give it, and the exporter
//! running in-process on a free loopback port.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anthropic_keys_exporter::admin_api::RetryPolicy;
use anthropic_keys_exporter::app::{App, RunError};
use anthropic_keys_exporter::config::{Config, Invocation};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::exposition::Metrics;

/// A configuration as the command line would give it: polling `base_url` with `admin_key` for the
/// organization `acme`, listening on a free loopback port, and retrying fast (twice, after 5 ms then
/// at most 20 ms). Everything else is the default; callers adjust the fields they need.
pub(crate) fn test_config(base_url: &str, admin_key: &str) -> Config {
    let args = [
        "anthropic-keys-exporter",
        "--anthropic.base-url",
        base_url,
        "--web.listen-address",
        "127.0.0.1:0",
        "--organization",
        "acme",
    ];
    let invocation = Config::parse(args, |name| {
        (name == "ANTHROPIC_ADMIN_KEY").then(|| admin_key.to_owned())
    })
    .expect("the test configuration is valid");
    let Invocation::Run(mut config) = invocation else {
        panic!("unexpected help output")
    };
    config.poll.retry = RetryPolicy {
        max_retries: 2,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
    };
    *config
}

/// The exporter running in-process, as `App::run_until_stopped` on a task of the test's runtime.
pub(crate) struct RunningExporter {
    pub(crate) address: SocketAddr,
    pub(crate) shutdown: CancellationToken,
    pub(crate) task: JoinHandle<Result<(), RunError>>,
}

impl RunningExporter {
    /// Builds the exporter from `config` and starts it; it listens once this returns.
    pub(crate) async fn start(config: Config) -> Self {
        let app = App::build(config).await.expect("the app builds");
        let address = app.local_addr();
        let shutdown = app.shutdown_token();
        let task = tokio::spawn(app.run_until_stopped());
        Self {
            address,
            shutdown,
            task,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Whether the exporter's task still runs: it has neither stopped nor panicked.
    pub(crate) fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    pub(crate) async fn get(&self, http: &reqwest::Client, path: &str) -> reqwest::Response {
        http.get(self.url(path))
            .send()
            .await
            .expect("request reaches the exporter")
    }

    /// The text of `/metrics`, which must answer 200.
    pub(crate) async fn scrape(&self, http: &reqwest::Client) -> String {
        let response = self.get(http, "/metrics").await;
        assert_eq!(response.status(), 200, "/metrics");
        response.text().await.expect("body is text")
    }

    pub(crate) async fn metrics(&self, http: &reqwest::Client) -> Metrics {
        Metrics::parse(&self.scrape(http).await)
    }

    /// Scrapes until the metrics satisfy `condition`, for at most ten seconds; on timeout, fails with
    /// `what` and `describe` of the last scrape.
    pub(crate) async fn wait_for(
        &self,
        http: &reqwest::Client,
        what: &str,
        condition: impl Fn(&Metrics) -> bool,
        describe: impl Fn(&Metrics) -> String,
    ) -> Metrics {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let metrics = self.metrics(http).await;
            if condition(&metrics) {
                return metrics;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last scrape:\n{}",
                describe(&metrics)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Cancels the exporter and waits for it to stop, for at most ten seconds.
    pub(crate) async fn stop(self) -> Result<(), RunError> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the exporter stops within ten seconds")
            .expect("the exporter task does not panic")
    }
}
