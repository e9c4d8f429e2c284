//! Delivery: moves frames from the disk queue to the MQTT broker and removes each one
//! only once it is safe: when the ingester confirms PostgreSQL has its readings
//! (`delivery.confirm = "pipeline"`, see [`crate::confirmations`]), or on the broker's
//! PUBACK (`"broker"`). A PUBACK always ends a frame's MQTT delivery and frees its place
//! in the in-flight window.
//!
//! Protocol state is kept apart from I/O: [`Delivery`] owns the queue, the in-flight
//! bookkeeping and the catch-up policy and is driven by [`Delivery::run`], while each
//! broker connection gets a fresh rumqttc client and event loop whose events reach us
//! over a channel. A fresh event loop per connection is deliberate: rumqttc, left to
//! reconnect by itself, may silently drop its pending publishes when the broker has no
//! session for us, and requests queued across the drop could then be matched to the
//! wrong packet id. Starting clean, we resend every unacknowledged frame ourselves, and a
//! packet id always maps to the frame we sent under it. For QoS 1 from client to broker
//! the broker keeps no state that a new packet id could confuse; a resent frame is at
//! worst a duplicate, which the cloud deduplicates by (device, boot, seq).
//!
//! A PUBACK that does not match what is in flight (see
//! [`PacketIds`](packet_ids::PacketIds)) is a protocol error: it is counted, the
//! connection is dropped and everything unacknowledged is sent again on the next one.
//! Nothing is deleted on a PUBACK that cannot be trusted.
//!
//! Here: the task's loop, storing frames, health and shutdown. Beside it: `connection`
//! (the broker connection and its events), `packet_ids` (the in-flight bookkeeping),
//! `send` (the window and catch-up policy) and `confirm` (confirmations and resends).

mod confirm;
mod connection;
mod packet_ids;
mod send;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::Transport;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use self::connection::{next_event, ConnEvent, Connection};
use self::packet_ids::Sent;
use crate::config::{AgentConfig, ConfirmMode};
use crate::confirmations::{Awaiting, FrameSpan};
use crate::dropped::DroppedReadings;
use crate::queue::{DiskQueue, RecordId};
use crate::status::{self, Health};
use crate::topics::Topics;

/// A frame ready for the queue: where it goes and its encoded bytes.
pub struct Outbound {
    pub topic: String,
    pub frame: Vec<u8>,
    pub readings: usize,
}

/// Queue records carry their topic, so frames queued before a restart still go where
/// they were meant to even if the configuration changed since.
fn encode_record(topic: &str, frame: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(1 + topic.len() + frame.len());
    // Topics are at most MAX_TOPIC_LEN (< 256) bytes.
    record.push(topic.len() as u8);
    record.extend_from_slice(topic.as_bytes());
    record.extend_from_slice(frame);
    record
}

/// Splits a queue record into its topic and frame bytes; `None` unless the topic is a
/// valid telemetry topic (records outlive configurations and versions of the agent, and
/// one the broker would refuse must not block the queue behind it).
pub fn decode_record(record: &[u8]) -> Option<(&str, &[u8])> {
    let (&len, rest) = record.split_first()?;
    let len = usize::from(len);
    if rest.len() < len {
        return None;
    }
    let topic = std::str::from_utf8(&rest[..len]).ok()?;
    let parsed = protocol::topic::Topic::parse(topic).ok()?;
    (parsed.kind == protocol::topic::TopicKind::Telemetry).then_some((topic, &rest[len..]))
}

/// Counters shared with the health report.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub readings: u64,
    pub frames: u64,
    pub dropped_frames: u64,
    pub reconnects: u64,
    /// Frames deleted because a confirmation said PostgreSQL committed them.
    pub confirmed_frames: u64,
    /// Frames deleted because the cloud refused them for good (dead-lettered).
    pub refused_frames: u64,
    /// Confirmations that deleted nothing because they could not be trusted or applied:
    /// undecodable, for another device, beyond what was sent.
    pub ignored_confirmations: u64,
    /// Frames sent again because no confirmation covered them in time.
    pub resent_frames: u64,
    /// PUBACKs and packet ids that did not match what was in flight; each dropped the
    /// connection (see [`PacketIds`](packet_ids::PacketIds)).
    pub protocol_errors: u64,
}

