//! Records set aside: what the ingester keeps of a record it cannot store, how it sends
//! it to the dead-letter topic, and how it counts bursts of them.
//!
//! A dead letter is confirmed by Kafka before its batch commits, so a record is either
//! stored, or dead-lettered, or replayed; never dropped. One that Kafka refuses whole
//! (too large once its headers are added) goes again cut to
//! [`service::dead_letter::TRUNCATED_BYTES`] with its original length, so one record never
//! stops the ingester.

use std::time::Duration;

use contracts::dead_letter::Reason;
use protocol::kafka::headers;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tokio::time::Instant;
use tracing::warn;

use crate::stats::IngestStats;
use crate::SERVICE;
use contracts::dead_letter::Rejection;

/// At least this many dead letters within [`BURST_WINDOW`] is a burst worth a
/// `system_events` row (one per window, so a flood does not flood the log too).
pub const BURST: u64 = 100;
pub const BURST_WINDOW: Duration = Duration::from_secs(60);

/// A record set aside, with what it came with.
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub rejection: Rejection,
}

impl DeadLetter {
    /// Set aside for a device or channel the catalog does not know (yet).
    pub fn unknown_to_catalog(&self) -> bool {
        matches!(
            self.rejection.reason,
            Reason::UnknownDevice | Reason::UnknownChannel
        )
    }

    /// The `mqtt-topic` header it came with (where the bridge received it).
    pub fn mqtt_topic(&self) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(key, _)| key == headers::MQTT_TOPIC)
            .map(|(_, value)| value.as_slice())
    }
}

/// Dead letters counted over a window, to report bursts once per window.
pub struct BurstWindow {
    since: Instant,
    count: u64,
    reported: bool,
}

impl Default for BurstWindow {
    fn default() -> Self {
        Self {
            since: Instant::now(),
            count: 0,
            reported: false,
        }
    }
}

impl BurstWindow {
    /// Counts `n` more; returns the window's count the first time it reaches a burst.
    pub fn add(&mut self, n: u64) -> Option<u64> {
        if self.since.elapsed() >= BURST_WINDOW {
            *self = Self::default();
        }
        self.count += n;
        if self.reported || self.count < BURST {
            return None;
        }
        self.reported = true;
        Some(self.count)
    }
}

/// Produces `letters` to `topic` and waits for Kafka to confirm every one, counting
/// each by its reason.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    letters: &[DeadLetter],
    stats: &IngestStats,
) -> Result<(), KafkaError> {
    let mut deliveries = Vec::with_capacity(letters.len());
    for letter in letters {
        deliveries.push(send(producer, topic, letter, false).await);
    }
    for (letter, delivery) in letters.iter().zip(deliveries) {
        let settled = match delivery {
            Ok(delivery) => settle(delivery).await,
            Err(e) => Err(e),
        };
        let settled = match settled {
            Err(e) if service::dead_letter::is_about_the_record(&e) => {
                warn!(
                    length = letter.payload.len(),
                    "Kafka refused a dead letter whole ({e}); sending it cut short"
                );
                match send(producer, topic, letter, true).await {
                    Ok(delivery) => settle(delivery).await,
                    Err(e) => Err(e),
                }
            }
            other => other,
        };
        settled?;
        stats.dead_lettered(letter.rejection.reason);
    }
    Ok(())
}

/// Queues one dead letter (waiting while the producer's queue is full): the original
/// key, payload and headers plus the reason, or, `cut` short, the payload's first bytes
/// with its original length and without the original headers.
async fn send(
    producer: &FutureProducer,
    topic: &str,
    letter: &DeadLetter,
    cut: bool,
) -> Result<DeliveryFuture, KafkaError> {
    let mut record_headers = OwnedHeaders::new_with_capacity(letter.headers.len() + 4);
    let original_length = letter.payload.len().to_string();
    let payload = if cut {
        record_headers = record_headers.insert(Header {
            key: headers::DLQ_ORIGINAL_LENGTH,
            value: Some(&original_length),
        });
        let kept = letter
            .payload
            .len()
            .min(service::dead_letter::TRUNCATED_BYTES);
        &letter.payload[..kept]
    } else {
        for (key, value) in &letter.headers {
            record_headers = record_headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        &letter.payload[..]
    };
    let record_headers = record_headers
        .insert(Header {
            key: headers::DLQ_REASON,
            value: Some(letter.rejection.reason.code()),
        })
        .insert(Header {
            key: headers::DLQ_DETAIL,
            value: Some(&letter.rejection.detail),
        })
        .insert(Header {
            key: headers::DLQ_SOURCE,
            value: Some(SERVICE),
        });
    let mut record = FutureRecord::to(topic)
        .payload(payload)
        .headers(record_headers);
    if let Some(key) = &letter.key {
        record = record.key(key);
    }
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((e, back)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Kafka's verdict on one produced record.
async fn settle(delivery: DeliveryFuture) -> Result<(), KafkaError> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e),
        Err(_) => Err(KafkaError::Canceled),
    }
}
