//! Command-line flags (each also settable from an environment variable) and their validation into a
//! typed [`Config`]; the organizations come from the flags or from a file ([`file`]).
//!
//! Each flag and its environment variable are spelled once, in [`Flags`]: error messages look both up
//! in clap's definition, so every invalid value produces one line naming the flag and its variable.

pub mod file;

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use url::Url;

use crate::admin_api::{ProxySetting, RetryPolicy};
use crate::secret::{AdminKey, AdminKeyError, AdminKeySource};
use crate::sharding::Shard;

/// The port this exporter listens on by default. 9100–9999 of the Prometheus default port
/// allocations are all taken, so we use one above that range that no well-known exporter uses.
pub const DEFAULT_PORT: u16 = 10419;

/// Environment variables that may hold the Admin API key, in order of preference. Both names are in
/// use in Anthropic's own documentation and tooling.
pub const ADMIN_KEY_ENV_VARS: [&str; 2] = ["ANTHROPIC_ADMIN_KEY", "ANTHROPIC_ADMIN_API_KEY"];

/// Polls closer together than this would only burn the organization's rate limit: API keys change
/// on a human time scale.
const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The usage report documents polling "once per minute for sustained use".
const MIN_USAGE_INTERVAL: Duration = Duration::from_secs(60);
/// The usage report's history depth is not documented; 90 days is three pages of daily buckets.
const MAX_USAGE_LOOKBACK: Duration = Duration::from_secs(90 * 86_400);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_POLL_DEADLINE: Duration = Duration::from_secs(120);
const MAX_RETRIES_LIMIT: u32 = 10;

const AFTER_HELP: &str = "\
The Admin API key is read from the file given with --anthropic.admin-key-file (recommended; re-read \
before every poll), or from the environment variable ANTHROPIC_ADMIN_KEY (or ANTHROPIC_ADMIN_API_KEY). \
It is never accepted as a flag. Several organizations are configured with --config.file.

Endpoints: / (landing page), the telemetry path (default /metrics), /healthz and /readyz \
(also /-/healthy and /-/ready).";

