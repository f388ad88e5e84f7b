//! `workspaces`: every workspace's name, archived ones and the Default one included, so that keys are
//! labelled by name. Keys whose workspace was never listed are labelled by the id.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{LastGood, Source, SourceKind, Update};
use crate::admin_api::model::Workspace;
use crate::admin_api::{ApiError, Endpoint, Session};

/// Workspace id to name.
pub type WorkspaceNames = HashMap<String, String>;

/// Adds listed workspaces; one without a name is named by its id.
pub fn add_workspaces(names: &mut WorkspaceNames, workspaces: Vec<Workspace>) {
    for workspace in workspaces {
        let name = workspace.name.unwrap_or_else(|| workspace.id.clone());
        names.insert(workspace.id, name);
    }
}

#[derive(Debug)]
pub struct WorkspacesSource {
    pub interval: Duration,
}

impl Source for WorkspacesSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Workspaces
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    fn fetch<'a>(&'a self, session: &'a Session<'a>) -> BoxFuture<'a, Result<Update, ApiError>> {
        Box::pin(async move {
            let mut names = WorkspaceNames::new();
            session
                .list_all(
                    Endpoint::Workspaces,
                    &[("include_archived", "true"), ("include_default", "true")],
                    |workspace: &Workspace| workspace.id.as_str(),
                    |page: Vec<Workspace>| {
                        add_workspaces(&mut names, page);
                        Ok(())
                    },
                )
                .await?;
            let names = Arc::new(names);
            Ok(Box::new(move |last: &mut LastGood| last.workspaces = Some(names)) as Update)
        })
    }
}
