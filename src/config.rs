//! Command-line flags (each also settable from an environment variable) and their validation into a
//! typed [`Config`].
//!
//! Flags are parsed as text and validated here rather than by clap's value parsers, so that every
//! invalid value produces one line naming both the flag and its environment variable.

use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use url::Url;

use crate::secret::{AdminKey, AdminKeyError, AdminKeySource};

/// The port this exporter listens on by default. 9100–9999 of the Prometheus default port
/// allocations are all taken, so we use one above that range that no well-known exporter uses.
pub const DEFAULT_PORT: u16 = 10419;

/// Environment variables that may hold the Admin API key, in order of preference. Both names are in
/// use in Anthropic's own documentation and tooling.
pub const ADMIN_KEY_ENV_VARS: [&str; 2] = ["ANTHROPIC_ADMIN_KEY", "ANTHROPIC_ADMIN_API_KEY"];

const ENV_KEY_FILE: &str = "ANTHROPIC_ADMIN_KEY_FILE";
const ENV_BASE_URL: &str = "ANTHROPIC_KEYS_EXPORTER_BASE_URL";
const ENV_ORGANIZATION: &str = "ANTHROPIC_KEYS_EXPORTER_ORGANIZATION";
const ENV_POLL_INTERVAL: &str = "ANTHROPIC_KEYS_EXPORTER_POLL_INTERVAL";
const ENV_POLL_TIMEOUT: &str = "ANTHROPIC_KEYS_EXPORTER_POLL_TIMEOUT";
const ENV_POLL_DEADLINE: &str = "ANTHROPIC_KEYS_EXPORTER_POLL_DEADLINE";
const ENV_POLL_MAX_RETRIES: &str = "ANTHROPIC_KEYS_EXPORTER_POLL_MAX_RETRIES";
const ENV_LISTEN_ADDRESS: &str = "ANTHROPIC_KEYS_EXPORTER_WEB_LISTEN_ADDRESS";
const ENV_TELEMETRY_PATH: &str = "ANTHROPIC_KEYS_EXPORTER_WEB_TELEMETRY_PATH";
const ENV_WEB_CONFIG_FILE: &str = "ANTHROPIC_KEYS_EXPORTER_WEB_CONFIG_FILE";
const ENV_MAX_REQUESTS: &str = "ANTHROPIC_KEYS_EXPORTER_WEB_MAX_REQUESTS";
const ENV_MAX_CONNECTIONS: &str = "ANTHROPIC_KEYS_EXPORTER_WEB_MAX_CONNECTIONS";
const ENV_LOG_LEVEL: &str = "ANTHROPIC_KEYS_EXPORTER_LOG_LEVEL";
const ENV_LOG_FORMAT: &str = "ANTHROPIC_KEYS_EXPORTER_LOG_FORMAT";
const ENV_DEMO: &str = "ANTHROPIC_KEYS_EXPORTER_DEMO";

/// Polls closer together than this would only burn the organization's rate limit: API keys change
/// on a human time scale.
const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_POLL_DEADLINE: Duration = Duration::from_secs(120);
const MAX_RETRIES_LIMIT: u32 = 10;

const AFTER_HELP: &str = "\
The Admin API key is read from the environment variable ANTHROPIC_ADMIN_KEY (or ANTHROPIC_ADMIN_API_KEY), \
or from the file given with --anthropic.admin-key-file, which is re-read before every poll. It is never \
accepted as a flag, so that it cannot show up in process listings.

Endpoints: / (landing page), the telemetry path (default /metrics), /healthz and /readyz \
(also /-/healthy and /-/ready).";

/// The flags as typed by the user, before validation.
#[derive(Debug, Parser)]
#[command(
    name = "anthropic-keys-exporter",
    version,
    about = "Prometheus exporter for the API keys of an Anthropic organization.",
    long_about = "Prometheus exporter for the API keys of an Anthropic organization. It lists every API key \
through the Admin API in the background and serves counts per status and workspace, each key's \
expiry, and its own health on /metrics.",
    after_help = AFTER_HELP
)]
struct Flags {
    /// File holding the Admin API key (e.g. a mounted Kubernetes Secret); re-read before every poll.
    #[arg(long = "anthropic.admin-key-file", env = ENV_KEY_FILE, value_name = "PATH")]
    admin_key_file: Option<PathBuf>,

