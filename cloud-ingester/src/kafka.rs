//! The Kafka side of the ingester: consumer and producer settings under which offsets
//! follow commits, and the consumer's context, which turns librdkafka's statistics into
//! consumer lag and the Kafka health flag and keeps the rebalances for the pipeline.

use std::sync::{Arc, Mutex, PoisonError};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, TopicPartitionList};
use tracing::{info, warn};

use crate::config::KafkaConfig;
use crate::health::Health;
use crate::stats::IngestStats;

/// How often librdkafka reports statistics: the refresh of the lag gauges and of the
/// Kafka health flag.
const STATISTICS_INTERVAL_MS: &str = "5000";

/// Partitions this instance was given or lost, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebalanceEvent {
    /// "assigned" or "revoked".
    pub kind: &'static str,
    pub partitions: Vec<i32>,
}

/// The consumer's context: statistics, errors and rebalances.
pub struct IngestContext {
    stats: Arc<IngestStats>,
    health: Arc<Health>,
    rebalances: Mutex<Vec<RebalanceEvent>>,
}

impl IngestContext {
    pub fn new(stats: Arc<IngestStats>, health: Arc<Health>) -> Self {
        Self {
            stats,
            health,
            rebalances: Mutex::new(Vec::new()),
        }
    }

    /// The rebalances since the last call, oldest first.
    pub fn take_rebalances(&self) -> Vec<RebalanceEvent> {
        std::mem::take(
            &mut *self
                .rebalances
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    fn record(&self, kind: &'static str, partitions: &TopicPartitionList) {
        let partitions: Vec<i32> = partitions
            .elements()
            .iter()
            .map(|p| p.partition())
            .collect();
        info!(?partitions, "partitions {kind}");
        self.rebalances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(RebalanceEvent { kind, partitions });
    }

    fn set_kafka(&self, up: bool) {
        let was_up = self.health.set_kafka(up);
        if up && !was_up {
            info!("Kafka connected");
        } else if was_up && !up {
            warn!("Kafka unreachable; consuming resumes when it returns");
        }
    }
}

impl ClientContext for IngestContext {
    fn stats(&self, statistics: Statistics) {
        for topic in statistics.topics.values() {
            for (&partition, state) in &topic.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a lag of -1 means
                // not known yet (or not consumed by this instance).
                if partition != -1 && state.consumer_lag != -1 {
                    self.stats.set_consumer_lag(partition, state.consumer_lag);
                }
            }
        }
        self.set_kafka(statistics.brokers.values().any(|b| b.state == "UP"));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!("librdkafka: {error}: {reason}");
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.set_kafka(false);
        }
    }
}

impl ConsumerContext for IngestContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            // Their lag is the new owner's to report now; librdkafka stops reporting it
            // here, so it would stay frozen at its last value.
            for partition in partitions.elements() {
                self.stats.set_consumer_lag(partition.partition(), 0);
            }
            self.record("revoked", partitions);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => self.record("assigned", partitions),
            Rebalance::Error(e) => warn!("Kafka rebalance failed: {e}"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// The settings both clients share.
fn client_config(config: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", client_id);
    client
}

/// The passthrough properties (TLS, SASL, tuning), last so they win over the defaults
/// here; the configuration check refuses the ones the guarantees depend on.
fn with_properties<'a>(client: &'a mut ClientConfig, config: &KafkaConfig) -> &'a ClientConfig {
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    client
}

/// The consumer of `config.topic` in `config.group`. Offsets are stored by the pipeline
/// after the PostgreSQL commit, and committed from there every second and on rebalance
/// or close.
pub fn consumer(
    config: &KafkaConfig,
    client_id: &str,
    context: IngestContext,
) -> Result<StreamConsumer<IngestContext>, KafkaError> {
    let mut client = client_config(config, client_id);
    client
        .set("group.id", &config.group)
        // A crashed instance's partitions move to the others once its session expires:
        // 10 s (Kafka's minimum is 6 s) rather than librdkafka's 45 s. Heartbeats come
        // from librdkafka's own thread, so a busy pipeline does not miss them.
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "3000")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        // A new group starts from the oldest record: nothing is skipped.
        .set("auto.offset.reset", "earliest")
        // The only buffer besides the batch in hand (see pipeline.rs).
        .set("queued.max.messages.kbytes", "16384")
        // How long a fetch may wait for data: librdkafka's 500 ms default is latency the
        // batch age (50 ms) does not need; brokers that wait it out (Tansu does) would
        // add it to every reading's way.
        .set("fetch.wait.max.ms", "50")
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
    with_properties(&mut client, config).create_with_context(context)
}

/// The producer of dead letters and metrics records: idempotent, and it never gives up
/// on a record, since a batch waits for its dead letters to be confirmed.
pub fn producer(config: &KafkaConfig, client_id: &str) -> Result<FutureProducer, KafkaError> {
    let mut client = client_config(config, client_id);
    client
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "0");
    with_properties(&mut client, config).create()
}
