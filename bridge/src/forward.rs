//! The forwarder: takes messages from the MQTT side, checks them, produces them to Kafka
//! and acknowledges each one only after Kafka's delivery report for it.
//!
//! Delivery reports arrive in any order (partitions are independent), but MQTT wants
//! acknowledgements in the order the messages arrived. Each message's produce-and-settle
//! future goes into a `FuturesOrdered`, which yields results in submission order: the
//! ack of message n waits for messages before n, while all of them are in flight at
//! once. The window is `max_in_flight`; when it is full, or the producer's memory budget
//! is, the forwarder stops taking messages (back-pressure) until Kafka confirms more.
//!
//! Kafka errors are sorted by what they are about. An error about one record (too large,
//! malformed) sends that record to the dead-letter topic, truncated if it has to be, so
//! one message never stops the bridge. Any other error but those below (topic gone, not
//! authorized) stops the bridge without acknowledging the message:
//! the broker keeps it, and nothing good is dead-lettered for a broker-side problem.
//!
//! A producer that fails as a whole (its broker forgot it, or it confirms nothing while
//! Kafka is connected) is replaced by `producer_slot`; what it held comes back purged
//! and is offered to the new one, in arrival order, before any new message, so
//! acknowledgements stay in order. Kafka may then hold some of those twice; identity
//! makes that harmless.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use contracts::dead_letter::{Reason, Rejection};
use futures_util::stream::{FuturesOrdered, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::inbound::{Ack, AckOutcome, Inbound};
use crate::kafka::{dlq_headers, frame_headers, Producer, ProducerFactory};
use crate::latest::Latest;
use crate::producer_slot::ProducerSlot;
use crate::readiness::BridgeReadiness;
use crate::seal_check::SealCheck;
use crate::stats::Stats;
use crate::validate::{self, Rejected};

/// How long to wait before offering a message again to a producer whose queue is full
/// (it is also offered again as soon as any delivery report frees room).
const QUEUE_FULL_RETRY: Duration = Duration::from_millis(5);
/// How long to wait before offering acknowledgements again to a full MQTT request queue.
const ACK_RETRY: Duration = Duration::from_millis(2);
/// While draining at shutdown (embedded mode), this long without a message means done.
const DRAIN_IDLE: Duration = Duration::from_millis(200);
/// How often the forwarder looks whether its producer is wedged (or due for a
/// replacement that had to wait).
const PRODUCER_CHECK: Duration = Duration::from_secs(1);
/// Bytes of a payload kept in a dead-letter record Kafka refused at full size.
pub const DLQ_TRUNCATED_BYTES: usize = service::dead_letter::TRUNCATED_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{0}; stopping without acknowledging it (the broker keeps it)")]
    Kafka(String),
    #[error("the MQTT side stopped by itself (see the errors logged before this)")]
    SourceEnded,
}

/// Where a message is going.
enum Destination {
    Data {
        device: String,
    },
    /// `truncated`: the payload is cut to `DLQ_TRUNCATED_BYTES` because Kafka refused it
    /// whole.
    /// `key`: the device the topic names, when it names one.
    DeadLetter {
        rejection: Rejection,
        key: Option<String>,
        truncated: bool,
    },
}

struct Job {
    inbound: Inbound,
    destination: Destination,
}

/// How a message ended, in arrival order.
enum Settled {
    Forwarded {
        ack: Ack,
        latency: Duration,
    },
    DeadLettered {
        ack: Ack,
        reason: Reason,
    },
    /// Purged from a wedged producer: to be offered to its replacement.
    Purged(Job),
    /// Refused because of the producer's state, not the record's: to be offered to a
    /// new producer.
    ProducerFailed {
        job: Job,
        error: String,
    },
    Failed(String),
}

type Settling = Pin<Box<dyn Future<Output = Settled> + Send>>;

pub struct Forwarder {
    producer: ProducerSlot,
    readiness: Arc<BridgeReadiness>,
    data_topic: Arc<str>,
    dlq_topic: Arc<str>,
    topic_prefix: String,
    max_in_flight: usize,
    latest: Option<Latest>,
    stats: Arc<Stats>,
    drain_on_stop: Option<Duration>,
    seals: Option<SealCheck>,
    /// Acknowledgements due, in arrival order, that the MQTT client could not take yet.
    unsent_acks: VecDeque<Ack>,
}