pub struct Delivery {
    config: AgentConfig,
    topics: Topics,
    boot_id: String,
    queue: DiskQueue,
    connection: Option<Connection>,
    /// Records sent on the current connection and not yet acknowledged, with the
    /// readings they carry when a confirmation will have to name them.
    in_flight: BTreeMap<RecordId, Option<FrameSpan>>,
    /// PUBACKed frames waiting for the cloud's confirmation.
    awaiting: Awaiting,
    /// Waiting frames to send again, oldest first.
    resend: VecDeque<RecordId>,
    /// What the queue's byte cap gave up, reading by reading.
    dropped: DroppedReadings,
    /// Records below this id were in the queue when the connection came up: backlog.
    backlog_end: RecordId,
    backlog_cursor: RecordId,
    live_cursor: RecordId,
    catch_up_tokens: f64,
    tokens_at: Instant,
    prefer_backlog: bool,
    attempts: u32,
    reconnect_at: Instant,
    last_puback: Option<Instant>,
    started: Instant,
    counters: Counters,
    /// Written by the sampling thread (see `agent::Sampler`).
    missed_ticks: Arc<AtomicU64>,
    tls: Option<Transport>,
    /// The gateway's frame key, from the secret of the current connection: frames go
    /// out sealed with it (`protocol::seal`), so the bridge can tell they are this
    /// gateway's. `None` without a password: frames go out as they are stored.
    frame_key: Option<protocol::FrameKey>,
}

/// Largest MQTT packet sent or accepted: a frame is under 1 KiB, a device's `meta` under
/// 256 channels × a few hundred bytes.
const MAX_PACKET: usize = 256 * 1024;

/// Publishes in flight, counting frames and control messages together.
fn window(config: &AgentConfig) -> usize {
    usize::from(config.mqtt.inflight)
}

/// Control messages that may be queued at once beside a full window: the births (status
/// and meta per device, plus the gateway's) and the confirm subscriptions, or the
/// goodbyes, plus a health report.
fn control_burst(config: &AgentConfig) -> usize {
    3 * config.devices.len() + 8
}

impl Delivery {
    /// `missed_ticks` is the sampler's count of ticks it missed, reported in health.
    pub fn new(
        config: AgentConfig,
        boot_id: String,
        queue: DiskQueue,
        missed_ticks: Arc<AtomicU64>,
    ) -> anyhow::Result<Self> {
        let tls = config
            .mqtt
            .tls
            .as_ref()
            .map(|tls| tls.transport("mqtt"))
            .transpose()?;
        let rate = f64::from(config.delivery.catch_up_rate);
        let topics = Topics::new(&config);
        let mut delivery = Self {
            topics,
            boot_id,
            queue,
            connection: None,
            in_flight: Default::default(),
            awaiting: Awaiting::default(),
            resend: VecDeque::new(),
            dropped: DroppedReadings::default(),
            backlog_end: 0,
            backlog_cursor: 0,
            live_cursor: 0,
            catch_up_tokens: rate,
            tokens_at: Instant::now(),
            prefer_backlog: false,
            attempts: 0,
            reconnect_at: Instant::now(),
            last_puback: None,
            started: Instant::now(),
            counters: Counters::default(),
            missed_ticks,
            tls,
            frame_key: None,
            config,
        };
        // Frames dropped at open, because the cap was lowered since the last run.
        delivery.note_dropped();
        Ok(delivery)
    }