/// The flags as typed by the user, before validation.
#[derive(Debug, Parser)]
#[command(
    name = "anthropic-keys-exporter",
    version,
    about = "Prometheus exporter for the API keys of Anthropic organizations.",
    long_about = "Prometheus exporter for the API keys of Anthropic organizations. It lists every API key \
through the Admin API in the background and serves counts per status and workspace, each key's \
expiry, creator and last use, and its own health on /metrics.",
    after_help = AFTER_HELP
)]
struct Flags {
    /// YAML file listing the organizations to poll, each with its own admin key; reloaded on SIGHUP
    /// and when it changes. Without it, the flags below describe one organization.
    #[arg(
        long = "config.file",
        env = "ANTHROPIC_KEYS_EXPORTER_CONFIG_FILE",
        value_name = "PATH"
    )]
    config_file: Option<PathBuf>,

    /// File holding the Admin API key (e.g. a mounted Kubernetes Secret); re-read before every poll.
    #[arg(
        long = "anthropic.admin-key-file",
        env = "ANTHROPIC_ADMIN_KEY_FILE",
        value_name = "PATH"
    )]
    admin_key_file: Option<PathBuf>,

    /// Base URL of the Anthropic API. Plain http:// is refused except for loopback hosts.
    #[arg(
        long = "anthropic.base-url",
        env = "ANTHROPIC_KEYS_EXPORTER_BASE_URL",
        value_name = "URL",
        default_value = "https://api.anthropic.com"
    )]
    base_url: String,

    /// Allow plain http:// base URLs to hosts other than loopback (the admin key then travels
    /// unencrypted).
    #[arg(
        long = "anthropic.allow-insecure-http",
        env = "ANTHROPIC_KEYS_EXPORTER_ALLOW_INSECURE_HTTP"
    )]
    allow_insecure_http: bool,

    /// Send Admin API requests through this HTTP(S) proxy. Without it no proxy is used.
    #[arg(
        long = "anthropic.proxy-url",
        env = "ANTHROPIC_KEYS_EXPORTER_PROXY_URL",
        value_name = "URL"
    )]
    proxy_url: Option<String>,

    /// Use the proxy named by HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY (ignored otherwise).
    #[arg(
        long = "anthropic.proxy-from-env",
        env = "ANTHROPIC_KEYS_EXPORTER_PROXY_FROM_ENV"
    )]
    proxy_from_env: bool,

    /// Value of the `organization` label when the flags describe the one organization.
    #[arg(
        long = "organization",
        env = "ANTHROPIC_KEYS_EXPORTER_ORGANIZATION",
        value_name = "NAME",
        default_value = "default"
    )]
    organization: String,

    /// How often to list each organization's API keys (and workspaces, and the organization itself).
    #[arg(
        long = "poll.interval",
        env = "ANTHROPIC_KEYS_EXPORTER_POLL_INTERVAL",
        value_name = "DURATION",
        default_value = "5m"
    )]
    poll_interval: String,

    /// Timeout of each HTTP request to the Admin API [default: 30s, or the poll interval if shorter].
    #[arg(
        long = "poll.timeout",
        env = "ANTHROPIC_KEYS_EXPORTER_POLL_TIMEOUT",
        value_name = "DURATION"
    )]
    poll_timeout: Option<String>,

    /// Deadline of one source's poll, retries and all pages included [default: 2m, or the poll
    /// interval if shorter].
    #[arg(
        long = "poll.deadline",
        env = "ANTHROPIC_KEYS_EXPORTER_POLL_DEADLINE",
        value_name = "DURATION"
    )]
    poll_deadline: Option<String>,

    /// Retries of a request that failed with 408, 409, 429, 5xx or a connection error.
    #[arg(
        long = "poll.max-retries",
        env = "ANTHROPIC_KEYS_EXPORTER_POLL_MAX_RETRIES",
        value_name = "N",
        default_value = "2"
    )]
    poll_max_retries: String,

    /// Most requests in flight to the Admin API at once, across all organizations.
    #[arg(
        long = "poll.concurrency",
        env = "ANTHROPIC_KEYS_EXPORTER_POLL_CONCURRENCY",
        value_name = "N",
        default_value = "4"
    )]
    poll_concurrency: String,

    /// How often to list each organization's users (for key creators).
    #[arg(
        long = "users.interval",
        env = "ANTHROPIC_KEYS_EXPORTER_USERS_INTERVAL",
        value_name = "DURATION",
        default_value = "1h"
    )]
    users_interval: String,

    /// Export the creator's name and e-mail on anthropic_api_key_info (false keeps personal data out of
    /// the metrics; membership is still exported).
    #[arg(long = "users.creator-labels", env = "ANTHROPIC_KEYS_EXPORTER_USERS_CREATOR_LABELS",
          value_name = "BOOL", default_value = "true", num_args = 0..=1, default_missing_value = "true")]
    users_creator_labels: String,

    /// How often to read the usage report for each key's last use (at least 1m).
    #[arg(
        long = "usage.interval",
        env = "ANTHROPIC_KEYS_EXPORTER_USAGE_INTERVAL",
        value_name = "DURATION",
        default_value = "1h"
    )]
    usage_interval: String,

    /// How far back the usage report is read (at most 90d); keys without use in it count as unused.
    #[arg(
        long = "usage.lookback",
        env = "ANTHROPIC_KEYS_EXPORTER_USAGE_LOOKBACK",
        value_name = "DURATION",
        default_value = "30d"
    )]
    usage_lookback: String,

    /// This replica's shard, from 0 to --total-shards minus 1.
    #[arg(
        long = "shard",
        env = "ANTHROPIC_KEYS_EXPORTER_SHARD",
        value_name = "N",
        default_value = "0"
    )]
    shard: String,

    /// Number of replicas the organizations are spread over; each polls only its own shard.
    #[arg(
        long = "total-shards",
        env = "ANTHROPIC_KEYS_EXPORTER_TOTAL_SHARDS",
        value_name = "M",
        default_value = "1"
    )]
    total_shards: String,

    /// Address to listen on for HTTP requests (`:PORT` means every interface).
    #[arg(
        long = "web.listen-address",
        env = "ANTHROPIC_KEYS_EXPORTER_WEB_LISTEN_ADDRESS",
        value_name = "ADDRESS",
        default_value = ":10419"
    )]
    listen_address: String,

    /// Path under which to expose metrics.
    #[arg(
        long = "web.telemetry-path",
        env = "ANTHROPIC_KEYS_EXPORTER_WEB_TELEMETRY_PATH",
        value_name = "PATH",
        default_value = "/metrics"
    )]
    telemetry_path: String,

    /// Web configuration file (TLS, client certificates, basic auth) in the Prometheus exporter-toolkit
    /// format; re-read when it or the files it names change.
    #[arg(
        long = "web.config.file",
        env = "ANTHROPIC_KEYS_EXPORTER_WEB_CONFIG_FILE",
        value_name = "PATH"
    )]
    web_config_file: Option<PathBuf>,

    /// Maximum number of concurrent scrapes; more get 503 at once. 0 means no limit.
    #[arg(
        long = "web.max-requests",
        env = "ANTHROPIC_KEYS_EXPORTER_WEB_MAX_REQUESTS",
        value_name = "N",
        default_value = "40"
    )]
    max_requests: String,

    /// Maximum number of open HTTP connections; more are closed at once (a few reserved slots still
    /// answer health and readiness probes).
    #[arg(
        long = "web.max-connections",
        env = "ANTHROPIC_KEYS_EXPORTER_WEB_MAX_CONNECTIONS",
        value_name = "N",
        default_value = "1024"
    )]
    max_connections: String,

    /// Log level: error, warn, info, debug or trace. `RUST_LOG`, if set, takes precedence.
    #[arg(
        long = "log.level",
        env = "ANTHROPIC_KEYS_EXPORTER_LOG_LEVEL",
        value_name = "LEVEL",
        default_value = "info"
    )]
    log_level: String,

    /// Log format: text or json.
    #[arg(
        long = "log.format",
        env = "ANTHROPIC_KEYS_EXPORTER_LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "text"
    )]
    log_format: String,

    /// Serve a built-in simulated organization instead of calling the Admin API: no key, no network.
    #[arg(long = "demo", env = "ANTHROPIC_KEYS_EXPORTER_DEMO")]
    demo: bool,

    /// Validate the configuration (the config file, and every admin key) and exit.
    #[arg(long = "config.check")]
    check_config: bool,
}