/// What the forwarder needs to know.
pub struct ForwarderSettings {
    pub data_topic: String,
    pub dlq_topic: String,
    pub topic_prefix: String,
    pub max_in_flight: usize,
    /// Keep taking messages for up to this long after `stop` (until none has come for
    /// `DRAIN_IDLE`). For the embedded broker, which has already acknowledged what it
    /// holds: what the forwarder does not take is lost.
    pub drain_on_stop: Option<Duration>,
    /// A producer connected to Kafka that confirms nothing for this long while messages
    /// wait is replaced.
    pub replace_wedged_after: Duration,
    /// With the gateway registry: each frame must be sealed by its device's gateway.
    pub seals: Option<SealCheck>,
}

impl Forwarder {
    /// Makes its first producer from `producers`; `readiness` tells it whether Kafka is
    /// connected.
    pub fn new(
        producers: ProducerFactory,
        readiness: Arc<BridgeReadiness>,
        settings: ForwarderSettings,
        latest: Option<Latest>,
        stats: Arc<Stats>,
    ) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: ProducerSlot::new(producers, settings.replace_wedged_after)?,
            readiness,
            data_topic: settings.data_topic.into(),
            dlq_topic: settings.dlq_topic.into(),
            topic_prefix: settings.topic_prefix,
            max_in_flight: settings.max_in_flight,
            latest,
            stats,
            drain_on_stop: settings.drain_on_stop,
            seals: settings.seals,
            unsent_acks: VecDeque::new(),
        })
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Forwards until `stop` (then drains, in embedded mode). Then takes no more messages
    /// and waits up to `grace` for Kafka to confirm those in flight, acknowledging them
    /// in order. What is still unconfirmed, or still queued on the MQTT side, is not
    /// acknowledged: in client mode the broker keeps it.
    pub async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        stop: CancellationToken,
        grace: Duration,
    ) -> Result<(), ForwardError> {
        let mut settling: FuturesOrdered<Settling> = FuturesOrdered::new();
        // Jobs to offer the producer before any new message, in arrival order: one its
        // full queue refused, or those purged from a wedged producer.
        let mut pending: VecDeque<Job> = VecDeque::new();
        let mut producer_check = tokio::time::interval(PRODUCER_CHECK);
        let latest_period = self
            .latest
            .as_ref()
            .map_or(Duration::from_secs(3600), |l| l.interval());
        let mut latest_tick = tokio::time::interval(latest_period);
        latest_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let far = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let mut draining = false;
        let mut drain_until = far;
        let mut last_message = tokio::time::Instant::now();
        loop {
            self.stats.set_in_flight(settling.len());
            // Unsent acks do not count: they are a few bytes each, and counting them
            // would make the forwarder wait for the MQTT side, which may be waiting for
            // the forwarder (a deadlock this crate once had).
            let window_open = pending.is_empty()
                && !self.producer.retiring()
                && settling.len() < self.max_in_flight;
            tokio::select! {
                biased;
                _ = stop.cancelled(), if !draining => match self.drain_on_stop {
                    Some(drain) => {
                        draining = true;
                        drain_until = tokio::time::Instant::now() + drain;
                        last_message = tokio::time::Instant::now();
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(drain_until), if draining => break,
                _ = tokio::time::sleep_until(last_message + DRAIN_IDLE), if draining && window_open => break,
                Some(settled) = settling.next(), if !settling.is_empty() => {
                    self.settle(settled, &mut pending)?;
                    self.replace_if_wanted(settling.len());
                    self.submit_pending(&mut pending, &mut settling)?;
                }
                _ = tokio::time::sleep(QUEUE_FULL_RETRY), if !pending.is_empty() => {
                    self.submit_pending(&mut pending, &mut settling)?;
                }
                _ = producer_check.tick() => {
                    self.producer.look(settling.len(), self.readiness.kafka());
                    self.replace_if_wanted(settling.len());
                    self.submit_pending(&mut pending, &mut settling)?;
                }
                _ = tokio::time::sleep(ACK_RETRY), if !self.unsent_acks.is_empty() => self.flush_acks(),
                message = inbound.recv(), if window_open => {
                    let Some(message) = message else {
                        return Err(ForwardError::SourceEnded);
                    };
                    last_message = tokio::time::Instant::now();
                    if message.ack.connection_gone() {
                        // Its connection dropped while it waited: the broker redelivers
                        // it on the new one, so producing this copy would only duplicate.
                        self.stats.stale_message();
                    } else {
                        let job = self.prepare(message).await;
                        pending.push_back(job);
                        self.submit_pending(&mut pending, &mut settling)?;
                    }
                }
                _ = latest_tick.tick(), if self.latest.is_some() => {
                    if let Some(latest) = &mut self.latest {
                        latest.flush_due(Instant::now()).await;
                    }
                }
            }
        }

        inbound.close();
        let deadline = tokio::time::Instant::now() + grace;
        while !pending.is_empty() && tokio::time::Instant::now() < deadline {
            self.replace_if_wanted(settling.len());
            self.submit_pending(&mut pending, &mut settling)?;
            if !pending.is_empty() {
                tokio::time::sleep(QUEUE_FULL_RETRY).await;
            }
        }
        while !settling.is_empty() {
            self.stats.set_in_flight(settling.len());
            match tokio::time::timeout_at(deadline, settling.next()).await {
                Ok(Some(settled)) => {
                    self.settle(settled, &mut pending)?;
                    self.replace_if_wanted(settling.len());
                    self.submit_pending(&mut pending, &mut settling)?;
                }
                Ok(None) => break,
                Err(_) => {
                    warn!(
                        unconfirmed = settling.len(),
                        "Kafka did not confirm every message within the shutdown grace; \
                         those stay unacknowledged"
                    );
                    break;
                }
            }
        }
        // The acks of what Kafka did confirm get a moment of their own, even when the
        // grace ran out waiting for the rest.
        let ack_deadline = tokio::time::Instant::now().max(deadline) + Duration::from_secs(1);
        self.flush_acks();
        while !self.unsent_acks.is_empty() && tokio::time::Instant::now() < ack_deadline {
            tokio::time::sleep(ACK_RETRY).await;
            self.flush_acks();
        }
        self.stats.set_in_flight(settling.len());
        Ok(())
    }

    /// Checks the message and feeds the `latest` topic.
    async fn prepare(&mut self, inbound: Inbound) -> Job {
        self.stats.received();
        let mut verdict = validate::check(&self.topic_prefix, &inbound.topic, &inbound.payload);
        if let (Ok(accepted), Some(seals)) = (&verdict, &mut self.seals) {
            if let Err(rejection) = seals.check(&accepted.device, &inbound.payload).await {
                verdict = Err(Rejected {
                    rejection,
                    device: Some(accepted.device.clone()),
                });
            }
        }
        let destination = match verdict {
            Ok(accepted) => {
                if let Some(latest) = &mut self.latest {
                    latest.offer(&accepted, &inbound, Instant::now()).await;
                }
                Destination::Data {
                    device: accepted.device,
                }
            }
            Err(rejected) => Destination::DeadLetter {
                rejection: rejected.rejection,
                key: rejected.device,
                truncated: false,
            },
        };
        Job {
            inbound,
            destination,
        }
    }

    /// Hands the job to the producer. Returns it back when the producer's queue is full.
    fn submit(
        &mut self,
        job: Job,
        settling: &mut FuturesOrdered<Settling>,
    ) -> Result<Option<Job>, ForwardError> {
        match produce(
            self.producer.producer(),
            &self.data_topic,
            &self.dlq_topic,
            &job,
        ) {
            Ok(delivery) => {
                settling.push_back(Box::pin(settle_delivery(
                    self.producer.producer().clone(),
                    self.dlq_topic.clone(),
                    delivery,
                    job,
                    Instant::now(),
                )));
                Ok(None)
            }
            Err(e) if is_queue_full(&e) => {
                self.stats.producer_queue_full();
                Ok(Some(job))
            }
            Err(e) if is_about_the_producer(&e) => {
                self.producer
                    .want_replacement(|| format!("the producer refuses records: {e}"));
                Ok(Some(job))
            }
            // Refused before it left (e.g. larger than message.max.bytes).
            Err(e) => match next_attempt(job, &e) {
                Ok(job) => self.submit(job, settling),
                Err(failure) => Err(ForwardError::Kafka(failure)),
            },
        }
    }

    /// Offers the pending jobs to the producer, in order, until its queue is full; none
    /// while it is to be replaced.
    fn submit_pending(
        &mut self,
        pending: &mut VecDeque<Job>,
        settling: &mut FuturesOrdered<Settling>,
    ) -> Result<(), ForwardError> {
        while !self.producer.replacement_wanted() {
            let Some(job) = pending.pop_front() else {
                break;
            };
            if let Some(refused) = self.submit(job, settling)? {
                pending.push_front(refused);
                break;
            }
        }
        Ok(())
    }

    /// Replaces the producer if that is wanted and allowed now (see `ProducerSlot`).
    fn replace_if_wanted(&mut self, in_flight: usize) {
        if self.producer.replace_if_due(in_flight) {
            self.stats.producer_replaced();
        }
    }

    /// Sends the acknowledgements waiting their turn, in order, as far as the MQTT
    /// client's request queue takes them. Never waits: the MQTT side may itself be
    /// waiting for the forwarder to take a message, and waiting here would deadlock.
    fn flush_acks(&mut self) {
        while let Some(ack) = self.unsent_acks.front() {
            match ack.try_send() {
                AckOutcome::Sent => {}
                AckOutcome::ConnectionGone => self.stats.stale_ack(),
                AckOutcome::QueueFull => break,
            }
            self.unsent_acks.pop_front();
        }
    }

    fn settle(
        &mut self,
        settled: Settled,
        pending: &mut VecDeque<Job>,
    ) -> Result<(), ForwardError> {
        let confirmed = matches!(
            settled,
            Settled::Forwarded { .. } | Settled::DeadLettered { .. }
        );
        let from_retired = self.producer.settled(confirmed);
        let ack = match settled {
            Settled::Forwarded { ack, latency } => {
                self.stats.produced(latency);
                ack
            }
            Settled::DeadLettered { ack, reason } => {
                self.stats.dead_lettered(reason);
                ack
            }
            Settled::Purged(job) => {
                pending.push_back(job);
                return Ok(());
            }
            Settled::ProducerFailed { job, error } => {
                pending.push_back(job);
                if !from_retired {
                    self.producer.want_replacement(|| error);
                }
                return Ok(());
            }
            Settled::Failed(failure) => {
                self.stats.failed();
                error!("{failure}");
                return Err(ForwardError::Kafka(failure));
            }
        };
        self.unsent_acks.push_back(ack);
        self.flush_acks();
        Ok(())
    }
}

fn produce(
    producer: &Producer,
    data_topic: &str,
    dlq_topic: &str,
    job: &Job,
) -> Result<DeliveryFuture, KafkaError> {
    let inbound = &job.inbound;
    let record = match &job.destination {
        Destination::Data { device } => FutureRecord::to(data_topic)
            .key(device.as_str())
            .payload(inbound.payload.as_ref())
            .headers(frame_headers(&inbound.topic, inbound.received_at_ms)),
        Destination::DeadLetter {
            rejection,
            key,
            truncated,
        } => {
            let payload = if *truncated {
                &inbound.payload[..inbound.payload.len().min(DLQ_TRUNCATED_BYTES)]
            } else {
                inbound.payload.as_ref()
            };
            let original_length = truncated.then_some(inbound.payload.len());
            let record = FutureRecord::to(dlq_topic)
                .payload(payload)
                .headers(dlq_headers(
                    &inbound.topic,
                    inbound.received_at_ms,
                    rejection,
                    original_length,
                ));
            match key {
                Some(device) => record.key(device.as_str()),
                None => record,
            }
        }
    };
    producer.send_result(record).map_err(|(e, _)| e)
}

fn is_queue_full(error: &KafkaError) -> bool {
    error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull)
}

