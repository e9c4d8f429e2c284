//! Confirmations to the devices: after each commit, which readings of each (device,
//! boot) PostgreSQL holds, and which the cloud refused for good.
//!
//! It exists because only the agent's disk and PostgreSQL are durable: the agent keeps a
//! frame until a confirmation covers it (`protocol::confirm`). The coverage comes from the
//! batch's own coverage statement (`coverage::record` returns it), so confirming costs
//! the batch path no query; refusals (dead letters whose frame decodes, for a reason a
//! resend cannot change) are kept here in memory, at most 16 ranges per (device, boot),
//! the highest kept. A lost refusal costs a resend that is refused again.
//!
//! The pipeline only updates a shared ledger (a lock held for a few map operations, never
//! across I/O); a task of its own sends the newest confirmation of each changed (device,
//! boot) at once and then at most once per interval, so a device gets a few per second
//! however many frames it sends. Sending is fire-and-forget through a producer of its own
//! (short message timeout, bounded in flight): a confirmation lost or not sent costs
//! nothing, the next says the same and more, so a Kafka outage neither blocks nor slows
//! the batch path, and the stop waits for it at most [`FINAL_GRACE`].
//!
//! A confirmation goes to the device's confirm topic, made from the data record's
//! `mqtt-topic` header (the telemetry topic the bridge received it on) with its kind
//! changed; a device whose records carry no valid header gets none (counted).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use contracts::dead_letter::Reason;
use protocol::confirm::{Ranges, MAX_CONFIRM_RANGES};
use protocol::kafka::{headers, CONFIRM_CONTENT_TYPE};
use protocol::{BootId, Confirmation, DeviceId, Frame, SeqRange, Topic, TopicKind};
use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::coverage::Held;
use crate::dead_letters::DeadLetter;
use crate::stats::{IngestStats, Unsent};

/// Where confirmations go and how often at most, per (device, boot).
pub struct ConfirmSink {
    /// Its own producer (`kafka::confirm_producer`): one that gives up quickly, so
    /// confirmations never queue up behind an outage in the producer of dead letters.
    pub producer: FutureProducer,
    pub topic: String,
    pub interval: Duration,
}

/// Most (device, boot) pairs remembered; at the cap the less recently changed half is
/// forgotten at once (in bulk, so a flood of new devices costs no scan per record). A
/// forgotten pair loses only its refusals, which a resend brings back.
const MAX_TRACKED: usize = 10_000;
/// Most confirmations waiting for Kafka's answer; more are not sent (the next flush
/// sends the same, newer).
const MAX_IN_FLIGHT: usize = 4_096;
/// How long the stop waits for the last confirmations to be delivered.
pub const FINAL_GRACE: Duration = Duration::from_millis(500);
/// At most one warning about unsent confirmations this often.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// The `mqtt-topic` header of a consumed record.
pub fn mqtt_topic_of(record_headers: Option<&BorrowedHeaders>) -> Option<&[u8]> {
    record_headers?
        .iter()
        .find(|h| h.key == headers::MQTT_TOPIC)?
        .value
}

/// The confirm topic for `device` from a telemetry topic, if it is one of `device`'s.
pub fn confirm_topic(device: &str, mqtt_topic: &[u8]) -> Option<String> {
    let topic = Topic::parse(std::str::from_utf8(mqtt_topic).ok()?).ok()?;
    (topic.device == device).then(|| topic.with_kind(TopicKind::Confirm).to_string())
}

/// Per device, the confirm topic its records in one batch name.
#[derive(Debug, Default)]
pub struct Routes {
    by_device: HashMap<String, Route>,
}

#[derive(Debug)]
struct Route {
    /// The header as it came, so the same header is parsed once per batch.
    header: Vec<u8>,
    confirm: Option<String>,
}

