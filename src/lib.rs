//! anthropic-keys-exporter: lists every API key of Anthropic organizations through the Admin API in
//! the background and serves what it learned as Prometheus metrics.
//!
//! The binary in `main.rs` only parses the configuration and runs an [`app::App`]; everything else lives
//! here so that tests can build the same application in-process.

pub mod admin_api;
pub mod app;
pub mod config;
pub mod demo;
pub mod fleet;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod poller;
pub mod secret;
pub mod sharding;
pub mod snapshot;
pub mod sources;
pub mod telemetry;
pub mod zero_copy;

/// The version of this build, as `anthropic_exporter_build_info` and the `User-Agent` report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The source revision of this build, or `unknown` when it was built outside a git checkout.
pub const REVISION: &str = env!("AKE_BUILD_REVISION");
