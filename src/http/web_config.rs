//! `--web.config.file`: TLS (optionally with client certificates) and basic auth for the HTTP server,
//! in the file format of the Prometheus exporter-toolkit, so existing files can be reused.
//!
//! The file and the files it names are watched by a background task: a change that has been stable
//! for two checks is loaded and published, so certificates and passwords rotate without a restart,
//! and requests never wait for file I/O or bcrypt. A reload fails closed: a change that does not
//! load, or that would turn TLS on or off or remove authentication, is logged as an ERROR and the
//! running configuration stays in force.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::auth::{BasicAuthUsers, bcrypt_cost};

/// A web configuration file that cannot be used. The message names the file and the offending key.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("cannot read the web config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid web config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("web config file {path}: `{key}` is not supported by this exporter ({hint})")]
    Unsupported {
        path: PathBuf,
        key: &'static str,
        hint: &'static str,
    },
}

/// The file as written; fields the exporter-toolkit knows but this exporter does not implement are
/// kept so they can be refused by name rather than ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebConfigFile {
    #[serde(default)]
    tls_server_config: Option<TlsServerConfigFile>,
    #[serde(default)]
    http_server_config: Option<HttpServerConfigFile>,
    #[serde(default)]
    basic_auth_users: Option<BTreeMap<String, String>>,
    #[serde(default)]
    rate_limit: Option<serde_norway::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsServerConfigFile {
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
    #[serde(default)]
    client_auth_type: Option<String>,
    #[serde(default)]
    client_ca_file: Option<PathBuf>,
    #[serde(default)]
    min_version: Option<String>,
    #[serde(default)]
    max_version: Option<String>,
    #[serde(default)]
    cert: Option<serde_norway::Value>,
    #[serde(default)]
    key: Option<serde_norway::Value>,
    #[serde(default)]
    client_ca: Option<serde_norway::Value>,
    #[serde(default)]
    client_allowed_sans: Option<serde_norway::Value>,
    #[serde(default)]
    cipher_suites: Option<serde_norway::Value>,
    #[serde(default)]
    curve_preferences: Option<serde_norway::Value>,
    #[serde(default)]
    prefer_server_cipher_suites: Option<serde_norway::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpServerConfigFile {
    #[serde(default)]
    http2: Option<bool>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
}

/// The response headers a web config may set, with the values allowed for each (`None`: any value).
/// The same list as the Prometheus exporter-toolkit's, so that a file means the same to both.
const ALLOWED_HEADERS: [(&str, Option<&[&str]>); 5] = [
    ("Strict-Transport-Security", None),
    ("X-Content-Type-Options", Some(&["nosniff"])),
    ("X-Frame-Options", Some(&["deny", "sameorigin"])),
    ("X-XSS-Protection", None),
    ("Content-Security-Policy", None),
];

/// How much a TLS client must prove, in increasing order, so that a reload can refuse to weaken it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum ClientCertificates {
    #[default]
    NotAsked,
    VerifiedIfGiven,
    Required,
}

/// A loaded, validated web configuration.
#[derive(Debug, Default)]
pub struct WebConfig {
    /// `None` serves plain HTTP.
    pub tls: Option<Arc<ServerConfig>>,
    /// What the TLS server asks of client certificates.
    pub client_certificates: ClientCertificates,
    /// `None` lets every request in.
    pub basic_auth: Option<BasicAuthUsers>,
    /// Extra response headers (`http_server_config.headers`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// A file that passed validation; building the basic auth users from it costs a bcrypt hash.
struct Validated {
    tls: Option<Arc<ServerConfig>>,
    client_certificates: ClientCertificates,
    users: Option<(BTreeMap<String, String>, u32)>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl WebConfig {
    /// Reads and validates the file at `path` and every file it names, and prepares basic auth, which
    /// costs one bcrypt hash at the configured cost. Blocking: call it off the async workers.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        Ok(Self::from_validated(validate(path, &read(path)?)?))
    }

