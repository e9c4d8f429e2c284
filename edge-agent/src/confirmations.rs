//! Frames the broker has acknowledged and the cloud has not yet confirmed.
//!
//! A PUBACK says only that the next hop has a frame; the broker, the bridge and Kafka may
//! still lose it. So with `delivery.confirm = "pipeline"` a frame stays on disk after its
//! PUBACK until a [`Confirmation`] from the ingester says PostgreSQL committed its
//! readings (or refused them for good). This module is that bookkeeping, apart from I/O:
//! which frames wait, which a confirmation covers, and which to send again.
//!
//! Resending follows TCP's rules rather than a timer per frame, so a stalled cloud (no
//! confirmations at all) causes no resend loop:
//! - a frame that waits while a frame of the same device sent after it is confirmed fell
//!   into a hole after the broker: it is sent again once it has waited `grace`. A resent
//!   frame counts as sent when its first copy was: its confirmation may be that copy's,
//!   late rather than lost, and so may be everything sent after it (without this rule
//!   one resend made every frame of a slow pipeline look lost: a resend storm);
//! - a device's last frame, which nothing later can reveal as lost, is sent again after
//!   `timeout`, doubling with each resend.
//!
//! A confirmation that claims readings this agent never sent, or a boot it does not
//! hold frames of, deletes nothing: it is counted and ignored.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use protocol::{BootId, Confirmation, Frame, Verdict};

use crate::queue::RecordId;

/// Which readings a queued frame carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameSpan {
    pub device: String,
    pub boot_id: BootId,
    pub first_seq: u64,
    /// One past the last sequence number.
    pub end_seq: u64,
}

impl FrameSpan {
    /// The span of an encoded frame; `None` if it does not decode (such a frame is
    /// acknowledged on PUBACK: no confirmation could ever name it).
    pub fn of(frame: &[u8]) -> Option<Self> {
        let frame = Frame::decode(frame).ok()?;
        Some(Self {
            device: frame.device.as_str().to_owned(),
            boot_id: frame.boot_id,
            first_seq: frame.first_seq,
            end_seq: frame.first_seq + frame.readings.len() as u64,
        })
    }
}

#[derive(Debug)]
struct Waiting {
    id: RecordId,
    end_seq: u64,
    pubacked_at: Instant,
    /// Its first PUBACK: what a confirmation of it proves about the frames sent after
    /// it, since the copy that got through may be the first (Karn's rule in TCP).
    first_pubacked_at: Instant,
    resends: u32,
    /// Handed to the broker again, PUBACK pending.
    resending: bool,
}

/// Upper bounds, in ms, of the buckets of [`ConfirmWaits`]; the last is open.
const WAIT_BOUNDS_MS: [u64; 16] = [
    5,
    10,
    20,
    50,
    100,
    150,
    200,
    300,
    400,
    500,
    750,
    1000,
    2000,
    5000,
    30_000,
    u64::MAX,
];

/// How long confirmed frames waited after their PUBACK, as a histogram: enough for the
/// percentiles the health report gives, in constant memory.
#[derive(Debug, Default, Clone)]
pub struct ConfirmWaits {
    counts: [u64; WAIT_BOUNDS_MS.len()],
}

impl ConfirmWaits {
    fn add(&mut self, waited: Duration) {
        let ms = waited.as_millis() as u64;
        let bucket = WAIT_BOUNDS_MS.partition_point(|&bound| bound < ms);
        self.counts[bucket.min(WAIT_BOUNDS_MS.len() - 1)] += 1;
    }

    /// The bucket bound under which `quantile` of the waits fall; `None` before any.
    pub fn quantile_ms(&self, quantile: f64) -> Option<u64> {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return None;
        }
        let wanted = (quantile * total as f64).ceil() as u64;
        let mut seen = 0;
        for (count, bound) in self.counts.iter().zip(WAIT_BOUNDS_MS) {
            seen += count;
            if seen >= wanted {
                return Some(bound);
            }
        }
        WAIT_BOUNDS_MS.last().copied()
    }
}

/// What [`Awaiting::apply`] decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Frames whose readings are all committed: delete them.
    pub committed: Vec<RecordId>,
    /// Frames refused for good, with their reading counts: delete and count them.
    pub refused: Vec<(RecordId, u64)>,
}

/// Why a confirmation was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// No frame of this (device, boot) waits: an old or foreign boot, or a repeat.
    NothingWaiting,
    /// It names sequence numbers beyond any this agent sent in that boot: forged or
    /// corrupt, never trusted.
    BeyondSent,
}

type Stream = (String, BootId);