/// The validated configuration of one exporter process.
#[derive(Debug, Clone)]
pub struct Config {
    /// The multi-organization file; when set, `admin_key`, `organization` and `base_url` are only the
    /// defaults it falls back to.
    pub config_file: Option<PathBuf>,
    /// Where the Admin API key comes from when the flags describe the organization. `None` in demo
    /// mode and with a config file.
    pub admin_key: Option<AdminKeySource>,
    /// Base URL of the Anthropic API, without a trailing slash.
    pub base_url: Url,
    /// Allow http:// to hosts other than loopback.
    pub allow_insecure_http: bool,
    pub proxy: ProxySetting,
    /// Value of the `organization` label of the one organization the flags describe.
    pub organization: String,
    pub poll: PollSettings,
    pub users: UsersSettings,
    pub usage: UsageSettings,
    pub shard: Shard,
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
    /// Requests in flight at once, across all organizations.
    pub concurrency: usize,
}

/// The `users` source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsersSettings {
    pub interval: Duration,
    /// Export creators' names and e-mail addresses.
    pub creator_labels: bool,
}

/// The `usage` source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageSettings {
    pub interval: Duration,
    pub lookback: Duration,
}

/// One organization to poll, from the flags or from the config file.
#[derive(Debug, Clone, PartialEq)]
pub struct OrganizationConfig {
    /// The `organization` label.
    pub name: String,
    pub admin_key: AdminKeySource,
    pub base_url: Url,
    /// Interval of the `organization`, `workspaces` and `api_keys` sources.
    pub poll_interval: Duration,
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
/// its environment variable, or the file, organization and field; none contains the admin key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value '{value}' for {flag} (env {env}): {reason}")]
    InvalidValue {
        flag: String,
        env: String,
        value: String,
        reason: String,
    },
    #[error(
        "no Admin API key: pass --anthropic.admin-key-file PATH (env ANTHROPIC_ADMIN_KEY_FILE), or set the \
environment variable ANTHROPIC_ADMIN_KEY (or ANTHROPIC_ADMIN_API_KEY), or list organizations with \
--config.file; an organization admin creates Admin keys in the Claude Console under Settings > Admin keys, \
or run with --demo to try the exporter without one"
    )]
    MissingAdminKey,
    #[error("{0} (--anthropic.admin-key-file, env ANTHROPIC_ADMIN_KEY_FILE)")]
    AdminKeyFile(AdminKeyError),
    #[error("{0}")]
    AdminKey(AdminKeyError),
    #[error("{0} (--web.config.file, env ANTHROPIC_KEYS_EXPORTER_WEB_CONFIG_FILE)")]
    WebConfig(crate::http::web_config::WebConfigError),
    #[error("{0}")]
    File(#[from] file::ConfigFileError),
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
    /// read itself (the admin key, and the key variables a config file names), so that tests need not
    /// touch the process environment.
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
            .validate(&env)
            .map(|config| Invocation::Run(Box::new(config)))
    }

    /// The organizations to poll (of every shard): the one the flags describe, or those of the config
    /// file, read now with every admin key. Called at start-up, on `--config.check` and on every reload.
    pub fn organizations(
        &self,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<OrganizationConfig>, ConfigError> {
        match &self.config_file {
            Some(path) => Ok(file::load(path, self, env)?),
            None => {
                let admin_key = self.admin_key.clone().ok_or(ConfigError::MissingAdminKey)?;
                Ok(vec![OrganizationConfig {
                    name: self.organization.clone(),
                    admin_key,
                    base_url: self.base_url.clone(),
                    poll_interval: self.poll.interval,
                }])
            }
        }
    }
}

