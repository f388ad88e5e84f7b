//! The latest rendered snapshot of every organization this replica polls, and how far each has got,
//! for scrapes and readiness. Readers clone an `Arc`; the lock is never held across an await or while
//! rendering.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::api_keys::RenderedOrganization;

#[derive(Debug, Default)]
struct Entry {
    rendered: Option<Arc<RenderedOrganization>>,
    /// The first key-inventory poll has finished, successfully or not.
    inventory_attempted: bool,
    inventory_succeeded: bool,
}

/// Shared between the pollers, which publish, and the HTTP handlers, which read.
#[derive(Debug, Default)]
pub struct SnapshotStore {
    organizations: RwLock<BTreeMap<String, Entry>>,
}

impl SnapshotStore {
    pub fn new<'a>(organizations: impl IntoIterator<Item = &'a str>) -> Self {
        let store = Self::default();
        for organization in organizations {
            store.add(organization);
        }
        store
    }

    /// An organization starts being polled: it counts for readiness from now on.
    pub fn add(&self, organization: &str) {
        self.write()
            .insert(organization.to_owned(), Entry::default());
    }

    /// An organization is no longer polled: its series vanish from the next scrape.
    pub fn remove(&self, organization: &str) {
        self.write().remove(organization);
    }

    pub fn publish(&self, organization: &str, rendered: Arc<RenderedOrganization>) {
        if let Some(entry) = self.write().get_mut(organization) {
            entry.rendered = Some(rendered);
        }
    }

    /// Records a finished key-inventory poll; true when it is the organization's first success.
    pub fn record_inventory_poll(&self, organization: &str, succeeded: bool) -> bool {
        let mut organizations = self.write();
        let Some(entry) = organizations.get_mut(organization) else {
            return false;
        };
        let first_success = succeeded && !entry.inventory_succeeded;
        entry.inventory_attempted = true;
        entry.inventory_succeeded |= succeeded;
        first_success
    }

    /// The rendered snapshot an organization serves now, if it has one.
    pub fn get(&self, organization: &str) -> Option<Arc<RenderedOrganization>> {
        self.read()
            .get(organization)
            .and_then(|entry| entry.rendered.clone())
    }

    /// How many organizations the store holds, published or not.
    pub fn organization_count(&self) -> usize {
        self.read().len()
    }

    /// Every organization's rendered snapshot, in name order.
    pub fn all(&self) -> Vec<Arc<RenderedOrganization>> {
        self.read()
            .values()
            .filter_map(|entry| entry.rendered.clone())
            .collect()
    }

    /// Drops the text inflated for scrapes without gzip that none has used for `unused_for`
    /// (Prometheus always asks for gzip, so that text mostly serves a person's occasional look), and
    /// `expires_in` lines no scrape has asked for in that time; true if anything was dropped.
    pub fn drop_unused_text(&self, unused_for: Duration) -> bool {
        let Some(cutoff) = Instant::now().checked_sub(unused_for) else {
            return false;
        };
        let cutoff_unix = super::unix_now() - unused_for.as_secs_f64();
        let mut dropped = false;
        for rendered in self.all() {
            dropped |= rendered.drop_unused_text(cutoff, cutoff_unix);
        }
        dropped
    }

    /// The organizations readiness waits for: those whose first key-inventory poll has not finished,
    /// or, once all have finished without any success, all of them. Empty once ready.
    pub fn not_ready(&self) -> Vec<String> {
        let organizations = self.read();
        let waiting: Vec<String> = organizations
            .iter()
            .filter(|(_, entry)| !entry.inventory_attempted)
            .map(|(name, _)| name.clone())
            .collect();
        if !waiting.is_empty()
            || organizations
                .values()
                .any(|entry| entry.inventory_succeeded)
        {
            return waiting;
        }
        organizations.keys().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.organizations
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        self.organizations
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_every_organization_finished_its_first_poll_and_one_succeeded() {
        let store = SnapshotStore::new(["a", "b"]);
        assert_eq!(store.not_ready(), ["a", "b"]);
        store.record_inventory_poll("a", false);
        assert_eq!(store.not_ready(), ["b"]);
        store.record_inventory_poll("b", false);
        assert_eq!(
            store.not_ready(),
            ["a", "b"],
            "no organization succeeded yet"
        );
        assert!(store.record_inventory_poll("b", true), "the first success");
        assert!(!store.record_inventory_poll("b", true));
        assert!(store.not_ready().is_empty());
        store.add("c");
        assert_eq!(store.not_ready(), ["c"]);
        store.remove("c");
        assert!(store.not_ready().is_empty());
    }
}
