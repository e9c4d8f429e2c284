//! The bridge's counters: exported to Prometheus through the `metrics` facade, and also
//! kept here (`service::metrics::Count` and `Level`) so the periodic JSON record, the
//! shutdown report and the tests can read them back (the facade is write-only).

use std::time::Duration;

use contracts::dead_letter::Reason;
use metrics::Histogram;
use serde::Serialize;
use service::metrics::{prometheus, Count, CountsByReason, Level};

/// Why a record on the confirm topic was not relayed. The code is the metric's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `mqtt-topic` header, or not UTF-8.
    Header,
    /// The header is not a `{prefix}/{site}/{line}/{device}/{kind}` topic.
    Topic,
    /// A device topic, but not a `confirm` one.
    Kind,
    /// A confirm topic under another prefix than this bridge's.
    Prefix,
    /// The value is not a confirmation.
    Decode,
    /// The confirmation is of another device than the topic's.
    DeviceMismatch,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::Header,
        Refusal::Topic,
        Refusal::Kind,
        Refusal::Prefix,
        Refusal::Decode,
        Refusal::DeviceMismatch,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Refusal::Header => "header",
            Refusal::Topic => "topic",
            Refusal::Kind => "kind",
            Refusal::Prefix => "prefix",
            Refusal::Decode => "decode",
            Refusal::DeviceMismatch => "device-mismatch",
        }
    }
}

/// Why the embedded broker refused a connection (`gateway_auth`). The code is the metric's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRefusal {
    /// The client id is neither the gateway id nor `{gateway id}@…`.
    ClientId,
    /// No such user or gateway.
    Unknown,
    WrongSecret,
    Disabled,
    /// The registry could not be read and nothing about the gateway was cached.
    RegistryUnavailable,
}

impl AuthRefusal {
    pub const ALL: [AuthRefusal; 5] = [
        AuthRefusal::ClientId,
        AuthRefusal::Unknown,
        AuthRefusal::WrongSecret,
        AuthRefusal::Disabled,
        AuthRefusal::RegistryUnavailable,
    ];

    pub fn code(self) -> &'static str {
        match self {
            AuthRefusal::ClientId => "client-id",
            AuthRefusal::Unknown => "unknown",
            AuthRefusal::WrongSecret => "wrong-secret",
            AuthRefusal::Disabled => "disabled",
            AuthRefusal::RegistryUnavailable => "registry-unavailable",
        }
    }
}