    /// Base URL of the Anthropic API.
    #[arg(long = "anthropic.base-url", env = ENV_BASE_URL, value_name = "URL",
          default_value = "https://api.anthropic.com")]
    base_url: String,

    /// Value of the `organization` label on every metric.
    #[arg(long = "organization", env = ENV_ORGANIZATION, value_name = "NAME", default_value = "default")]
    organization: String,

    /// How often to list the organization's API keys.
    #[arg(long = "poll.interval", env = ENV_POLL_INTERVAL, value_name = "DURATION", default_value = "5m")]
    poll_interval: String,

    /// Timeout of each HTTP request to the Admin API [default: 30s, or the poll interval if shorter].
    #[arg(long = "poll.timeout", env = ENV_POLL_TIMEOUT, value_name = "DURATION")]
    poll_timeout: Option<String>,

    /// Deadline of a whole poll, retries and all pages included [default: 2m, or the poll interval if
    /// shorter].
    #[arg(long = "poll.deadline", env = ENV_POLL_DEADLINE, value_name = "DURATION")]
    poll_deadline: Option<String>,

    /// Retries of a request that failed with 408, 409, 429, 5xx or a connection error.
    #[arg(long = "poll.max-retries", env = ENV_POLL_MAX_RETRIES, value_name = "N", default_value = "2")]
    poll_max_retries: String,

    /// Address to listen on for HTTP requests (`:PORT` means every interface).
    #[arg(long = "web.listen-address", env = ENV_LISTEN_ADDRESS, value_name = "ADDRESS",
          default_value = ":10419")]
    listen_address: String,

    /// Path under which to expose metrics.
    #[arg(long = "web.telemetry-path", env = ENV_TELEMETRY_PATH, value_name = "PATH", default_value = "/metrics")]
    telemetry_path: String,

    /// Web configuration file (TLS, client certificates, basic auth) in the Prometheus exporter-toolkit
    /// format; re-read when it or the files it names change.
    #[arg(long = "web.config.file", env = ENV_WEB_CONFIG_FILE, value_name = "PATH")]
    web_config_file: Option<PathBuf>,

    /// Maximum number of concurrent scrapes; more get 503 at once. 0 means no limit.
    #[arg(long = "web.max-requests", env = ENV_MAX_REQUESTS, value_name = "N", default_value = "40")]
    max_requests: String,

    /// Maximum number of open HTTP connections; more are closed at once (a few reserved slots still
    /// answer health and readiness probes).
    #[arg(long = "web.max-connections", env = ENV_MAX_CONNECTIONS, value_name = "N", default_value = "1024")]
    max_connections: String,

    /// Log level: error, warn, info, debug or trace. `RUST_LOG`, if set, takes precedence.
    #[arg(long = "log.level", env = ENV_LOG_LEVEL, value_name = "LEVEL", default_value = "info")]
    log_level: String,

    /// Log format: text or json.
    #[arg(long = "log.format", env = ENV_LOG_FORMAT, value_name = "FORMAT", default_value = "text")]
    log_format: String,

    /// Serve a built-in simulated organization instead of calling the Admin API: no key, no network.
    #[arg(long = "demo", env = ENV_DEMO)]
    demo: bool,

    /// Validate the configuration (and read the admin key) and exit.
    #[arg(long = "config.check")]
    check_config: bool,
}

/// The validated configuration of one exporter process.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the Admin API key comes from. `None` only in demo mode.
    pub admin_key: Option<AdminKeySource>,
    /// Base URL of the Anthropic API, without a trailing slash.
    pub base_url: Url,
    /// Value of the `organization` label.
    pub organization: String,
    pub poll: PollSettings,
    /// Address the HTTP server binds to; port 0 picks a free port.
    pub listen_address: SocketAddr,
    /// Path of the metrics endpoint.
    pub telemetry_path: String,
    /// TLS and basic auth settings, in the exporter-toolkit format.
    pub web_config_file: Option<PathBuf>,
    /// Concurrent scrapes allowed; 0 means no limit.
    pub max_requests: usize,
    /// Connection limit (`--web.max-connections`) and the server's timeouts.
    pub server_limits: crate::http::server::ServerLimits,
    pub log: LogSettings,
    /// Serve the built-in simulated organization.
    pub demo: bool,
    /// Only validate the configuration.
    pub check_only: bool,
}

/// How the Admin API is polled.
#[derive(Debug, Clone)]
pub struct PollSettings {
    pub interval: Duration,
    pub request_timeout: Duration,
    pub deadline: Duration,
    pub retry: RetryPolicy,
}

