//! The forwarder: takes messages from the MQTT side, checks them, produces them to Kafka
//! and acknowledges each one only after Kafka's delivery report for it.
//!
//! Delivery reports arrive in any order (partitions are independent), but MQTT wants
//! acknowledgements in the order the messages arrived. Each message's produce-and-settle
//! future goes into a `FuturesOrdered`, which yields results in submission order: the
//! ack of message n waits for messages before n, while all of them are in flight at
//! once. The window is `max_in_flight`; when it is full, or the producer's memory budget
//! is, the forwarder stops taking messages (back-pressure) until Kafka confirms more.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesOrdered, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::inbound::{Ack, AckOutcome, Inbound};
use crate::inspect::{inspect, RejectReason, Rejection};
use crate::kafka::{dlq_headers, frame_headers, Producer};
use crate::latest::Latest;
use crate::stats::Stats;

/// How long to wait before offering a message again to a producer whose queue is full.
const QUEUE_FULL_RETRY: Duration = Duration::from_millis(5);
/// How long to wait before offering acknowledgements again to a full MQTT request queue.
const ACK_RETRY: Duration = Duration::from_millis(2);

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("Kafka refused a dead-letter record, so a message can be neither forwarded nor set aside: {0}")]
    DeadLetterRefused(String),
}

/// Where a message is going.
enum Destination {
    Data { device: String },
    DeadLetter(Rejection),
}

struct Job {
    inbound: Inbound,
    destination: Destination,
}

/// How a message ended, in arrival order.
enum Settled {
    Forwarded { ack: Ack, latency: Duration },
    DeadLettered { ack: Ack, reason: RejectReason },
    Failed(String),
}

type Settling = Pin<Box<dyn Future<Output = Settled> + Send>>;

pub struct Forwarder {
    pub producer: Producer,
    pub data_topic: Arc<str>,
    pub dlq_topic: Arc<str>,
    pub topic_prefix: String,
    pub max_in_flight: usize,
    pub latest: Option<Latest>,
    pub stats: Arc<Stats>,
    /// Acknowledgements due, in arrival order, that the MQTT client could not take yet.
    pub unsent_acks: VecDeque<Ack>,
}

