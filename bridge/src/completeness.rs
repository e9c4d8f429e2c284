//! The retained, human-readable completeness summary per device, on
//! `{prefix}/{site}/{line}/{device}/completeness`, so a person browsing the broker (MQTT
//! Explorer) sees what PostgreSQL holds of each device without decoding the binary
//! `confirm` messages.
//!
//! The confirmation relay (`confirm_relay`) offers every confirmation it has checked;
//! this module, free of I/O, turns it into a [`Summary`] and decides when it goes out:
//!
//! - **Newest boot only.** Per device topic the table keeps the boot it shows and the
//!   boots that boot replaced (`crate::boots`, shared with `latest`). A confirmation of
//!   a replaced boot is ignored (the ingester may still confirm a previous boot's
//!   backlog after the agent restarted); one of a boot never seen replaces the current
//!   one: across boots, the boot first seen later wins. The table lives in memory only,
//!   so after a bridge restart the first boot seen wins, even an old one, until a
//!   confirmation of another boot arrives.
//! - **Sequence numbers decide within a boot.** PostgreSQL's coverage only grows, so a
//!   confirmation that shows fewer stored readings than the summary held is older (sent
//!   before a rebalance or a restart of the ingester) and is ignored; one that changes
//!   nothing is not sent again.
//! - **Throttled, nothing lost.** At most one publish per device per interval: the first
//!   change after a quiet interval goes out at once; later ones wait, and the newest
//!   state goes out when the interval has passed (a trailing publish), however many
//!   confirmations came in between. A publish the MQTT side could not take is tried
//!   again one interval later.
//! - **Bounded.** At most [`MAX_DEVICES`] device topics; a confirmation for one more is
//!   not summarised (counted as skipped). Each device remembers at most
//!   [`MAX_REPLACED_BOOTS`](crate::boots::MAX_REPLACED_BOOTS) replaced boots, the most
//!   recent.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use protocol::confirm::MAX_CONFIRM_RANGES;
use protocol::Confirmation;
use serde::{Deserialize, Serialize};

use crate::boots::{Boots, Order};

/// At most one summary per device per this long.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Device topics tracked at once (the same default as `latest.max_devices`).
pub const MAX_DEVICES: usize = 100_000;

/// The JSON on a device's `completeness` topic: what PostgreSQL holds of the device's
/// newest boot, as of the last confirmation the ingester sent for it. A contract with
/// whoever reads the topic (people, dashboards); fields are only ever added.
///
/// Example: `{"boot_id":"00ab…","stored_below":12000,"stored":11950,"missing":50,
/// "missing_ranges":[[11000,11050]],"refused":0,"refused_ranges":[],"partial":false}`.
///
/// The summary covers sequence numbers `0..stored_below`, and within them every one is
/// exactly one of stored, refused or missing: `stored + refused + missing ==
/// stored_below`. Ranges are half-open `[start, end)` and ascending.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The agent's boot these sequence numbers belong to, as 16 hex digits.
    pub boot_id: String,
    /// The end of what the summary covers: the end of the highest range the
    /// confirmation names (stored or refused), or of its stored prefix.
    pub stored_below: u64,
    /// Readings PostgreSQL holds.
    pub stored: u64,
    /// Readings neither stored nor refused: dropped at the edge (byte cap), lost on the
    /// way, or still on their way (a resend fills the hole).
    pub missing: u64,
    pub missing_ranges: Vec<[u64; 2]>,
    /// Readings the cloud refused for good (dead-lettered: unknown device or channel,
    /// implausible time). The ingester keeps refusals in memory, the highest 16 ranges
    /// per boot, so older refusals may show as missing, and all of them after it
    /// restarts.
    pub refused: u64,
    pub refused_ranges: Vec<[u64; 2]>,
    /// The confirmation listed as many ranges as it may (16 stored or 16 refused ranges
    /// above the prefix): PostgreSQL may hold more than this summary shows. With 16 stored
    /// ranges the summary covers only up to the end of the last (`stored_below`); what
    /// lies above is not described, whatever it is.
    pub partial: bool,
}

/// What a sequence number is, in a summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Stored,
    Refused,
    Missing,
}