/// Retries as the official SDKs do them: exponential backoff from `initial_backoff` doubling up to
/// `max_backoff`, each delay shortened by up to 25 % jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 2,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub level: tracing::Level,
    pub format: LogFormat,
}

/// A configuration the exporter cannot start with. Each message is one line that names the flag and
/// its environment variable; none contains the admin key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value '{value}' for {flag} (env {env}): {reason}")]
    InvalidValue {
        flag: &'static str,
        env: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "no Admin API key: set the environment variable ANTHROPIC_ADMIN_KEY (or ANTHROPIC_ADMIN_API_KEY), \
or pass --anthropic.admin-key-file PATH (env ANTHROPIC_ADMIN_KEY_FILE); an organization admin creates \
Admin keys in the Claude Console under Settings > Admin keys, or run with --demo to try the exporter without one"
    )]
    MissingAdminKey,
    #[error("{0} (--anthropic.admin-key-file, env ANTHROPIC_ADMIN_KEY_FILE)")]
    AdminKeyFile(AdminKeyError),
    #[error("{0}")]
    AdminKey(AdminKeyError),
    #[error("{0} (--web.config.file, env ANTHROPIC_KEYS_EXPORTER_WEB_CONFIG_FILE)")]
    WebConfig(crate::http::web_config::WebConfigError),
    #[error("{0}")]
    Flags(String),
}

/// The outcome of reading the command line: either a configuration, or text that clap already rendered
/// for `--help` / `--version`.
#[derive(Debug)]
pub enum Invocation {
    Run(Box<Config>),
    PrintAndExit(String),
}

impl Config {
    /// Parses the process's command line and environment.
    pub fn from_env_and_args() -> Result<Invocation, ConfigError> {
        Self::parse(std::env::args_os(), |name| std::env::var(name).ok())
    }

    /// Parses `args` (the first being the program name); `env` looks up the variables clap does not
    /// read itself (the admin key), so that tests need not touch the process environment.
    pub fn parse<I, T>(
        args: I,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Invocation, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let flags = match Flags::try_parse_from(args) {
            Ok(flags) => flags,
            Err(error) => {
                use clap::error::ErrorKind;
                return match error.kind() {
                    ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                        Ok(Invocation::PrintAndExit(error.render().to_string()))
                    }
                    _ => Err(ConfigError::Flags(first_line(&error.render().to_string()))),
                };
            }
        };
        flags
            .validate(env)
            .map(|config| Invocation::Run(Box::new(config)))
    }
}

impl Flags {
    fn validate(self, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let base_url = parse_base_url(&self.base_url)?;
        let organization = self.organization.trim().to_owned();
        if organization.is_empty() {
            return Err(invalid(
                "--organization",
                ENV_ORGANIZATION,
                &self.organization,
                "must not be empty",
            ));
        }

        let interval = parse_duration("--poll.interval", ENV_POLL_INTERVAL, &self.poll_interval)?;
        if interval < MIN_POLL_INTERVAL {
            return Err(invalid(
                "--poll.interval",
                ENV_POLL_INTERVAL,
                &self.poll_interval,
                "must be at least 1s",
            ));
        }
        let request_timeout = match &self.poll_timeout {
            Some(text) => {
                let timeout = parse_duration("--poll.timeout", ENV_POLL_TIMEOUT, text)?;
                if timeout.is_zero() || timeout > interval {
                    return Err(invalid(
                        "--poll.timeout",
                        ENV_POLL_TIMEOUT,
                        text,
                        "must be greater than zero and no longer than --poll.interval",
                    ));
                }
                timeout
            }
            None => DEFAULT_REQUEST_TIMEOUT.min(interval),
        };
        let deadline = match &self.poll_deadline {
            Some(text) => {
                let deadline = parse_duration("--poll.deadline", ENV_POLL_DEADLINE, text)?;
                if deadline < request_timeout || deadline > interval {
                    return Err(invalid(
                        "--poll.deadline",
                        ENV_POLL_DEADLINE,
                        text,
                        "must lie between --poll.timeout and --poll.interval",
                    ));
                }
                deadline
            }
            None => DEFAULT_POLL_DEADLINE.min(interval).max(request_timeout),
        };
        let max_retries = self
            .poll_max_retries
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|retries| *retries <= MAX_RETRIES_LIMIT)
            .ok_or_else(|| {
                invalid(
                    "--poll.max-retries",
                    ENV_POLL_MAX_RETRIES,
                    &self.poll_max_retries,
                    "expected a whole number from 0 to 10",
                )
            })?;