    /// Reads and validates the file at `path` and every file it names, without preparing anything.
    pub fn check(path: &Path) -> Result<(), WebConfigError> {
        validate(path, &read(path)?).map(drop)
    }

    /// As [`WebConfig::load`] for a reload: an empty file is refused, since that is what a file being
    /// rewritten looks like for a moment, and never what an operator means on a running server.
    fn reload(path: &Path) -> Result<Self, WebConfigError> {
        let text = read(path)?;
        if text.trim().is_empty() {
            return Err(WebConfigError::Invalid {
                path: path.to_owned(),
                message: "the file is empty (an empty file means plain HTTP only at start-up)"
                    .into(),
            });
        }
        Ok(Self::from_validated(validate(path, &text)?))
    }

    fn from_validated(validated: Validated) -> Self {
        Self {
            tls: validated.tls,
            client_certificates: validated.client_certificates,
            basic_auth: validated
                .users
                .map(|(users, cost)| BasicAuthUsers::new(users, cost)),
            headers: validated.headers,
        }
    }

    /// Why `self`, the configuration in force, must not be replaced by `next` on a running server, if
    /// it must not: a reload never turns TLS on or off and never removes authentication.
    fn refuses(&self, next: &WebConfig) -> Option<&'static str> {
        match (self.tls.is_some(), next.tls.is_some()) {
            (true, false) => return Some("it turns TLS off"),
            (false, true) => return Some("it turns TLS on"),
            _ => {}
        }
        if next.client_certificates < self.client_certificates {
            return Some("it weakens client_auth_type");
        }
        if self.basic_auth.is_some() && next.basic_auth.is_none() {
            return Some("it removes basic_auth_users");
        }
        None
    }
}

fn read(path: &Path) -> Result<String, WebConfigError> {
    std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

fn validate(path: &Path, text: &str) -> Result<Validated, WebConfigError> {
    let invalid = |message: String| WebConfigError::Invalid {
        path: path.to_owned(),
        message,
    };
    let unsupported = |key: &'static str, hint: &'static str| WebConfigError::Unsupported {
        path: path.to_owned(),
        key,
        hint,
    };
    let file: WebConfigFile = if text.trim().is_empty() {
        WebConfigFile {
            tls_server_config: None,
            http_server_config: None,
            basic_auth_users: None,
            rate_limit: None,
        }
    } else {
        serde_norway::from_str(text).map_err(|error| invalid(error.to_string()))?
    };
    if file.rate_limit.is_some() {
        return Err(unsupported(
            "rate_limit",
            "use --web.max-requests to bound concurrent scrapes",
        ));
    }
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    let (tls, client_certificates) = match file.tls_server_config {
        Some(tls) => {
            let client_certificates = match tls.client_auth_type.as_deref() {
                Some("RequireAndVerifyClientCert") => ClientCertificates::Required,
                Some("VerifyClientCertIfGiven") => ClientCertificates::VerifiedIfGiven,
                _ => ClientCertificates::NotAsked,
            };
            let built = build_tls(tls, base, &invalid, &unsupported)?;
            (Some(Arc::new(built)), client_certificates)
        }
        None => (None, ClientCertificates::NotAsked),
    };
    let users = match file.basic_auth_users {
        Some(users) if !users.is_empty() => {
            let mut max_cost = 0;
            for (user, hash) in &users {
                if user.contains(':') {
                    return Err(invalid(format!(
                        "basic_auth_users: user name {user:?} contains ':'"
                    )));
                }
                let cost = bcrypt_cost(hash).map_err(|reason| {
                    invalid(format!(
                        "basic_auth_users: the password of {user:?} {reason} (generate one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)"
                    ))
                })?;
                max_cost = max_cost.max(cost);
            }
            Some((users, max_cost))
        }
        _ => None,
    };
    let mut headers = Vec::new();
    if let Some(http) = file.http_server_config {
        if http.http2 == Some(true) {
            return Err(unsupported(
                "http_server_config.http2",
                "this exporter serves HTTP/1.1; remove the key or set it to false",
            ));
        }
        for (name, value) in http.headers.unwrap_or_default() {
            check_header(&name, &value).map_err(invalid)?;
            let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                invalid(format!(
                    "http_server_config.headers: invalid header name {name:?}"
                ))
            })?;
            let header_value = HeaderValue::from_str(&value).map_err(|_| {
                invalid(format!(
                    "http_server_config.headers: invalid value for {name}"
                ))
            })?;
            headers.push((header_name, header_value));
        }
    }
    Ok(Validated {
        tls,
        client_certificates,
        users,
        headers,
    })
}

