//! `users`: the organization's members (`GET /v1/organizations/users`), to tell who created each key
//! and whether that person is still a member.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{LastGood, Source, SourceKind, Update};
use crate::admin_api::model::User;
use crate::admin_api::{ApiError, Endpoint, Session};

/// A current member, as key creators are shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub email: String,
}

/// The last complete listing of members.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserDirectory {
    pub members: HashMap<String, Member>,
    /// Members per role, roles as the API gives them.
    pub roles: BTreeMap<String, u64>,
}

#[derive(Debug)]
pub struct UsersSource {
    pub interval: Duration,
}

impl Source for UsersSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Users
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    fn fetch<'a>(&'a self, session: &'a Session<'a>) -> BoxFuture<'a, Result<Update, ApiError>> {
        Box::pin(async move {
            let mut directory = UserDirectory::default();
            session
                .list_all(
                    Endpoint::Users,
                    &[],
                    |user: &User| user.id.as_str(),
                    |page: Vec<User>| {
                        for user in page {
                            let role = user.role.unwrap_or_else(|| "unknown".to_owned());
                            let member = Member {
                                name: user.name.unwrap_or_default(),
                                email: user.email.unwrap_or_default(),
                            };
                            // NB: a user listed twice (the list moved under the cursor) counts once.
                            if directory.members.insert(user.id, member).is_none() {
                                *directory.roles.entry(role).or_default() += 1;
                            }
                        }
                        Ok(())
                    },
                )
                .await?;
            let directory = Arc::new(directory);
            Ok(Box::new(move |last: &mut LastGood| last.users = Some(directory)) as Update)
        })
    }
}
