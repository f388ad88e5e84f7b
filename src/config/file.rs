//! `--config.file`: the organizations to poll, each with its own admin key.
//!
//! ```yaml
//! organizations:
//!   - name: prod                         # the `organization` label
//!     admin_key_file: /run/secrets/prod  # or admin_key_env: PROD_ADMIN_KEY
//!     base_url: https://api.anthropic.com  # optional
//!     poll_interval: 10m                 # optional
//! ```
//!
//! Keys are never inline: a key must not live in a file that is not a secret. Every mistake is
//! reported with the file, the organization and the field.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Config, OrganizationConfig, duration_from_text, parse_base_url};
use crate::secret::{AdminKey, AdminKeySource, read_key_file_blocking};

/// Config files larger than this are refused: even 10,000 organizations fit in a few hundred KiB.
const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
/// Longest organization name, so that it fits any label and log line.
const MAX_NAME_CHARS: usize = 64;

/// A config file that cannot be used. One line; names the file, and the organization and field where
/// there is one; never contains a key.
#[derive(Debug, thiserror::Error)]
#[error("config file {}: {}{message}", path.display(), location(.organization, .field))]
pub struct ConfigFileError {
    pub path: PathBuf,
    /// The organization's name, or its position (`organizations[2]`) when it has no usable name.
    pub organization: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

fn location(organization: &Option<String>, field: &Option<String>) -> String {
    match (organization, field) {
        (Some(organization), Some(field)) => format!("organization {organization}: {field}: "),
        (Some(organization), None) => format!("organization {organization}: "),
        (None, Some(field)) => format!("{field}: "),
        (None, None) => String::new(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    organizations: Vec<serde_norway::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrganizationEntry {
    name: String,
    #[serde(default)]
    admin_key_file: Option<PathBuf>,
    #[serde(default)]
    admin_key_env: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    poll_interval: Option<String>,
}

/// Reads and validates `path`, reading every admin key it names. `defaults` gives the base URL, the
/// poll interval and whether plain http is allowed.
pub fn load(
    path: &Path,
    defaults: &Config,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Vec<OrganizationConfig>, ConfigFileError> {
    let error =
        |organization: Option<&str>, field: Option<&str>, message: String| ConfigFileError {
            path: path.to_owned(),
            organization: organization.map(str::to_owned),
            field: field.map(str::to_owned),
            message,
        };
    let text = read_limited(path).map_err(|message| error(None, None, message))?;
    if text.trim().is_empty() {
        return Err(error(None, None, "the file is empty".to_owned()));
    }
    let file: FileFormat =
        serde_norway::from_str(&text).map_err(|e| error(None, None, one_line(&e.to_string())))?;
    if file.organizations.is_empty() {
        return Err(error(
            None,
            Some("organizations"),
            "lists no organization".to_owned(),
        ));
    }
    let mut names = HashSet::new();
    let mut organizations = Vec::with_capacity(file.organizations.len());
    for (index, value) in file.organizations.into_iter().enumerate() {
        let position = format!("organizations[{index}]");
        let named = value
            .get("name")
            .and_then(serde_norway::Value::as_str)
            .filter(|name| valid_name(name))
            .map(str::to_owned);
        let label = named.clone().unwrap_or_else(|| position.clone());
        let entry: OrganizationEntry = serde_norway::from_value(value).map_err(|e| {
            let message = one_line(&e.to_string());
            let field = unknown_field(&message);
            error(Some(&label), field.as_deref(), message)
        })?;
        let org = Some(label.as_str());
        if !valid_name(&entry.name) {
            return Err(error(
                org,
                Some("name"),
                format!(
                    "{:?} must be 1 to {MAX_NAME_CHARS} characters of A-Z, a-z, 0-9, '_', '.' and '-'",
                    entry.name.chars().take(80).collect::<String>()
                ),
            ));
        }
        if !names.insert(entry.name.clone()) {
            return Err(error(
                org,
                Some("name"),
                "is used by an earlier organization too; names must be unique".to_owned(),
            ));
        }
        let admin_key = match (&entry.admin_key_file, &entry.admin_key_env) {
            (Some(key_file), None) => {
                let key_file = resolve(path, key_file);
                read_key_file_blocking(&key_file)
                    .map_err(|e| error(org, Some("admin_key_file"), e.to_string()))?;
                AdminKeySource::File(key_file)
            }
            (None, Some(variable)) => {
                let raw = env(variable)
                    .filter(|raw| !raw.trim().is_empty())
                    .ok_or_else(|| {
                        error(
                            org,
                            Some("admin_key_env"),
                            format!("the environment variable {variable} is not set or empty"),
                        )
                    })?;
                let key = AdminKey::parse(&raw, variable)
                    .map_err(|e| error(org, Some("admin_key_env"), e.to_string()))?;
                AdminKeySource::Fixed(key)
            }
            (Some(_), Some(_)) => {
                return Err(error(
                    org,
                    Some("admin_key_file"),
                    "give admin_key_file or admin_key_env, not both".to_owned(),
                ));
            }
            (None, None) => {
                return Err(error(
                    org,
                    Some("admin_key_file"),
                    "missing: give admin_key_file (a mounted secret) or admin_key_env; keys are never written in this file"
                        .to_owned(),
                ));
            }
        };
        let base_url = match &entry.base_url {
            Some(text) => parse_base_url(text, defaults.allow_insecure_http)
                .map_err(|message| error(org, Some("base_url"), message))?,
            None => defaults.base_url.clone(),
        };
        let poll_interval = match &entry.poll_interval {
            Some(text) => {
                let interval = duration_from_text(text)
                    .map_err(|message| error(org, Some("poll_interval"), message))?;
                if interval < defaults.poll.deadline {
                    return Err(error(
                        org,
                        Some("poll_interval"),
                        format!(
                            "{text} is shorter than --poll.deadline ({})",
                            humantime::format_duration(defaults.poll.deadline)
                        ),
                    ));
                }
                interval
            }
            None => defaults.poll.interval,
        };
        organizations.push(OrganizationConfig {
            name: entry.name,
            admin_key,
            base_url,
            poll_interval,
        });
    }
    Ok(organizations)
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_CHARS).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Relative key paths are relative to the config file, as for the web config file.
fn resolve(config_file: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_owned();
    }
    config_file
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(path)
}

fn read_limited(path: &Path) -> Result<String, String> {
    let metadata = std::fs::metadata(path).map_err(|e| format!("cannot read it: {e}"))?;
    if !metadata.is_file() {
        return Err("is not a regular file".to_owned());
    }
    if metadata.len() > MAX_FILE_BYTES {
        return Err(format!(
            "is larger than {} MiB",
            MAX_FILE_BYTES / (1024 * 1024)
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))
}

/// The field serde names in "unknown field `x`".
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.split("unknown field `").nth(1)?;
    Some(rest.split('`').next()?.to_owned())
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Invocation;

    fn defaults() -> Config {
        let invocation = Config::parse(["x", "--demo"], |_| None).unwrap();
        let Invocation::Run(config) = invocation else {
            panic!("no config")
        };
        *config
    }

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ake-config-file-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key"), "sk-ant-admin01-file-test\n").unwrap();
        dir
    }

    fn load_text(dir: &Path, text: &str) -> Result<Vec<OrganizationConfig>, ConfigFileError> {
        let path = dir.join("organizations.yml");
        std::fs::write(&path, text).unwrap();
        load(&path, &defaults(), &|name| {
            (name == "STAGING_KEY").then(|| "sk-ant-admin01-env-test".to_owned())
        })
    }

    #[test]
    fn a_valid_file_gives_every_organization_with_its_own_settings() {
        let dir = dir("valid");
        let organizations = load_text(
            &dir,
            "organizations:\n  - name: prod\n    admin_key_file: key\n  - name: staging\n    admin_key_env: STAGING_KEY\n    base_url: http://127.0.0.1:8080\n    poll_interval: 10m\n",
        )
        .unwrap();
        assert_eq!(organizations.len(), 2);
        assert_eq!(organizations[0].name, "prod");
        assert_eq!(
            organizations[0].admin_key,
            AdminKeySource::File(dir.join("key"))
        );
        assert_eq!(
            organizations[0].base_url.as_str(),
            "https://api.anthropic.com/"
        );
        assert_eq!(organizations[1].base_url.as_str(), "http://127.0.0.1:8080/");
        assert_eq!(organizations[1].poll_interval.as_secs(), 600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_mistake_names_the_file_the_organization_and_the_field() {
        let dir = dir("errors");
        let cases: &[(&str, &str, &str)] = &[
            (
                "organizations:\n  - name: prod\n    admin_key_file: key\n    colour: blue\n",
                "prod",
                "colour",
            ),
            (
                "organizations:\n  - name: prod\n    admin_key_file: key\n  - name: prod\n    admin_key_env: STAGING_KEY\n",
                "prod",
                "name",
            ),
            (
                "organizations:\n  - name: 'prod env'\n    admin_key_file: key\n",
                "organizations[0]",
                "name",
            ),
            (
                "organizations:\n  - name: prod\n    admin_key_file: key\n    admin_key_env: STAGING_KEY\n",
                "prod",
                "admin_key_file",
            ),
            ("organizations:\n  - name: prod\n", "prod", "admin_key_file"),
            (
                "organizations:\n  - name: prod\n    admin_key_file: missing\n",
                "prod",
                "admin_key_file",
            ),
            (
                "organizations:\n  - name: prod\n    admin_key_env: UNSET_KEY\n",
                "prod",
                "admin_key_env",
            ),
            (
                "organizations:\n  - name: prod\n    admin_key_file: key\n    poll_interval: often\n",
                "prod",
                "poll_interval",
            ),
            (
                "organizations:\n  - name: prod\n    admin_key_file: key\n    base_url: http://api.example.com\n",
                "prod",
                "base_url",
            ),
            (
                "organizations:\n  - name: prod\n    admin_key_file: key\n    admin_key: sk-ant-admin01-inline\n",
                "prod",
                "admin_key",
            ),
        ];
        for (text, organization, field) in cases {
            let message = load_text(&dir, text).unwrap_err().to_string();
            assert!(message.contains("organizations.yml"), "{text}: {message}");
            assert!(
                message.contains(&format!("organization {organization}: {field}")),
                "{text}: {message}"
            );
            assert!(!message.contains('\n'), "{message}");
            assert!(!message.contains("sk-ant-admin01"), "{message}");
        }
        for text in ["", "organizations: []\n", "orgs: []\n"] {
            assert!(load_text(&dir, text).is_err(), "{text:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
