//! The confirmation relay: confirmations from Kafka (`kafka.confirm_topic`) to each
//! device's `{prefix}/{site}/{line}/{device}/confirm` MQTT topic.
//!
//! It exists because the devices cannot read Kafka: the ingester writes what PostgreSQL
//! holds of a device (`protocol::Confirmation`) to Kafka, and the edge agent deletes
//! frames from its disk queue only once such a confirmation covers them. The bridge is
//! the one service that talks to both sides, so it carries them back.
//!
//! Every bridge relays every confirmation to its own broker: partitions are assigned,
//! not shared through a consumer group, starting at the end, without commits. With
//! several embedded-mode bridges a device is connected to only one of them; the others'
//! publishes reach nobody. A confirmation is state, not an event, so one lost (the
//! bridge down, a QoS 0 publish dropped) or repeated costs nothing: the next says the
//! same and more.
//!
//! A record is relayed only when its `mqtt-topic` header is a confirm topic under this
//! bridge's prefix and its value is a confirmation of that topic's device; anything
//! else is dropped and counted (`bridge_confirmations_refused_total{reason}`), so a
//! faulty producer cannot make the bridge publish elsewhere in the topic tree.
//!
//! When the consumer loses its connection to Kafka, the relay drops it and starts a new
//! one, which waits for Kafka and the topic again (`service::kafka_connection` says
//! why); confirmations missed meanwhile are repeated by the next ones.
//!
//! Each relayed confirmation also updates the device's retained, human-readable summary
//! on `{prefix}/{site}/{line}/{device}/completeness` (`crate::completeness`: newest boot
//! only, at most one publish per device per second, the newest state always sent in
//! the end), for people browsing the broker; counted in
//! `bridge_completeness_published_total` and `bridge_completeness_skipped_total`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::completeness::{self, Offer, Summary, Table};
use crate::config::KafkaConfig;
use crate::kafka::{relay_consumer_config, QuietContext};
use crate::stats::{Refusal, Stats};
use protocol::kafka::headers;
use protocol::{Confirmation, Topic, TopicKind};

/// Longest wait between looks for a missing confirm topic (or an unreachable Kafka).
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// At most one warning per this long about refused records or consumer errors; the
/// rest go to debug, so a faulty producer cannot flood the log.
const WARN_EVERY: Duration = Duration::from_secs(60);

type RelayConsumer = StreamConsumer<QuietContext>;

/// A refused record: why, and the detail for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reason: Refusal,
    pub detail: String,
}

fn refused(reason: Refusal, detail: String) -> Refused {
    Refused { reason, detail }
}

/// Checks one record and returns the MQTT topic to publish its value on, unchanged,
/// with the confirmation it holds. Free of I/O so every rule is unit-tested.
pub fn check<'a>(
    prefix: &str,
    mqtt_topic: Option<&'a [u8]>,
    value: Option<&[u8]>,
) -> Result<(Topic<'a>, Confirmation), Refused> {
    let Some(raw) = mqtt_topic else {
        return Err(refused(
            Refusal::Header,
            format!("no {} header", headers::MQTT_TOPIC),
        ));
    };
    let text = std::str::from_utf8(raw).map_err(|_| {
        refused(
            Refusal::Header,
            format!("{} header is not UTF-8", headers::MQTT_TOPIC),
        )
    })?;
    let topic =
        Topic::parse(text).map_err(|e| refused(Refusal::Topic, format!("{text:?}: {e}")))?;
    if topic.kind != TopicKind::Confirm {
        return Err(refused(
            Refusal::Kind,
            format!("{text:?} is a {} topic, not a confirm topic", topic.kind),
        ));
    }
    if topic.prefix != prefix {
        return Err(refused(
            Refusal::Prefix,
            format!("{text:?} is not under this bridge's prefix {prefix:?}"),
        ));
    }
    let confirmation = Confirmation::decode(value.unwrap_or_default())
        .map_err(|e| refused(Refusal::Decode, format!("for {text:?}: {e}")))?;
    if confirmation.device.as_str() != topic.device {
        return Err(refused(
            Refusal::DeviceMismatch,
            format!(
                "confirmation of device {:?} addressed to {text:?}",
                confirmation.device.as_str()
            ),
        ));
    }
    Ok((topic, confirmation))
}

/// Where relayed confirmations are published: the same MQTT side the bridge takes the
/// devices' frames from.
pub enum ConfirmSink {
    /// The bridge's client connection to the external broker, while there is one.
    Client(watch::Receiver<Option<AsyncClient>>),
    /// An in-process link into the embedded broker, with its notifications' receiver
    /// (held so the router has somewhere to put them).
    Embedded {
        link: rumqttd::local::LinkTx,
        _notifications: rumqttd::local::LinkRx,
    },
}

