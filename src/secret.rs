//! The Admin API key: where it comes from, and the one type that holds it.
//!
//! The key is organization-wide and can read and disable every API key, so it lives in a
//! [`SecretString`] from the moment it is read until the request header is built, and every text that
//! came from outside (upstream error messages) is scrubbed of it before it is logged.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

/// Where the Admin API key is read from.
#[derive(Debug, Clone)]
pub enum AdminKeySource {
    /// A key given once at start-up through the environment.
    Fixed(AdminKey),
    /// A file (typically a mounted Kubernetes Secret) that is read again before every poll, so that a
    /// rotated key is picked up without a restart.
    File(PathBuf),
}

/// Why the key could not be loaded. The messages never contain the key.
#[derive(Debug, thiserror::Error)]
pub enum AdminKeyError {
    #[error("cannot read the admin key file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the admin key file {path} is empty")]
    EmptyFile { path: PathBuf },
    #[error("the admin key from {origin} is empty")]
    Empty { origin: String },
    #[error(
        "the admin key from {origin} contains whitespace or control characters, which cannot be sent in an HTTP header"
    )]
    InvalidCharacters { origin: String },
}

/// An Admin API key. `Debug` prints a placeholder, never the key.
#[derive(Clone)]
pub struct AdminKey(SecretString);

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey([REDACTED])")
    }
}

impl AdminKey {
    /// Validates a key read from `origin` (an env var name or a file path, used in error messages).
    /// Surrounding whitespace is dropped: secret files and `echo` usually end in a newline.
    pub fn parse(raw: &str, origin: &str) -> Result<Self, AdminKeyError> {
        let key = raw.trim();
        if key.is_empty() {
            return Err(AdminKeyError::Empty {
                origin: origin.to_owned(),
            });
        }
        if key
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
        {
            return Err(AdminKeyError::InvalidCharacters {
                origin: origin.to_owned(),
            });
        }
        Ok(Self(SecretString::from(key.to_owned())))
    }

    /// The key itself, for the `x-api-key` header and for scrubbing upstream text. Nothing else.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Replaces every occurrence of the key in `text`, so that an upstream that echoes the key back in
    /// an error message cannot make us log it.
    pub fn redact(&self, text: &str) -> String {
        text.replace(self.expose(), "[REDACTED]")
    }
}

impl AdminKeySource {
    /// The key to use for the next poll.
    pub async fn load(&self) -> Result<AdminKey, AdminKeyError> {
        match self {
            Self::Fixed(key) => Ok(key.clone()),
            Self::File(path) => {
                let raw = tokio::fs::read_to_string(path).await.map_err(|source| {
                    AdminKeyError::Unreadable {
                        path: path.clone(),
                        source,
                    }
                })?;
                if raw.trim().is_empty() {
                    return Err(AdminKeyError::EmptyFile { path: path.clone() });
                }
                AdminKey::parse(&raw, &path.display().to_string())
            }
        }
    }

    /// Where the key comes from, for the start-up log line.
    pub fn describe(&self) -> String {
        match self {
            Self::Fixed(_) => "environment".to_owned(),
            Self::File(path) => format!("file {}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_contains_the_key() {
        let key = AdminKey::parse("sk-ant-admin01-supersecret", "TEST").unwrap();
        let source = AdminKeySource::Fixed(key.clone());
        assert!(!format!("{key:?}").contains("supersecret"));
        assert!(!format!("{source:?}").contains("supersecret"));
    }

    #[test]
    fn a_trailing_newline_from_a_secret_file_is_dropped() {
        let key = AdminKey::parse("sk-ant-admin01-abc\n", "TEST").unwrap();
        assert_eq!(key.expose(), "sk-ant-admin01-abc");
    }

    #[test]
    fn keys_that_cannot_be_sent_as_a_header_are_rejected_without_echoing_them() {
        let error = AdminKey::parse("sk-ant admin", "ANTHROPIC_ADMIN_KEY").unwrap_err();
        let message = error.to_string();
        assert!(message.contains("ANTHROPIC_ADMIN_KEY"));
        assert!(!message.contains("sk-ant"));
        assert!(matches!(
            AdminKey::parse("  ", "X"),
            Err(AdminKeyError::Empty { .. })
        ));
    }

    #[test]
    fn redact_removes_every_occurrence_of_the_key() {
        let key = AdminKey::parse("sk-ant-admin01-xyz", "TEST").unwrap();
        assert_eq!(
            key.redact("invalid x-api-key sk-ant-admin01-xyz (sk-ant-admin01-xyz)"),
            "invalid x-api-key [REDACTED] ([REDACTED])"
        );
    }
}
