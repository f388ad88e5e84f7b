//! `organization`: the organization the admin key belongs to (`GET /v1/organizations/me`), for
//! `anthropic_organization_info`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{Source, SourceKind, Update};
use crate::admin_api::model::Organization;
use crate::admin_api::{ApiError, Endpoint, Session};

#[derive(Debug)]
pub struct OrganizationSource {
    pub interval: Duration,
}

impl Source for OrganizationSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Organization
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    fn fetch<'a>(&'a self, session: &'a Session<'a>) -> BoxFuture<'a, Result<Update, ApiError>> {
        Box::pin(async move {
            let organization: Organization = session.get_json(Endpoint::Organization, &[]).await?;
            let organization = Arc::new(organization);
            Ok(
                Box::new(move |last: &mut super::LastGood| last.organization = Some(organization))
                    as Update,
            )
        })
    }
}