impl Routes {
    /// Notes the `mqtt-topic` header of one of `device`'s records (the newest wins).
    pub fn note(&mut self, device: &str, mqtt_topic: Option<&[u8]>) {
        let header = mqtt_topic.unwrap_or_default();
        if let Some(route) = self.by_device.get(device) {
            if route.header == header {
                return;
            }
        }
        let route = Route {
            header: header.to_vec(),
            confirm: confirm_topic(device, header),
        };
        self.by_device.insert(device.to_owned(), route);
    }

    fn get(&self, device: &str) -> Option<&str> {
        self.by_device.get(device)?.confirm.as_deref()
    }
}

/// Sets the committed part from a (device, boot)'s coverage, lowest range first: the
/// range starting at 0 is the prefix, the next ones (at most 16) the ranges above it.
pub fn set_committed(confirmation: &mut Confirmation, ranges: &[(u64, u64)]) {
    let mut ranges = ranges.iter().peekable();
    confirmation.committed_below = match ranges.peek() {
        Some(&&(0, end)) => {
            ranges.next();
            end
        }
        _ => 0,
    };
    confirmation.committed.clear();
    for &(start, end) in ranges.take(MAX_CONFIRM_RANGES) {
        // Cannot fail: at most MAX_CONFIRM_RANGES are taken.
        let _ = confirmation.committed.push(SeqRange::new(start, end));
    }
}

/// Readings missing below the highest committed one: the holes between the ranges (as
/// far as the returned ranges reach) and before the first.
pub fn missing(ranges: &[(u64, u64)]) -> u64 {
    let mut covered_to = 0;
    let mut missing = 0;
    for &(start, end) in ranges {
        missing += start.saturating_sub(covered_to);
        covered_to = covered_to.max(end);
    }
    missing
}