impl Summary {
    /// The summary of one (already validated) confirmation. Stored wins over refused
    /// where a confirmation names a number as both, as `Confirmation::verdict` judges.
    pub fn of(confirmation: &Confirmation) -> Self {
        let prefix =
            (confirmation.committed_below > 0).then_some([0, confirmation.committed_below]);
        let stored: Vec<[u64; 2]> = prefix
            .into_iter()
            .chain(confirmation.committed.iter().map(|r| [r.start, r.end]))
            .collect();
        let refused: Vec<[u64; 2]> = confirmation
            .refused
            .iter()
            .map(|r| [r.start, r.end])
            .collect();
        let committed_full = confirmation.committed.len() >= MAX_CONFIRM_RANGES;
        let partial = committed_full || confirmation.refused.len() >= MAX_CONFIRM_RANGES;
        let mut end = stored
            .iter()
            .chain(&refused)
            .map(|r| r[1])
            .max()
            .unwrap_or(0);
        if committed_full {
            // Above the last listed stored range the coverage is unknown.
            if let Some(last) = confirmation.committed.last() {
                end = end.min(last.end);
            }
        }

        // Every range boundary inside 0..end splits it into pieces of one class each.
        let mut bounds: Vec<u64> = stored
            .iter()
            .chain(&refused)
            .flat_map(|r| [r[0], r[1]])
            .chain([0, end])
            .filter(|&b| b <= end)
            .collect();
        bounds.sort_unstable();
        bounds.dedup();
        let inside = |ranges: &[[u64; 2]], at: u64| ranges.iter().any(|r| r[0] <= at && at < r[1]);
        let mut summary = Summary {
            boot_id: confirmation.boot_id.to_string(),
            stored_below: end,
            stored: 0,
            missing: 0,
            missing_ranges: Vec::new(),
            refused: 0,
            refused_ranges: Vec::new(),
            partial,
        };
        for piece in bounds.windows(2) {
            let (start, piece_end) = (piece[0], piece[1]);
            let class = if inside(&stored, start) {
                Class::Stored
            } else if inside(&refused, start) {
                Class::Refused
            } else {
                Class::Missing
            };
            let (count, ranges) = match class {
                Class::Stored => {
                    summary.stored += piece_end - start;
                    continue;
                }
                Class::Refused => (&mut summary.refused, &mut summary.refused_ranges),
                Class::Missing => (&mut summary.missing, &mut summary.missing_ranges),
            };
            *count += piece_end - start;
            match ranges.last_mut() {
                Some(last) if last[1] == start => last[1] = piece_end,
                _ => ranges.push([start, piece_end]),
            }
        }
        summary
    }
}

/// What became of a confirmation offered to the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// Publish this summary now.
    Now(Summary),
    /// Taken; it goes out when the device's interval has passed ([`Table::take_due`]).
    Later,
    /// Of a boot this device's summary replaced, or older than the summary within its
    /// boot: ignored.
    Old,
    /// The same as the summary held: nothing to send.
    Unchanged,
    /// A device beyond [`MAX_DEVICES`]: not summarised.
    TableFull,
}

struct Slot {
    /// The boot the summary shows, and those it replaced.
    boots: Boots,
    /// The newest summary taken, sent or waiting.
    summary: Summary,
    last_sent: Option<Instant>,
    /// `summary` has not gone out yet and may at this time; `Table::due` has an entry
    /// for it (and perhaps stale ones, whose time differs, which are skipped).
    waiting_until: Option<Instant>,
}

/// The per-device state and the throttle, without I/O, keyed by completeness topic.
pub struct Table {
    interval: Duration,
    max_devices: usize,
    slots: HashMap<String, Slot>,
    /// When each waiting summary may go out, earliest first; one entry per waiting slot.
    due: BinaryHeap<Reverse<(Instant, String)>>,
}

impl Table {
    pub fn new(interval: Duration, max_devices: usize) -> Self {
        Self {
            interval,
            max_devices,
            slots: HashMap::new(),
            due: BinaryHeap::new(),
        }
    }