/// The idempotent producer's state is lost or broken (its broker forgot it, or
/// librdkafka gave up on it): a new producer gets past it, another attempt with this one
/// would not.
fn is_about_the_producer(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::OutOfOrderSequenceNumber
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::InvalidProducerIdMapping
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::Fatal
        )
    )
}

/// Taken back from a producer being replaced (see `Forwarder::replace_if_wanted`).
fn is_purged(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
    )
}

/// What to try after Kafka refused `job` with `error`: a frame goes to the dead-letter
/// topic, a dead-letter record is cut short; anything else is a failure that stops the
/// bridge.
fn next_attempt(job: Job, error: &KafkaError) -> Result<Job, String> {
    if !service::dead_letter::is_about_the_record(error) {
        return Err(format!("Kafka refused a record: {error}"));
    }
    let destination = match job.destination {
        Destination::Data { device } => {
            warn!("Kafka refused a frame of {device} for good, dead-lettering it: {error}");
            Destination::DeadLetter {
                rejection: Rejection::new(Reason::KafkaRejected, error.to_string()),
                key: Some(device),
                truncated: false,
            }
        }
        Destination::DeadLetter {
            rejection,
            key,
            truncated: false,
        } => Destination::DeadLetter {
            rejection,
            key,
            truncated: true,
        },
        Destination::DeadLetter {
            truncated: true, ..
        } => {
            return Err(format!(
            "Kafka refused a dead-letter record even cut to {DLQ_TRUNCATED_BYTES} bytes: {error}"
        ))
        }
    };
    Ok(Job {
        inbound: job.inbound,
        destination,
    })
}

