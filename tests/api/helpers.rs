//! Spawning the exporter (in-process or as the real binary) against a fake Admin API, and reading what
//! it serves.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anthropic_keys_exporter::app::{App, RunError};
use anthropic_keys_exporter::config::{Config, Invocation, RetryPolicy};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wiremock::MockServer;

/// The admin key every test uses. Long and distinctive, so a leak anywhere is found by a substring search.
pub(crate) const ADMIN_KEY: &str = "sk-ant-admin01-TESTSECRET-7f3a9c1e5b2d4680";

/// The exporter running in-process against `admin_api`.
pub(crate) struct TestApp {
    pub(crate) address: SocketAddr,
    pub(crate) admin_api: MockServer,
    pub(crate) http: reqwest::Client,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), RunError>>,
}

/// A configuration as the command line would give it, pointed at `base_url`, with fast retries and
/// only the first poll (tests that need more polls shorten the interval).
pub(crate) fn test_config(base_url: &str) -> Config {
    let args = [
        "anthropic-keys-exporter",
        "--anthropic.base-url",
        base_url,
        "--web.listen-address",
        "127.0.0.1:0",
        "--organization",
        "acme",
        "--poll.interval",
        "1h",
        "--poll.timeout",
        "2s",
        "--poll.deadline",
        "10s",
    ];
    let invocation = Config::parse(args, |name| {
        (name == "ANTHROPIC_ADMIN_KEY").then(|| ADMIN_KEY.to_owned())
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

pub(crate) async fn spawn_app(admin_api: MockServer) -> TestApp {
    spawn_app_with(admin_api, |_| {}).await
}

pub(crate) async fn spawn_app_with(
    admin_api: MockServer,
    customize: impl FnOnce(&mut Config),
) -> TestApp {
    init_test_logging();
    let mut config = test_config(&admin_api.uri());
    customize(&mut config);
    let app = App::build(config).await.expect("the app builds");
    let address = app.local_addr();
    let shutdown = app.shutdown_token();
    let task = tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        admin_api,
        http: reqwest::Client::builder()
            .no_gzip()
            .build()
            .expect("client builds"),
        shutdown,
        task,
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
        format!("http://{}{path}", self.address)
    }

    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("request reaches the exporter")
    }

    pub(crate) async fn metrics_text(&self) -> String {
        let response = self.get("/metrics").await;
        assert_eq!(response.status(), 200);
        response.text().await.expect("body is text")
    }

    pub(crate) async fn metrics(&self) -> Metrics {
        Metrics::parse(&self.metrics_text().await)
    }

    /// Waits until the exporter's metrics satisfy `condition`, for at most ten seconds.
    pub(crate) async fn wait_for(
        &self,
        what: &str,
        condition: impl Fn(&Metrics) -> bool,
    ) -> Metrics {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let metrics = self.metrics().await;
            if condition(&metrics) {
                return metrics;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last scrape:\n{}",
                metrics.text
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the first poll to finish, successfully or not.
    pub(crate) async fn wait_for_first_poll(&self) -> Metrics {
        self.wait_for("the first poll", |m| m.value("anthropic_up", &[]).is_some())
            .await
    }

    /// Waits until `anthropic_exporter_polls_total` reaches `count`.
    pub(crate) async fn wait_for_polls(&self, count: f64) -> Metrics {
        self.wait_for(&format!("{count} polls"), |m| {
            m.value("anthropic_exporter_polls_total", &[])
                .is_some_and(|polls| polls >= count)
        })
        .await
    }

    pub(crate) async fn stop(self) -> Result<(), RunError> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the exporter stops within ten seconds")
            .expect("the exporter task does not panic")
    }
}

/// One sample of the text exposition format.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) value: f64,
}

/// A parsed scrape. The parser handles the escapes of the text format (`\\`, `\"`, `\n`); the hostile
/// name test cross-checks our output with the official Python client's parser as well.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub(crate) text: String,
    pub(crate) samples: Vec<Sample>,
}

impl Metrics {
    pub(crate) fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| parse_sample(line).unwrap_or_else(|| panic!("unparseable line: {line}")))
            .collect();
        Self {
            text: text.to_owned(),
            samples,
        }
    }

    /// All samples named `name` whose labels include `labels`.
    pub(crate) fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|sample| sample.name == name)
            .filter(|sample| {
                labels
                    .iter()
                    .all(|(k, v)| sample.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The value of the only sample named `name` with `labels`; panics if several match.
    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found = self.find(name, labels);
        assert!(
            found.len() <= 1,
            "{name}{labels:?} matches {} samples",
            found.len()
        );
        found.first().map(|sample| sample.value)
    }

    pub(crate) fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels)
            .iter()
            .map(|sample| sample.value)
            .sum()
    }

    /// Samples of the API-key families, for comparing two scrapes.
    pub(crate) fn key_samples(&self) -> Vec<Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name.starts_with("anthropic_api_key") || s.name == "anthropic_organization_info"
            })
            .filter(|s| s.name != "anthropic_api_key_expires_in_seconds")
            .cloned()
            .collect()
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after_brace) = rest.strip_prefix('{') {
        let mut chars = after_brace.char_indices();
        loop {
            let (start, c) = chars.next()?;
            if c == '}' {
                rest = &after_brace[start + 1..];
                break;
            }
            if c == ',' {
                continue;
            }
            let eq = after_brace[start..].find('=')? + start;
            let key = after_brace[start..eq].to_owned();
            while chars.next()?.0 < eq + 1 {}
            let mut value = String::new();
            loop {
                let (_, c) = chars.next()?;
                match c {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    other => value.push(other),
                }
            }
            labels.insert(key, value);
        }
    }
    let value = rest.trim().split(' ').next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
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