    /// Runs until `frames` closes (the sampler has sealed its last frame on shutdown),
    /// then drains what it can within `grace`, says goodbye and syncs the queue.
    pub async fn run(
        mut self,
        mut frames: mpsc::Receiver<Outbound>,
        health_out: watch::Sender<Health>,
        grace: Duration,
    ) -> anyhow::Result<()> {
        let mut sync_tick = tokio::time::interval(self.config.queue.fsync_interval);
        let mut health_tick = tokio::time::interval(self.config.health.interval);
        let mut pump_tick = tokio::time::interval(Duration::from_millis(50));
        let mut resend_tick = tokio::time::interval(Duration::from_millis(500));
        for tick in [
            &mut sync_tick,
            &mut health_tick,
            &mut pump_tick,
            &mut resend_tick,
        ] {
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                frame = frames.recv() => match frame {
                    Some(frame) => {
                        self.enqueue(frame);
                        self.fill_window();
                    }
                    None => break,
                },
                event = next_event(&mut self.connection) => self.on_event(event),
                _ = tokio::time::sleep_until(self.reconnect_at.into()), if self.connection.is_none() => {
                    self.connect();
                }
                _ = sync_tick.tick() => self.sync(),
                _ = health_tick.tick() => {
                    let health = self.health();
                    info!(?health, "health");
                    self.publish_control(self.topics.gateway_status(), status::gateway_online(&self.config, &self.boot_id, &health));
                    let _ = health_out.send(health);
                }
                _ = pump_tick.tick() => self.fill_window(),
                _ = resend_tick.tick(), if self.confirm_mode() == ConfirmMode::Pipeline => {
                    self.schedule_resends();
                }
            }
        }
        self.shutdown(grace).await;
        let _ = health_out.send(self.health());
        Ok(())
    }

    fn enqueue(&mut self, frame: Outbound) {
        self.counters.frames += 1;
        self.counters.readings += frame.readings as u64;
        let dropped_before = self.queue.stats().dropped_records;
        if let Err(e) = self
            .queue
            .append(&encode_record(&frame.topic, &frame.frame))
        {
            self.counters.dropped_frames += 1;
            error!(error = %e, topic = %frame.topic, "could not store a frame; it is dropped and counted");
        }
        let dropped = self.queue.stats().dropped_records - dropped_before;
        if dropped > 0 {
            self.counters.dropped_frames += dropped;
            warn!(dropped, cap = %self.config.queue.max_bytes, "queue at its byte cap: dropped the oldest frames");
        }
        self.note_dropped();
    }

    /// Records which readings the queue just gave up (see [`crate::dropped`]).
    fn note_dropped(&mut self) {
        for (id, record) in self.queue.take_dropped() {
            let after_puback = self.awaiting.forget(id).is_some();
            match decode_record(&record).and_then(|(_, frame)| FrameSpan::of(frame)) {
                Some(span) => self.dropped.record(&span, after_puback),
                None => warn!(id, "dropped a queue record that holds no frame"),
            }
        }
    }

    fn sync(&mut self) {
        if let Err(e) = self.queue.sync() {
            error!(error = %e, "could not sync the queue to disk");
        }
    }

    fn health(&self) -> Health {
        let stats = self.queue.stats();
        Health {
            connected: self.connection.as_ref().is_some_and(|c| c.up),
            uptime_s: self.started.elapsed().as_secs(),
            readings: self.counters.readings,
            frames: self.counters.frames,
            queue_records: stats.unacked_records,
            queue_bytes: stats.unacked_bytes,
            queue_disk_bytes: stats.disk_bytes,
            queue_segments: stats.segments,
            dropped_frames: self.counters.dropped_frames,
            reconnects: self.counters.reconnects,
            awaiting_confirm: self.awaiting.len() as u64,
            confirmed_frames: self.counters.confirmed_frames,
            refused_frames: self.counters.refused_frames,
            ignored_confirmations: self.counters.ignored_confirmations,
            resent_frames: self.counters.resent_frames,
            protocol_errors: self.counters.protocol_errors,
            missed_ticks: self.missed_ticks.load(Ordering::Relaxed),
            dropped: self.dropped.report(),
            confirm_wait_p50_ms: self.awaiting.waits.quantile_ms(0.5),
            confirm_wait_p99_ms: self.awaiting.waits.quantile_ms(0.99),
            last_puback_age_ms: self.last_puback.map(|t| t.elapsed().as_millis() as u64),
            rss_bytes: status::rss_bytes(),
        }
    }

    /// Gives in-flight and queued frames up to `grace` to be acknowledged (and
    /// confirmed, sending again what the cloud did not get), then publishes the goodbye
    /// statuses, disconnects and syncs the queue.
    async fn shutdown(&mut self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        self.fill_window();
        let mut resend_tick = tokio::time::interval(Duration::from_millis(500));
        resend_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while self.connection.as_ref().is_some_and(|c| c.up)
            && (!self.in_flight.is_empty() || !self.awaiting.is_empty() || self.has_unsent())
        {
            tokio::select! {
                event = next_event(&mut self.connection) => self.on_event(event),
                // The backlog's rate limit may hold frames back with nothing in flight.
                _ = tokio::time::sleep(Duration::from_millis(50)) => self.fill_window(),
                // A frame lost after the broker just before the stop has no later run to
                // be resent in.
                _ = resend_tick.tick(), if self.confirm_mode() == ConfirmMode::Pipeline => {
                    self.schedule_resends();
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        if self.connection.as_ref().is_some_and(|c| c.up) {
            let final_health = self.health();
            let goodbyes: Vec<(String, Vec<u8>)> = self
                .config
                .devices
                .iter()
                .map(|device| {
                    (
                        self.topics.device_status(&device.id),
                        status::device_offline(&self.config.gateway.id, device, &self.boot_id),
                    )
                })
                .chain(std::iter::once((
                    self.topics.gateway_status(),
                    status::gateway_offline(
                        &self.config,
                        &self.boot_id,
                        "shutdown",
                        Some(&final_health),
                    ),
                )))
                .collect();
            let expected = goodbyes.len();
            for (topic, payload) in goodbyes {
                self.publish_control(topic, payload);
            }
            // Wait briefly for the goodbyes' PUBACKs so they are not lost with the socket.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            let mut acked = 0;
            while acked < expected {
                tokio::select! {
                    event = next_event(&mut self.connection) => match event {
                        ConnEvent::PubAck(pkid) => {
                            let goodbye = self.connection.as_ref().is_some_and(|c| {
                                c.pkids.get(pkid) == Some(Sent::Control)
                            });
                            acked += usize::from(goodbye);
                            self.on_event(ConnEvent::PubAck(pkid));
                        }
                        other => self.on_event(other),
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
                // Down, or dropped for a protocol error.
                if self.connection.is_none() {
                    break;
                }
            }
            if let Some(conn) = &self.connection {
                let _ = conn.client.try_disconnect();
            }
            // The broker closes the socket once it has our DISCONNECT; leaving earlier
            // would look like a lost connection and fire the last will.
            let closed = tokio::time::timeout(Duration::from_secs(1), async {
                loop {
                    match next_event(&mut self.connection).await {
                        ConnEvent::Down(_) => break,
                        other => self.on_event(other),
                    }
                    if self.connection.is_none() {
                        break;
                    }
                }
            });
            let _ = closed.await;
        }
        self.sync();
        let stats = self.queue.stats();
        info!(
            unacked_frames = stats.unacked_records,
            "stopped; unacknowledged frames stay on disk for the next start"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_their_topic() {
        let record = encode_record("plant/s/l/d/telemetry", &[1, 2, 3]);
        assert_eq!(
            decode_record(&record),
            Some(("plant/s/l/d/telemetry", &[1u8, 2, 3][..]))
        );
        assert_eq!(decode_record(&[5, b'a']), None);
        for refused in ["plant/+/l/d/telemetry", "plant/s/l/d/status", ""] {
            assert_eq!(
                decode_record(&encode_record(refused, &[1])),
                None,
                "{refused:?}"
            );
        }
        assert_eq!(decode_record(&[]), None);
    }
}