impl ConfirmSink {
    /// Publishes at QoS 0. Confirmations are not retained: one is only news to a device
    /// connected now (a retained one would be stale when it reconnects, and the next
    /// commit sends a fresh one). Completeness summaries are, for whoever looks later.
    /// False if it could not be handed over.
    async fn publish(&mut self, topic: &str, payload: Bytes, retain: bool) -> bool {
        match self {
            ConfirmSink::Client(current) => {
                let client = current.borrow().clone();
                // try_: never wait on the request queue the acknowledgements share.
                client.is_some_and(|client| {
                    client
                        .try_publish(topic, QoS::AtMostOnce, retain, payload)
                        .is_ok()
                })
            }
            ConfirmSink::Embedded { link, .. } => {
                let publish = rumqttd::protocol::Publish::new(
                    Bytes::copy_from_slice(topic.as_bytes()),
                    payload,
                    retain,
                );
                // Despite `async`, this blocks briefly if rumqttd's router queue (1000
                // events) is full, as the `latest` publisher does.
                link.send(rumqttd::protocol::Packet::Publish(publish, None))
                    .await
                    .is_ok()
            }
        }
    }
}

/// Warn about the first occurrence, then at most once per `WARN_EVERY`.
struct WarnLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    fn new() -> Self {
        Self {
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last warning)` when this one may be a warning.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < WARN_EVERY)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

pub struct ConfirmRelay {
    pub kafka: KafkaConfig,
    /// The bridge's id: names the consumer.
    pub client_id: String,
    pub topic_prefix: String,
    pub sink: ConfirmSink,
    pub stats: Arc<Stats>,
}

/// Why one consumer's relaying ended.
enum Ended {
    Stopped,
    /// The connection to Kafka was lost: start again with a new consumer.
    ConnectionLost,
}

/// The relay's state that outlives a consumer.
struct Relaying {
    refusals: WarnLimiter,
    errors: WarnLimiter,
    summaries: Table,
}

impl ConfirmRelay {
    /// Waits for the topic, then relays until `stop`, with a new consumer after each
    /// lost connection.
    pub async fn run(mut self, stop: CancellationToken) {
        let topic = self.kafka.confirm_topic.clone();
        let mut relaying = Relaying {
            refusals: WarnLimiter::new(),
            errors: WarnLimiter::new(),
            summaries: Table::new(completeness::INTERVAL, completeness::MAX_DEVICES),
        };
        let mut first = true;
        loop {
            let consumer: RelayConsumer = match relay_consumer_config(&self.kafka, &self.client_id)
                .create_with_context(QuietContext)
            {
                Ok(consumer) => consumer,
                Err(e) => {
                    error!("cannot create the confirmation relay's Kafka consumer (check kafka.properties): {e}; confirmations are not relayed");
                    return;
                }
            };
            let Some(consumer) = assign_from_end(consumer, &topic, &stop).await else {
                break;
            };
            if first {
                info!(
                    topic,
                    prefix = self.topic_prefix,
                    "relaying confirmations from Kafka to the devices' confirm topics"
                );
                first = false;
            } else {
                info!(
                    topic,
                    "relaying confirmations again, with a new Kafka consumer"
                );
            }
            let ended = self.relay(&consumer, &topic, &mut relaying, &stop).await;
            let _ = service::kafka_connection::retire(Box::new(consumer)).await;
            match ended {
                Ended::Stopped => break,
                Ended::ConnectionLost => {
                    warn!(
                        topic,
                        "the confirmation relay lost Kafka; starting a new consumer"
                    );
                    self.stats.relay_restarted();
                }
            }
        }
        // What waits for its interval goes now: nothing else would send it.
        for (topic, summary) in relaying.summaries.take_all() {
            self.publish_summary(&mut relaying.summaries, &topic, &summary)
                .await;
        }
    }

    /// Relays what `consumer` reads until `stop` or until it loses Kafka.
    async fn relay(
        &mut self,
        consumer: &RelayConsumer,
        topic: &str,
        relaying: &mut Relaying,
        stop: &CancellationToken,
    ) -> Ended {
        let Relaying {
            refusals,
            errors,
            summaries,
        } = relaying;
        loop {
            // The trailing summaries' timer; a placeholder when nothing waits (the
            // branch is off then).
            let next_due = summaries.next_due();
            let due_at = tokio::time::Instant::from_std(
                next_due.unwrap_or_else(|| Instant::now() + MAX_BACKOFF),
            );
            let received = tokio::select! {
                _ = stop.cancelled() => return Ended::Stopped,
                _ = tokio::time::sleep_until(due_at), if next_due.is_some() => {
                    for (topic, summary) in summaries.take_due(Instant::now()) {
                        self.publish_summary(summaries, &topic, &summary).await;
                    }
                    continue;
                }
                received = consumer.recv() => received,
            };
            let (relayed, payload) = match received {
                Ok(message) => {
                    let checked = check(
                        &self.topic_prefix,
                        message.headers().and_then(|headers| {
                            headers
                                .iter()
                                .find(|h| h.key == headers::MQTT_TOPIC)
                                .and_then(|h| h.value)
                        }),
                        message.payload(),
                    );
                    match checked {
                        // Copied out so the message is released before the publish waits.
                        Ok((mqtt_topic, confirmation)) => (
                            Relayed {
                                confirm_topic: mqtt_topic.to_string(),
                                completeness_topic: mqtt_topic
                                    .with_kind(TopicKind::Completeness)
                                    .to_string(),
                                confirmation,
                            },
                            Bytes::copy_from_slice(message.payload().unwrap_or_default()),
                        ),
                        Err(refused) => {
                            self.stats.confirmation_refused(refused.reason);
                            let (partition, offset) = (message.partition(), message.offset());
                            match refusals.allow(Instant::now()) {
                                Some(suppressed) => warn!(
                                    reason = refused.reason.code(),
                                    partition,
                                    offset,
                                    suppressed,
                                    "confirmation not relayed: {}",
                                    refused.detail
                                ),
                                None => debug!(
                                    reason = refused.reason.code(),
                                    partition,
                                    offset,
                                    "confirmation not relayed: {}",
                                    refused.detail
                                ),
                            }
                            continue;
                        }
                    }
                }
                Err(e) => {
                    if service::kafka_connection::lost(&e) {
                        return Ended::ConnectionLost;
                    }
                    match errors.allow(Instant::now()) {
                        Some(suppressed) => warn!(
                            suppressed,
                            "reading confirmations from Kafka topic {topic}: {e}"
                        ),
                        None => debug!("reading confirmations from Kafka topic {topic}: {e}"),
                    }
                    // librdkafka retries on its own; pause so a persistent error
                    // cannot spin this loop.
                    tokio::select! {
                        _ = stop.cancelled() => return Ended::Stopped,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                    continue;
                }
            };
            if self
                .sink
                .publish(&relayed.confirm_topic, payload, false)
                .await
            {
                self.stats.confirmation_relayed();
            } else {
                self.stats.confirmation_unsent();
            }
            let topic = relayed.completeness_topic;
            match summaries.offer(&topic, &relayed.confirmation, Instant::now()) {
                Offer::Now(summary) => {
                    self.publish_summary(summaries, &topic, &summary).await;
                }
                Offer::TableFull => self.stats.completeness_skipped(),
                Offer::Later | Offer::Old | Offer::Unchanged => {}
            }
        }
    }
}

/// A checked record's destinations and content.
struct Relayed {
    confirm_topic: String,
    completeness_topic: String,
    confirmation: Confirmation,
}

impl ConfirmRelay {
    /// Publishes one retained summary; if the MQTT side cannot take it, the table
    /// tries it again after the interval.
    async fn publish_summary(&mut self, summaries: &mut Table, topic: &str, summary: &Summary) {
        let sent = Instant::now();
        // Never an empty payload: on a retained topic that would delete the summary.
        let published = match serde_json::to_vec(summary) {
            Ok(json) => self.sink.publish(topic, Bytes::from(json), true).await,
            Err(e) => {
                error!("cannot render the completeness summary for {topic}: {e}");
                return;
            }
        };
        if published {
            self.stats.completeness_published();
        } else {
            self.stats.completeness_skipped();
            summaries.unsent(topic, sent);
        }
    }
}

/// Waits until `topic` exists (Kafka reachable, partitions known), then assigns all
/// its partitions at their end. Logs the first miss, retries with a bounded back-off;
/// `None` if `stop` came first.
async fn assign_from_end(
    mut consumer: RelayConsumer,
    topic: &str,
    stop: &CancellationToken,
) -> Option<RelayConsumer> {
    let mut backoff = Duration::from_millis(250);
    let mut logged = false;
    loop {
        let name = topic.to_owned();
        // fetch_metadata blocks; the consumer moves to a blocking thread and back.
        let looked = tokio::task::spawn_blocking(move || {
            let partitions = consumer
                .fetch_metadata(Some(&name), Duration::from_secs(5))
                .map(|metadata| {
                    metadata
                        .topics()
                        .iter()
                        .find(|t| t.name() == name && t.error().is_none())
                        .map_or(0, |t| t.partitions().len())
                });
            (consumer, partitions)
        })
        .await;
        let partitions = match looked {
            Ok((returned, partitions)) => {
                consumer = returned;
                partitions
            }
            Err(e) => {
                error!("the confirmation relay's metadata lookup failed: {e}; confirmations are not relayed");
                return None;
            }
        };
        let problem = match partitions {
            Ok(0) => format!("Kafka topic {topic} does not exist yet (the ingester's)"),
            Ok(count) => {
                let mut assignment = TopicPartitionList::with_capacity(count);
                for partition in 0..count as i32 {
                    if let Err(e) = assignment.add_partition_offset(topic, partition, Offset::End) {
                        error!("confirmation relay: partition {partition} of {topic}: {e}");
                        return None;
                    }
                }
                match consumer.assign(&assignment) {
                    Ok(()) => {
                        if logged {
                            info!(topic, "Kafka topic for confirmations present");
                        }
                        return Some(consumer);
                    }
                    Err(e) => format!("cannot assign {topic}'s partitions: {e}"),
                }
            }
            Err(e) => format!("cannot read Kafka's metadata: {e}"),
        };
        if logged {
            debug!("confirmation relay waits: {problem}");
        } else {
            warn!(
                "confirmation relay waits: {problem}; looking again every {} at most",
                humantime::format_duration(MAX_BACKOFF)
            );
            logged = true;
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{BootId, DeviceId};

    fn confirmation(device: &str) -> Vec<u8> {
        let confirmation = Confirmation::new(DeviceId::new(device).unwrap(), BootId([7; 8]));
        let mut buf = [0u8; protocol::MAX_CONFIRM_LEN];
        confirmation.encode(&mut buf).unwrap().to_vec()
    }

    /// The `mqtt-topic` header, the value, and the refusal expected.
    type Case<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, Refusal);

    fn reason(topic: Option<&[u8]>, value: Option<&[u8]>) -> Option<Refusal> {
        check("plant", topic, value).err().map(|r| r.reason)
    }

    #[test]
    fn a_confirmation_of_the_topics_device_is_relayed_to_that_topic() {
        let value = confirmation("dev-a");
        let topic = b"plant/s1/l1/dev-a/confirm".as_slice();
        let (topic, confirmation) = check("plant", Some(topic), Some(&value)).unwrap();
        assert_eq!(topic.to_string(), "plant/s1/l1/dev-a/confirm");
        assert_eq!(confirmation.device.as_str(), "dev-a");
    }

    #[test]
    fn every_other_record_is_refused_with_its_reason() {
        let value = confirmation("dev-a");
        let value = Some(value.as_slice());
        let cases: [Case; 9] = [
            (None, value, Refusal::Header),
            (Some(b"plant/s1/l1/\xff/confirm"), value, Refusal::Header),
            (Some(b"plant/s1/dev-a/confirm"), value, Refusal::Topic),
            (Some(b"plant/s1/l1/dev-a/nonsense"), value, Refusal::Topic),
            (Some(b"plant/s1/l+/dev-a/confirm"), value, Refusal::Topic),
            (Some(b"plant/s1/l1/dev-a/telemetry"), value, Refusal::Kind),
            (Some(b"other/s1/l1/dev-a/confirm"), value, Refusal::Prefix),
            (Some(b"plant/s1/l1/dev-a/confirm"), None, Refusal::Decode),
            (
                Some(b"plant/s1/l1/dev-b/confirm"),
                value,
                Refusal::DeviceMismatch,
            ),
        ];
        for (topic, value, expected) in cases {
            assert_eq!(reason(topic, value), Some(expected), "{topic:?}");
        }
        let garbage = Some(b"\x01garbage".as_slice());
        assert_eq!(
            reason(Some(b"plant/s1/l1/dev-a/confirm"), garbage),
            Some(Refusal::Decode)
        );
    }

    #[test]
    fn warnings_are_limited_to_one_per_interval_counting_the_rest() {
        let mut limiter = WarnLimiter::new();
        let start = Instant::now();
        assert_eq!(limiter.allow(start), Some(0));
        assert_eq!(limiter.allow(start + Duration::from_secs(1)), None);
        assert_eq!(limiter.allow(start + Duration::from_secs(2)), None);
        assert_eq!(limiter.allow(start + WARN_EVERY), Some(2));
    }
}