/// Refuses a header the exporter-toolkit does not let a web config set, or a value it does not allow.
fn check_header(name: &str, value: &str) -> Result<(), String> {
    let allowed_names = || {
        ALLOWED_HEADERS
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some((_, values)) = ALLOWED_HEADERS.iter().find(|(allowed, _)| *allowed == name) else {
        let spelling = ALLOWED_HEADERS
            .iter()
            .find(|(allowed, _)| allowed.eq_ignore_ascii_case(name))
            .map(|(allowed, _)| format!(" (write it as {allowed})"))
            .unwrap_or_default();
        return Err(format!(
            "http_server_config.headers: {name} cannot be configured{spelling}; only {} can",
            allowed_names()
        ));
    };
    match values {
        Some(values) if !values.contains(&value) => Err(format!(
            "http_server_config.headers: {name} must be one of {}, not {value:?}",
            values.join(", ")
        )),
        _ => Ok(()),
    }
}

fn build_tls(
    tls: TlsServerConfigFile,
    base: &Path,
    invalid: &impl Fn(String) -> WebConfigError,
    unsupported: &impl Fn(&'static str, &'static str) -> WebConfigError,
) -> Result<ServerConfig, WebConfigError> {
    for (present, key, hint) in [
        (
            tls.cert.is_some(),
            "tls_server_config.cert",
            "put the certificate in a file and use cert_file",
        ),
        (
            tls.key.is_some(),
            "tls_server_config.key",
            "put the key in a file and use key_file",
        ),
        (
            tls.client_ca.is_some(),
            "tls_server_config.client_ca",
            "put the CA in a file and use client_ca_file",
        ),
        (
            tls.client_allowed_sans.is_some(),
            "tls_server_config.client_allowed_sans",
            "restrict clients with a dedicated client CA",
        ),
        (
            tls.cipher_suites.is_some(),
            "tls_server_config.cipher_suites",
            "the TLS library's safe defaults are always used",
        ),
        (
            tls.curve_preferences.is_some(),
            "tls_server_config.curve_preferences",
            "the TLS library's safe defaults are always used",
        ),
        (
            tls.prefer_server_cipher_suites.is_some(),
            "tls_server_config.prefer_server_cipher_suites",
            "the TLS library's safe defaults are always used",
        ),
    ] {
        if present {
            return Err(unsupported(key, hint));
        }
    }
    // NB: settings are checked before any file is read, so the error names the real mistake.
    let versions = tls_versions(
        tls.min_version.as_deref(),
        tls.max_version.as_deref(),
        invalid,
    )?;
    if matches!(
        tls.client_auth_type.as_deref(),
        Some("RequestClientCert" | "RequireAnyClientCert")
    ) {
        return Err(unsupported(
            "tls_server_config.client_auth_type",
            "only NoClientCert, VerifyClientCertIfGiven and RequireAndVerifyClientCert are supported: unverified client certificates prove nothing",
        ));
    }
    let resolve = |file: &Path| {
        if file.is_absolute() {
            file.to_owned()
        } else {
            base.join(file)
        }
    };
    let cert_file = tls
        .cert_file
        .as_deref()
        .map(resolve)
        .ok_or_else(|| invalid("tls_server_config.cert_file is required".into()))?;
    let key_file = tls
        .key_file
        .as_deref()
        .map(resolve)
        .ok_or_else(|| invalid("tls_server_config.key_file is required".into()))?;
    let read = |file: &Path, what: &str| {
        std::fs::read(file).map_err(|error| {
            invalid(format!(
                "cannot read the {what} {}: {error}",
                file.display()
            ))
        })
    };
    let certificates = CertificateDer::pem_slice_iter(&read(&cert_file, "certificate file")?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            invalid(format!(
                "{} is not a PEM certificate: {error}",
                cert_file.display()
            ))
        })?;
    if certificates.is_empty() {
        return Err(invalid(format!(
            "{} contains no certificate",
            cert_file.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&key_file, "key file")?).map_err(|error| {
        invalid(format!(
            "{} is not a PEM private key: {error}",
            key_file.display()
        ))
    })?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_auth = tls.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let client_ca = tls.client_ca_file.as_deref().map(resolve);
    let verifier = match (client_auth, client_ca) {
        ("NoClientCert" | "", None) => None,
        ("NoClientCert" | "", Some(_)) => {
            return Err(invalid(
                "client_ca_file is set but client_auth_type is NoClientCert; set client_auth_type to RequireAndVerifyClientCert or VerifyClientCertIfGiven".into(),
            ));
        }
        ("RequireAndVerifyClientCert" | "VerifyClientCertIfGiven", None) => {
            return Err(invalid(format!(
                "client_auth_type {client_auth} needs client_ca_file"
            )));
        }
        (mode @ ("RequireAndVerifyClientCert" | "VerifyClientCertIfGiven"), Some(ca_file)) => {
            let mut roots = RootCertStore::empty();
            for certificate in CertificateDer::pem_slice_iter(&read(&ca_file, "client CA file")?) {
                let certificate = certificate.map_err(|error| {
                    invalid(format!(
                        "{} is not a PEM certificate: {error}",
                        ca_file.display()
                    ))
                })?;
                roots.add(certificate).map_err(|error| {
                    invalid(format!(
                        "{}: unusable CA certificate: {error}",
                        ca_file.display()
                    ))
                })?;
            }
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let builder = match mode {
                "VerifyClientCertIfGiven" => builder.allow_unauthenticated(),
                _ => builder,
            };
            Some(
                builder
                    .build()
                    .map_err(|error| invalid(format!("client verification: {error}")))?,
            )
        }
        ("RequestClientCert" | "RequireAnyClientCert", _) => {
            return Err(unsupported(
                "tls_server_config.client_auth_type",
                "only NoClientCert, VerifyClientCertIfGiven and RequireAndVerifyClientCert are supported: unverified client certificates prove nothing",
            ));
        }
        (other, _) => return Err(invalid(format!("unknown client_auth_type {other:?}"))),
    };
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|error| invalid(format!("TLS versions: {error}")))?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certificates, key)
        .map_err(|error| {
            invalid(format!(
                "certificate and key do not form a usable pair: {error}"
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn tls_versions(
    min: Option<&str>,
    max: Option<&str>,
    invalid: &impl Fn(String) -> WebConfigError,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, WebConfigError> {
    let rank = |value: &str, key: &str| match value {
        "TLS12" => Ok(12),
        "TLS13" => Ok(13),
        "TLS10" | "TLS11" => Err(invalid(format!(
            "{key} {value} is not supported: TLS 1.0 and 1.1 are insecure; use TLS12 or TLS13"
        ))),
        other => Err(invalid(format!(
            "{key}: unknown TLS version {other:?} (expected TLS12 or TLS13)"
        ))),
    };
    let min = min
        .map(|value| rank(value, "min_version"))
        .transpose()?
        .unwrap_or(12);
    let max = max
        .map(|value| rank(value, "max_version"))
        .transpose()?
        .unwrap_or(13);
    if min > max {
        return Err(invalid("min_version is above max_version".into()));
    }
    Ok(
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(rank, _)| (min..=max).contains(rank))
            .map(|(_, version)| version)
            .collect(),
    )
}

/// The web configuration in force. Loaded once at start-up; a background task ([`WebConfigSource::watch`])
/// reloads it when its files change and publishes the result, so that a request only clones an `Arc`.
#[derive(Debug)]
pub struct WebConfigSource {
    path: Option<PathBuf>,
    current: RwLock<Arc<WebConfig>>,
    /// Whether the listener speaks TLS: fixed at start-up, a reload may only change certificates.
    tls: bool,
    check_interval: Duration,
    reload_now: Notify,
    /// The fingerprint of the files as loaded at start-up, where the watcher starts from.
    initial: Fingerprint,
}

impl WebConfigSource {
    /// Plain HTTP without authentication.
    pub fn disabled() -> Self {
        Self {
            path: None,
            current: RwLock::new(Arc::new(WebConfig::default())),
            tls: false,
            check_interval: Duration::from_secs(1),
            reload_now: Notify::new(),
            initial: Fingerprint::default(),
        }
    }

    /// Loads `path` (off the async workers); an error here stops start-up. The files are checked for
    /// changes every `check_interval` once [`WebConfigSource::watch`] runs.
    pub async fn load(path: &Path, check_interval: Duration) -> Result<Self, WebConfigError> {
        let owned = path.to_owned();
        let (initial, config) = tokio::task::spawn_blocking(move || {
            // NB: the fingerprint first: a change while loading is then seen as one afterwards.
            let initial = fingerprint(&owned);
            WebConfig::load(&owned).map(|config| (initial, config))
        })
        .await
        .map_err(|error| WebConfigError::Invalid {
            path: path.to_owned(),
            message: format!("loading panicked: {error}"),
        })??;
        Ok(Self {
            path: Some(path.to_owned()),
            tls: config.tls.is_some(),
            current: RwLock::new(Arc::new(config)),
            check_interval,
            reload_now: Notify::new(),
            initial,
        })
    }

    /// The configuration in force. Cheap: no file I/O, no hashing.
    pub fn current(&self) -> Arc<WebConfig> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Whether the listener speaks TLS; decided at start-up and never changed by a reload.
    pub fn serves_tls(&self) -> bool {
        self.tls
    }

    /// Asks the running [`WebConfigSource::watch`] task to reload the file now, without waiting for
    /// it to be stable (for SIGHUP: the operator says the file is ready). The reload rules still
    /// apply: a file that does not load, or that would turn TLS on or off or remove authentication,
    /// is refused with an ERROR and the running configuration stays.
    pub fn reload_now(&self) {
        self.reload_now.notify_one();
    }

    /// Checks the files every `check_interval` until `shutdown`, and applies a change once the files
    /// have been the same at two checks in a row, so that a file caught half-written is never loaded.
    /// Returns at once when there is no web config file.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let mut changes = ChangeDetector::new(self.initial);
        loop {
            let forced = tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.check_interval) => false,
                () = self.reload_now.notified() => true,
            };
            let owned = path.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || fingerprint(&owned)).await else {
                continue;
            };
            if !changes.should_load(now, forced) {
                continue;
            }
            changes.settle(now);
            let owned = path.clone();
            match tokio::task::spawn_blocking(move || WebConfig::reload(&owned)).await {
                Ok(Ok(next)) => self.apply(&path, next),
                Ok(Err(error)) => tracing::error!(
                    error = %error,
                    "The changed web config does not load; the running one stays in force."
                ),
                Err(error) => tracing::error!(
                    error = %error,
                    "Loading the changed web config panicked; the running one stays in force."
                ),
            }
        }
    }

    fn apply(&self, path: &Path, next: WebConfig) {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(reason) = current.refuses(&next) {
            tracing::error!(
                path = %path.display(),
                reason,
                "The changed web config is refused: a reload never turns TLS on or off nor weakens authentication; the running one stays in force. Restart the exporter to apply it."
            );
            return;
        }
        *current = Arc::new(next);
        drop(current);
        tracing::info!(path = %path.display(), "Reloaded the web config file.");
    }
}

/// When to load the files again: a change is applied once it has been seen at two checks in a row,
/// or at once when asked; a version that was loaded (or refused) already is not tried again.
#[derive(Debug)]
struct ChangeDetector {
    settled: Fingerprint,
    seen: Option<Fingerprint>,
}

impl ChangeDetector {
    fn new(settled: Fingerprint) -> Self {
        Self {
            settled,
            seen: None,
        }
    }

    fn should_load(&mut self, now: Fingerprint, forced: bool) -> bool {
        if forced {
            return true;
        }
        if now == self.settled {
            self.seen = None;
            return false;
        }
        if self.seen == Some(now) {
            return true;
        }
        self.seen = Some(now);
        false
    }

    fn settle(&mut self, now: Fingerprint) {
        self.settled = now;
        self.seen = None;
    }
}

/// A digest of the contents of the config file and of every file it names, to notice changes
/// (including a Kubernetes Secret's symlink swap, which changes what the path resolves to).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Fingerprint([u8; 32]);

fn fingerprint(path: &Path) -> Fingerprint {
    let mut digest = Sha256::new();
    let mut add = |file: &Path| {
        digest.update(file.as_os_str().as_encoded_bytes());
        match std::fs::read(file) {
            Ok(contents) => {
                digest.update([1]);
                digest.update(Sha256::digest(&contents));
            }
            Err(error) => {
                digest.update([0]);
                digest.update(error.kind().to_string());
            }
        }
    };
    add(path);
    let named = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_norway::from_str::<WebConfigFile>(&text).ok())
        .and_then(|file| file.tls_server_config);
    if let Some(tls) = named {
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        for file in [tls.cert_file, tls.key_file, tls.client_ca_file]
            .into_iter()
            .flatten()
        {
            add(&if file.is_absolute() {
                file
            } else {
                base.join(file)
            });
        }
    }
    Fingerprint(digest.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ake-web-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn unknown_and_unsupported_keys_are_refused_by_name() {
        let dir = temp_dir("unsupported");
        for (text, needle) in [
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
                "cipher_suites",
            ),
            ("rate_limit:\n  interval: 1s\n", "rate_limit"),
            ("http_server_config:\n  http2: true\n", "http2"),
            ("basic_auth_user:\n  alice: x\n", "basic_auth_user"),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAnyClientCert\n",
                "client_auth_type",
            ),
        ] {
            let path = write(&dir, "web.yml", text);
            let message = WebConfig::load(&path).unwrap_err().to_string();
            assert!(message.contains(needle), "{text}: {message}");
            assert!(message.contains("web.yml"), "{message}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn passwords_must_be_bcrypt_hashes_of_a_sane_cost_and_are_verified() {
        let dir = temp_dir("bcrypt");
        let cost_17 = format!("$2b$17${}", &bcrypt::hash("x", 4).unwrap()[7..]);
        for (hash, needle) in [("plaintext", "bcrypt"), (cost_17.as_str(), "cost 17")] {
            let path = write(
                &dir,
                "web.yml",
                &format!("basic_auth_users:\n  alice: '{hash}'\n"),
            );
            let message = WebConfig::check(&path).unwrap_err().to_string();
            assert!(message.contains(needle), "{message}");
            assert!(message.contains("alice"), "{message}");
        }

        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let path = write(
            &dir,
            "web.yml",
            &format!("basic_auth_users:\n  alice: '{hash}'\n"),
        );
        let config = WebConfig::load(&path).unwrap();
        let users = config.basic_auth.unwrap();
        assert!(users.verify("alice", "s3cret"));
        assert!(!users.verify("alice", "wrong"));
        assert!(!users.verify("bob", "s3cret"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_the_exporter_toolkit_headers_and_values_are_allowed() {
        for (name, value) in [
            (
                "Strict-Transport-Security",
                "max-age=31536000; includeSubDomains",
            ),
            ("X-Content-Type-Options", "nosniff"),
            ("X-Frame-Options", "deny"),
            ("X-Frame-Options", "sameorigin"),
            ("X-XSS-Protection", "1"),
            ("Content-Security-Policy", "default-src 'self'"),
        ] {
            assert_eq!(check_header(name, value), Ok(()), "{name}: {value}");
        }
        for (name, value, needle) in [
            ("Content-Length", "5", "Content-Length cannot be configured"),
            ("Set-Cookie", "a=b", "Set-Cookie cannot be configured"),
            ("x-frame-options", "deny", "write it as X-Frame-Options"),
            (
                "X-Frame-Options",
                "allow-from x",
                "must be one of deny, sameorigin",
            ),
            ("X-Content-Type-Options", "sniff", "must be one of nosniff"),
        ] {
            let message = check_header(name, value).unwrap_err();
            assert!(message.contains(needle), "{name}: {message}");
        }
    }

    #[test]
    fn a_change_is_loaded_once_seen_at_two_checks_in_a_row() {
        let (a, b, c) = (
            Fingerprint([1; 32]),
            Fingerprint([2; 32]),
            Fingerprint([3; 32]),
        );
        let mut changes = ChangeDetector::new(a);
        assert!(!changes.should_load(a, false), "unchanged");
        assert!(!changes.should_load(b, false), "seen once");
        assert!(!changes.should_load(c, false), "changed again: seen once");
        assert!(changes.should_load(c, false), "stable for two checks");
        changes.settle(c);
        assert!(
            !changes.should_load(c, false),
            "loaded (or refused) already"
        );
        assert!(!changes.should_load(b, false));
        assert!(!changes.should_load(c, false), "back to what is settled");
        assert!(
            !changes.should_load(b, false),
            "the earlier sighting was forgotten"
        );
        assert!(changes.should_load(c, true), "asked for: at once");
    }

    #[test]
    fn a_reload_refuses_an_empty_file_and_any_loss_of_tls_or_authentication() {
        let dir = temp_dir("refuses");
        let path = write(&dir, "web.yml", "");
        assert!(
            WebConfig::load(&path).is_ok(),
            "empty at start-up: plain HTTP"
        );
        let message = WebConfig::reload(&path).unwrap_err().to_string();
        assert!(message.contains("empty"), "{message}");

        let hash = bcrypt::hash("x", 4).unwrap();
        let users = || BasicAuthUsers::new(BTreeMap::from([("a".to_owned(), hash.clone())]), 4);
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let server_config = Arc::new(
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![certified.cert.der().clone()],
                    PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap(),
                )
                .unwrap(),
        );
        let config = |tls: bool, client: ClientCertificates, auth: bool| WebConfig {
            tls: tls.then(|| Arc::clone(&server_config)),
            client_certificates: client,
            basic_auth: auth.then(users),
            headers: Vec::new(),
        };
        use ClientCertificates::*;
        let running = config(true, Required, true);
        assert_eq!(running.refuses(&config(true, Required, true)), None);
        assert_eq!(
            running.refuses(&config(false, NotAsked, true)),
            Some("it turns TLS off")
        );
        assert_eq!(
            running.refuses(&config(true, VerifiedIfGiven, true)),
            Some("it weakens client_auth_type")
        );
        assert_eq!(
            running.refuses(&config(true, Required, false)),
            Some("it removes basic_auth_users")
        );
        let plain = config(false, NotAsked, false);
        assert_eq!(
            plain.refuses(&config(true, NotAsked, false)),
            Some("it turns TLS on")
        );
        assert_eq!(
            plain.refuses(&config(false, NotAsked, true)),
            None,
            "adding auth is fine"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn old_tls_versions_and_a_ca_without_client_auth_are_refused() {
        let dir = temp_dir("tls");
        for (text, needle) in [
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS10\n",
                "insecure",
            ),
            (
                "tls_server_config:\n  key_file: k\n",
                "cert_file is required",
            ),
            (
                "tls_server_config:\n  cert_file: missing.pem\n  key_file: k\n",
                "missing.pem",
            ),
        ] {
            let path = write(&dir, "web.yml", text);
            let message = WebConfig::load(&path).unwrap_err().to_string();
            assert!(message.contains(needle), "{text}: {message}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_empty_file_means_plain_http_without_auth() {
        let dir = temp_dir("empty");
        let config = WebConfig::load(&write(&dir, "web.yml", "")).unwrap();
        assert!(config.tls.is_none() && config.basic_auth.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