        let listen_address = parse_listen_address(&self.listen_address)?;
        let telemetry_path = parse_telemetry_path(&self.telemetry_path)?;
        if let Some(path) = &self.web_config_file {
            // NB: load it now so that a broken file stops start-up with exit code 2, like any bad flag.
            crate::http::web_config::WebConfig::check(path).map_err(ConfigError::WebConfig)?;
        }
        let max_requests = self.max_requests.trim().parse::<usize>().map_err(|_| {
            invalid(
                "--web.max-requests",
                ENV_MAX_REQUESTS,
                &self.max_requests,
                "expected a whole number, 0 for no limit",
            )
        })?;
        let max_connections = self
            .max_connections
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|max| *max > 0)
            .ok_or_else(|| {
                invalid(
                    "--web.max-connections",
                    ENV_MAX_CONNECTIONS,
                    &self.max_connections,
                    "expected a whole number of at least 1",
                )
            })?;
        let log = LogSettings {
            level: self.log_level.trim().parse().map_err(|_| {
                invalid(
                    "--log.level",
                    ENV_LOG_LEVEL,
                    &self.log_level,
                    "expected one of error, warn, info, debug, trace",
                )
            })?,
            format: match self.log_format.trim().to_ascii_lowercase().as_str() {
                "text" | "logfmt" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => {
                    return Err(invalid(
                        "--log.format",
                        ENV_LOG_FORMAT,
                        &self.log_format,
                        "expected text or json",
                    ));
                }
            },
        };

        let admin_key = if self.demo {
            None
        } else {
            Some(admin_key_source(self.admin_key_file, &env)?)
        };

        Ok(Config {
            admin_key,
            base_url,
            organization,
            poll: PollSettings {
                interval,
                request_timeout,
                deadline,
                retry: RetryPolicy {
                    max_retries,
                    ..RetryPolicy::default()
                },
            },
            listen_address,
            telemetry_path,
            web_config_file: self.web_config_file,
            max_requests,
            server_limits: crate::http::server::ServerLimits {
                max_connections,
                ..Default::default()
            },
            log,
            demo: self.demo,
            check_only: self.check_config,
        })
    }
}

