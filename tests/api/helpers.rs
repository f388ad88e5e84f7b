//! Spawning the exporter (in-process or as the real binary) against a fake Admin API, and reading what
//! it serves.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anthropic_keys_exporter::app::RunError;
use anthropic_keys_exporter::config::Config;
use wiremock::MockServer;

use crate::common::exporter::{RunningExporter, test_config};
pub(crate) use crate::common::exposition::{Metrics, Sample};

/// The admin key every test uses. Long and distinctive, so a leak anywhere is found by a substring search.
pub(crate) const ADMIN_KEY: &str = "sk-ant-admin01-TESTSECRET-7f3a9c1e5b2d4680";

/// The exporter running in-process against `admin_api`.
pub(crate) struct TestApp {
    pub(crate) address: SocketAddr,
    pub(crate) admin_api: MockServer,
    pub(crate) http: reqwest::Client,
    exporter: RunningExporter,
}

pub(crate) async fn spawn_app(admin_api: MockServer) -> TestApp {
    spawn_app_with(admin_api, |_| {}).await
}

/// The exporter against `admin_api`, configured as the command line would with fast retries, polling
/// only once (tests that need more polls shorten the interval), then changed by `customize`.
pub(crate) async fn spawn_app_with(
    admin_api: MockServer,
    customize: impl FnOnce(&mut Config),
) -> TestApp {
    init_test_logging();
    let mut config = test_config(&admin_api.uri(), ADMIN_KEY);
    config.poll.interval = Duration::from_secs(60 * 60);
    config.poll.request_timeout = Duration::from_secs(2);
    config.poll.deadline = Duration::from_secs(10);
    customize(&mut config);
    let exporter = RunningExporter::start(config).await;
    TestApp {
        address: exporter.address,
        admin_api,
        http: reqwest::Client::builder()
            .no_gzip()
            .build()
            .expect("client builds"),
        exporter,
    }
}

/// Logs go nowhere unless `TEST_LOG` is set.
fn init_test_logging() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("debug")
                .with_test_writer()
                .try_init();
        }
    });
}

impl TestApp {
    pub(crate) fn url(&self, path: &str) -> String {
        self.exporter.url(path)
    }

    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        self.exporter.get(&self.http, path).await
    }

    /// `GET path` asking for gzip, as Prometheus does.
    pub(crate) async fn get_gzip(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap()
    }

    pub(crate) async fn metrics_text(&self) -> String {
        self.exporter.scrape(&self.http).await
    }

    pub(crate) async fn metrics(&self) -> Metrics {
        self.exporter.metrics(&self.http).await
    }

    /// Waits until the exporter's metrics satisfy `condition`, for at most ten seconds.
    pub(crate) async fn wait_for(
        &self,
        what: &str,
        condition: impl Fn(&Metrics) -> bool,
    ) -> Metrics {
        self.exporter
            .wait_for(&self.http, what, condition, |metrics| metrics.text.clone())
            .await
    }

    /// Waits for the first poll to finish, successfully or not.
    pub(crate) async fn wait_for_first_poll(&self) -> Metrics {
        self.wait_for("the first poll", |m| m.value("anthropic_up", &[]).is_some())
            .await
    }

    /// Waits until `anthropic_exporter_polls_total` reaches `count`.
    pub(crate) async fn wait_for_polls(&self, count: f64) -> Metrics {
        self.wait_for(&format!("{count} polls"), |m| {
            m.value("anthropic_exporter_polls_total", &[("source", "api_keys")])
                .is_some_and(|polls| polls >= count)
        })
        .await
    }

    pub(crate) async fn stop(self) -> Result<(), RunError> {
        self.exporter.stop().await
    }
}

/// Repeats `attempt` every 50 ms until it returns true, for at most `limit`.
pub(crate) async fn eventually<F, Fut>(limit: Duration, what: &str, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !attempt().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Parses `text` with `prometheus_client.parser` from the official Python client, an independent
/// implementation of the text format. Fails loudly when it is missing rather than skipping.
pub(crate) fn parse_with_official_python_parser(text: &str) -> Vec<Sample> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"name": s.name, "labels": s.labels, "value": s.value})
json.dump(out, sys.stdout)
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is required for this test (scripts/test installs it)");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .expect("python3 reads the scrape");
    let output = child.wait_with_output().expect("python3 runs");
    assert!(
        output.status.success(),
        "the official Python parser failed (install it with `pip install prometheus-client`): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: Vec<serde_json::Value> =
        serde_json::from_slice(&output.stdout).expect("parser output is JSON");
    parsed
        .into_iter()
        .map(|sample| Sample {
            name: sample["name"].as_str().expect("name").to_owned(),
            labels: serde_json::from_value(sample["labels"].clone()).expect("labels"),
            value: sample["value"].as_f64().expect("value"),
        })
        .collect()
}

/// The real binary, started with `args` and `env`, its standard error collected.
pub(crate) struct ExporterProcess {
    child: Child,
    stderr: Arc<Mutex<String>>,
    pub(crate) address: SocketAddr,
}

impl ExporterProcess {
    /// Starts the binary on a free port and waits for its start-up line.
    pub(crate) fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_anthropic-keys-exporter"));
        command
            .args(["--web.listen-address", "127.0.0.1:0"])
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("the exporter binary starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(address) = listen_address_in(&line) {
                    let _ = address_tx.send(address);
                }
                let mut collected = sink.lock().expect("lock");
                collected.push_str(&line);
                collected.push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let address = loop {
            if let Ok(address) = address_rx.recv_timeout(Duration::from_millis(50)) {
                break address;
            }
            let exited = child.try_wait().expect("wait works");
            if exited.is_some() || Instant::now() > deadline {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "no start-up line ({exited:?}); stderr:\n{}",
                    stderr.lock().expect("lock")
                );
            }
        };
        Self {
            child,
            stderr,
            address: address
                .parse()
                .expect("the start-up line names a socket address"),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub(crate) fn logs(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// Waits until the logs contain `needle`, for at most `timeout`.
    pub(crate) fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.logs().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends the signal `name` (e.g. `HUP`) to the process.
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name}");
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("wait works").is_none()
    }

    /// Sends SIGTERM and returns the exit status and how long the process took to exit.
    pub(crate) fn terminate(mut self) -> (std::process::ExitStatus, Duration, String) {
        let started = Instant::now();
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait works") {
                std::thread::sleep(Duration::from_millis(50));
                return (status, started.elapsed(), self.logs());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the exporter did not exit within 15 s of SIGTERM; logs:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ExporterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The listen address from the start-up line, in text (`listen_address=…`) or JSON format.
fn listen_address_in(line: &str) -> Option<String> {
    if !line.contains("Starting anthropic-keys-exporter") {
        return None;
    }
    let start = line.find("listen_address")? + "listen_address".len();
    let rest = line[start..].trim_start_matches(['=', '"', ':']);
    let end = rest
        .find(|c: char| c == '"' || c.is_whitespace())
        .unwrap_or(rest.len());
    Some(rest[..end].to_owned())
}

/// Runs the binary to completion with `args` and `env`, for configuration errors.
pub(crate) fn run_to_completion(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_anthropic-keys-exporter"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("the exporter binary runs")
}