/// Waits for Kafka's verdict on one message. A record Kafka refuses for good is
/// dead-lettered (or cut short) here, before its turn to be acknowledged comes.
async fn settle_delivery(
    producer: Producer,
    dlq_topic: Arc<str>,
    mut delivery: DeliveryFuture,
    mut job: Job,
    produced_at: Instant,
) -> Settled {
    loop {
        let error = match delivery.await {
            Ok(Ok(_)) => {
                return match job.destination {
                    Destination::Data { .. } => Settled::Forwarded {
                        ack: job.inbound.ack,
                        latency: produced_at.elapsed(),
                    },
                    Destination::DeadLetter { rejection, .. } => Settled::DeadLettered {
                        ack: job.inbound.ack,
                        reason: rejection.reason,
                    },
                };
            }
            Ok(Err((error, _))) if is_purged(&error) => return Settled::Purged(job),
            Ok(Err((error, _))) if is_about_the_producer(&error) => {
                return Settled::ProducerFailed {
                    job,
                    error: format!("Kafka refused a record for the producer's state: {error}"),
                }
            }
            Ok(Err((error, _))) => error,
            Err(_) => return Settled::Failed("the Kafka producer was dropped".to_owned()),
        };
        job = match next_attempt(job, &error) {
            Ok(job) => job,
            Err(failure) => return Settled::Failed(failure),
        };
        delivery = loop {
            match produce(&producer, "", &dlq_topic, &job) {
                Ok(delivery) => break delivery,
                Err(e) if is_queue_full(&e) => tokio::time::sleep(QUEUE_FULL_RETRY).await,
                Err(e) => match next_attempt(job, &e) {
                    Ok(next) => job = next,
                    Err(failure) => return Settled::Failed(failure),
                },
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::Ack;
    use bytes::Bytes;

    fn job(destination: Destination) -> Job {
        Job {
            inbound: Inbound {
                topic: Bytes::from_static(b"plant/s/l/d/telemetry"),
                payload: Bytes::from(vec![7u8; 5000]),
                received_at_ms: 0,
                ack: Ack::Nothing,
            },
            destination,
        }
    }

    fn too_large() -> KafkaError {
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
    }

    #[test]
    fn a_refused_frame_is_dead_lettered_then_cut_short_then_given_up() {
        let first = next_attempt(job(Destination::Data { device: "d".into() }), &too_large())
            .unwrap_or_else(|e| panic!("{e}"));
        let Destination::DeadLetter {
            rejection,
            key,
            truncated: false,
        } = &first.destination
        else {
            panic!("a refused frame goes to the DLQ whole first");
        };
        assert_eq!(rejection.reason, Reason::KafkaRejected);
        assert_eq!(key.as_deref(), Some("d"));
        let second = next_attempt(first, &too_large()).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            second.destination,
            Destination::DeadLetter {
                truncated: true,
                ..
            }
        ));
        assert!(next_attempt(second, &too_large()).is_err());
    }

    #[test]
    fn errors_not_about_the_record_are_failures_not_dead_letters() {
        for code in [
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::Fatal,
        ] {
            let error = KafkaError::MessageProduction(code);
            assert!(
                next_attempt(job(Destination::Data { device: "d".into() }), &error).is_err(),
                "{code:?}"
            );
        }
    }
}
