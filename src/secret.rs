//! The Admin API key: where it comes from, and the one type that holds it.
//!
//! The key is organization-wide and can read and disable every API key, so it lives in a
//! [`SecretString`] from the moment it is read until the request header is built, and every text that
//! came from outside (upstream error messages) is scrubbed of it before it is logged.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

/// An admin key is about 100 bytes; a key file larger than this is a wrong path, not a key, and is not
/// read into memory.
pub const MAX_KEY_FILE_BYTES: u64 = 4 * 1024;

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
    #[error(
        "the admin key file {path} is not a regular file (a FIFO, socket or device could block the poller)"
    )]
    NotARegularFile { path: PathBuf },
    #[error("the admin key file {path} is larger than {limit} bytes; an admin key is about 100")]
    TooLarge { path: PathBuf, limit: u64 },
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

impl PartialEq for AdminKeySource {
    /// Tells a reload whether an organization's key changed (then its pollers restart).
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Fixed(a), Self::Fixed(b)) => a.expose() == b.expose(),
            (Self::File(a), Self::File(b)) => a == b,
            _ => false,
        }
    }
}

impl AdminKeySource {
    /// The key to use for the next poll. Callers bound this with the poll's deadline: a file on a
    /// stalled network or CSI mount must not freeze the poller.
    pub async fn load(&self) -> Result<AdminKey, AdminKeyError> {
        match self {
            Self::Fixed(key) => Ok(key.clone()),
            Self::File(path) => read_key_file(path).await,
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

/// Reads a key file off the async workers. Only a regular file (after following symlinks, as
/// Kubernetes Secret mounts use) of at most [`MAX_KEY_FILE_BYTES`]; a file that others may read is
/// allowed but warned about once.
pub async fn read_key_file(path: &Path) -> Result<AdminKey, AdminKeyError> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || read_key_file_blocking(&owned))
        .await
        .unwrap_or_else(|error| {
            Err(AdminKeyError::Unreadable {
                path: path.to_owned(),
                source: std::io::Error::other(error.to_string()),
            })
        })
}

/// [`read_key_file`] for start-up and `--config.check`, where blocking is fine.
pub fn read_key_file_blocking(path: &Path) -> Result<AdminKey, AdminKeyError> {
    use std::io::Read as _;
    let unreadable = |source| AdminKeyError::Unreadable {
        path: path.to_owned(),
        source,
    };
    let too_large = || AdminKeyError::TooLarge {
        path: path.to_owned(),
        limit: MAX_KEY_FILE_BYTES,
    };
    let metadata = std::fs::metadata(path).map_err(unreadable)?;
    // NB: checked before opening, since opening a FIFO for reading blocks until a writer appears.
    if !metadata.is_file() {
        return Err(AdminKeyError::NotARegularFile {
            path: path.to_owned(),
        });
    }
    if metadata.len() > MAX_KEY_FILE_BYTES {
        return Err(too_large());
    }
    warn_if_readable_by_others(path, &metadata);
    let mut raw = String::new();
    std::fs::File::open(path)
        .map_err(unreadable)?
        .take(MAX_KEY_FILE_BYTES + 1)
        .read_to_string(&mut raw)
        .map_err(unreadable)?;
    if raw.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(too_large());
    }
    if raw.trim().is_empty() {
        return Err(AdminKeyError::EmptyFile {
            path: path.to_owned(),
        });
    }
    AdminKey::parse(&raw, &path.display().to_string())
}

/// Warns once per path: the file is read before every poll, and one line is enough to act on.
fn warn_if_readable_by_others(path: &Path, metadata: &std::fs::Metadata) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        static WARNED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
        if metadata.permissions().mode() & 0o004 == 0 {
            return;
        }
        let mut warned = WARNED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !warned.iter().any(|seen| seen == path) {
            warned.push(path.to_owned());
            tracing::warn!(
                path = %path.display(),
                "The admin key file is readable by every user of this machine; restrict it (chmod 0400, or defaultMode 0440 on a Kubernetes Secret volume)."
            );
        }
    }
    #[cfg(not(unix))]
    let _ = (path, metadata);
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

    #[tokio::test]
    async fn a_fifo_or_an_oversized_file_is_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("ake-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(5), read_key_file(&fifo)).await;
        assert!(
            matches!(read, Ok(Err(AdminKeyError::NotARegularFile { .. }))),
            "{read:?}"
        );
        let large = dir.join("large");
        std::fs::write(&large, "k".repeat(10_000)).unwrap();
        assert!(matches!(
            read_key_file(&large).await,
            Err(AdminKeyError::TooLarge { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
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
