//! The Kafka side of the ingester: consumer and producer settings, and the consumer's
//! context, which turns librdkafka's statistics into each partition's high watermark
//! and the Kafka readiness flag.
//!
//! The consumer never joins a group: the pipeline assigns it the partitions this
//! instance leases in PostgreSQL (`ownership`), from the offsets stored there. The group
//! id is kept for the offsets it commits as well, so Kafka UI and
//! `kafka-consumer-groups` still show progress, but nothing is read back from Kafka.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::config::KafkaConfig;
use crate::readiness::IngesterReadiness;

/// How often librdkafka reports statistics: the refresh of the lag gauges and of the
/// Kafka readiness flag.
const STATISTICS_INTERVAL_MS: &str = "5000";

/// The consumer's context: statistics and errors.
pub struct IngestContext {
    readiness: Arc<IngesterReadiness>,
    high_watermarks: Mutex<BTreeMap<i32, i64>>,
    /// A broker was up in some statistics of this consumer, or it read a record.
    has_connected: AtomicBool,
}

impl IngestContext {
    pub fn new(readiness: Arc<IngesterReadiness>) -> Self {
        Self {
            readiness,
            high_watermarks: Mutex::new(BTreeMap::new()),
            has_connected: AtomicBool::new(false),
        }
    }

    /// Whether this consumer was ever connected: only such a consumer can have lost its
    /// connection (a new one that has not reached Kafka yet is left to keep trying).
    pub fn has_connected(&self) -> bool {
        self.has_connected.load(Ordering::Relaxed)
    }

    /// The consumer read a record: it is connected, whether or not statistics said so.
    pub fn read_a_record(&self) {
        self.has_connected.store(true, Ordering::Relaxed);
    }

    /// The end of each assigned partition's log as of the last statistics (every 5 s).
    pub fn high_watermarks(&self) -> BTreeMap<i32, i64> {
        self.high_watermarks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_kafka(&self, up: bool) {
        let was_up = self.readiness.set_kafka(up);
        if up && !was_up {
            info!("Kafka connected");
        } else if was_up && !up {
            warn!("Kafka unreachable; consuming resumes when it returns");
        }
    }
}

impl ClientContext for IngestContext {
    fn stats(&self, statistics: Statistics) {
        let mut marks = BTreeMap::new();
        for topic in statistics.topics.values() {
            for (&partition, state) in &topic.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a watermark of -1
                // means not known yet.
                if partition != -1 && state.hi_offset >= 0 {
                    marks.insert(partition, state.hi_offset);
                }
            }
        }
        *self
            .high_watermarks
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = marks;
        let up = statistics.brokers.values().any(|b| b.state == "UP");
        if up {
            self.has_connected.store(true, Ordering::Relaxed);
        }
        self.set_kafka(up);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!("librdkafka: {error}: {reason}");
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.set_kafka(false);
        }
    }
}

impl ConsumerContext for IngestContext {}

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

/// The consumer of `config.topic`, assigned its partitions by the pipeline. Offsets are
/// stored by the pipeline after the PostgreSQL commit and committed to `config.group`
/// every second and at close, for the tools that show a group's progress.
pub fn consumer(
    config: &KafkaConfig,
    client_id: &str,
    context: IngestContext,
) -> Result<StreamConsumer<IngestContext>, KafkaError> {
    let mut client = client_config(config, client_id);
    client
        .set("group.id", &config.group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        // An offset the log no longer has (it was reset, or retention passed it) reads
        // from the oldest record: nothing is skipped, a replay is harmless.
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

/// Where `partition` of `topic` really ends: one past its last record's offset. A broker's
/// high watermark says so, except Tansu's, which is its last batch's first offset + 1; so
/// the last batch is read, from `high - 1`, to its end (until `quiet` passes without a
/// record, or `timeout`). A probe of its own, outside any group.
pub fn log_end(
    config: &KafkaConfig,
    client_id: &str,
    topic: &str,
    partition: i32,
    high: i64,
    quiet: Duration,
    timeout: Duration,
) -> Result<i64, KafkaError> {
    if high <= 0 {
        return Ok(0);
    }
    let mut client = client_config(config, client_id);
    client
        .set("group.id", format!("{}-log-end", config.group))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let probe: BaseConsumer = with_properties(&mut client, config).create()?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(high - 1))?;
    probe.assign(&assignment)?;
    let deadline = std::time::Instant::now() + timeout;
    let mut end = high;
    // The record at `high - 1` comes first (the connection may take a while); then the
    // rest of its batch, until `quiet`.
    let mut last_record: Option<std::time::Instant> = None;
    while std::time::Instant::now() < deadline && last_record.is_none_or(|at| at.elapsed() < quiet)
    {
        if let Some(message) = probe.poll(Duration::from_millis(100)) {
            end = end.max(message?.offset() + 1);
            last_record = Some(std::time::Instant::now());
        }
    }
    Ok(end)
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

/// The producer of confirmations (`confirmations`): they are fire-and-forget, so this
/// one gives up on a record after a few seconds and holds a bounded queue, where the
/// other never gives up. Kept apart so confirmations never queue in front of dead
/// letters, and a Kafka outage never holds the stop up (dropping it purges its queue).
pub fn confirm_producer(
    config: &KafkaConfig,
    client_id: &str,
) -> Result<FutureProducer, KafkaError> {
    let mut client = client_config(config, &format!("{client_id}-confirm"));
    client
        .set("enable.idempotence", "false")
        .set("acks", "1")
        .set("message.timeout.ms", "5000")
        .set("queue.buffering.max.messages", "10000")
        .set("linger.ms", "5");
    with_properties(&mut client, config).create()
}