impl Forwarder {
    /// Forwards until `stop`, or until the MQTT side closes `inbound`. Then takes no more
    /// messages and waits up to `grace` for Kafka to confirm those in flight, acknowledging
    /// them in order. What is still unconfirmed is not acknowledged: the broker keeps it.
    pub async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        stop: CancellationToken,
        grace: Duration,
    ) -> Result<(), ForwardError> {
        let mut settling: FuturesOrdered<Settling> = FuturesOrdered::new();
        let mut refused: Option<Job> = None;
        let latest_period = self
            .latest
            .as_ref()
            .map_or(Duration::from_secs(3600), |l| l.interval());
        let mut latest_tick = tokio::time::interval(latest_period);
        latest_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.stats.set_in_flight(settling.len());
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(settled) = settling.next(), if !settling.is_empty() => {
                    self.settle(settled).await?;
                }
                _ = tokio::time::sleep(QUEUE_FULL_RETRY), if refused.is_some() => {
                    if let Some(job) = refused.take() {
                        refused = self.submit(job, &mut settling)?;
                    }
                }
                _ = tokio::time::sleep(ACK_RETRY), if !self.unsent_acks.is_empty() => self.flush_acks(),
                message = inbound.recv(), if refused.is_none()
                    && settling.len() + self.unsent_acks.len() < self.max_in_flight => {
                    let Some(message) = message else { break };
                    let job = self.prepare(message).await;
                    refused = self.submit(job, &mut settling)?;
                }
                _ = latest_tick.tick(), if self.latest.is_some() => {
                    if let Some(latest) = &mut self.latest {
                        latest.flush_due(Instant::now()).await;
                    }
                }
            }
        }

        // Shutting down: messages still queued on the MQTT side stay unacknowledged.
        inbound.close();
        let deadline = tokio::time::Instant::now() + grace;
        while let Some(job) = refused.take() {
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            refused = self.submit(job, &mut settling)?;
            if refused.is_some() {
                tokio::time::sleep(QUEUE_FULL_RETRY).await;
            }
        }
        while !settling.is_empty() {
            self.stats.set_in_flight(settling.len());
            match tokio::time::timeout_at(deadline, settling.next()).await {
                Ok(Some(settled)) => self.settle(settled).await?,
                Ok(None) => break,
                Err(_) => {
                    warn!(
                        unconfirmed = settling.len(),
                        "Kafka did not confirm every message within the shutdown grace; \
                         those stay unacknowledged and the broker redelivers them"
                    );
                    break;
                }
            }
        }
        while !self.unsent_acks.is_empty() && tokio::time::Instant::now() < deadline {
            self.flush_acks();
            tokio::time::sleep(ACK_RETRY).await;
        }
        self.stats.set_in_flight(settling.len());
        Ok(())
    }

    /// Checks the message and feeds the `latest` topic.
    async fn prepare(&mut self, inbound: Inbound) -> Job {
        self.stats.received();
        let destination = match inspect(&self.topic_prefix, &inbound.topic, &inbound.payload) {
            Ok(device) => {
                if let Some(latest) = &mut self.latest {
                    latest.offer(&device, &inbound, Instant::now()).await;
                }
                Destination::Data { device }
            }
            Err(rejection) => Destination::DeadLetter(rejection),
        };
        Job {
            inbound,
            destination,
        }
    }

    /// Hands the job to the producer. Returns it back when the producer's queue is full.
    fn submit(
        &self,
        job: Job,
        settling: &mut FuturesOrdered<Settling>,
    ) -> Result<Option<Job>, ForwardError> {
        match produce(&self.producer, &self.data_topic, &self.dlq_topic, &job) {
            Ok(delivery) => {
                settling.push_back(Box::pin(settle_delivery(
                    self.producer.clone(),
                    self.dlq_topic.clone(),
                    delivery,
                    job,
                    Instant::now(),
                )));
                Ok(None)
            }
            Err(e) if is_queue_full(&e) => Ok(Some(job)),
            Err(e) => match job.destination {
                // Refused before it left (e.g. larger than message.max.bytes).
                Destination::Data { .. } => self.submit(dead_letter_refused(job, &e), settling),
                Destination::DeadLetter(_) => Err(ForwardError::DeadLetterRefused(e.to_string())),
            },
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

    async fn settle(&mut self, settled: Settled) -> Result<(), ForwardError> {
        let ack = match settled {
            Settled::Forwarded { ack, latency } => {
                self.stats.produced(latency);
                ack
            }
            Settled::DeadLettered { ack, reason } => {
                self.stats.dead_lettered(reason);
                ack
            }
            Settled::Failed(error) => {
                self.stats.failed();
                error!("{error}");
                return Err(ForwardError::DeadLetterRefused(error));
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
        Destination::DeadLetter(rejection) => {
            let record = FutureRecord::to(dlq_topic)
                .payload(inbound.payload.as_ref())
                .headers(dlq_headers(
                    &inbound.topic,
                    inbound.received_at_ms,
                    rejection,
                ));
            match &rejection.device {
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

/// Turns a data job Kafka refused for good into a dead-letter job.
fn dead_letter_refused(job: Job, error: &KafkaError) -> Job {
    let device = match job.destination {
        Destination::Data { device } => Some(device),
        Destination::DeadLetter(rejection) => rejection.device,
    };
    Job {
        destination: Destination::DeadLetter(Rejection {
            reason: RejectReason::KafkaRejected,
            detail: error.to_string(),
            device,
        }),
        inbound: job.inbound,
    }
}

/// Waits for Kafka's verdict on one message. A data record Kafka refuses for good is
/// dead-lettered here, before its turn to be acknowledged comes.
async fn settle_delivery(
    producer: Producer,
    dlq_topic: Arc<str>,
    delivery: DeliveryFuture,
    job: Job,
    produced_at: Instant,
) -> Settled {
    let error = match delivery.await {
        Ok(Ok(_)) => {
            return match job.destination {
                Destination::Data { .. } => Settled::Forwarded {
                    ack: job.inbound.ack,
                    latency: produced_at.elapsed(),
                },
                Destination::DeadLetter(rejection) => Settled::DeadLettered {
                    ack: job.inbound.ack,
                    reason: rejection.reason,
                },
            };
        }
        Ok(Err((error, _))) => error,
        Err(_) => return Settled::Failed("the Kafka producer was dropped".to_owned()),
    };
    if matches!(job.destination, Destination::DeadLetter(_)) {
        return Settled::Failed(format!("dead-letter record refused: {error}"));
    }
    warn!("Kafka refused a frame for good, dead-lettering it: {error}");
    let job = dead_letter_refused(job, &error);
    loop {
        match produce(&producer, "", &dlq_topic, &job) {
            Ok(delivery) => {
                return match delivery.await {
                    Ok(Ok(_)) => Settled::DeadLettered {
                        ack: job.inbound.ack,
                        reason: RejectReason::KafkaRejected,
                    },
                    Ok(Err((e, _))) => Settled::Failed(format!("dead-letter record refused: {e}")),
                    Err(_) => Settled::Failed("the Kafka producer was dropped".to_owned()),
                };
            }
            Err(e) if is_queue_full(&e) => tokio::time::sleep(QUEUE_FULL_RETRY).await,
            Err(e) => return Settled::Failed(format!("dead-letter record refused: {e}")),
        }
    }
}
