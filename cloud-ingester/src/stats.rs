//! The ingester's counters: exported to Prometheus (`ingester_*`) through the `metrics`
//! facade, and also kept here (`service::metrics::Count` and `Level`) so the periodic
//! metrics record, the shutdown report and the tests can read them back (the facade is
//! write-only).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use contracts::dead_letter::Reason;
use metrics::Histogram;
use serde::Serialize;
use service::metrics::{prometheus, Count, CountsByReason, Level};

/// The alert transitions counted, so each has a series (at zero) before the first one.
pub const ALERT_TRANSITIONS: [&str; 3] = ["opened", "escalated", "resolved"];

/// Why a confirmation was not sent (the `reason` of
/// `ingester_confirmations_unsent_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsent {
    /// No valid `mqtt-topic` header on the device's records: nowhere to send it.
    NoRoute,
    /// It broke a rule of the format (a bug; logged).
    Invalid,
    /// Kafka did not take it (queue full, too many in flight, delivery failed).
    Kafka,
}

impl Unsent {
    pub const ALL: [Unsent; 3] = [Unsent::NoRoute, Unsent::Invalid, Unsent::Kafka];

    pub fn code(self) -> &'static str {
        match self {
            Unsent::NoRoute => "no-route",
            Unsent::Invalid => "invalid",
            Unsent::Kafka => "kafka",
        }
    }
}

/// Counters of one ingester instance. Every instance in a process counts on its own here
/// and adds to the same exported series (the recorder is global).
pub struct IngestStats {
    records: Count,
    batches: Count,
    inserted: Count,
    duplicates: Count,
    dead_lettered: CountsByReason,
    store_errors: Count,
    redis_errors: Count,
    consumer_replacements: Count,
    confirmations_sent: Count,
    confirmations_unsent: CountsByReason,
    flush_micros: AtomicU64,
    batch_rows: Histogram,
    flush_seconds: Histogram,
    alert_transitions: Mutex<BTreeMap<&'static str, Count>>,
    consumer_lag: Mutex<BTreeMap<i32, Level>>,
    /// Per device (known devices only: the catalog bounds the series).
    future_dated: Mutex<BTreeMap<String, Count>>,
}

impl Default for IngestStats {
    fn default() -> Self {
        Self::new()
    }
}

impl IngestStats {
    pub fn new() -> Self {
        // Handles taken before the recorder is installed would be no-ops.
        prometheus();
        let count = |name: &'static str| Count::new(metrics::counter!(name));
        Self {
            records: count("ingester_records_total"),
            batches: count("ingester_batches_total"),
            inserted: count("ingester_readings_inserted_total"),
            duplicates: count("ingester_duplicates_skipped_total"),
            dead_lettered: CountsByReason::new(
                "ingester_records_dead_lettered_total",
                "reason",
                &Reason::INGESTER.map(Reason::code),
            ),
            store_errors: count("ingester_store_errors_total"),
            redis_errors: count("ingester_redis_errors_total"),
            consumer_replacements: count("ingester_consumer_replacements_total"),
            confirmations_sent: count("ingester_confirmations_sent_total"),
            confirmations_unsent: CountsByReason::new(
                "ingester_confirmations_unsent_total",
                "reason",
                &Unsent::ALL.map(Unsent::code),
            ),
            flush_micros: AtomicU64::new(0),
            batch_rows: metrics::histogram!("ingester_batch_rows"),
            flush_seconds: metrics::histogram!("ingester_flush_seconds"),
            alert_transitions: Mutex::new(
                ALERT_TRANSITIONS
                    .into_iter()
                    .map(|kind| (kind, transition_count(kind)))
                    .collect(),
            ),
            consumer_lag: Mutex::new(BTreeMap::new()),
            future_dated: Mutex::new(BTreeMap::new()),
        }
    }

    /// A batch committed: `records` Kafka records, whose readings were `inserted` or
    /// skipped as `duplicates`, written in `took`.
    pub fn batch(&self, records: usize, inserted: u64, duplicates: u64, took: Duration) {
        self.records.add(records as u64);
        self.batches.add(1);
        self.inserted.add(inserted);
        self.duplicates.add(duplicates);
        self.flush_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.batch_rows.record((inserted + duplicates) as f64);
        self.flush_seconds.record(took.as_secs_f64());
    }

    /// A record dead-lettered for one of [`Reason::INGESTER`], the only ones its checks
    /// give (their tests say which); another would have no series of its own.
    pub fn dead_lettered(&self, reason: Reason) {
        self.dead_lettered.add(reason.code());
    }

    /// A PostgreSQL write that failed and will be retried.
    pub fn store_error(&self) {
        self.store_errors.add(1);
    }

    pub fn redis_error(&self) {
        self.redis_errors.add(1);
    }

    /// The Kafka consumer lost its connection and a new one took its place.
    pub fn consumer_replaced(&self) {
        self.consumer_replacements.add(1);
    }

    /// Kafka took a confirmation for a device.
    pub fn confirmation_sent(&self) {
        self.confirmations_sent.add(1);
    }