    /// A confirmation the relay has checked, for the device of `topic` (its
    /// completeness topic), at `now`.
    pub fn offer(&mut self, topic: &str, confirmation: &Confirmation, now: Instant) -> Offer {
        let summary = Summary::of(confirmation);
        let Some(slot) = self.slots.get_mut(topic) else {
            if self.slots.len() >= self.max_devices {
                return Offer::TableFull;
            }
            let slot = Slot {
                boots: Boots::new(confirmation.boot_id),
                summary: summary.clone(),
                last_sent: Some(now),
                waiting_until: None,
            };
            self.slots.insert(topic.to_owned(), slot);
            return Offer::Now(summary);
        };
        match slot.boots.see(confirmation.boot_id) {
            Order::Replaced => return Offer::Old,
            Order::Newer => {}
            Order::Current if summary.stored < slot.summary.stored => return Offer::Old,
            Order::Current if summary == slot.summary => return Offer::Unchanged,
            Order::Current => {}
        }
        slot.summary = summary;
        let due = slot.last_sent.map(|sent| sent + self.interval);
        match due {
            Some(due) if now < due => {
                if slot.waiting_until.is_none() {
                    slot.waiting_until = Some(due);
                    self.due.push(Reverse((due, topic.to_owned())));
                }
                Offer::Later
            }
            _ => {
                // Anything queued for this slot is now stale: skipped when it comes up.
                slot.waiting_until = None;
                slot.last_sent = Some(now);
                Offer::Now(slot.summary.clone())
            }
        }
    }