/// The frames waiting for a confirmation. Memory is a few dozen bytes per waiting frame;
/// frames wait about one confirmation interval unless the cloud is stalled, and the
/// queue's byte cap bounds them then.
#[derive(Debug, Default)]
pub struct Awaiting {
    streams: HashMap<Stream, BTreeMap<u64, Waiting>>,
    records: BTreeMap<RecordId, (Stream, u64)>,
    /// Per stream, one past the highest sequence number ever published.
    sent_end: HashMap<Stream, u64>,
    /// Per device, when the most recently sent frame that got confirmed was first
    /// PUBACKed.
    newest_confirmed: HashMap<String, Instant>,
    /// Per device, when its most recently sent frame was PUBACKed.
    newest_sent: HashMap<String, Instant>,
    /// PUBACK to confirmation, of every frame confirmed.
    pub waits: ConfirmWaits,
}

impl Awaiting {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn contains(&self, id: RecordId) -> bool {
        self.records.contains_key(&id)
    }

    /// A frame was handed to the broker: a confirmation may name its readings from now
    /// on (it can overtake the PUBACK when a connection drops in between).
    pub fn published(&mut self, span: &FrameSpan) {
        let end = self
            .sent_end
            .entry((span.device.clone(), span.boot_id))
            .or_default();
        *end = (*end).max(span.end_seq);
    }

    /// A frame's PUBACK arrived: it now waits for the cloud (again, if it was resent).
    pub fn pubacked(&mut self, id: RecordId, span: FrameSpan, now: Instant) {
        self.published(&span);
        let stream = (span.device.clone(), span.boot_id);
        self.newest_sent.insert(span.device, now);
        if let Some(waiting) = self.waiting_mut(id) {
            waiting.pubacked_at = now;
            waiting.resends += 1;
            waiting.resending = false;
            return;
        }
        self.records.insert(id, (stream.clone(), span.first_seq));
        self.streams.entry(stream).or_default().insert(
            span.first_seq,
            Waiting {
                id,
                end_seq: span.end_seq,
                pubacked_at: now,
                first_pubacked_at: now,
                resends: 0,
                resending: false,
            },
        );
    }

    /// The record was handed to the broker again: not due until its next PUBACK.
    pub fn resending(&mut self, id: RecordId) {
        if let Some(waiting) = self.waiting_mut(id) {
            waiting.resending = true;
        }
    }

    /// The connection dropped: resends in flight are lost and become due again.
    pub fn connection_lost(&mut self) {
        for waiting in self.streams.values_mut().flat_map(BTreeMap::values_mut) {
            waiting.resending = false;
        }
    }

    fn waiting_mut(&mut self, id: RecordId) -> Option<&mut Waiting> {
        let (stream, first_seq) = self.records.get(&id)?;
        self.streams.get_mut(stream)?.get_mut(first_seq)
    }

    /// Stops tracking a record (gone from the queue); its reading count if it was known.
    pub fn forget(&mut self, id: RecordId) -> Option<u64> {
        let (stream, first_seq) = self.records.remove(&id)?;
        let frames = self.streams.get_mut(&stream)?;
        let waiting = frames.remove(&first_seq)?;
        if frames.is_empty() {
            self.streams.remove(&stream);
        }
        Some(waiting.end_seq - first_seq)
    }

    /// The frames `confirmation` covers, no longer waiting.
    pub fn apply(&mut self, confirmation: &Confirmation, now: Instant) -> Result<Applied, Ignored> {
        let stream = (
            confirmation.device.as_str().to_owned(),
            confirmation.boot_id,
        );
        let sent_end = self.sent_end.get(&stream).copied().unwrap_or(0);
        let claimed_end = [
            Some(confirmation.committed_below),
            confirmation.committed.last().map(|r| r.end),
            confirmation.refused.last().map(|r| r.end),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);
        if claimed_end > sent_end {
            return Err(Ignored::BeyondSent);
        }
        let Some(frames) = self.streams.get_mut(&stream) else {
            return Err(Ignored::NothingWaiting);
        };
        let mut applied = Applied::default();
        let mut newest = None;
        let waits = &mut self.waits;
        frames.retain(|&first_seq, waiting| {
            match confirmation.verdict(first_seq, waiting.end_seq) {
                Verdict::Committed => {
                    applied.committed.push(waiting.id);
                    waits.add(now.saturating_duration_since(waiting.pubacked_at));
                }
                Verdict::Refused => applied
                    .refused
                    .push((waiting.id, waiting.end_seq - first_seq)),
                Verdict::Open => return true,
            }
            newest = newest.max(Some(waiting.first_pubacked_at));
            false
        });
        if frames.is_empty() {
            self.streams.remove(&stream);
        }
        for id in applied
            .committed
            .iter()
            .chain(applied.refused.iter().map(|(id, _)| id))
        {
            self.records.remove(id);
        }
        if let Some(newest) = newest {
            let device = self.newest_confirmed.entry(stream.0).or_insert(newest);
            *device = (*device).max(newest);
        }
        Ok(applied)
    }

