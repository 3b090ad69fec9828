//! How records cross an edge between two operators: every edge says it explicitly.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Keys fall into this many key groups; a key group is the unit that moves when a job is
/// restored at another parallelism, so it is also the largest parallelism of a keyed operator.
pub const KEY_GROUPS: u32 = 128;

/// A stable 64-bit hash of a key: the same in every process and run (no random seed), so key
/// groups are stable across restarts. FxHash, then a finalizer so low bits are well mixed.
pub fn stable_hash<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut hasher = rustc_hash::FxHasher::default();
    key.hash(&mut hasher);
    let mut h = hasher.finish();
    // murmur3's fmix64: FxHash of small integers leaves the low bits poorly distributed.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The key group of a key hash.
#[inline]
pub fn key_group(hash: u64) -> u32 {
    (hash % KEY_GROUPS as u64) as u32
}

/// The subtask, of `parallelism`, that owns `key_group`: contiguous ranges of key groups per
/// subtask, so a rescale moves whole ranges.
#[inline]
pub fn subtask_for_key_group(key_group: u32, parallelism: usize) -> usize {
    key_group as usize * parallelism / KEY_GROUPS as usize
}

/// Extracts the hash that routes a record on a hash edge.
pub type KeyHasher<T> = Arc<dyn Fn(&T) -> u64 + Send + Sync>;

/// How the records of an edge are spread over the downstream subtasks.
pub enum Partitioning<T> {
    /// Subtask i sends to subtask i. Between operators of equal parallelism with one input, the
    /// two are fused into one task (operator chaining); with unequal parallelism it falls back
    /// to [`Partitioning::Rebalance`].
    Forward,
    /// Every record goes to the subtask that owns its key's key group.
    Hash(KeyHasher<T>),
    /// Every batch goes to every subtask.
    Broadcast,
    /// Whole batches go round robin over the subtasks.
    Rebalance,
}

impl<T> Partitioning<T> {
    /// A hash edge on the key `key` extracts.
    pub fn hash_by<K: Hash>(key: impl Fn(&T) -> K + Send + Sync + 'static) -> Self {
        Partitioning::Hash(Arc::new(move |record| stable_hash(&key(record))))
    }

    pub(crate) fn is_forward(&self) -> bool {
        matches!(self, Partitioning::Forward)
    }
}

impl<T> Clone for Partitioning<T> {
    fn clone(&self) -> Self {
        match self {
            Partitioning::Forward => Partitioning::Forward,
            Partitioning::Hash(h) => Partitioning::Hash(h.clone()),
            Partitioning::Broadcast => Partitioning::Broadcast,
            Partitioning::Rebalance => Partitioning::Rebalance,
        }
    }
}

impl<T> fmt::Debug for Partitioning<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Partitioning::Forward => "Forward",
            Partitioning::Hash(_) => "Hash",
            Partitioning::Broadcast => "Broadcast",
            Partitioning::Rebalance => "Rebalance",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_groups_cover_every_subtask_in_contiguous_ranges() {
        for parallelism in 1..=8 {
            let owners: Vec<usize> = (0..KEY_GROUPS)
                .map(|kg| subtask_for_key_group(kg, parallelism))
                .collect();
            assert!(owners.windows(2).all(|w| w[0] <= w[1]));
            assert_eq!(owners.first(), Some(&0));
            assert_eq!(owners.last(), Some(&(parallelism - 1)));
        }
    }

    #[test]
    fn stable_hash_is_stable_and_spreads_small_integers() {
        assert_eq!(stable_hash(&42u64), stable_hash(&42u64));
        assert_eq!(stable_hash("word"), stable_hash(&"word".to_string()));
        let mut per_subtask = [0usize; 4];
        for k in 0..10_000u64 {
            per_subtask[subtask_for_key_group(key_group(stable_hash(&k)), 4)] += 1;
        }
        for n in per_subtask {
            assert!((2_000..3_000).contains(&n), "{per_subtask:?}");
        }
    }
}
