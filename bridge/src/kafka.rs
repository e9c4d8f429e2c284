//! The Kafka side: producer settings under which "delivered" means durable, the
//! confirmation relay's consumer settings, the topic check at start, and the layout of
//! the records.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::KafkaConfig;
use crate::readiness::BridgeReadiness;
use crate::stats::Stats;
use contracts::dead_letter::Rejection;
use protocol::kafka::headers;

pub type Producer = FutureProducer<KafkaContext>;

/// Receives librdkafka's statistics (queue depth, broker states) and errors.
pub struct KafkaContext {
    stats: Arc<Stats>,
    readiness: Arc<BridgeReadiness>,
    brokers: String,
}

impl ClientContext for KafkaContext {
    fn stats(&self, statistics: Statistics) {
        self.stats
            .set_kafka_queue(statistics.msg_cnt, statistics.msg_size);
        let up = statistics.brokers.values().any(|b| b.state == "UP");
        let was_up = self.readiness.set_kafka(up);
        if up && !was_up {
            info!(brokers = %self.brokers, "Kafka connected");
        } else if was_up && !up {
            warn!(brokers = %self.brokers, "Kafka unreachable; holding messages until it returns");
        }
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_librdkafka(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_librdkafka_error(error, reason);
    }
}

/// Broker-down errors repeat on every reconnect attempt; the producer's state change is
/// logged once by `KafkaContext::stats` instead.
fn log_librdkafka_error(error: KafkaError, reason: &str) {
    if matches!(
        error.rdkafka_error_code(),
        Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown)
            | Some(rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure)
    ) {
        tracing::debug!("librdkafka: {error}: {reason}");
    } else {
        warn!("librdkafka: {error}: {reason}");
    }
}

/// librdkafka's own log lines, minus the connection failures it repeats on every retry
/// (FAIL): the bridge reports an unreachable Kafka once per state change instead.
fn log_librdkafka(level: RDKafkaLogLevel, facility: &str, message: &str) {
    use RDKafkaLogLevel::*;
    match level {
        _ if facility == "FAIL" => tracing::debug!(target: "librdkafka", "{facility}: {message}"),
        Emerg | Alert | Critical | Error => {
            tracing::error!(target: "librdkafka", "{facility}: {message}")
        }
        Warning => warn!(target: "librdkafka", "{facility}: {message}"),
        Notice | Info => info!(target: "librdkafka", "{facility}: {message}"),
        Debug => tracing::debug!(target: "librdkafka", "{facility}: {message}"),
    }
}

/// The context of the admin client and the confirmation relay's consumer: only the log
/// filters above (the producer's context alone reports Kafka's state).
pub struct QuietContext;

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_librdkafka(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_librdkafka_error(error, reason);
    }
}

impl ConsumerContext for QuietContext {}

/// librdkafka properties for the bridge's producer. `max_in_flight` bounds the
/// messages queued; `config.memory_budget` bounds their bytes.
pub fn producer_config(
    config: &KafkaConfig,
    client_id: &str,
    max_in_flight: usize,
) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", client_id)
        // Idempotence implies acks=all and retries without duplicates or reordering.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Never give up on a message: a Kafka outage is back-pressure, not loss. The
        // MQTT side stops taking messages while these wait.
        .set("message.timeout.ms", "0")
        .set("compression.type", config.compression.as_librdkafka())
        .set("linger.ms", config.linger.as_millis().to_string())
        .set("batch.size", config.batch_size.as_u64().to_string())
        .set(
            "queue.buffering.max.kbytes",
            (config.memory_budget.as_u64() / 1024).max(1).to_string(),
        )
        .set(
            "queue.buffering.max.messages",
            (max_in_flight * 2 + 1000).to_string(),
        )
        // The partitioner of the Java client, so every producer of a device id agrees
        // on its partition.
        .set("partitioner", "murmur2_random")
        .set("statistics.interval.ms", "1000");
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    client
}