    /// When the earliest waiting summary may go out.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((due, _))| *due)
    }

    /// The waiting summaries whose interval has passed at `now`, with their topics,
    /// counted as sent now.
    pub fn take_due(&mut self, now: Instant) -> Vec<(String, Summary)> {
        let mut out = Vec::new();
        while let Some(Reverse((due, _))) = self.due.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((due, topic))) = self.due.pop() else {
                break;
            };
            if let Some(slot) = self.slots.get_mut(&topic) {
                if slot.waiting_until == Some(due) {
                    slot.waiting_until = None;
                    slot.last_sent = Some(now);
                    out.push((topic, slot.summary.clone()));
                }
            }
        }
        out
    }

    /// Every waiting summary, whatever its interval (at stop: nothing else would send
    /// them).
    pub fn take_all(&mut self) -> Vec<(String, Summary)> {
        self.take_due(Instant::now() + self.interval)
    }

    /// The summary of `topic` handed out at `sent` could not be published: it is tried
    /// again one interval after that, unless a newer one is waiting already.
    pub fn unsent(&mut self, topic: &str, sent: Instant) {
        if let Some(slot) = self.slots.get_mut(topic) {
            if slot.waiting_until.is_none() {
                let due = sent + self.interval;
                slot.waiting_until = Some(due);
                self.due.push(Reverse((due, topic.to_owned())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use protocol::confirm::Ranges;
    use protocol::{BootId, DeviceId, SeqRange};

    use super::*;

    const TOPIC: &str = "plant/plant1/line-a/dev-a/completeness";

    fn ranges(list: &[(u64, u64)]) -> Ranges {
        list.iter().map(|&(s, e)| SeqRange::new(s, e)).collect()
    }

    fn confirmation(
        boot: u8,
        below: u64,
        committed: &[(u64, u64)],
        refused: &[(u64, u64)],
    ) -> Confirmation {
        let mut confirmation =
            Confirmation::new(DeviceId::new("dev-a").unwrap(), BootId([boot; 8]));
        confirmation.committed_below = below;
        confirmation.committed = ranges(committed);
        confirmation.refused = ranges(refused);
        confirmation.validate().unwrap();
        confirmation
    }

    fn check_sums(summary: &Summary) {
        let total = |ranges: &[[u64; 2]]| ranges.iter().map(|r| r[1] - r[0]).sum::<u64>();
        assert_eq!(summary.missing, total(&summary.missing_ranges));
        assert_eq!(summary.refused, total(&summary.refused_ranges));
        assert_eq!(
            summary.stored + summary.missing + summary.refused,
            summary.stored_below,
            "{summary:?}"
        );
    }

    #[test]
    fn the_json_is_the_documented_shape() {
        let summary = Summary::of(&confirmation(0xab, 11_000, &[(11_050, 12_000)], &[]));
        assert_eq!(
            serde_json::to_string(&summary).unwrap(),
            r#"{"boot_id":"abababababababab","stored_below":12000,"stored":11950,"missing":50,"missing_ranges":[[11000,11050]],"refused":0,"refused_ranges":[],"partial":false}"#
        );
    }

    #[test]
    fn holes_refusals_and_an_empty_confirmation_add_up() {
        let empty = Summary::of(&confirmation(1, 0, &[], &[]));
        assert_eq!((empty.stored_below, empty.stored, empty.missing), (0, 0, 0));
        assert!(empty.missing_ranges.is_empty() && !empty.partial);

        // Nothing stored from 0: the first readings are missing, one range refused above.
        let s = Summary::of(&confirmation(1, 0, &[(100, 200)], &[(250, 260)]));
        assert_eq!(s.stored_below, 260);
        assert_eq!(s.stored, 100);
        assert_eq!(s.missing_ranges, vec![[0, 100], [200, 250]]);
        assert_eq!(s.refused_ranges, vec![[250, 260]]);
        check_sums(&s);

        // A refused range between stored ones, touching both: no missing piece.
        let s = Summary::of(&confirmation(1, 100, &[(150, 200)], &[(100, 150)]));
        assert_eq!(
            (s.stored_below, s.stored, s.refused, s.missing),
            (200, 150, 50, 0)
        );
        check_sums(&s);

        // A refused range overlapping stored ones (never sent so, but valid): stored
        // wins, the rest of it counts as refused once.
        let s = Summary::of(&confirmation(1, 100, &[(150, 200)], &[(50, 170)]));
        assert_eq!(s.refused_ranges, vec![[100, 150]]);
        assert_eq!((s.stored, s.refused, s.missing), (150, 50, 0));
        check_sums(&s);
    }

    #[test]
    fn at_the_range_limit_the_summary_is_partial_and_ends_at_the_last_stored_range() {
        let committed: Vec<(u64, u64)> = (1..=16).map(|i| (i * 100, i * 100 + 50)).collect();
        let s = Summary::of(&confirmation(1, 50, &committed, &[(5_000, 5_010)]));
        assert!(s.partial);
        assert_eq!(s.stored_below, 1_650);
        assert_eq!(s.stored, 50 + 16 * 50);
        assert_eq!(s.missing_ranges.len(), 16);
        assert!(s.refused_ranges.is_empty(), "above the end: not described");
        check_sums(&s);

        let refused: Vec<(u64, u64)> = (1..=16).map(|i| (i * 10, i * 10 + 5)).collect();
        let s = Summary::of(&confirmation(1, 0, &[], &refused));
        assert!(s.partial);
        assert_eq!((s.stored_below, s.refused), (165, 80));
        check_sums(&s);
    }

    #[test]
    fn the_first_change_goes_at_once_the_newest_of_the_rest_after_the_interval() {
        let mut table = Table::new(INTERVAL, 10);
        let t0 = Instant::now();
        let first = confirmation(1, 100, &[], &[]);
        assert_eq!(
            table.offer(TOPIC, &first, t0),
            Offer::Now(Summary::of(&first))
        );
        assert_eq!(table.offer(TOPIC, &first, t0), Offer::Unchanged);
        assert_eq!(table.next_due(), None);

        let ms = Duration::from_millis;
        for below in [200, 300, 400] {
            let c = confirmation(1, below, &[], &[]);
            assert_eq!(table.offer(TOPIC, &c, t0 + ms(below)), Offer::Later);
        }
        assert_eq!(table.next_due(), Some(t0 + INTERVAL));
        assert!(table.take_due(t0 + ms(999)).is_empty());
        let sent = table.take_due(t0 + INTERVAL);
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].0.as_str(), sent[0].1.stored), (TOPIC, 400));
        assert_eq!(table.next_due(), None);
        assert!(table.take_due(t0 + 3 * INTERVAL).is_empty());

        // Quiet for an interval since the trailing publish: the next goes at once.
        let c = confirmation(1, 500, &[], &[]);
        assert!(matches!(
            table.offer(TOPIC, &c, t0 + 2 * INTERVAL),
            Offer::Now(_)
        ));
    }

    #[test]
    fn an_older_boot_or_an_older_confirmation_never_replaces_the_summary() {
        let mut table = Table::new(INTERVAL, 10);
        let t0 = Instant::now();
        let later = |n: u32| t0 + n * INTERVAL;
        assert!(matches!(
            table.offer(TOPIC, &confirmation(1, 500, &[], &[]), t0),
            Offer::Now(_)
        ));
        // Within a boot: fewer stored readings is older.
        assert_eq!(
            table.offer(TOPIC, &confirmation(1, 400, &[], &[]), later(1)),
            Offer::Old
        );
        // A new boot replaces it, even with fewer readings.
        assert!(matches!(
            table.offer(TOPIC, &confirmation(2, 10, &[], &[]), later(2)),
            Offer::Now(s) if s.boot_id == "0202020202020202"
        ));
        // The replaced boot's backlog is old, however far it got.
        assert_eq!(
            table.offer(TOPIC, &confirmation(1, 900, &[], &[]), later(3)),
            Offer::Old
        );
        // A boot replaced while its summary waits is not sent.
        assert!(matches!(
            table.offer(TOPIC, &confirmation(2, 20, &[], &[]), later(4)),
            Offer::Now(_)
        ));
        let t = later(4) + Duration::from_millis(10);
        assert_eq!(
            table.offer(TOPIC, &confirmation(2, 30, &[], &[]), t),
            Offer::Later
        );
        assert_eq!(
            table.offer(TOPIC, &confirmation(3, 5, &[], &[]), t),
            Offer::Later
        );
        let sent = table.take_due(later(5));
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1.boot_id, "0303030303030303");
        // Only the most recent replaced boots are remembered.
        for boot in 4..=8 {
            assert!(matches!(
                table.offer(
                    TOPIC,
                    &confirmation(boot, 1, &[], &[]),
                    later(10 + u32::from(boot))
                ),
                Offer::Now(_)
            ));
        }
        assert_eq!(
            table.offer(TOPIC, &confirmation(7, 1, &[], &[]), later(30)),
            Offer::Old
        );
        assert!(matches!(
            table.offer(TOPIC, &confirmation(2, 1, &[], &[]), later(31)),
            Offer::Now(_)
        ));
    }

    #[test]
    fn a_retry_overtaken_by_a_publish_does_not_break_the_interval() {
        let mut table = Table::new(INTERVAL, 10);
        let t0 = Instant::now();
        assert!(matches!(
            table.offer(TOPIC, &confirmation(1, 10, &[], &[]), t0),
            Offer::Now(_)
        ));
        table.unsent(TOPIC, t0);
        // The retry is due, but a new state comes first and goes at once...
        let t1 = t0 + INTERVAL;
        assert!(matches!(
            table.offer(TOPIC, &confirmation(1, 20, &[], &[]), t1),
            Offer::Now(_)
        ));
        // ...and the next one waits a whole interval, not for the stale retry's time.
        let ms = Duration::from_millis;
        assert_eq!(
            table.offer(TOPIC, &confirmation(1, 30, &[], &[]), t1 + ms(10)),
            Offer::Later
        );
        assert!(table.take_due(t1 + ms(20)).is_empty());
        assert_eq!(table.take_due(t1 + INTERVAL).len(), 1);
    }

    #[test]
    fn devices_are_throttled_apart_and_capped() {
        let mut table = Table::new(INTERVAL, 2);
        let t0 = Instant::now();
        let c = confirmation(1, 10, &[], &[]);
        assert!(matches!(table.offer("a", &c, t0), Offer::Now(_)));
        assert!(matches!(table.offer("b", &c, t0), Offer::Now(_)));
        assert_eq!(table.offer("c", &c, t0), Offer::TableFull);
        let c2 = confirmation(1, 20, &[], &[]);
        assert_eq!(
            table.offer("b", &c2, t0 + Duration::from_millis(500)),
            Offer::Later
        );
        assert_eq!(
            table.offer("a", &c2, t0 + Duration::from_millis(100)),
            Offer::Later
        );
        let sent: Vec<String> = table
            .take_all()
            .into_iter()
            .map(|(topic, _)| topic)
            .collect();
        assert_eq!(sent, ["a", "b"]);
    }

    #[test]
    fn an_unsent_summary_is_tried_again_after_the_interval_unless_overtaken() {
        let mut table = Table::new(INTERVAL, 10);
        let t0 = Instant::now();
        let c = confirmation(1, 10, &[], &[]);
        let Offer::Now(summary) = table.offer(TOPIC, &c, t0) else {
            panic!("first offer goes at once");
        };
        table.unsent(TOPIC, t0);
        assert_eq!(table.next_due(), Some(t0 + INTERVAL));
        assert_eq!(
            table.take_due(t0 + INTERVAL),
            vec![(TOPIC.to_owned(), summary)]
        );

        // Failed again, then a newer state arrives before the retry: the newer one goes
        // at the retry's time, once.
        table.unsent(TOPIC, t0 + INTERVAL);
        let c2 = confirmation(1, 20, &[], &[]);
        assert_eq!(table.offer(TOPIC, &c2, t0 + INTERVAL), Offer::Later);
        let sent = table.take_due(t0 + 2 * INTERVAL);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1.stored, 20);
        assert_eq!(table.next_due(), None);
    }
}
