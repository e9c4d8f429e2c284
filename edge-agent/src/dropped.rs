//! Exactly which readings the queue gave up at its byte cap (or on a full disk), so the
//! loss it reports can be held against the holes in PostgreSQL, reading for reading.
//!
//! Kept as merged ranges per (device, boot): an outage drops the oldest frames in order,
//! so a long one is still a range or two. Frames the broker had already acknowledged
//! are listed apart: their readings may still reach PostgreSQL (the confirmation had
//! not come yet), so they are given up but not necessarily lost.

use std::collections::BTreeMap;

use contracts::status::DroppedSpan;
use protocol::BootId;

use crate::confirmations::FrameSpan;

/// Half-open ranges, sorted and disjoint.
type Ranges = Vec<[u64; 2]>;

#[derive(Debug, Default)]
pub struct DroppedReadings {
    /// Per (device, boot): (never acknowledged, acknowledged by the broker).
    spans: BTreeMap<(String, BootId), (Ranges, Ranges)>,
}

impl DroppedReadings {
    pub fn record(&mut self, span: &FrameSpan, after_puback: bool) {
        let (unsent, pubacked) = self
            .spans
            .entry((span.device.clone(), span.boot_id))
            .or_default();
        let list = if after_puback { pubacked } else { unsent };
        insert(list, span.first_seq, span.end_seq);
    }

    pub fn report(&self) -> Vec<DroppedSpan> {
        self.spans
            .iter()
            .map(|((device, boot), (unsent, after_puback))| DroppedSpan {
                device: device.clone(),
                boot: boot.to_string(),
                unsent: unsent.clone(),
                after_puback: after_puback.clone(),
            })
            .collect()
    }
}

/// Adds `[start, end)` to sorted, disjoint, non-touching ranges, merging neighbours.
fn insert(ranges: &mut Vec<[u64; 2]>, start: u64, end: u64) {
    let at = ranges.partition_point(|r| r[1] < start);
    let mut merged = [start, end];
    let mut last = at;
    while let Some(r) = ranges.get(last).filter(|r| r[0] <= merged[1]) {
        merged = [merged[0].min(r[0]), merged[1].max(r[1])];
        last += 1;
    }
    ranges.splice(at..last, [merged]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_in_any_order() {
        let mut ranges = Vec::new();
        for (s, e) in [
            (100, 150),
            (0, 50),
            (50, 100),
            (200, 250),
            (300, 350),
            (240, 310),
        ] {
            insert(&mut ranges, s, e);
        }
        assert_eq!(ranges, vec![[0, 150], [200, 350]]);
    }

    #[test]
    fn acknowledged_frames_are_reported_apart() {
        let mut dropped = DroppedReadings::default();
        let span = |first: u64| FrameSpan {
            device: "press-01".into(),
            boot_id: BootId([0xab; 8]),
            first_seq: first,
            end_seq: first + 50,
        };
        dropped.record(&span(0), true);
        dropped.record(&span(50), false);
        dropped.record(&span(100), false);
        assert_eq!(
            dropped.report(),
            vec![DroppedSpan {
                device: "press-01".into(),
                boot: "abababababababab".into(),
                unsent: vec![[50, 150]],
                after_puback: vec![[0, 50]],
            }]
        );
    }
}
