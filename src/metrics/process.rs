//! The process metrics (`process_*`), read at most once a second: reading them takes three files
//! under `/proc` and was half of what a gzip scrape computes itself.

use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::process_collector::ProcessCollector;
use prometheus::proto::MetricFamily;

/// What each family's HELP says in addition.
const CACHED: &str = " Read at most once a second: scrapes within one second share it.";

pub(super) struct OncePerSecond {
    inner: ProcessCollector,
    /// The Unix second of the last reading, and its families.
    last: Mutex<Option<(u64, Vec<MetricFamily>)>>,
}

impl OncePerSecond {
    pub(super) fn for_self() -> Self {
        Self {
            inner: ProcessCollector::for_self(),
            last: Mutex::new(None),
        }
    }
}

impl Collector for OncePerSecond {
    fn desc(&self) -> Vec<&Desc> {
        self.inner.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let second = super::unix_now().floor() as u64;
        let mut last = super::lock(&self.last);
        if let Some((read_at, families)) = last.as_ref()
            && *read_at == second
        {
            return families.clone();
        }
        let mut families = self.inner.collect();
        for family in &mut families {
            let help = format!("{}{CACHED}", family.help());
            family.set_help(help);
        }
        *last = Some((second, families.clone()));
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrapes_within_a_second_share_one_reading_and_help_says_so() {
        let collector = OncePerSecond::for_self();
        // Retried across a second's boundary.
        for _ in 0..3 {
            let first = collector.collect();
            assert!(!first.is_empty());
            assert!(first.iter().all(|family| family.help().ends_with(CACHED)));
            // Mark the kept reading: a scrape in the same second must get it, not a new one.
            if let Some((_, families)) = super::super::lock(&collector.last).as_mut() {
                families[0].set_help("marked".to_owned());
            }
            let again = collector.collect();
            if again[0].help() == "marked" {
                return;
            }
        }
        panic!("the families were read again within one second");
    }
}