/// Adds `start..end` to a list of refused ranges: merged with those it overlaps or
/// touches, ascending, the highest [`MAX_CONFIRM_RANGES`] kept (the lowest are the
/// oldest: a device's sequence numbers only grow).
pub fn add_refused(list: &mut Ranges, start: u64, end: u64) {
    let mut all: Vec<SeqRange> = list.iter().copied().collect();
    all.push(SeqRange::new(start, end));
    all.sort_unstable_by_key(|r| r.start);
    let mut merged: Vec<SeqRange> = Vec::with_capacity(all.len());
    for range in all {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    let skip = merged.len().saturating_sub(MAX_CONFIRM_RANGES);
    *list = merged.into_iter().skip(skip).collect();
}

/// The device, boot and sequence numbers of a dead letter refused for good: its frame
/// decodes and the reason is one a resend cannot change.
fn refused(letter: &DeadLetter) -> Option<(DeviceId, BootId, u64, u64)> {
    match letter.rejection.reason {
        Reason::UnknownDevice | Reason::UnknownChannel => {}
        // A record that is no frame names nothing to refuse; the bridge's reasons are
        // never the ingester's.
        // An unauthorized frame may be a forgery: refusing its range for good would make
        // the real device drop its own frames, which are resent and checked again.
        Reason::Decode
        | Reason::Topic
        | Reason::DeviceMismatch
        | Reason::KafkaRejected
        | Reason::Unauthorized => return None,
    }
    let frame = Frame::decode(&letter.payload).ok()?;
    let end = frame.first_seq.checked_add(frame.readings.len() as u64)?;
    Some((frame.device, frame.boot_id, frame.first_seq, end))
}

struct Entry {
    confirmation: Confirmation,
    route: Option<String>,
    /// Readings missing below the highest committed one, at the last commit.
    missing: u64,
    /// When it last changed, in ledger updates: the least recent are forgotten first.
    touched: u64,
}

/// What the pipeline has told and the task has yet to send.
#[derive(Default)]
struct Ledger {
    entries: HashMap<(String, i64), Entry>,
    /// Changed since the last flush.
    dirty: HashSet<(String, i64)>,
    clock: u64,
}

impl Ledger {
    /// The entry of (device, boot), made if new; marked changed.
    fn entry(&mut self, device: &DeviceId, boot: BootId) -> &mut Entry {
        self.clock += 1;
        let key = (device.as_str().to_owned(), boot.as_i64());
        if !self.entries.contains_key(&key) && self.entries.len() >= MAX_TRACKED {
            // Each update touches one entry, so these are the ones touched in the last
            // MAX_TRACKED / 2 updates: at most half the cap.
            let kept_from = self.clock.saturating_sub((MAX_TRACKED / 2) as u64);
            self.entries.retain(|_, entry| entry.touched >= kept_from);
            let entries = &self.entries;
            self.dirty.retain(|key| entries.contains_key(key));
        }
        self.dirty.insert(key.clone());
        let entry = self.entries.entry(key).or_insert_with(|| Entry {
            confirmation: Confirmation::new(device.clone(), boot),
            route: None,
            missing: 0,
            touched: 0,
        });
        entry.touched = self.clock;
        entry
    }

    /// The changed entries' confirmations and routes; none is changed afterwards.
    fn take_dirty(&mut self) -> Vec<(Confirmation, Option<String>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .iter()
            .filter_map(|key| self.entries.get(key))
            .map(|entry| (entry.confirmation.clone(), entry.route.clone()))
            .collect()
    }
}

/// The pipeline's handle on the confirmations task.
pub struct Confirmations {
    ledger: Arc<Mutex<Ledger>>,
    wake: Arc<Notify>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Confirmations {
    /// Starts the task that sends what [`Confirmations::after_commit`] reports.
    pub fn start(sink: ConfirmSink, stats: Arc<IngestStats>) -> Self {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let wake = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let task = tokio::spawn(
            Sender {
                sink,
                ledger: ledger.clone(),
                stats,
                in_flight: JoinSet::new(),
                warned: None,
            }
            .run(wake.clone(), stop.clone()),
        );
        Self {
            ledger,
            wake,
            stop,
            task,
        }
    }

    /// After a batch committed: the coverage of each (device, boot) it wrote, and the
    /// refusals among its dead letters, become the newest confirmations to send. Never
    /// waits for anything but the ledger's lock.
    pub fn after_commit(&self, held: &[Held], routes: &Routes, letters: &[DeadLetter]) {
        if held.is_empty() && letters.is_empty() {
            return;
        }
        let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        let mut changed = false;
        for held in held {
            // Cannot fail: the store checked every device id before writing it.
            let Ok(device) = DeviceId::new(&held.device_id) else {
                continue;
            };
            let entry = ledger.entry(&device, BootId::from_i64(held.boot_id));
            set_committed(&mut entry.confirmation, &held.ranges);
            // Completeness, visible in Prometheus: holes a resend has yet to fill, and
            // readings that filled one.
            let missing = missing(&held.ranges);
            let recovered = entry.missing.saturating_sub(missing);
            entry.missing = missing;
            let device_label = held.device_id.clone();
            metrics::gauge!("ingester_readings_missing", "device" => device_label.clone())
                .set(missing as f64);
            if recovered > 0 {
                metrics::counter!("ingester_readings_recovered_total", "device" => device_label)
                    .increment(recovered);
            }
            if let Some(route) = routes.get(&held.device_id) {
                entry.route = Some(route.to_owned());
            }
            changed = true;
        }
        for letter in letters {
            let Some((device, boot, start, end)) = refused(letter) else {
                continue;
            };
            let route = letter
                .mqtt_topic()
                .and_then(|header| confirm_topic(&device, header));
            let entry = ledger.entry(&device, boot);
            add_refused(&mut entry.confirmation.refused, start, end);
            if route.is_some() {
                entry.route = route;
            }
            changed = true;
        }
        drop(ledger);
        if changed {
            self.wake.notify_one();
        }
    }

    /// Sends what is pending, waits at most [`FINAL_GRACE`] for Kafka, and ends the task.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Err(e) = (&mut self.task).await {
            warn!("the confirmations task failed: {e}");
        }
    }
}