impl Flags {
    fn validate(self, env: &impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let base_url = parse_base_url(&self.base_url, self.allow_insecure_http)
            .map_err(|reason| invalid("base_url", &self.base_url, reason))?;
        let organization = self.organization.trim().to_owned();
        if organization.is_empty() {
            return Err(invalid(
                "organization",
                &self.organization,
                "must not be empty",
            ));
        }
        let proxy = match (&self.proxy_url, self.proxy_from_env) {
            (Some(url), false) => ProxySetting::Url(
                parse_proxy_url(url).map_err(|reason| invalid("proxy_url", url, reason))?,
            ),
            (None, true) => ProxySetting::FromEnvironment,
            (None, false) => ProxySetting::Direct,
            (Some(url), true) => {
                return Err(invalid(
                    "proxy_url",
                    url,
                    "give either --anthropic.proxy-url or --anthropic.proxy-from-env, not both",
                ));
            }
        };

        let interval = parse_duration("poll_interval", &self.poll_interval)?;
        if interval < MIN_POLL_INTERVAL {
            return Err(invalid(
                "poll_interval",
                &self.poll_interval,
                "must be at least 1s",
            ));
        }
        let request_timeout = match &self.poll_timeout {
            Some(text) => {
                let timeout = parse_duration("poll_timeout", text)?;
                if timeout.is_zero() || timeout > interval {
                    return Err(invalid(
                        "poll_timeout",
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
                let deadline = parse_duration("poll_deadline", text)?;
                if deadline < request_timeout || deadline > interval {
                    return Err(invalid(
                        "poll_deadline",
                        text,
                        "must lie between --poll.timeout and --poll.interval",
                    ));
                }
                deadline
            }
            None => DEFAULT_POLL_DEADLINE.min(interval).max(request_timeout),
        };
        let max_retries = parse_number(
            "poll_max_retries",
            &self.poll_max_retries,
            0,
            MAX_RETRIES_LIMIT,
        )?;
        let concurrency = parse_number("poll_concurrency", &self.poll_concurrency, 1, 1000)?;

        let users = UsersSettings {
            interval: parse_interval_at_least(
                "users_interval",
                &self.users_interval,
                MIN_POLL_INTERVAL,
            )?,
            creator_labels: parse_bool("users_creator_labels", &self.users_creator_labels)?,
        };
        let usage_interval =
            parse_interval_at_least("usage_interval", &self.usage_interval, MIN_USAGE_INTERVAL)?;
        let lookback = parse_duration("usage_lookback", &self.usage_lookback)?;
        if lookback < Duration::from_secs(86_400) || lookback > MAX_USAGE_LOOKBACK {
            return Err(invalid(
                "usage_lookback",
                &self.usage_lookback,
                "must lie between 1d and 90d",
            ));
        }
        let total_shards = parse_number("total_shards", &self.total_shards, 1, 10_000)?;
        let shard = parse_number("shard", &self.shard, 0, u32::MAX)?;
        if shard >= total_shards {
            return Err(invalid(
                "shard",
                &self.shard,
                format!("must be below --total-shards ({total_shards})"),
            ));
        }

        let listen_address = parse_listen_address(&self.listen_address)?;
        let telemetry_path = parse_telemetry_path(&self.telemetry_path)?;
        if let Some(path) = &self.web_config_file {
            // NB: load it now so that a broken file stops start-up with exit code 2, like any bad flag.
            crate::http::web_config::WebConfig::check(path).map_err(ConfigError::WebConfig)?;
        }
        let max_requests = self.max_requests.trim().parse::<usize>().map_err(|_| {
            invalid(
                "max_requests",
                &self.max_requests,
                "expected a whole number, 0 for no limit",
            )
        })?;
        let max_connections = parse_number("max_connections", &self.max_connections, 1, u32::MAX)?;
        let log = LogSettings {
            level: self.log_level.trim().parse().map_err(|_| {
                invalid(
                    "log_level",
                    &self.log_level,
                    "expected one of error, warn, info, debug, trace",
                )
            })?,
            format: match self.log_format.trim().to_ascii_lowercase().as_str() {
                "text" | "logfmt" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => {
                    return Err(invalid(
                        "log_format",
                        &self.log_format,
                        "expected text or json",
                    ));
                }
            },
        };

        let admin_key = match (self.demo, &self.config_file) {
            (true, _) => None,
            (false, Some(_)) => {
                if let Some(path) = &self.admin_key_file {
                    return Err(invalid(
                        "admin_key_file",
                        &path.display().to_string(),
                        "with --config.file, each organization names its own key (admin_key_file or admin_key_env)",
                    ));
                }
                None
            }
            (false, None) => Some(admin_key_source(self.admin_key_file.clone(), env)?),
        };

        let config = Config {
            config_file: self.config_file,
            admin_key,
            base_url,
            allow_insecure_http: self.allow_insecure_http,
            proxy,
            organization,
            poll: PollSettings {
                interval,
                request_timeout,
                deadline,
                retry: RetryPolicy {
                    max_retries,
                    ..RetryPolicy::default()
                },
                concurrency: concurrency as usize,
            },
            users,
            usage: UsageSettings {
                interval: usage_interval,
                lookback,
            },
            shard: Shard {
                index: shard,
                total: total_shards,
            },
            listen_address,
            telemetry_path,
            web_config_file: self.web_config_file,
            max_requests,
            server_limits: crate::http::server::ServerLimits {
                max_connections: max_connections as usize,
                ..Default::default()
            },
            log,
            demo: self.demo,
            check_only: self.check_config,
        };
        if config.config_file.is_some() && !config.demo {
            // NB: a broken file stops start-up with exit code 2, like any bad flag.
            config.organizations(env)?;
        }
        Ok(config)
    }
}

fn admin_key_source(
    file: Option<PathBuf>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<AdminKeySource, ConfigError> {
    if let Some(path) = file {
        // NB: read it once now so that a wrong path fails at start-up, not at the first poll.
        crate::secret::read_key_file_blocking(&path).map_err(ConfigError::AdminKeyFile)?;
        return Ok(AdminKeySource::File(path));
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

/// The flag and environment variable of the argument `id` (a field of [`Flags`]), as clap defines them.
fn flag_and_env(id: &str) -> (String, String) {
    let command = Flags::command();
    let argument = command
        .get_arguments()
        .find(|argument| argument.get_id() == id);
    let flag = argument
        .and_then(|argument| argument.get_long())
        .map_or_else(|| id.to_owned(), |long| format!("--{long}"));
    let env = argument
        .and_then(|argument| argument.get_env())
        .map_or_else(String::new, |env| env.to_string_lossy().into_owned());
    (flag, env)
}

fn invalid(id: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    let (flag, env) = flag_and_env(id);
    ConfigError::InvalidValue {
        flag,
        env,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// A duration such as `30s`, `5m`, `1h 30m` or `30d`.
pub(crate) fn duration_from_text(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|error| format!("expected a duration such as 30s or 5m ({error})"))
}

fn parse_duration(id: &str, text: &str) -> Result<Duration, ConfigError> {
    duration_from_text(text).map_err(|reason| invalid(id, text, reason))
}

fn parse_interval_at_least(
    id: &str,
    text: &str,
    minimum: Duration,
) -> Result<Duration, ConfigError> {
    let interval = parse_duration(id, text)?;
    if interval < minimum {
        return Err(invalid(
            id,
            text,
            format!("must be at least {}", humantime::format_duration(minimum)),
        ));
    }
    Ok(interval)
}

fn parse_number(id: &str, text: &str, min: u32, max: u32) -> Result<u32, ConfigError> {
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|number| (min..=max).contains(number))
        .ok_or_else(|| {
            invalid(
                id,
                text,
                format!("expected a whole number from {min} to {max}"),
            )
        })
}

fn parse_bool(id: &str, text: &str) -> Result<bool, ConfigError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(invalid(id, text, "expected true or false")),
    }
}

/// Whether `host` is this machine: the only place plain http may go without an explicit opt-in.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// An Admin API base URL: absolute http(s) with a host, no query, fragment or credentials, and
/// https unless the host is loopback or `allow_insecure_http`. The reason of a refusal is returned
/// for the caller to attribute to a flag or a config file field.
pub(crate) fn parse_base_url(text: &str, allow_insecure_http: bool) -> Result<Url, String> {
    let mut url =
        Url::parse(text.trim()).map_err(|error| format!("not an absolute URL ({error})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("expected an http:// or https:// URL with a host".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not contain a query or fragment".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials".to_owned());
    }
    if url.scheme() == "http" && !is_loopback(&url) && !allow_insecure_http {
        return Err(
            "plain http would send the admin key unencrypted; use https, or pass --anthropic.allow-insecure-http"
                .to_owned(),
        );
    }
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&path);
    Ok(url)
}

fn parse_proxy_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|error| format!("not an absolute URL ({error})"))?;
    if !matches!(url.scheme(), "http" | "https" | "socks5" | "socks5h") || url.host().is_none() {
        return Err("expected an http://, https:// or socks5:// URL with a host".to_owned());
    }
    Ok(url)
}

fn parse_listen_address(text: &str) -> Result<SocketAddr, ConfigError> {
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
                "listen_address",
                text,
                "expected HOST:PORT or :PORT, e.g. :10419 or 127.0.0.1:10419",
            )
        })
}