/// librdkafka properties for the confirmation relay's consumer. It reads with
/// `assign()`, never joins its group and never commits: every bridge reads every
/// confirmation from where the topic ends when it starts. librdkafka still wants a
/// group id for `assign()`; one per instance keeps it from meaning anything.
pub fn relay_consumer_config(config: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    // The passthrough properties carry TLS and SASL; producer-only ones among them are
    // ignored by a consumer (librdkafka says so in a log line). Set first, so the
    // relay's own settings below win.
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    client
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", format!("{client_id}-confirm-relay"))
        .set("group.id", format!("{client_id}-confirm-relay"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // A confirmation's wait is a frame's time on the agent's disk: librdkafka's
        // 500 ms default for a fetch to wait for data would be most of it, on a topic
        // that only carries a few records per device and second.
        .set("fetch.wait.max.ms", "20")
        // The relay waits for the topic itself (and says so once).
        .set("allow.auto.create.topics", "false");
    client
}

/// Makes the forwarder's producers: one at start, and a new one whenever the forwarder
/// finds the current one wedged (see `wedge`).
#[derive(Clone)]
pub struct ProducerFactory {
    pub config: KafkaConfig,
    pub client_id: String,
    pub max_in_flight: usize,
    pub stats: Arc<Stats>,
    pub readiness: Arc<BridgeReadiness>,
}

impl ProducerFactory {
    pub fn create(&self) -> Result<Producer, KafkaError> {
        producer_config(&self.config, &self.client_id, self.max_in_flight).create_with_context(
            KafkaContext {
                stats: self.stats.clone(),
                readiness: self.readiness.clone(),
                brokers: self.config.brokers.clone(),
            },
        )
    }
}

/// The producer of the records on the metrics topic: apart from the forwarder's, so a
/// replaced producer does not take the metrics with it, and without idempotence, so it
/// cannot wedge. A record Kafka does not take within librdkafka's default timeout is
/// dropped: the next one carries the totals.
pub fn create_metrics_producer(
    config: &KafkaConfig,
    client_id: &str,
) -> Result<FutureProducer<QuietContext>, KafkaError> {
    let mut client = ClientConfig::new();
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    client
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", format!("{client_id}-metrics"))
        .set("enable.idempotence", "false")
        .set("compression.type", config.compression.as_librdkafka());
    client.create_with_context(QuietContext)
}

#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    #[error("Kafka topic(s) {0} missing and kafka.create_topics is false: create them, or allow the bridge to")]
    Missing(String),
    #[error("cannot create Kafka topic {topic}: {error}")]
    Create { topic: String, error: String },
    #[error("cannot reach Kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// Waits until Kafka answers, then makes sure `topics` exist, creating missing ones when
/// allowed. An unreachable Kafka is logged once per attempt with back-off, not fatal;
/// returns `Ok(false)` if `shutdown` came first.
pub async fn ensure_topics(
    config: &KafkaConfig,
    topics: &[&str],
    shutdown: &CancellationToken,
) -> Result<bool, TopicsError> {
    let mut backoff = Duration::from_millis(500);
    loop {
        match check_topics(config, topics).await {
            Ok(()) => return Ok(true),
            Err(TopicsError::Kafka(e)) => {
                error!(
                    "Kafka at {} unreachable: {e}; retrying in {}",
                    config.brokers,
                    humantime::format_duration(backoff)
                );
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn check_topics(config: &KafkaConfig, topics: &[&str]) -> Result<(), TopicsError> {
    let mut admin_config = ClientConfig::new();
    admin_config.set("bootstrap.servers", &config.brokers);
    for (key, value) in &config.properties {
        admin_config.set(key, value);
    }
    let admin: AdminClient<QuietContext> = admin_config.create_with_context(QuietContext)?;
    // fetch_metadata blocks; the admin client moves to a blocking thread and back.
    let (admin, metadata) = tokio::task::spawn_blocking(move || {
        let metadata = admin.inner().fetch_metadata(None, Duration::from_secs(3));
        (admin, metadata)
    })
    .await
    .map_err(|e| TopicsError::Create {
        topic: String::new(),
        error: e.to_string(),
    })?;
    let metadata = metadata?;
    let missing: Vec<&str> = topics
        .iter()
        .copied()
        .filter(|name| {
            !metadata
                .topics()
                .iter()
                .any(|t| t.name() == *name && t.error().is_none() && !t.partitions().is_empty())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !config.create_topics {
        return Err(TopicsError::Missing(missing.join(", ")));
    }
    let new_topics: Vec<NewTopic> = missing
        .iter()
        .map(|name| {
            let partitions = protocol::kafka::ALL_TOPICS
                .iter()
                .find(|t| t.name == *name)
                .map_or(3, |t| t.partitions);
            NewTopic::new(
                name,
                partitions,
                TopicReplication::Fixed(config.replication_factor),
            )
        })
        .collect();
    let results = admin
        .create_topics(&new_topics, &AdminOptions::new())
        .await?;
    for result in results {
        match result {
            Ok(topic) => info!(topic, "created Kafka topic"),
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(TopicsError::Create {
                    topic,
                    error: code.to_string(),
                })
            }
        }
    }
    Ok(())
}

fn header<'a>(key: &'a str, value: &'a [u8]) -> Header<'a, &'a [u8]> {
    Header {
        key,
        value: Some(value),
    }
}

fn base_headers(content_type: &str, mqtt_topic: &[u8], received_at_ms: u64) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(6)
        .insert(header(headers::CONTENT_TYPE, content_type.as_bytes()))
        .insert(header(headers::MQTT_TOPIC, mqtt_topic))
        .insert(header(
            headers::RECEIVED_AT_MS,
            received_at_ms.to_string().as_bytes(),
        ))
}

/// Headers of a frame on `sensors-data`.
pub fn frame_headers(mqtt_topic: &[u8], received_at_ms: u64) -> OwnedHeaders {
    base_headers(
        protocol::kafka::FRAME_CONTENT_TYPE,
        mqtt_topic,
        received_at_ms,
    )
}

/// Headers of a dead-lettered message: what it came with, and why it was refused. The
/// value is the original bytes, whatever they are, or their first part with
/// `original_length` when Kafka refused them whole.
pub fn dlq_headers(
    mqtt_topic: &[u8],
    received_at_ms: u64,
    rejection: &Rejection,
    original_length: Option<usize>,
) -> OwnedHeaders {
    let dlq = base_headers("application/octet-stream", mqtt_topic, received_at_ms)
        .insert(header(
            headers::DLQ_REASON,
            rejection.reason.code().as_bytes(),
        ))
        .insert(header(headers::DLQ_DETAIL, rejection.detail.as_bytes()))
        .insert(header(headers::DLQ_SOURCE, b"bridge"));
    match original_length {
        Some(length) => dlq.insert(header(
            headers::DLQ_ORIGINAL_LENGTH,
            length.to_string().as_bytes(),
        )),
        None => dlq,
    }
}