/// Counters of one bridge instance.
pub struct Stats {
    received: Count,
    produced: Count,
    dead_lettered: CountsByReason,
    failed: Count,
    latest_published: Count,
    latest_skipped: Count,
    latest_future_dated: Count,
    meta_ignored: Count,
    stale_acks: Count,
    stale_messages: Count,
    producer_queue_full: Count,
    producer_replacements: Count,
    mqtt_connections: Count,
    mqtt_stalls: Count,
    embedded_overruns: Count,
    dropped_at_shutdown: Count,
    confirmations_relayed: Count,
    confirmations_refused: CountsByReason,
    confirmations_unsent: Count,
    relay_restarts: Count,
    completeness_published: Count,
    completeness_skipped: Count,
    auth_accepted: Count,
    auth_refused: CountsByReason,
    unauthorized_frames: Count,
    in_flight: Level,
    kafka_queue_bytes: Level,
    kafka_queue_messages: Level,
    produce_latency: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        // Handles taken before the recorder is installed would be no-ops.
        prometheus();
        let count = |name: &'static str| Count::new(metrics::counter!(name));
        let level = |name: &'static str| Level::new(metrics::gauge!(name));
        Self {
            received: count("bridge_messages_received_total"),
            produced: count("bridge_messages_produced_total"),
            dead_lettered: CountsByReason::new(
                "bridge_messages_dead_lettered_total",
                "reason",
                &Reason::BRIDGE.map(Reason::code),
            ),
            failed: count("bridge_messages_failed_total"),
            latest_published: count("bridge_latest_published_total"),
            latest_skipped: count("bridge_latest_skipped_total"),
            latest_future_dated: count("bridge_latest_future_dated_total"),
            meta_ignored: count("bridge_meta_ignored_total"),
            stale_acks: count("bridge_stale_acks_total"),
            stale_messages: count("bridge_stale_messages_total"),
            producer_queue_full: count("bridge_producer_queue_full_total"),
            producer_replacements: count("bridge_producer_replacements_total"),
            mqtt_connections: count("bridge_mqtt_connections_total"),
            mqtt_stalls: count("bridge_mqtt_stalls_total"),
            embedded_overruns: count("bridge_embedded_overruns_total"),
            dropped_at_shutdown: count("bridge_dropped_at_shutdown_total"),
            confirmations_relayed: count("bridge_confirmations_relayed_total"),
            confirmations_refused: CountsByReason::new(
                "bridge_confirmations_refused_total",
                "reason",
                &Refusal::ALL.map(Refusal::code),
            ),
            confirmations_unsent: count("bridge_confirmations_unsent_total"),
            relay_restarts: count("bridge_confirm_relay_restarts_total"),
            completeness_published: count("bridge_completeness_published_total"),
            completeness_skipped: count("bridge_completeness_skipped_total"),
            auth_accepted: count("bridge_mqtt_auth_accepted_total"),
            unauthorized_frames: Count::new(metrics::counter!("bridge_frames_unauthorized_total")),
            auth_refused: CountsByReason::new(
                "bridge_mqtt_auth_refused_total",
                "reason",
                &AuthRefusal::ALL.map(AuthRefusal::code),
            ),
            in_flight: level("bridge_messages_in_flight"),
            kafka_queue_bytes: level("bridge_kafka_queue_bytes"),
            kafka_queue_messages: level("bridge_kafka_queue_messages"),
            produce_latency: metrics::histogram!("bridge_produce_latency_seconds"),
        }
    }

    pub fn received(&self) {
        self.received.add(1);
    }

    pub fn produced(&self, latency: Duration) {
        self.produced.add(1);
        self.produce_latency.record(latency.as_secs_f64());
    }

    /// A message dead-lettered for one of [`Reason::BRIDGE`], the only ones the bridge's
    /// checks give (their tests say which); another would have no series of its own.
    pub fn dead_lettered(&self, reason: Reason) {
        self.dead_lettered.add(reason.code());
    }

    /// A Kafka error that stops the bridge.
    pub fn failed(&self) {
        self.failed.add(1);
    }

    pub fn latest_published(&self) {
        self.latest_published.add(1);
    }

    /// A `latest` message not sent: the device table was full or the client was busy.
    pub fn latest_skipped(&self) {
        self.latest_skipped.add(1);
    }

    /// A frame dated beyond `clock.max_ahead` of the bridge's clock: forwarded to Kafka
    /// as any other, but not shown on `latest` (`service::clock`).
    pub fn latest_future_dated(&self) {
        self.latest_future_dated.add(1);
    }

    /// A message on a meta topic not taken for channel names: not the agent's meta
    /// JSON, not under this bridge's prefix, or one device beyond `latest.max_devices`.
    pub fn meta_ignored(&self) {
        self.meta_ignored.add(1);
    }

    /// An acknowledgement not sent because its connection had already gone: the broker
    /// redelivers that message, so Kafka sees it twice (at-least-once).
    pub fn stale_ack(&self) {
        self.stale_acks.add(1);
    }

    /// A message not produced because its connection dropped while it waited: the broker
    /// redelivers it on the new connection.
    pub fn stale_message(&self) {
        self.stale_messages.add(1);
    }

    /// The producer's memory budget was full; the message waits (back-pressure).
    pub fn producer_queue_full(&self) {
        self.producer_queue_full.add(1);
    }

    /// The producer was wedged and a new one took its place.
    pub fn producer_replaced(&self) {
        self.producer_replacements.add(1);
    }

    /// A (re)connection to the external broker (client mode).
    pub fn mqtt_connected(&self) {
        self.mqtt_connections.add(1);
    }

    /// The MQTT side waited longer than a keep-alive for room in the forwarder's channel
    /// (a broker that overshoots Receive Maximum while Kafka is behind).
    pub fn mqtt_stall(&self) {
        self.mqtt_stalls.add(1);
    }

    /// rumqttd's in-memory log wrapped before the bridge read it: messages were lost.
    pub fn embedded_overrun(&self) {
        self.embedded_overruns.add(1);
    }

    /// A message the embedded broker had acknowledged that arrived after shutdown began
    /// and the drain ended: lost.
    pub fn dropped_at_shutdown(&self) {
        self.dropped_at_shutdown.add(1);
    }

    /// A confirmation published to its device's confirm topic.
    pub fn confirmation_relayed(&self) {
        self.confirmations_relayed.add(1);
    }

    /// A record on the confirm topic that is not a confirmation for this bridge's
    /// devices: dropped.
    pub fn confirmation_refused(&self, reason: Refusal) {
        self.confirmations_refused.add(reason.code());
    }

    /// A valid confirmation not published: no MQTT connection (client mode) or its
    /// request queue full. The device gets the next one, which says as much and more.
    pub fn confirmation_unsent(&self) {
        self.confirmations_unsent.add(1);
    }

    /// The confirmation relay lost Kafka and started a new consumer.
    pub fn relay_restarted(&self) {
        self.relay_restarts.add(1);
    }

    /// A retained summary published on a device's `completeness` topic.
    pub fn completeness_published(&self) {
        self.completeness_published.add(1);
    }

    /// A summary not published: its device is beyond the table's cap, or the MQTT side
    /// could not take it (then it is tried again after the interval, and counted again).
    pub fn completeness_skipped(&self) {
        self.completeness_skipped.add(1);
    }

    /// A connection the embedded broker let in after checking its credentials.
    pub fn auth_accepted(&self) {
        self.auth_accepted.add(1);
    }

    pub fn auth_refused(&self, refusal: AuthRefusal) {
        self.auth_refused.add(refusal.code());
    }

    /// A frame not sealed by its device's `gateway` (`seal_check`): the total, and a
    /// series per gateway (`none` for a device no gateway speaks for, `unverified` while
    /// the registry could not be read).
    pub fn unauthorized_frame(&self, gateway: &str) {
        self.unauthorized_frames.add(1);
        metrics::counter!("bridge_frames_unauthorized_by_gateway_total", "gateway" => gateway.to_owned())
            .increment(1);
    }

    pub fn unauthorized_frames(&self) -> u64 {
        self.unauthorized_frames.get()
    }

    pub fn set_in_flight(&self, n: usize) {
        self.in_flight.set(n as u64);
    }

    pub fn set_kafka_queue(&self, messages: u64, bytes: u64) {
        self.kafka_queue_messages.set(messages);
        self.kafka_queue_bytes.set(bytes);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            received: self.received.get(),
            produced: self.produced.get(),
            dead_lettered: self.dead_lettered.total(),
            dead_lettered_by_reason: self.dead_lettered.by_code(),
            failed: self.failed.get(),
            latest_published: self.latest_published.get(),
            latest_skipped: self.latest_skipped.get(),
            latest_future_dated: self.latest_future_dated.get(),
            meta_ignored: self.meta_ignored.get(),
            stale_acks: self.stale_acks.get(),
            stale_messages: self.stale_messages.get(),
            producer_queue_full: self.producer_queue_full.get(),
            producer_replacements: self.producer_replacements.get(),
            mqtt_connections: self.mqtt_connections.get(),
            mqtt_stalls: self.mqtt_stalls.get(),
            embedded_overruns: self.embedded_overruns.get(),
            dropped_at_shutdown: self.dropped_at_shutdown.get(),
            confirmations_relayed: self.confirmations_relayed.get(),
            confirmations_refused: self.confirmations_refused.total(),
            confirmations_unsent: self.confirmations_unsent.get(),
            completeness_published: self.completeness_published.get(),
            completeness_skipped: self.completeness_skipped.get(),
            auth_accepted: self.auth_accepted.get(),
            auth_refused_by_reason: self.auth_refused.by_code(),
            unauthorized_frames: self.unauthorized_frames.get(),
            in_flight: self.in_flight.get(),
            kafka_queue_messages: self.kafka_queue_messages.get(),
            kafka_queue_bytes: self.kafka_queue_bytes.get(),
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
    pub latest_future_dated: u64,
    pub meta_ignored: u64,
    pub stale_acks: u64,
    pub stale_messages: u64,
    pub producer_queue_full: u64,
    pub producer_replacements: u64,
    pub mqtt_connections: u64,
    pub mqtt_stalls: u64,
    pub embedded_overruns: u64,
    pub dropped_at_shutdown: u64,
    pub confirmations_relayed: u64,
    pub confirmations_refused: u64,
    pub confirmations_unsent: u64,
    pub completeness_published: u64,
    pub completeness_skipped: u64,
    pub auth_accepted: u64,
    pub auth_refused_by_reason: Vec<(&'static str, u64)>,
    pub unauthorized_frames: u64,
    pub in_flight: u64,
    pub kafka_queue_messages: u64,
    pub kafka_queue_bytes: u64,
}

impl StatsSnapshot {
    pub fn auth_refused_for(&self, refusal: AuthRefusal) -> u64 {
        self.auth_refused_by_reason
            .iter()
            .find(|(code, _)| *code == refusal.code())
            .map_or(0, |(_, n)| *n)
    }

    pub fn dead_lettered_for(&self, reason: Reason) -> u64 {
        self.dead_lettered_by_reason
            .iter()
            .find(|(code, _)| *code == reason.code())
            .map_or(0, |(_, n)| *n)
    }
}
