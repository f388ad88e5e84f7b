//! The independent sources an organization is polled as. Each is one module behind [`Source`]: it
//! knows its endpoint and interval, and turns what it fetched into an [`Update`] of the organization's
//! last good data. The poller schedules sources; it does not know their endpoints.
//!
//! Adding a source: a module here, a field of [`LastGood`], a [`SourceKind`], and a line in
//! [`sources_for`].

pub mod api_keys;
pub mod organization;
pub mod usage;
pub mod users;
pub mod workspaces;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::admin_api::model::Organization;
use crate::admin_api::{ApiError, Session};
use crate::config::{Config, OrganizationConfig};

/// Which source, as the `source` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKind {
    Organization,
    Workspaces,
    ApiKeys,
    Users,
    Usage,
}

impl SourceKind {
    pub const ALL: [SourceKind; 5] = [
        Self::Organization,
        Self::Workspaces,
        Self::ApiKeys,
        Self::Users,
        Self::Usage,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Organization => "organization",
            Self::Workspaces => "workspaces",
            Self::ApiKeys => "api_keys",
            Self::Users => "users",
            Self::Usage => "usage",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Everything the sources of one organization last fetched successfully. `None` until a source has
/// succeeded once; a failed fetch leaves its field as it was.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LastGood {
    pub organization: Option<Arc<Organization>>,
    pub workspaces: Option<Arc<workspaces::WorkspaceNames>>,
    pub api_keys: Option<Arc<api_keys::Inventory>>,
    pub users: Option<Arc<users::UserDirectory>>,
    pub usage: Option<Arc<usage::UsageReport>>,
}

/// What a successful fetch changes in the organization's [`LastGood`].
pub type Update = Box<dyn FnOnce(&mut LastGood) + Send>;

/// One independently scheduled part of an organization's poll.
pub trait Source: Send + Sync + fmt::Debug {
    fn kind(&self) -> SourceKind;

    /// Time between the starts of two fetches.
    fn interval(&self) -> Duration;

    /// Fetches everything, all pages, and returns the change to publish. Runs within the poll's
    /// deadline; a failure changes nothing.
    fn fetch<'a>(&'a self, session: &'a Session<'a>) -> BoxFuture<'a, Result<Update, ApiError>>;
}

/// The sources of `organization`, in the order of the first round: the enrichment sources before the
/// key inventory, so that the first published keys already carry names.
pub fn sources_for(organization: &OrganizationConfig, config: &Config) -> Vec<Arc<dyn Source>> {
    let interval = organization.poll_interval;
    vec![
        Arc::new(organization::OrganizationSource { interval }),
        Arc::new(workspaces::WorkspacesSource { interval }),
        Arc::new(users::UsersSource {
            interval: config.users.interval,
        }),
        Arc::new(usage::UsageSource {
            interval: config.usage.interval,
            lookback: config.usage.lookback,
        }),
        Arc::new(api_keys::ApiKeysSource { interval }),
    ]
}
