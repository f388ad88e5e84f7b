//! `--web.config.file`: TLS (optionally with client certificates) and basic auth for the HTTP server,
//! in the file format of the Prometheus exporter-toolkit, so existing files can be reused.
//!
//! The file and the files it names are watched: when any of them changes, the next connection or
//! request uses the new version, so certificates and passwords rotate without a restart. A change that
//! does not load is logged and the previous configuration stays in force.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderName, HeaderValue};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use super::auth::BasicAuthUsers;

/// Files are checked for changes at most this often, so a burst of scrapes costs one `stat` per file.
const CHANGE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

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

/// A loaded, validated web configuration.
#[derive(Debug, Default)]
pub struct WebConfig {
    /// `None` serves plain HTTP.
    pub tls: Option<Arc<ServerConfig>>,
    /// `None` lets every request in.
    pub basic_auth: Option<BasicAuthUsers>,
    /// Extra response headers (`http_server_config.headers`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl WebConfig {
    /// Reads and validates the file at `path` and every file it names.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
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
            serde_norway::from_str(&text).map_err(|error| invalid(error.to_string()))?
        };
        if file.rate_limit.is_some() {
            return Err(unsupported(
                "rate_limit",
                "use --web.max-requests to bound concurrent scrapes",
            ));
        }
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let tls = match file.tls_server_config {
            Some(tls) => Some(Arc::new(build_tls(tls, base, &invalid, &unsupported)?)),
            None => None,
        };
        let basic_auth = match file.basic_auth_users {
            Some(users) if !users.is_empty() => {
                for (user, hash) in &users {
                    if user.contains(':') {
                        return Err(invalid(format!(
                            "basic_auth_users: user name {user:?} contains ':'"
                        )));
                    }
                    if bcrypt::verify("", hash).is_err() {
                        return Err(invalid(format!(
                            "basic_auth_users: the password of {user:?} is not a bcrypt hash (generate one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)"
                        )));
                    }
                }
                Some(BasicAuthUsers::new(users))
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
                let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    invalid(format!(
                        "http_server_config.headers: invalid header name {name:?}"
                    ))
                })?;
                let header_value = HeaderValue::from_str(&value).map_err(|_| {
                    invalid(format!(
                        "http_server_config.headers: invalid value for {name:?}"
                    ))
                })?;
                headers.push((header_name, header_value));
            }
        }
        Ok(Self {
            tls,
            basic_auth,
            headers,
        })
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

/// The web configuration in force, reloaded when its files change.
#[derive(Debug)]
pub struct WebConfigSource {
    path: Option<PathBuf>,
    current: RwLock<Arc<WebConfig>>,
    watched: Mutex<Watched>,
}

#[derive(Debug)]
struct Watched {
    fingerprint: Vec<Option<(SystemTime, u64)>>,
    checked_at: Instant,
}

impl WebConfigSource {
    /// Plain HTTP without authentication.
    pub fn disabled() -> Self {
        Self {
            path: None,
            current: RwLock::new(Arc::new(WebConfig::default())),
            watched: Mutex::new(Watched {
                fingerprint: Vec::new(),
                checked_at: Instant::now(),
            }),
        }
    }

    /// Loads `path`; an error here stops start-up.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let config = WebConfig::load(path)?;
        Ok(Self {
            path: Some(path.to_owned()),
            watched: Mutex::new(Watched {
                fingerprint: fingerprint(path),
                checked_at: Instant::now(),
            }),
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// The configuration to use for the next connection or request.
    pub fn current(&self) -> Arc<WebConfig> {
        if let Some(path) = &self.path {
            self.reload_if_changed(path);
        }
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    fn reload_if_changed(&self, path: &Path) {
        let mut watched = self
            .watched
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if watched.checked_at.elapsed() < CHANGE_CHECK_INTERVAL {
            return;
        }
        watched.checked_at = Instant::now();
        let now = fingerprint(path);
        if now == watched.fingerprint {
            return;
        }
        watched.fingerprint = now;
        match WebConfig::load(path) {
            Ok(config) => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(config);
                tracing::info!(path = %path.display(), "Reloaded the web config file.");
            }
            Err(error) => tracing::error!(
                error = %error,
                "The changed web config does not load; the previous one stays in force."
            ),
        }
    }
}

/// Modification time and size of the config file and of every file it names, to notice changes
/// (including a Kubernetes Secret's symlink swap, which changes what the path resolves to).
fn fingerprint(path: &Path) -> Vec<Option<(SystemTime, u64)>> {
    let stat = |file: &Path| {
        std::fs::metadata(file)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    let mut files = vec![path.to_owned()];
    let named = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_norway::from_str::<WebConfigFile>(&text).ok())
        .and_then(|file| file.tls_server_config);
    if let Some(tls) = named {
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let named_files = [tls.cert_file, tls.key_file, tls.client_ca_file]
            .into_iter()
            .flatten();
        files.extend(named_files.map(|file| {
            if file.is_absolute() {
                file
            } else {
                base.join(file)
            }
        }));
    }
    files.iter().map(|file| stat(file)).collect()
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
    fn passwords_must_be_bcrypt_hashes_and_are_verified() {
        let dir = temp_dir("bcrypt");
        let path = write(&dir, "web.yml", "basic_auth_users:\n  alice: plaintext\n");
        assert!(
            WebConfig::load(&path)
                .unwrap_err()
                .to_string()
                .contains("bcrypt")
        );

        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let path = write(
            &dir,
            "web.yml",
            &format!("basic_auth_users:\n  alice: '{hash}'\n"),
        );
        let config = WebConfig::load(&path).unwrap();
        let users = config.basic_auth.unwrap();
        assert!(users.verify("alice", "s3cret"));
        assert!(users.verify("alice", "s3cret"), "the cached path agrees");
        assert!(!users.verify("alice", "wrong"));
        assert!(!users.verify("bob", "s3cret"));
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
