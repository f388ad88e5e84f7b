//! Logging: human-readable text or JSON lines on standard error.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `--log.level`; otherwise the HTTP
/// libraries stay at `info` even at `debug`, since their debug output says nothing an operator needs.
pub fn init(settings: &LogSettings) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(directives)?,
        _ => {
            let level = settings.level.as_str().to_ascii_lowercase();
            EnvFilter::try_new(format!(
                "{level},hyper=info,hyper_util=info,reqwest=info,h2=info,rustls=info,tower_http=info"
            ))?
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match settings.format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    }
}
