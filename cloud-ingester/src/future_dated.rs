//! Readings dated beyond `clock.max_ahead` of the ingester's clock (`service::clock`):
//! stored like any other (PostgreSQL keeps whatever a device sent, and a replay must
//! meet the same row), but kept out of what a reading's time would let a wrong clock
//! pin: Redis `latest`, `last_seen` and the `recent` stream, and alert evaluation.
//!
//! Each is counted per device (`ingester_readings_future_dated_total{device}`), and a
//! device's *episode* of them is recorded once in `system_events` (`future_dated`): it
//! begins with the first future-dated reading and ends when a reading of that device
//! within the bound arrives, in the order the records arrived. The episodes live in
//! memory, so an instance that restarts (or takes the device over) during one records
//! it again.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::rows::Row;

/// A batch's future-dated readings of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ahead {
    pub device_id: String,
    /// How many of the batch's readings of the device were dated beyond the bound.
    pub readings: u64,
    /// The first of them in arrival order, as (boot, seq, time in ms).
    pub first: (i64, i64, i64),
    /// An episode begins with this batch: record it.
    pub begins: bool,
}

/// The bound, and the devices in an episode.
#[derive(Debug)]
pub struct FutureDated {
    max_ahead: Duration,
    episodes: HashSet<String>,
}

impl FutureDated {
    pub fn new(max_ahead: Duration) -> Self {
        Self {
            max_ahead,
            episodes: HashSet::new(),
        }
    }

    pub fn max_ahead(&self) -> Duration {
        self.max_ahead
    }

    /// Whether `row` is dated beyond the bound of `now_ms` (the ingester's clock).
    pub fn is_ahead(&self, row: &Row, now_ms: i64) -> bool {
        service::clock::is_future_dated(row.ts_ms, now_ms, self.max_ahead)
    }

    /// The rows that may drive the live views and alerts: all but the future-dated ones,
    /// borrowed when there are none (almost always).
    pub fn live<'a>(&self, rows: &'a [Row], now_ms: i64) -> Cow<'a, [Row]> {
        if rows.iter().any(|row| self.is_ahead(row, now_ms)) {
            Cow::Owned(
                rows.iter()
                    .filter(|row| !self.is_ahead(row, now_ms))
                    .cloned()
                    .collect(),
            )
        } else {
            Cow::Borrowed(rows)
        }
    }

    /// After the batch committed: its future-dated readings per device, and which
    /// devices begin an episode with it (at most one per device and batch, so a clock
    /// that flips back and forth cannot flood the log). `rows` in arrival order; the
    /// same `now_ms` as [`FutureDated::live`] had.
    pub fn committed(&mut self, rows: &[Row], now_ms: i64) -> Vec<Ahead> {
        let mut ahead: BTreeMap<&str, Ahead> = BTreeMap::new();
        for row in rows {
            let device = row.device_id.as_str();
            if !self.is_ahead(row, now_ms) {
                self.episodes.remove(device);
                continue;
            }
            let entry = ahead.entry(device).or_insert_with(|| Ahead {
                device_id: device.to_owned(),
                readings: 0,
                first: (row.boot_id, row.seq, row.ts_ms),
                begins: false,
            });
            entry.readings += 1;
            if self.episodes.insert(device.to_owned()) {
                entry.begins = true;
            }
        }
        ahead.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const DAY: i64 = 86_400_000;

    fn row(device: &str, seq: i64, ts_ms: i64) -> Row {
        Row {
            device_id: device.to_owned(),
            boot_id: 1,
            seq,
            ts_ms,
            value: 0.0,
            channel_id: 0,
            quality: 0,
            clock_synced: true,
        }
    }

    #[test]
    fn live_rows_leave_out_only_the_future_dated_and_borrow_when_none_are() {
        let future = FutureDated::new(service::clock::DEFAULT_MAX_AHEAD);
        let normal = vec![row("a", 0, NOW), row("a", 1, NOW + 300_000)];
        assert!(matches!(future.live(&normal, NOW), Cow::Borrowed(_)));
        let mixed = vec![row("a", 0, NOW), row("a", 1, NOW + DAY), row("a", 2, NOW)];
        let live = future.live(&mixed, NOW);
        assert_eq!(
            live.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![0, 2],
            "stored, but not live"
        );
    }

    #[test]
    fn an_episode_is_reported_once_and_ends_with_a_reading_within_the_bound() {
        let mut future = FutureDated::new(service::clock::DEFAULT_MAX_AHEAD);
        let got = future.committed(&[row("a", 0, NOW), row("a", 1, NOW + DAY)], NOW);
        assert_eq!(
            got,
            vec![Ahead {
                device_id: "a".to_owned(),
                readings: 1,
                first: (1, 1, NOW + DAY),
                begins: true,
            }]
        );
        // Still ahead: counted, not recorded again; another device has its own.
        let got = future.committed(
            &[
                row("a", 2, NOW + DAY),
                row("a", 3, NOW + DAY),
                row("b", 0, NOW + DAY),
            ],
            NOW,
        );
        let summary: Vec<_> = got
            .iter()
            .map(|a| (a.device_id.as_str(), a.readings, a.begins))
            .collect();
        assert_eq!(summary, vec![("a", 2, false), ("b", 1, true)]);
        // A reading within the bound ends a's episode; the next one is a new episode.
        assert!(future.committed(&[row("a", 4, NOW)], NOW).is_empty());
        let got = future.committed(&[row("a", 5, NOW + DAY)], NOW);
        assert!(got[0].begins);
        // Ahead, back and ahead again within one batch: one record, the episode open.
        let got = future.committed(
            &[
                row("c", 0, NOW + DAY),
                row("c", 1, NOW),
                row("c", 2, NOW + DAY),
            ],
            NOW,
        );
        assert_eq!((got[0].readings, got[0].begins), (2, true));
        assert!(!future.committed(&[row("c", 3, NOW + DAY)], NOW)[0].begins);
    }
}