    /// Frames to send again now (see the module documentation), oldest first. Each is
    /// expected back through [`Awaiting::pubacked`] once resent.
    pub fn due(&self, now: Instant, grace: Duration, timeout: Duration) -> Vec<RecordId> {
        let mut due = Vec::new();
        for ((device, _), frames) in &self.streams {
            let confirmed_after = self.newest_confirmed.get(device);
            let newest_sent = self.newest_sent.get(device);
            for waiting in frames.values().filter(|w| !w.resending) {
                let waited = now.saturating_duration_since(waiting.pubacked_at);
                let overtaken = confirmed_after.is_some_and(|&t| t > waiting.pubacked_at);
                let last = newest_sent.is_some_and(|&t| t <= waiting.pubacked_at);
                let backoff = timeout.saturating_mul(1 << waiting.resends.min(6));
                if (overtaken && waited >= grace) || (last && waited >= backoff) {
                    due.push(waiting.id);
                }
            }
        }
        due.sort_unstable();
        due
    }

    /// Forgets records below `first_unacked` (dropped at the queue's cap).
    pub fn prune_below(&mut self, first_unacked: RecordId) {
        let gone: Vec<RecordId> = self
            .records
            .range(..first_unacked)
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.forget(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use protocol::{DeviceId, SeqRange};

    use super::*;

    const BOOT: BootId = BootId([1; 8]);

    fn span(first: u64, end: u64) -> FrameSpan {
        FrameSpan {
            device: "press-01".into(),
            boot_id: BOOT,
            first_seq: first,
            end_seq: end,
        }
    }

    fn confirmation(below: u64, committed: &[(u64, u64)], refused: &[(u64, u64)]) -> Confirmation {
        let mut c = Confirmation::new(DeviceId::new("press-01").unwrap(), BOOT);
        c.committed_below = below;
        c.committed = committed
            .iter()
            .map(|&(s, e)| SeqRange::new(s, e))
            .collect();
        c.refused = refused.iter().map(|&(s, e)| SeqRange::new(s, e)).collect();
        c
    }

    impl Awaiting {
        fn apply_now(&mut self, confirmation: &Confirmation) -> Result<Applied, Ignored> {
            self.apply(confirmation, Instant::now())
        }
    }

    #[test]
    fn waits_are_kept_as_percentiles() {
        let mut waits = ConfirmWaits::default();
        assert_eq!(waits.quantile_ms(0.99), None);
        for ms in [3, 40, 40, 40, 40, 40, 40, 40, 40, 450] {
            waits.add(Duration::from_millis(ms));
        }
        assert_eq!(waits.quantile_ms(0.5), Some(50));
        assert_eq!(waits.quantile_ms(0.9), Some(50));
        assert_eq!(waits.quantile_ms(0.99), Some(500));
        waits.add(Duration::from_secs(3600));
        assert_eq!(waits.quantile_ms(1.0), Some(u64::MAX));
    }

    #[test]
    fn a_confirmation_deletes_exactly_the_frames_it_covers() {
        let now = Instant::now();
        let mut awaiting = Awaiting::default();
        for (id, first) in [(1, 0), (2, 50), (3, 100), (4, 150)] {
            awaiting.pubacked(id, span(first, first + 50), now);
        }
        let applied = awaiting
            .apply_now(&confirmation(50, &[(100, 150)], &[(150, 200)]))
            .unwrap();
        assert_eq!(applied.committed, vec![1, 3]);
        assert_eq!(applied.refused, vec![(4, 50)]);
        assert_eq!(awaiting.len(), 1);
        assert!(awaiting.contains(2));
        // A frame only partly covered stays.
        assert_eq!(
            awaiting.apply_now(&confirmation(75, &[], &[])).unwrap(),
            Applied::default()
        );
        assert!(awaiting.contains(2));
    }

    #[test]
    fn forged_and_foreign_confirmations_delete_nothing() {
        let now = Instant::now();
        let mut awaiting = Awaiting::default();
        awaiting.pubacked(1, span(0, 50), now);
        assert_eq!(
            awaiting.apply_now(&confirmation(1000, &[], &[])),
            Err(Ignored::BeyondSent)
        );
        assert_eq!(
            awaiting.apply_now(&confirmation(0, &[(60, 70)], &[])),
            Err(Ignored::BeyondSent)
        );
        let mut other_boot = confirmation(50, &[], &[]);
        other_boot.boot_id = BootId([2; 8]);
        assert_eq!(awaiting.apply_now(&other_boot), Err(Ignored::BeyondSent));
        assert!(awaiting.contains(1));
    }

    #[test]
    fn a_frame_overtaken_by_a_confirmed_one_is_resent_after_the_grace_only() {
        let t0 = Instant::now();
        let (grace, timeout) = (Duration::from_secs(2), Duration::from_secs(30));
        let mut awaiting = Awaiting::default();
        awaiting.pubacked(1, span(0, 50), t0);
        awaiting.pubacked(2, span(50, 100), t0 + Duration::from_millis(100));
        // Nothing confirmed: the cloud may be stalled; only the last frame, much later.
        assert!(awaiting
            .due(t0 + Duration::from_secs(20), grace, timeout)
            .is_empty());
        assert_eq!(
            awaiting.due(t0 + Duration::from_secs(31), grace, timeout),
            vec![2]
        );
        // Frame 2 confirmed, frame 1 not: a hole after the broker.
        let applied = awaiting
            .apply_now(&confirmation(0, &[(50, 100)], &[]))
            .unwrap();
        assert_eq!(applied.committed, vec![2]);
        assert!(awaiting
            .due(t0 + Duration::from_secs(1), grace, timeout)
            .is_empty());
        assert_eq!(
            awaiting.due(t0 + Duration::from_secs(3), grace, timeout),
            vec![1]
        );
        // Resent: not due again while in flight; PUBACKed again: it waits anew.
        awaiting.resending(1);
        assert!(awaiting
            .due(t0 + Duration::from_secs(3), grace, timeout)
            .is_empty());
        awaiting.pubacked(1, span(0, 50), t0 + Duration::from_secs(3));
        assert!(awaiting
            .due(t0 + Duration::from_secs(4), grace, timeout)
            .is_empty());
    }

    #[test]
    fn a_resent_frames_confirmation_overtakes_only_what_was_sent_before_its_first_copy() {
        // Which copy of a resent frame got through is unknown (Karn's problem in TCP):
        // its first copy may just have been slow, and the frames sent after that copy
        // are as slow, not lost.
        let t0 = Instant::now();
        let (grace, timeout) = (Duration::from_secs(2), Duration::from_secs(30));
        let mut awaiting = Awaiting::default();
        awaiting.pubacked(1, span(0, 50), t0);
        awaiting.pubacked(2, span(50, 100), t0 + Duration::from_secs(1));
        awaiting.pubacked(3, span(100, 150), t0 + Duration::from_secs(2));
        awaiting.resending(1);
        awaiting.pubacked(1, span(0, 50), t0 + Duration::from_secs(10));
        let applied = awaiting.apply_now(&confirmation(50, &[], &[])).unwrap();
        assert_eq!(applied.committed, vec![1]);
        assert!(
            awaiting
                .due(t0 + Duration::from_secs(20), grace, timeout)
                .is_empty(),
            "frames 2 and 3 are not shown lost by frame 1"
        );
        // Frame 3 confirmed: frame 2, sent before it, is.
        awaiting
            .apply_now(&confirmation(50, &[(100, 150)], &[]))
            .unwrap();
        assert_eq!(
            awaiting.due(t0 + Duration::from_secs(20), grace, timeout),
            vec![2]
        );
    }

    #[test]
    fn the_last_frame_backs_off() {
        let t0 = Instant::now();
        let (grace, timeout) = (Duration::from_secs(2), Duration::from_secs(10));
        let mut awaiting = Awaiting::default();
        awaiting.pubacked(1, span(0, 50), t0);
        assert_eq!(awaiting.due(t0 + timeout, grace, timeout), vec![1]);
        let t1 = t0 + timeout;
        awaiting.resending(1);
        awaiting.connection_lost();
        assert_eq!(
            awaiting.due(t1, grace, timeout),
            vec![1],
            "a lost resend is due again"
        );
        awaiting.resending(1);
        awaiting.pubacked(1, span(0, 50), t1);
        // Each later resend waits twice as long.
        assert!(awaiting.due(t1 + timeout, grace, timeout).is_empty());
        assert_eq!(awaiting.due(t1 + 2 * timeout, grace, timeout), vec![1]);
    }

    #[test]
    fn pruning_forgets_dropped_records() {
        let now = Instant::now();
        let mut awaiting = Awaiting::default();
        awaiting.pubacked(1, span(0, 50), now);
        awaiting.pubacked(5, span(50, 100), now);
        awaiting.prune_below(3);
        assert!(!awaiting.contains(1));
        assert!(awaiting.contains(5));
        assert_eq!(awaiting.len(), 1);
    }
}
