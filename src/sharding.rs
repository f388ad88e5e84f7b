//! Horizontal sharding as kube-state-metrics does it: each replica gets `--shard N` of
//! `--total-shards M` and polls only the organizations whose name hashes to its shard, so every
//! organization is polled by exactly one replica, and the assignment survives restarts and reorderings
//! of the config file.

use sha2::{Digest, Sha256};

/// This replica's part of the organizations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// From 0 to `total - 1`.
    pub index: u32,
    /// At least 1.
    pub total: u32,
}

impl Shard {
    /// The shard of organization `name`: the first 8 bytes of SHA-256(`name`) as a big-endian
    /// integer, modulo the number of shards. Documented in the README, so operators can compute it.
    pub fn of(name: &str, total: u32) -> u32 {
        let digest = Sha256::digest(name.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        (u64::from_be_bytes(first) % u64::from(total.max(1))) as u32
    }

    pub fn owns(&self, name: &str) -> bool {
        Self::of(name, self.total) == self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_organization_belongs_to_exactly_one_shard() {
        let names: Vec<String> = (0..1000).map(|i| format!("customer-{i}")).collect();
        for total in [1, 2, 3, 7] {
            let shards: Vec<Shard> = (0..total).map(|index| Shard { index, total }).collect();
            let mut sizes = vec![0usize; total as usize];
            for name in &names {
                let owners: Vec<&Shard> = shards.iter().filter(|shard| shard.owns(name)).collect();
                assert_eq!(owners.len(), 1, "{name} with {total} shards");
                sizes[owners[0].index as usize] += 1;
            }
            // A hash spreads them: no shard gets less than half its fair share.
            let fair = names.len() / total as usize;
            assert!(sizes.iter().all(|&size| size * 2 >= fair), "{sizes:?}");
        }
    }

    #[test]
    fn the_assignment_is_stable_across_releases() {
        // Pinned values, computed independently (Python's hashlib): changing the hash would move every
        // organization to another replica.
        let of = |name| (Shard::of(name, 5), Shard::of(name, 3));
        assert_eq!(of("prod"), (4, 1));
        assert_eq!(of("staging"), (1, 1));
        assert_eq!(of("customer-42"), (4, 2));
    }
}