fn admin_key_source(
    file: Option<PathBuf>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<AdminKeySource, ConfigError> {
    if let Some(path) = file {
        let source = AdminKeySource::File(path.clone());
        // NB: read it once now so that a wrong path fails at start-up, not at the first poll.
        let raw = std::fs::read_to_string(&path).map_err(|source| {
            ConfigError::AdminKeyFile(AdminKeyError::Unreadable {
                path: path.clone(),
                source,
            })
        })?;
        if raw.trim().is_empty() {
            return Err(ConfigError::AdminKeyFile(AdminKeyError::EmptyFile { path }));
        }
        AdminKey::parse(&raw, &path.display().to_string()).map_err(ConfigError::AdminKeyFile)?;
        return Ok(source);
    }
    for name in ADMIN_KEY_ENV_VARS {
        if let Some(raw) = env(name) {
            if raw.trim().is_empty() {
                continue;
            }
            let key = AdminKey::parse(&raw, name).map_err(ConfigError::AdminKey)?;
            return Ok(AdminKeySource::Fixed(key));
        }
    }
    Err(ConfigError::MissingAdminKey)
}

fn invalid(
    flag: &'static str,
    env: &'static str,
    value: &str,
    reason: impl Into<String>,
) -> ConfigError {
    ConfigError::InvalidValue {
        flag,
        env,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

fn parse_duration(
    flag: &'static str,
    env: &'static str,
    text: &str,
) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text.trim()).map_err(|error| {
        invalid(
            flag,
            env,
            text,
            format!("expected a duration such as 30s or 5m ({error})"),
        )
    })
}

fn parse_base_url(text: &str) -> Result<Url, ConfigError> {
    let flag = "--anthropic.base-url";
    let mut url = Url::parse(text.trim()).map_err(|error| {
        invalid(
            flag,
            ENV_BASE_URL,
            text,
            format!("not an absolute URL ({error})"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid(
            flag,
            ENV_BASE_URL,
            text,
            "expected an http:// or https:// URL with a host",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            flag,
            ENV_BASE_URL,
            text,
            "must not contain a query or fragment",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            flag,
            ENV_BASE_URL,
            text,
            "must not contain credentials",
        ));
    }
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&path);
    Ok(url)
}

fn parse_listen_address(text: &str) -> Result<SocketAddr, ConfigError> {
    let flag = "--web.listen-address";
    let trimmed = text.trim();
    let candidate = match trimmed.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => trimmed.to_owned(),
    };
    if let Ok(address) = candidate.parse::<SocketAddr>() {
        return Ok(address);
    }
    candidate
        .to_socket_addrs()
        .ok()
        .and_then(|mut addresses| addresses.next())
        .ok_or_else(|| {
            invalid(
                flag,
                ENV_LISTEN_ADDRESS,
                text,
                "expected HOST:PORT or :PORT, e.g. :10419 or 127.0.0.1:10419",
            )
        })
}

fn parse_telemetry_path(text: &str) -> Result<String, ConfigError> {
    let flag = "--web.telemetry-path";
    let path = text.trim();
    if !path.starts_with('/') || path.len() < 2 || path.contains(['?', '#', ' ', '*', '{', '}']) {
        return Err(invalid(
            flag,
            ENV_TELEMETRY_PATH,
            text,
            "expected an absolute path such as /metrics, without query, spaces or wildcards",
        ));
    }
    if crate::http::RESERVED_PATHS.contains(&path) {
        return Err(invalid(
            flag,
            ENV_TELEMETRY_PATH,
            text,
            "collides with a health endpoint",
        ));
    }
    Ok(path.to_owned())
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("invalid command line")
        .trim_start_matches("error: ")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-ant-admin01-unit-test-key";

    fn parse_with_key(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["anthropic-keys-exporter"];
        argv.extend_from_slice(args);
        match Config::parse(argv, |name| {
            (name == "ANTHROPIC_ADMIN_KEY").then(|| KEY.to_owned())
        })? {
            Invocation::Run(config) => Ok(*config),
            Invocation::PrintAndExit(text) => panic!("unexpected help output: {text}"),
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = parse_with_key(&[]).unwrap();
        assert_eq!(config.base_url.as_str(), "https://api.anthropic.com/");
        assert_eq!(config.organization, "default");
        assert_eq!(config.poll.interval, Duration::from_secs(300));
        assert_eq!(config.poll.request_timeout, Duration::from_secs(30));
        assert_eq!(config.poll.deadline, Duration::from_secs(120));
        assert_eq!(config.poll.retry, RetryPolicy::default());
        assert_eq!(config.listen_address, "0.0.0.0:10419".parse().unwrap());
        assert_eq!(config.telemetry_path, "/metrics");
        assert_eq!(config.server_limits.max_connections, 1024);
        assert_eq!(config.log.level, tracing::Level::INFO);
        assert_eq!(config.log.format, LogFormat::Text);
        assert!(matches!(config.admin_key, Some(AdminKeySource::Fixed(_))));
    }

    #[test]
    fn the_second_key_variable_name_is_accepted_too() {
        let invocation = Config::parse(["x"], |name| {
            (name == "ANTHROPIC_ADMIN_API_KEY").then(|| KEY.to_owned())
        });
        assert!(matches!(invocation, Ok(Invocation::Run(_))));
    }

    #[test]
    fn a_missing_key_says_how_to_provide_one() {
        let error = Config::parse(["x"], |_| None).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("ANTHROPIC_ADMIN_KEY"), "{message}");
        assert!(message.contains("--anthropic.admin-key-file"), "{message}");
        assert!(!message.contains('\n'));
    }

    #[test]
    fn demo_mode_needs_no_key() {
        let invocation = Config::parse(["x", "--demo"], |_| None).unwrap();
        let Invocation::Run(config) = invocation else {
            panic!("expected a config")
        };
        assert!(config.demo);
        assert!(config.admin_key.is_none());
    }

    #[test]
    fn every_invalid_value_names_its_flag_and_env_var_on_one_line() {
        let cases: &[(&[&str], &str, &str)] = &[
            (
                &["--poll.interval", "soon"],
                "--poll.interval",
                ENV_POLL_INTERVAL,
            ),
            (
                &["--poll.interval", "10ms"],
                "--poll.interval",
                ENV_POLL_INTERVAL,
            ),
            (
                &["--poll.timeout", "0s"],
                "--poll.timeout",
                ENV_POLL_TIMEOUT,
            ),
            (
                &["--poll.interval", "10s", "--poll.timeout", "30s"],
                "--poll.timeout",
                ENV_POLL_TIMEOUT,
            ),
            (
                &["--poll.deadline", "10m"],
                "--poll.deadline",
                ENV_POLL_DEADLINE,
            ),
            (
                &["--poll.max-retries", "11"],
                "--poll.max-retries",
                ENV_POLL_MAX_RETRIES,
            ),
            (
                &["--poll.max-retries=-1"],
                "--poll.max-retries",
                ENV_POLL_MAX_RETRIES,
            ),
            (
                &["--anthropic.base-url", "api.anthropic.com"],
                "--anthropic.base-url",
                ENV_BASE_URL,
            ),
            (
                &["--anthropic.base-url", "ftp://x"],
                "--anthropic.base-url",
                ENV_BASE_URL,
            ),
            (
                &["--web.listen-address", "nowhere"],
                "--web.listen-address",
                ENV_LISTEN_ADDRESS,
            ),
            (
                &["--web.telemetry-path", "metrics"],
                "--web.telemetry-path",
                ENV_TELEMETRY_PATH,
            ),
            (
                &["--web.telemetry-path", "/healthz"],
                "--web.telemetry-path",
                ENV_TELEMETRY_PATH,
            ),
            (&["--log.level", "loud"], "--log.level", ENV_LOG_LEVEL),
            (
                &["--web.max-requests", "many"],
                "--web.max-requests",
                ENV_MAX_REQUESTS,
            ),
            (
                &["--web.config.file", "/nonexistent/web.yml"],
                "--web.config.file",
                ENV_WEB_CONFIG_FILE,
            ),
            (
                &["--web.max-connections", "0"],
                "--web.max-connections",
                ENV_MAX_CONNECTIONS,
            ),
            (&["--log.format", "xml"], "--log.format", ENV_LOG_FORMAT),
            (&["--organization", " "], "--organization", ENV_ORGANIZATION),
        ];
        for (args, flag, env) in cases {
            let message = parse_with_key(args).unwrap_err().to_string();
            assert!(message.contains(flag), "{args:?}: {message}");
            assert!(message.contains(env), "{args:?}: {message}");
            assert!(!message.contains('\n'), "{args:?}: {message}");
        }
    }

    #[test]
    fn an_unknown_flag_is_reported_on_one_line() {
        let message = parse_with_key(&["--poll.intervall", "5m"])
            .unwrap_err()
            .to_string();
        assert!(message.contains("--poll.intervall"), "{message}");
        assert!(!message.contains('\n'));
    }

    #[test]
    fn listen_address_accepts_the_prometheus_port_only_form() {
        let config = parse_with_key(&["--web.listen-address", "127.0.0.1:0"]).unwrap();
        assert_eq!(config.listen_address, "127.0.0.1:0".parse().unwrap());
        let config = parse_with_key(&["--web.listen-address", ":9999"]).unwrap();
        assert_eq!(config.listen_address.port(), 9999);
    }

    #[test]
    fn base_url_loses_its_trailing_slash() {
        let config =
            parse_with_key(&["--anthropic.base-url", "http://127.0.0.1:8080/proxy/"]).unwrap();
        assert_eq!(config.base_url.as_str(), "http://127.0.0.1:8080/proxy");
    }

    #[test]
    fn the_deadline_defaults_to_the_interval_when_that_is_shorter() {
        let config = parse_with_key(&["--poll.interval", "1m", "--poll.timeout", "10s"]).unwrap();
        assert_eq!(config.poll.deadline, Duration::from_secs(60));
    }

    #[test]
    fn a_key_file_is_read_and_checked_at_start_up() {
        let dir = std::env::temp_dir().join(format!("ake-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let args = ["x", "--anthropic.admin-key-file", empty.to_str().unwrap()];
        let message = Config::parse(args, |_| None).unwrap_err().to_string();
        assert!(
            message.contains("is empty") && message.contains("ANTHROPIC_ADMIN_KEY_FILE"),
            "{message}"
        );

        let missing = dir.join("missing");
        let args = ["x", "--anthropic.admin-key-file", missing.to_str().unwrap()];
        let message = Config::parse(args, |_| None).unwrap_err().to_string();
        assert!(message.contains("cannot read"), "{message}");

        let good = dir.join("good");
        std::fs::write(&good, format!("{KEY}\n")).unwrap();
        let args = ["x", "--anthropic.admin-key-file", good.to_str().unwrap()];
        assert!(matches!(
            Config::parse(args, |_| None),
            Ok(Invocation::Run(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