    /// A confirmation that was not sent (the next one says the same).
    pub fn confirmation_unsent(&self, reason: Unsent) {
        self.confirmations_unsent.add(reason.code());
    }

    /// An alert changed state: `kind` is one of [`ALERT_TRANSITIONS`] (another kind gets
    /// its own series the first time).
    pub fn alert_transition(&self, kind: &'static str) {
        let mut transitions = self
            .alert_transitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        transitions
            .entry(kind)
            .or_insert_with(|| transition_count(kind))
            .add(1);
    }

    /// `readings` of `device` were dated beyond `clock.max_ahead`: stored, not live.
    pub fn future_dated(&self, device: &str, readings: u64) {
        let mut counts = self
            .future_dated
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match counts.get(device) {
            Some(count) => count.add(readings),
            None => {
                let count = Count::new(metrics::counter!(
                    "ingester_readings_future_dated_total",
                    "device" => device.to_owned()
                ));
                count.add(readings);
                counts.insert(device.to_owned(), count);
            }
        }
    }

    /// Records in `partition` beyond the offset stored in PostgreSQL (its high watermark
    /// in librdkafka's last statistics, less the stored offset).
    pub fn set_consumer_lag(&self, partition: i32, lag: i64) {
        let mut lags = self
            .consumer_lag
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        lags.entry(partition)
            .or_insert_with(|| {
                Level::new(metrics::gauge!(
                    "ingester_consumer_lag",
                    "partition" => partition.to_string()
                ))
            })
            .set(lag.max(0) as u64);
    }

    pub fn snapshot(&self) -> IngestSnapshot {
        IngestSnapshot {
            records: self.records.get(),
            batches: self.batches.get(),
            inserted: self.inserted.get(),
            duplicates: self.duplicates.get(),
            dead_lettered: self.dead_lettered.total(),
            dead_lettered_by_reason: self.dead_lettered.by_code(),
            store_errors: self.store_errors.get(),
            redis_errors: self.redis_errors.get(),
            consumer_replacements: self.consumer_replacements.get(),
            confirmations_sent: self.confirmations_sent.get(),
            confirmations_unsent: self.confirmations_unsent.total(),
            flush_seconds: self.flush_micros.load(Ordering::Relaxed) as f64 / 1e6,
            alert_transitions: self
                .alert_transitions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .map(Count::get)
                .sum(),
            consumer_lag: self
                .consumer_lag
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .map(Level::get)
                .sum(),
            readings_future_dated: self
                .future_dated
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .map(Count::get)
                .sum(),
        }
    }
}

fn transition_count(kind: &'static str) -> Count {
    Count::new(metrics::counter!(
        "ingester_alert_transitions_total",
        "transition" => kind
    ))
}

/// The counters at one moment; also the body of the records on the metrics topic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IngestSnapshot {
    pub records: u64,
    pub batches: u64,
    pub inserted: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    pub dead_lettered_by_reason: Vec<(&'static str, u64)>,
    pub store_errors: u64,
    pub redis_errors: u64,
    pub consumer_replacements: u64,
    /// Confirmations Kafka took for the devices, and those not sent (any reason).
    pub confirmations_sent: u64,
    pub confirmations_unsent: u64,
    /// Time spent writing batches, in total.
    pub flush_seconds: f64,
    /// Alert transitions of every kind, in total.
    pub alert_transitions: u64,
    /// Records behind, summed over the partitions this instance consumes now.
    pub consumer_lag: u64,
    /// Readings dated beyond `clock.max_ahead`, over all devices.
    pub readings_future_dated: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_count_apart_and_export_together() {
        let (one, two) = (IngestStats::new(), IngestStats::new());
        one.batch(3, 100, 20, Duration::from_millis(4));
        two.batch(1, 7, 0, Duration::from_millis(1));
        one.alert_transition("opened");
        one.alert_transition("resolved");
        one.set_consumer_lag(0, 5);
        one.set_consumer_lag(2, 10);
        one.set_consumer_lag(0, 1);
        one.set_consumer_lag(1, -1);
        one.future_dated("press-01", 2);
        one.future_dated("press-01", 1);
        let snapshot = one.snapshot();
        assert_eq!(
            (snapshot.records, snapshot.inserted, snapshot.duplicates),
            (3, 100, 20)
        );
        assert_eq!((snapshot.alert_transitions, snapshot.consumer_lag), (2, 11));
        assert_eq!(two.snapshot().inserted, 7);
        assert_eq!(snapshot.readings_future_dated, 3);

        let text = prometheus().render();
        for series in [
            "ingester_readings_inserted_total",
            "ingester_alert_transitions_total{transition=\"escalated\"}",
            "ingester_consumer_lag{partition=\"2\"} 10",
            "ingester_records_dead_lettered_total{reason=\"decode\"}",
            "ingester_confirmations_sent_total",
            "ingester_readings_future_dated_total{device=\"press-01\"} 3",
            "ingester_confirmations_unsent_total{reason=\"no-route\"}",
            "ingester_batch_rows_bucket{le=\"5000\"}",
            "ingester_flush_seconds_bucket{le=\"0.005\"}",
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
    }
}
