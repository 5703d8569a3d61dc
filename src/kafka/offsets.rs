//! Ordered offset release for concurrent processing: which position of a partition may be
//! committed when records finish out of order. Pure bookkeeping, no Kafka.

use std::collections::{BTreeMap, HashMap};

/// A topic-partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
}

impl TopicPartition {
    /// A topic-partition from its parts.
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

/// Tracks, per partition, the offsets handed out for processing and those completed, and
/// answers the committable position: one past the end of the contiguous completed prefix.
///
/// "Contiguous" is over the offsets that were tracked, not over integers: offsets Kafka never
/// hands out (compacted away, transaction markers) do not hold the position back.
/// Memory is one map entry per tracked offset not yet released, i.e. O(in-flight plus the
/// completed records waiting behind an unfinished one); callers bound that window.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<TopicPartition, BTreeMap<i64, bool>>,
}

impl OffsetTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `offset` was handed out for processing. Tracking an offset twice is a no-op.
    pub fn track(&mut self, tp: &TopicPartition, offset: i64) {
        self.partitions
            .entry(tp.clone())
            .or_default()
            .entry(offset)
            .or_insert(false);
    }

    /// Marks `offset` done. Returns `Some(position)` (the next offset to consume) when the
    /// committable position advanced, `None` otherwise: the offset was not the oldest
    /// unfinished one, was never tracked, was already completed, or its partition was revoked.
    pub fn complete(&mut self, tp: &TopicPartition, offset: i64) -> Option<i64> {
        let pending = self.partitions.get_mut(tp)?;
        match pending.get_mut(&offset) {
            Some(done) if !*done => *done = true,
            _ => return None,
        }
        let mut position = None;
        while let Some(entry) = pending.first_entry() {
            if !*entry.get() {
                break;
            }
            position = Some(*entry.key() + 1);
            entry.remove();
        }
        if pending.is_empty() {
            self.partitions.remove(tp);
        }
        position
    }

    /// Forgets revoked partitions: their in-flight records will be redone by the new owner,
    /// so later completions for them are ignored.
    pub fn revoke<'a>(&mut self, tps: impl IntoIterator<Item = &'a TopicPartition>) {
        for tp in tps {
            self.partitions.remove(tp);
        }
    }

    /// Forgets every partition (e.g. on an eager rebalance that revokes the whole assignment).
    pub fn clear(&mut self) {
        self.partitions.clear();
    }

    /// Offsets of `tp` tracked and not yet released (unfinished, or finished behind an
    /// unfinished one).
    pub fn in_flight(&self, tp: &TopicPartition) -> usize {
        self.partitions.get(tp).map_or(0, BTreeMap::len)
    }

    /// Offsets tracked and not yet released, over every partition.
    pub fn total_tracked(&self) -> usize {
        self.partitions.values().map(BTreeMap::len).sum()
    }

    /// The oldest unfinished offset of `tp`, if any.
    pub fn oldest_unfinished(&self, tp: &TopicPartition) -> Option<i64> {
        self.partitions
            .get(tp)?
            .iter()
            .find(|(_, done)| !**done)
            .map(|(offset, _)| *offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    fn tp(p: i32) -> TopicPartition {
        TopicPartition::new("t", p)
    }

    #[test]
    fn in_order_completion_advances_one_by_one() {
        let mut t = OffsetTracker::new();
        for o in 0..3 {
            t.track(&tp(0), o);
        }
        assert_eq!(t.complete(&tp(0), 0), Some(1));
        assert_eq!(t.complete(&tp(0), 1), Some(2));
        assert_eq!(t.complete(&tp(0), 2), Some(3));
        assert_eq!(t.in_flight(&tp(0)), 0);
        assert_eq!(t.total_tracked(), 0);
    }

    #[test]
    fn out_of_order_completion_waits_for_the_oldest_unfinished_offset() {
        let mut t = OffsetTracker::new();
        for o in 10..15 {
            t.track(&tp(0), o);
        }
        assert_eq!(t.complete(&tp(0), 12), None);
        assert_eq!(t.complete(&tp(0), 11), None);
        assert_eq!(t.complete(&tp(0), 14), None);
        assert_eq!(t.oldest_unfinished(&tp(0)), Some(10));
        assert_eq!(t.complete(&tp(0), 10), Some(13));
        assert_eq!(t.in_flight(&tp(0)), 2);
        assert_eq!(t.complete(&tp(0), 13), Some(15));
    }

    #[test]
    fn gaps_in_offsets_do_not_hold_the_position_back() {
        let mut t = OffsetTracker::new();
        t.track(&tp(0), 5);
        t.track(&tp(0), 9);
        assert_eq!(t.complete(&tp(0), 9), None);
        assert_eq!(t.complete(&tp(0), 5), Some(10));
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::new();
        t.track(&tp(0), 0);
        t.track(&tp(1), 0);
        t.track(&tp(1), 1);
        assert_eq!(t.complete(&tp(1), 0), Some(1));
        assert_eq!(t.in_flight(&tp(0)), 1);
        assert_eq!(t.complete(&tp(0), 0), Some(1));
    }

    #[test]
    fn unknown_duplicate_and_revoked_completions_are_ignored() {
        let mut t = OffsetTracker::new();
        assert_eq!(t.complete(&tp(0), 3), None);
        t.track(&tp(0), 3);
        t.track(&tp(0), 4);
        assert_eq!(t.complete(&tp(0), 4), None);
        assert_eq!(t.complete(&tp(0), 4), None);
        t.revoke([&tp(0)]);
        assert_eq!(t.complete(&tp(0), 3), None);
        assert_eq!(t.in_flight(&tp(0)), 0);
        // Reassigned later: fresh tracking, the old completions are gone.
        t.track(&tp(0), 3);
        assert_eq!(t.complete(&tp(0), 3), Some(4));
    }

    #[test]
    fn tracking_an_offset_twice_keeps_its_completion() {
        let mut t = OffsetTracker::new();
        t.track(&tp(0), 0);
        t.track(&tp(0), 1);
        assert_eq!(t.complete(&tp(0), 1), None);
        t.track(&tp(0), 1);
        assert_eq!(t.complete(&tp(0), 0), Some(2));
    }

    /// Randomized: records are handed out in offset order, with gaps, and completed in random
    /// order interleaved with new tracking; the returned position never passes an incomplete
    /// offset and reaches the end once all are done.
    #[test]
    fn position_never_passes_an_incomplete_offset_under_random_schedules() {
        for seed in 0..200u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut t = OffsetTracker::new();
            let parts = 3;
            let mut next = vec![0i64; parts];
            let mut unfinished: Vec<(i32, i64)> = Vec::new();
            let mut position = vec![0i64; parts];
            let mut last_tracked = vec![-1i64; parts];
            for _ in 0..300 {
                if unfinished.is_empty() || rng.random_bool(0.55) {
                    let p = rng.random_range(0..parts);
                    next[p] += rng.random_range(1..3);
                    t.track(&tp(p as i32), next[p]);
                    last_tracked[p] = next[p];
                    unfinished.push((p as i32, next[p]));
                } else {
                    unfinished.shuffle(&mut rng);
                    let Some((p, o)) = unfinished.pop() else {
                        continue;
                    };
                    if let Some(pos) = t.complete(&tp(p), o) {
                        assert!(
                            pos > position[p as usize],
                            "seed {seed}: position went back"
                        );
                        position[p as usize] = pos;
                    }
                }
                for &(p, o) in &unfinished {
                    assert!(
                        position[p as usize] <= o,
                        "seed {seed}: position {} passed unfinished {o} of partition {p}",
                        position[p as usize]
                    );
                }
            }
            unfinished.shuffle(&mut rng);
            for (p, o) in unfinished.drain(..) {
                if let Some(pos) = t.complete(&tp(p), o) {
                    position[p as usize] = pos;
                }
            }
            for p in 0..parts {
                if last_tracked[p] >= 0 {
                    assert_eq!(position[p], last_tracked[p] + 1, "seed {seed}");
                }
            }
            assert_eq!(t.total_tracked(), 0);
        }
    }
}
