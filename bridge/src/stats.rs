//! The bridge's counters: exported to Prometheus through the `metrics` facade, and also
//! kept here as atomics so the periodic JSON record, the shutdown report and the tests
//! can read them back (the facade is write-only).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;

use crate::inspect::RejectReason;

const PRODUCE_LATENCY: &str = "bridge_produce_latency_seconds";

/// The process-wide Prometheus recorder, installed on first use. (One per process: tests
/// that run several bridges in one process share it.)
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(PRODUCE_LATENCY.to_owned()),
                &[
                    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
                ],
            )
            .expect("bucket list is not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed, and then its metrics win.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Folds recorded histogram samples into their buckets every few seconds. The exporter
/// (0.13) keeps raw samples until the next render, so without a scraper they would pile
/// up without bound (about 1 MB/s at 60k messages/s).
pub async fn prometheus_upkeep(stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                prometheus().render();
            }
        }
    }
}

#[derive(Debug, Default)]
struct Cell {
    value: AtomicU64,
}

impl Cell {
    fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// Counters of one bridge instance.
pub struct Stats {
    received: (Cell, Counter),
    produced: (Cell, Counter),
    dead_lettered: [(Cell, Counter); RejectReason::ALL.len()],
    failed: (Cell, Counter),
    latest_published: (Cell, Counter),
    latest_skipped: (Cell, Counter),
    stale_acks: (Cell, Counter),
    in_flight: (AtomicU64, Gauge),
    kafka_queue_bytes: (AtomicU64, Gauge),
    kafka_queue_messages: (AtomicU64, Gauge),
    produce_latency: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        prometheus();
        let counter = |name: &'static str| (Cell::default(), metrics::counter!(name));
        Self {
            received: counter("bridge_messages_received_total"),
            produced: counter("bridge_messages_produced_total"),
            dead_lettered: RejectReason::ALL.map(|reason| {
                (
                    Cell::default(),
                    metrics::counter!("bridge_messages_dead_lettered_total", "reason" => reason.code()),
                )
            }),
            failed: counter("bridge_messages_failed_total"),
            latest_published: counter("bridge_latest_published_total"),
            latest_skipped: counter("bridge_latest_skipped_total"),
            stale_acks: counter("bridge_stale_acks_total"),
            in_flight: (AtomicU64::new(0), metrics::gauge!("bridge_messages_in_flight")),
            kafka_queue_bytes: (AtomicU64::new(0), metrics::gauge!("bridge_kafka_queue_bytes")),
            kafka_queue_messages: (
                AtomicU64::new(0),
                metrics::gauge!("bridge_kafka_queue_messages"),
            ),
            produce_latency: metrics::histogram!(PRODUCE_LATENCY),
        }
    }

    pub fn received(&self) {
        self.received.0.add(1);
        self.received.1.increment(1);
    }

    pub fn produced(&self, latency: Duration) {
        self.produced.0.add(1);
        self.produced.1.increment(1);
        self.produce_latency.record(latency.as_secs_f64());
    }

    pub fn dead_lettered(&self, reason: RejectReason) {
        let (cell, counter) = &self.dead_lettered[reason as usize];
        cell.add(1);
        counter.increment(1);
    }

    /// A message Kafka refused even on the dead-letter topic: fatal for the bridge.
    pub fn failed(&self) {
        self.failed.0.add(1);
        self.failed.1.increment(1);
    }

    pub fn latest_published(&self) {
        self.latest_published.0.add(1);
        self.latest_published.1.increment(1);
    }

    /// A `latest` message not sent: the device table was full or the client was busy.
    pub fn latest_skipped(&self) {
        self.latest_skipped.0.add(1);
        self.latest_skipped.1.increment(1);
    }

    /// An acknowledgement not sent because its connection had already gone: the broker
    /// redelivers that message, so Kafka sees it twice (at-least-once).
    pub fn stale_ack(&self) {
        self.stale_acks.0.add(1);
        self.stale_acks.1.increment(1);
    }

    pub fn set_in_flight(&self, n: usize) {
        self.in_flight.0.store(n as u64, Ordering::Relaxed);
        self.in_flight.1.set(n as f64);
    }

    pub fn set_kafka_queue(&self, messages: u64, bytes: u64) {
        self.kafka_queue_messages
            .0
            .store(messages, Ordering::Relaxed);
        self.kafka_queue_messages.1.set(messages as f64);
        self.kafka_queue_bytes.0.store(bytes, Ordering::Relaxed);
        self.kafka_queue_bytes.1.set(bytes as f64);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            received: self.received.0.get(),
            produced: self.produced.0.get(),
            dead_lettered: self.dead_lettered.iter().map(|(cell, _)| cell.get()).sum(),
            dead_lettered_by_reason: RejectReason::ALL
                .iter()
                .zip(&self.dead_lettered)
                .map(|(reason, (cell, _))| (reason.code(), cell.get()))
                .collect(),
            failed: self.failed.0.get(),
            latest_published: self.latest_published.0.get(),
            latest_skipped: self.latest_skipped.0.get(),
            stale_acks: self.stale_acks.0.get(),
            in_flight: self.in_flight.0.load(Ordering::Relaxed),
            kafka_queue_messages: self.kafka_queue_messages.0.load(Ordering::Relaxed),
            kafka_queue_bytes: self.kafka_queue_bytes.0.load(Ordering::Relaxed),
        }
    }
}

/// The counters at one moment; also the body of the records on the `metrics` topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub received: u64,
    pub produced: u64,
    pub dead_lettered: u64,
    pub dead_lettered_by_reason: Vec<(&'static str, u64)>,
    pub failed: u64,
    pub latest_published: u64,
    pub latest_skipped: u64,
    pub stale_acks: u64,
    pub in_flight: u64,
    pub kafka_queue_messages: u64,
    pub kafka_queue_bytes: u64,
}

impl StatsSnapshot {
    pub fn dead_lettered_for(&self, reason: RejectReason) -> u64 {
        self.dead_lettered_by_reason
            .iter()
            .find(|(code, _)| *code == reason.code())
            .map_or(0, |(_, n)| *n)
    }
}