fn parse_telemetry_path(text: &str) -> Result<String, ConfigError> {
    let path = text.trim();
    if !path.starts_with('/') || path.len() < 2 || path.contains(['?', '#', ' ', '*', '{', '}']) {
        return Err(invalid(
            "telemetry_path",
            text,
            "expected an absolute path such as /metrics, without query, spaces or wildcards",
        ));
    }
    if crate::http::is_reserved_path(path) {
        return Err(invalid(
            "telemetry_path",
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
        assert_eq!(config.poll.concurrency, 4);
        assert_eq!(config.users.interval, Duration::from_secs(3600));
        assert!(config.users.creator_labels);
        assert_eq!(config.usage.interval, Duration::from_secs(3600));
        assert_eq!(config.usage.lookback, Duration::from_secs(30 * 86_400));
        assert_eq!(config.shard, Shard { index: 0, total: 1 });
        assert_eq!(config.proxy, ProxySetting::Direct);
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
                "ANTHROPIC_KEYS_EXPORTER_POLL_INTERVAL",
            ),
            (
                &["--poll.interval", "10ms"],
                "--poll.interval",
                "ANTHROPIC_KEYS_EXPORTER_POLL_INTERVAL",
            ),
            (
                &["--poll.timeout", "0s"],
                "--poll.timeout",
                "ANTHROPIC_KEYS_EXPORTER_POLL_TIMEOUT",
            ),
            (
                &["--poll.interval", "10s", "--poll.timeout", "30s"],
                "--poll.timeout",
                "ANTHROPIC_KEYS_EXPORTER_POLL_TIMEOUT",
            ),
            (
                &["--poll.deadline", "10m"],
                "--poll.deadline",
                "ANTHROPIC_KEYS_EXPORTER_POLL_DEADLINE",
            ),
            (
                &["--poll.max-retries", "11"],
                "--poll.max-retries",
                "ANTHROPIC_KEYS_EXPORTER_POLL_MAX_RETRIES",
            ),
            (
                &["--poll.max-retries=-1"],
                "--poll.max-retries",
                "ANTHROPIC_KEYS_EXPORTER_POLL_MAX_RETRIES",
            ),
            (
                &["--anthropic.base-url", "api.anthropic.com"],
                "--anthropic.base-url",
                "ANTHROPIC_KEYS_EXPORTER_BASE_URL",
            ),
            (
                &["--anthropic.base-url", "ftp://x"],
                "--anthropic.base-url",
                "ANTHROPIC_KEYS_EXPORTER_BASE_URL",
            ),
            (
                &["--web.listen-address", "nowhere"],
                "--web.listen-address",
                "ANTHROPIC_KEYS_EXPORTER_WEB_LISTEN_ADDRESS",
            ),
            (
                &["--web.telemetry-path", "metrics"],
                "--web.telemetry-path",
                "ANTHROPIC_KEYS_EXPORTER_WEB_TELEMETRY_PATH",
            ),
            (
                &["--web.telemetry-path", "/healthz"],
                "--web.telemetry-path",
                "ANTHROPIC_KEYS_EXPORTER_WEB_TELEMETRY_PATH",
            ),
            (
                &["--log.level", "loud"],
                "--log.level",
                "ANTHROPIC_KEYS_EXPORTER_LOG_LEVEL",
            ),
            (
                &["--web.max-requests", "many"],
                "--web.max-requests",
                "ANTHROPIC_KEYS_EXPORTER_WEB_MAX_REQUESTS",
            ),
            (
                &["--web.config.file", "/nonexistent/web.yml"],
                "--web.config.file",
                "ANTHROPIC_KEYS_EXPORTER_WEB_CONFIG_FILE",
            ),
            (
                &["--log.format", "xml"],
                "--log.format",
                "ANTHROPIC_KEYS_EXPORTER_LOG_FORMAT",
            ),
            (
                &["--anthropic.base-url", "http://api.example.com"],
                "--anthropic.base-url",
                "ANTHROPIC_KEYS_EXPORTER_BASE_URL",
            ),
            (
                &["--usage.interval", "30s"],
                "--usage.interval",
                "ANTHROPIC_KEYS_EXPORTER_USAGE_INTERVAL",
            ),
            (
                &["--usage.lookback", "91d"],
                "--usage.lookback",
                "ANTHROPIC_KEYS_EXPORTER_USAGE_LOOKBACK",
            ),
            (
                &["--shard", "3", "--total-shards", "3"],
                "--shard",
                "ANTHROPIC_KEYS_EXPORTER_SHARD",
            ),
            (
                &["--poll.concurrency", "0"],
                "--poll.concurrency",
                "ANTHROPIC_KEYS_EXPORTER_POLL_CONCURRENCY",
            ),
            (
                &["--users.creator-labels=maybe"],
                "--users.creator-labels",
                "ANTHROPIC_KEYS_EXPORTER_USERS_CREATOR_LABELS",
            ),
            (
                &["--anthropic.proxy-url", "proxy:3128"],
                "--anthropic.proxy-url",
                "ANTHROPIC_KEYS_EXPORTER_PROXY_URL",
            ),
            (
                &["--organization", " "],
                "--organization",
                "ANTHROPIC_KEYS_EXPORTER_ORGANIZATION",
            ),
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
    fn plain_http_is_only_for_loopback_unless_allowed() {
        for url in [
            "http://127.0.0.1:8080",
            "http://[::1]:8080",
            "http://localhost:8080",
        ] {
            assert!(
                parse_with_key(&["--anthropic.base-url", url]).is_ok(),
                "{url}"
            );
        }
        let allowed = parse_with_key(&[
            "--anthropic.base-url",
            "http://proxy.internal:8080",
            "--anthropic.allow-insecure-http",
        ]);
        assert!(allowed.is_ok());
    }

    #[test]
    fn environment_proxies_are_used_only_when_asked_for() {
        assert_eq!(parse_with_key(&[]).unwrap().proxy, ProxySetting::Direct);
        assert_eq!(
            parse_with_key(&["--anthropic.proxy-from-env"])
                .unwrap()
                .proxy,
            ProxySetting::FromEnvironment
        );
        let config = parse_with_key(&["--anthropic.proxy-url", "http://proxy:3128"]).unwrap();
        assert!(matches!(config.proxy, ProxySetting::Url(_)));
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