impl Drop for Confirmations {
    /// A pipeline that returns early (an error) ends the task too.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The task's side: sends the changed confirmations, counts Kafka's answers.
struct Sender {
    sink: ConfirmSink,
    ledger: Arc<Mutex<Ledger>>,
    stats: Arc<IngestStats>,
    /// Deliveries awaited; each says whether Kafka took its confirmation.
    in_flight: JoinSet<bool>,
    warned: Option<Instant>,
}

impl Sender {
    async fn run(mut self, wake: Arc<Notify>, stop: CancellationToken) {
        'running: loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = wake.notified() => {}
                Some(done) = self.in_flight.join_next() => {
                    self.delivered(done.unwrap_or(false));
                    continue;
                }
            }
            self.flush();
            // At most one flush per interval: what changes meanwhile waits for the next.
            let next = Instant::now() + self.sink.interval;
            loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break 'running,
                    _ = tokio::time::sleep_until(next) => break,
                    Some(done) = self.in_flight.join_next() => {
                        self.delivered(done.unwrap_or(false));
                    }
                }
            }
        }
        self.flush();
        let _ = tokio::time::timeout(FINAL_GRACE, async {
            while let Some(done) = self.in_flight.join_next().await {
                self.delivered(done.unwrap_or(false));
            }
        })
        .await;
        // What is still in flight is dropped with the producer: librdkafka purges it,
        // blocking up to half a second, so not on this runtime's thread.
        self.in_flight.abort_all();
        let producer = self.sink.producer;
        tokio::task::spawn_blocking(move || drop(producer));
    }

    fn delivered(&mut self, taken: bool) {
        if taken {
            self.stats.confirmation_sent();
        } else {
            self.unsent(Unsent::Kafka, "Kafka did not take it");
        }
    }

    fn unsent(&mut self, reason: Unsent, why: &str) {
        self.stats.confirmation_unsent(reason);
        if self.warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            self.warned = Some(Instant::now());
            warn!(
                reason = reason.code(),
                "a confirmation was not sent ({why}); the next one says the same \
                 (further ones only counted for {}s)",
                WARN_EVERY.as_secs()
            );
        }
    }

    /// Produces the newest confirmation of every changed (device, boot), without
    /// waiting for Kafka.
    fn flush(&mut self) {
        let due = self
            .ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take_dirty();
        let mut buf = [0u8; protocol::MAX_CONFIRM_LEN];
        for (confirmation, route) in due {
            let Some(route) = route else {
                self.unsent(
                    Unsent::NoRoute,
                    "its records carry no valid mqtt-topic header",
                );
                continue;
            };
            if self.in_flight.len() >= MAX_IN_FLIGHT {
                self.unsent(Unsent::Kafka, "too many confirmations wait for Kafka");
                continue;
            }
            let bytes = match confirmation.encode(&mut buf) {
                Ok(bytes) => bytes,
                Err(e) => {
                    self.unsent(Unsent::Invalid, &e.to_string());
                    continue;
                }
            };
            let record_headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header {
                    key: headers::CONTENT_TYPE,
                    value: Some(CONFIRM_CONTENT_TYPE),
                })
                .insert(Header {
                    key: headers::MQTT_TOPIC,
                    value: Some(&route),
                });
            let record = FutureRecord::to(&self.sink.topic)
                .key(confirmation.device.as_str())
                .payload(&*bytes)
                .headers(record_headers);
            match self.sink.producer.send_result(record) {
                Ok(delivery) => {
                    self.in_flight
                        .spawn(async move { matches!(delivery.await, Ok(Ok(_))) });
                }
                Err((e, _)) => self.unsent(Unsent::Kafka, &e.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn missing_readings_are_the_holes_below_the_highest() {
        assert_eq!(super::missing(&[]), 0);
        assert_eq!(super::missing(&[(0, 100)]), 0);
        assert_eq!(super::missing(&[(0, 100), (150, 200), (210, 300)]), 60);
        assert_eq!(super::missing(&[(5, 10)]), 5);
    }

    use super::*;

    fn ranges(list: &[(u64, u64)]) -> Ranges {
        list.iter().map(|&(s, e)| SeqRange::new(s, e)).collect()
    }

    fn confirmation() -> Confirmation {
        Confirmation::new(DeviceId::new("press-01").unwrap(), BootId([1; 8]))
    }

    #[test]
    fn the_range_from_zero_is_the_prefix_and_the_next_sixteen_follow() {
        let mut c = confirmation();
        set_committed(&mut c, &[(0, 100), (200, 300)]);
        assert_eq!(
            (c.committed_below, c.committed.clone()),
            (100, ranges(&[(200, 300)]))
        );
        set_committed(&mut c, &[(5, 10)]);
        assert_eq!(
            (c.committed_below, c.committed.clone()),
            (0, ranges(&[(5, 10)]))
        );
        let many: Vec<(u64, u64)> = (0..20).map(|i| (i * 10, i * 10 + 5)).collect();
        set_committed(&mut c, &many);
        assert_eq!(c.committed_below, 5);
        assert_eq!(c.committed.len(), MAX_CONFIRM_RANGES);
        assert_eq!(c.committed[0], SeqRange::new(10, 15));
        c.validate().unwrap();
    }

    #[test]
    fn refused_ranges_merge_and_keep_the_highest_sixteen() {
        let mut list = Ranges::new();
        add_refused(&mut list, 10, 20);
        add_refused(&mut list, 20, 30);
        add_refused(&mut list, 0, 5);
        add_refused(&mut list, 3, 8);
        assert_eq!(list, ranges(&[(0, 8), (10, 30)]));
        for i in 0..20 {
            add_refused(&mut list, 100 + i * 10, 105 + i * 10);
        }
        assert_eq!(list.len(), MAX_CONFIRM_RANGES);
        assert_eq!(list[0], SeqRange::new(140, 145));
        let mut c = confirmation();
        c.refused = list;
        c.validate().unwrap();
    }

    #[test]
    fn the_confirm_topic_is_the_telemetry_topic_of_the_same_device() {
        assert_eq!(
            confirm_topic("press-01", b"plant/site-a/line-1/press-01/telemetry").as_deref(),
            Some("plant/site-a/line-1/press-01/confirm")
        );
        assert_eq!(
            confirm_topic("press-02", b"plant/site-a/line-1/press-01/telemetry"),
            None
        );
        assert_eq!(confirm_topic("press-01", b"plant/press-01/telemetry"), None);
        assert_eq!(confirm_topic("press-01", b"\xff"), None);
        let mut routes = Routes::default();
        routes.note("press-01", None);
        assert_eq!(routes.get("press-01"), None);
        routes.note("press-01", Some(b"plant/s/l/press-01/telemetry"));
        assert_eq!(routes.get("press-01"), Some("plant/s/l/press-01/confirm"));
    }

    #[test]
    fn the_ledger_forgets_the_least_recently_changed_beyond_its_cap() {
        let mut ledger = Ledger::default();
        for i in 0..=MAX_TRACKED {
            let device = DeviceId::new(&format!("d-{i}")).unwrap();
            ledger.entry(&device, BootId([0; 8]));
        }
        assert!(ledger.entries.len() <= MAX_TRACKED / 2 + 1);
        assert!(!ledger.entries.contains_key(&("d-0".to_owned(), 0)));
        let newest = format!("d-{MAX_TRACKED}");
        assert!(ledger.entries.contains_key(&(newest, 0)));
        assert_eq!(ledger.take_dirty().len(), ledger.entries.len());
        assert!(ledger.take_dirty().is_empty());
    }
}
