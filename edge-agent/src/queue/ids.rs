//! A set of record ids kept as sorted ranges, for the acknowledged ids.

use super::RecordId;

/// Record ids as sorted, disjoint, non-touching half-open ranges `[start, end)`.
///
/// Acks mostly arrive in order, so the acknowledged ids inside the live segments collapse
/// into a handful of ranges: the cost is 16 bytes per gap between acked runs, not per
/// record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IdSet {
    ranges: Vec<(RecordId, RecordId)>,
}

impl IdSet {
    /// Accepts ranges only in the normal form this type keeps (as written to the acks file).
    pub(crate) fn from_ranges(ranges: Vec<(RecordId, RecordId)>) -> Option<Self> {
        let normal =
            ranges.iter().all(|&(s, e)| s < e) && ranges.windows(2).all(|w| w[0].1 < w[1].0);
        normal.then_some(Self { ranges })
    }

    pub(crate) fn ranges(&self) -> &[(RecordId, RecordId)] {
        &self.ranges
    }

    /// Index of the first range that ends after `id`.
    fn after(&self, id: RecordId) -> usize {
        self.ranges.partition_point(|&(_, e)| e <= id)
    }

    pub(crate) fn contains(&self, id: RecordId) -> bool {
        self.ranges
            .get(self.after(id))
            .is_some_and(|&(s, _)| s <= id)
    }

    /// The smallest id `>= id` that is not in the set.
    pub(crate) fn first_absent_from(&self, id: RecordId) -> RecordId {
        match self.ranges.get(self.after(id)) {
            Some(&(s, e)) if s <= id => e,
            _ => id,
        }
    }

    /// Adds `id`; false if it was already there. `id` must be below `RecordId::MAX` (ids
    /// come from live segments, whose ends are at most `next_id`).
    pub(crate) fn insert(&mut self, id: RecordId) -> bool {
        // First range that ends at or after `id`: it contains `id`, touches it from the
        // left, or lies entirely to the right.
        let i = self.ranges.partition_point(|&(_, e)| e < id);
        match self.ranges.get(i).copied() {
            Some((s, e)) if s <= id && id < e => false,
            Some((_, e)) if e == id => {
                self.ranges[i].1 = id + 1;
                if let Some(&(next_s, next_e)) = self.ranges.get(i + 1) {
                    if next_s == id + 1 {
                        self.ranges[i].1 = next_e;
                        self.ranges.remove(i + 1);
                    }
                }
                true
            }
            Some((s, _)) if s == id + 1 => {
                self.ranges[i].0 = id;
                true
            }
            _ => {
                self.ranges.insert(i, (id, id + 1));
                true
            }
        }
    }

    /// How many ids of `[start, end)` are in the set.
    pub(crate) fn count_in(&self, start: RecordId, end: RecordId) -> u64 {
        if start >= end {
            return 0;
        }
        self.ranges[self.after(start)..]
            .iter()
            .take_while(|&&(s, _)| s < end)
            .map(|&(s, e)| e.min(end) - s.max(start))
            .sum()
    }

    /// Removes every id of `[start, end)`.
    pub(crate) fn remove_range(&mut self, start: RecordId, end: RecordId) {
        if start >= end {
            return;
        }
        let i = self.after(start);
        let j = self.ranges.partition_point(|&(s, _)| s < end);
        if i >= j {
            return;
        }
        let (first, last) = (self.ranges[i], self.ranges[j - 1]);
        let mut keep = Vec::with_capacity(2);
        if first.0 < start {
            keep.push((first.0, start));
        }
        if last.1 > end {
            keep.push((end, last.1));
        }
        self.ranges.splice(i..j, keep);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn insert_merges_neighbours() {
        let mut set = IdSet::default();
        assert!(set.insert(5));
        assert!(set.insert(7));
        assert_eq!(set.ranges(), &[(5, 6), (7, 8)]);
        assert!(set.insert(6));
        assert_eq!(set.ranges(), &[(5, 8)]);
        assert!(!set.insert(6));
        assert!(set.insert(4));
        assert_eq!(set.ranges(), &[(4, 8)]);
        assert_eq!(set.first_absent_from(4), 8);
        assert_eq!(set.first_absent_from(3), 3);
        assert_eq!(set.count_in(0, 100), 4);
        assert_eq!(set.count_in(5, 7), 2);
    }

    #[test]
    fn from_ranges_rejects_unsorted_or_touching() {
        assert!(IdSet::from_ranges(vec![(1, 3), (5, 6)]).is_some());
        assert!(IdSet::from_ranges(vec![(1, 3), (3, 6)]).is_none());
        assert!(IdSet::from_ranges(vec![(5, 6), (1, 3)]).is_none());
        assert!(IdSet::from_ranges(vec![(4, 4)]).is_none());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        Remove(u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..64).prop_map(Op::Insert),
            1 => (0u64..64, 0u64..16).prop_map(|(s, n)| Op::Remove(s, s + n)),
        ]
    }

    proptest! {
        /// The range set behaves exactly like a plain set of ids, and stays in normal form.
        #[test]
        fn behaves_like_a_set(ops in prop::collection::vec(op(), 0..200)) {
            let mut set = IdSet::default();
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Insert(id) => prop_assert_eq!(set.insert(id), model.insert(id)),
                    Op::Remove(s, e) => {
                        set.remove_range(s, e);
                        model.retain(|&id| id < s || id >= e);
                    }
                }
                prop_assert!(IdSet::from_ranges(set.ranges().to_vec()).is_some());
                for id in 0..80 {
                    prop_assert_eq!(set.contains(id), model.contains(&id));
                    let absent = (id..).find(|i| !model.contains(i));
                    prop_assert_eq!(Some(set.first_absent_from(id)), absent);
                }
                for (s, e) in [(0, 80), (10, 20), (33, 34), (40, 30)] {
                    let expected = model.iter().filter(|&&id| s <= id && id < e).count() as u64;
                    prop_assert_eq!(set.count_in(s, e), expected);
                }
            }
        }
    }
}
