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
//! A PUBACK that does not match what is in flight (see [`PacketIds`]) is a protocol
//! error: it is counted, the connection is dropped and everything unacknowledged is sent
//! again on the next one. Nothing is deleted on a PUBACK that cannot be trusted.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use rumqttc::{
    AsyncClient, ConnectionError, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, StateError,
    TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::config::{AgentConfig, CatchUp, ConfirmMode};
use crate::confirmations::{Awaiting, FrameSpan, Ignored};
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

/// What a connection's event loop tells the delivery task.
enum ConnEvent {
    ConnAck {
        session_present: bool,
    },
    Published(u16),
    PubAck(u16),
    /// rumqttc refused an acknowledgement for a packet id it does not have in flight,
    /// and its event loop stopped.
    Mismatch(Mismatch),
    /// A message on a topic we subscribed to: a device's confirmations.
    Message {
        topic: String,
        payload: Vec<u8>,
    },
    Down(String),
}

/// What was sent under a packet id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Record(RecordId),
    /// Status, meta or health: nothing to remove from the queue on PUBACK.
    Control,
}

/// A way in which the packet ids of a connection stopped matching what was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mismatch {
    /// rumqttc gave a packet id to a publish this task never handed over.
    NothingHanded(u16),
    /// rumqttc gave out a packet id whose PUBACK has not arrived yet.
    MappedTwice(u16),
    /// A PUBACK (or, from rumqttc, any acknowledgement) for a packet id not in flight:
    /// unknown, or acknowledged already.
    NotInFlight(u16),
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NothingHanded(pkid) => {
                write!(f, "packet id {pkid} given to a publish never handed over")
            }
            Self::MappedTwice(pkid) => {
                write!(f, "packet id {pkid} given out again before its PUBACK")
            }
            Self::NotInFlight(pkid) => write!(
                f,
                "acknowledgement for packet id {pkid}, which is not in flight \
                 (unknown or acknowledged already)"
            ),
        }
    }
}

/// Which publish each packet id of one connection stands for.
///
/// rumqttc (0.25) assigns packet ids itself, when its event loop takes a publish off the
/// request channel, and reports each one as `Outgoing::Publish(pkid)`. It takes requests
/// in order, and a publish whose id would still be in flight (the broker acknowledged out
/// of order) is held back, with every request after it, until that id's PUBACK arrives;
/// the PUBACK's event comes before the held publish's. So ids are reported in the order
/// publishes were handed over, and that is the only order this relies on: a PUBACK then
/// removes exactly the publish sent under its id, in whatever order the broker
/// acknowledges (MQTT 3.1.1 says a server SHOULD acknowledge in order, not MUST).
///
/// Anything else means the two sides no longer agree on what an id names, and from then
/// on a PUBACK could delete another frame: the caller drops the connection.
#[derive(Debug, Default)]
struct PacketIds {
    /// Handed to rumqttc, no packet id reported yet, in order.
    handed: VecDeque<Sent>,
    in_flight: HashMap<u16, Sent>,
}

impl PacketIds {
    fn handed(&mut self, sent: Sent) {
        self.handed.push_back(sent);
    }

    /// rumqttc sent the oldest publish handed over under `pkid`.
    fn published(&mut self, pkid: u16) -> Result<(), Mismatch> {
        if self.in_flight.contains_key(&pkid) {
            return Err(Mismatch::MappedTwice(pkid));
        }
        let sent = self
            .handed
            .pop_front()
            .ok_or(Mismatch::NothingHanded(pkid))?;
        self.in_flight.insert(pkid, sent);
        Ok(())
    }

    /// The PUBACK for `pkid` arrived: what it acknowledges.
    fn acked(&mut self, pkid: u16) -> Result<Sent, Mismatch> {
        self.in_flight
            .remove(&pkid)
            .ok_or(Mismatch::NotInFlight(pkid))
    }

    fn get(&self, pkid: u16) -> Option<Sent> {
        self.in_flight.get(&pkid).copied()
    }
}

struct Connection {
    client: AsyncClient,
    events: mpsc::Receiver<ConnEvent>,
    poller: JoinHandle<()>,
    up: bool,
    pkids: PacketIds,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.poller.abort();
    }
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
    /// connection (see [`PacketIds`]).
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
    in_flight: std::collections::BTreeMap<RecordId, Option<FrameSpan>>,
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
    tls: Option<TlsConfiguration>,
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
        let tls = config.mqtt.tls.as_ref().map(load_tls).transpose()?;
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

    fn connect(&mut self) {
        let mqtt = &self.config.mqtt;
        let mut options = MqttOptions::new(&self.config.gateway.id, &mqtt.host, mqtt.port);
        options
            .set_keep_alive(mqtt.keep_alive)
            .set_clean_session(mqtt.clean_session)
            .set_inflight(mqtt.inflight)
            // rumqttc's default 10 KiB would refuse the `meta` of a device with many
            // channels and drop the connection each time it tried.
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_last_will(LastWill::new(
                self.topics.gateway_status(),
                status::gateway_offline(&self.config, &self.boot_id, "connection lost", None),
                QoS::AtLeastOnce,
                true,
            ));
        if let (Some(user), Some(password)) = (&mqtt.username, &mqtt.password) {
            options.set_credentials(user, password);
        }
        if let Some(tls) = &self.tls {
            options.set_transport(Transport::tls_with_config(tls.clone()));
        }
        // Room for a full window of frames plus the control messages queued beside it.
        let capacity = window(&self.config) + control_burst(&self.config);
        let (client, mut event_loop) = AsyncClient::new(options, capacity);
        let (tx, rx) = mpsc::channel(capacity);
        let poller = tokio::spawn(async move {
            loop {
                let event = match event_loop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => ConnEvent::ConnAck {
                        session_present: ack.session_present,
                    },
                    Ok(Event::Incoming(Packet::PubAck(ack))) => ConnEvent::PubAck(ack.pkid),
                    Ok(Event::Incoming(Packet::Publish(publish))) => ConnEvent::Message {
                        topic: publish.topic.clone(),
                        payload: publish.payload.to_vec(),
                    },
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => ConnEvent::Published(pkid),
                    Ok(_) => continue,
                    // rumqttc checks every PUBACK against its own slots first and stops
                    // here, before we see the PUBACK (and any event read with it).
                    Err(ConnectionError::MqttState(StateError::Unsolicited(pkid))) => {
                        let _ = tx
                            .send(ConnEvent::Mismatch(Mismatch::NotInFlight(pkid)))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(ConnEvent::Down(e.to_string())).await;
                        return;
                    }
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        debug!(host = %mqtt.host, port = mqtt.port, "connecting");
        self.connection = Some(Connection {
            client,
            events: rx,
            poller,
            up: false,
            pkids: PacketIds::default(),
        });
    }

    fn on_event(&mut self, event: ConnEvent) {
        match event {
            ConnEvent::ConnAck { session_present } => self.on_connected(session_present),
            ConnEvent::Published(pkid) => {
                if let Some(Err(mismatch)) =
                    self.connection.as_mut().map(|c| c.pkids.published(pkid))
                {
                    self.protocol_error(mismatch);
                }
            }
            ConnEvent::PubAck(pkid) => {
                let sent = match self.connection.as_mut().map(|c| c.pkids.acked(pkid)) {
                    Some(Ok(sent)) => sent,
                    Some(Err(mismatch)) => {
                        self.protocol_error(mismatch);
                        return;
                    }
                    None => return,
                };
                self.last_puback = Some(Instant::now());
                // A PUBACK proves the connection works; a ConnAck alone does not (a
                // broker may accept and then drop us), so back-off resets only here.
                self.attempts = 0;
                if let Sent::Record(id) = sent {
                    match self.in_flight.remove(&id).flatten() {
                        Some(span) => self.awaiting.pubacked(id, span, Instant::now()),
                        None => self.queue.ack(id),
                    }
                }
                self.fill_window();
            }
            ConnEvent::Message { topic, payload } => self.on_confirmation(&topic, &payload),
            ConnEvent::Mismatch(mismatch) => self.protocol_error(mismatch),
            ConnEvent::Down(reason) => self.on_down(&reason),
        }
    }

    /// The packet ids of this connection no longer match what was sent (see
    /// [`PacketIds`]): no PUBACK on it can be trusted to name the right frame, so it is
    /// dropped without acknowledging anything, and the next one sends every frame not yet
    /// acknowledged again.
    fn protocol_error(&mut self, mismatch: Mismatch) {
        self.counters.protocol_errors += 1;
        warn!(
            %mismatch,
            protocol_errors = self.counters.protocol_errors,
            "MQTT protocol error; reconnecting and sending every unacknowledged frame again"
        );
        self.on_down(&format!("protocol error: {mismatch}"));
    }

    fn on_connected(&mut self, session_present: bool) {
        info!(
            host = %self.config.mqtt.host,
            port = self.config.mqtt.port,
            session_present,
            backlog = self.queue.stats().unacked_records,
            "connected to the broker"
        );
        if let Some(conn) = &mut self.connection {
            conn.up = true;
        }
        // Everything not yet acknowledged is sent again on this connection.
        self.in_flight.clear();
        self.backlog_end = self.queue.stats().next_id;
        self.backlog_cursor = 0;
        self.live_cursor = self.backlog_end;
        let births: Vec<(String, Vec<u8>)> = std::iter::once((
            self.topics.gateway_status(),
            status::gateway_online(&self.config, &self.boot_id, &self.health()),
        ))
        .chain(self.config.devices.iter().flat_map(|device| {
            [
                (
                    self.topics.device_status(&device.id),
                    status::device_online(&self.config.gateway.id, device, &self.boot_id),
                ),
                (
                    self.topics.device_meta(&device.id),
                    status::device_meta(&self.config, device),
                ),
            ]
        }))
        .collect();
        for (topic, payload) in births {
            self.publish_control(topic, payload);
        }
        if self.confirm_mode() == ConfirmMode::Pipeline {
            self.subscribe_confirmations();
        }
        self.fill_window();
    }

    fn confirm_mode(&self) -> ConfirmMode {
        self.config.delivery.confirm
    }

    /// QoS 0 is enough: a lost confirmation is repeated, in effect, by the next one.
    fn subscribe_confirmations(&mut self) {
        let topics: Vec<String> = self
            .config
            .devices
            .iter()
            .map(|d| self.topics.device_confirm(&d.id))
            .collect();
        let Some(conn) = self.connection.as_mut() else {
            return;
        };
        for topic in topics {
            if let Err(e) = conn.client.try_subscribe(&topic, QoS::AtMostOnce) {
                warn!(error = %e, %topic, "could not subscribe to confirmations; frames wait on disk until the next connection");
            }
        }
    }

    /// Deletes the frames a confirmation covers. It comes off the network, so it is
    /// checked against the topic and against what this agent sent before it deletes
    /// anything.
    fn on_confirmation(&mut self, topic: &str, payload: &[u8]) {
        let device = protocol::topic::Topic::parse(topic)
            .ok()
            .filter(|t| t.kind == protocol::topic::TopicKind::Confirm)
            .map(|t| t.device.to_owned());
        let confirmation = match protocol::Confirmation::decode(payload) {
            Ok(c) if device.as_deref() == Some(c.device.as_str()) => c,
            Ok(c) => {
                self.ignore_confirmation(topic, &format!("it is for {}", c.device.as_str()));
                return;
            }
            Err(e) => {
                self.ignore_confirmation(topic, &e.to_string());
                return;
            }
        };
        let applied = match self.awaiting.apply(&confirmation, Instant::now()) {
            Ok(applied) => applied,
            // A repeat, or an old boot's frames all confirmed already: nothing to do.
            Err(Ignored::NothingWaiting) => return,
            Err(Ignored::BeyondSent) => {
                self.ignore_confirmation(topic, "it names readings this agent never sent");
                return;
            }
        };
        for &id in &applied.committed {
            self.queue.ack(id);
        }
        for &(id, readings) in &applied.refused {
            self.queue.ack(id);
            warn!(
                id,
                readings,
                device = confirmation.device.as_str(),
                "the cloud refused a frame for good (see sensors-dlq); dropped and counted"
            );
        }
        self.counters.confirmed_frames += applied.committed.len() as u64;
        self.counters.refused_frames += applied.refused.len() as u64;
    }

    fn ignore_confirmation(&mut self, topic: &str, why: &str) {
        self.counters.ignored_confirmations += 1;
        // Counted always; logged for the first few so a flood cannot fill the journal.
        if self.counters.ignored_confirmations <= 10 {
            warn!(%topic, why, "ignored a confirmation; nothing deleted");
        }
    }

    /// Picks the waiting frames to send again (see [`crate::confirmations`]).
    fn schedule_resends(&mut self) {
        if let Some(first) = self.queue.stats().first_unacked {
            self.awaiting.prune_below(first);
        } else {
            self.awaiting.prune_below(RecordId::MAX);
        }
        let config = &self.config.delivery;
        self.resend = self
            .awaiting
            .due(Instant::now(), config.confirm_grace, config.confirm_timeout)
            .into();
        if !self.resend.is_empty() {
            debug!(
                frames = self.resend.len(),
                "resending frames the cloud has not confirmed"
            );
            self.fill_window();
        }
    }

    fn on_down(&mut self, reason: &str) {
        let was_up = self.connection.as_ref().is_some_and(|c| c.up);
        self.connection = None;
        self.in_flight.clear();
        self.awaiting.connection_lost();
        self.resend.clear();
        self.counters.reconnects += u64::from(was_up);
        let delay = backoff(
            self.attempts,
            self.config.mqtt.reconnect_min,
            self.config.mqtt.reconnect_max,
        );
        self.attempts = self.attempts.saturating_add(1);
        self.reconnect_at = Instant::now() + delay;
        if was_up || self.attempts == 1 {
            warn!(
                %reason,
                host = %self.config.mqtt.host,
                port = self.config.mqtt.port,
                retry_in_ms = delay.as_millis() as u64,
                "broker unreachable; frames stay queued on disk"
            );
        } else {
            debug!(%reason, retry_in_ms = delay.as_millis() as u64, "still no broker");
        }
    }

    fn publish_control(&mut self, topic: String, payload: Vec<u8>) {
        self.publish(topic, payload, true, Sent::Control);
    }

    /// Hands one publish to rumqttc; false if the connection cannot take it.
    fn publish(&mut self, topic: String, payload: Vec<u8>, retain: bool, sent: Sent) -> bool {
        let Some(conn) = self.connection.as_mut().filter(|c| c.up) else {
            return false;
        };
        match conn
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => {
                conn.pkids.handed(sent);
                true
            }
            Err(e) => {
                debug!(error = %e, "publish not accepted; waiting for the connection");
                false
            }
        }
    }

    /// Sends queued frames until the in-flight window is full, live frames and backlog
    /// according to the catch-up policy, the backlog no faster than its rate.
    fn fill_window(&mut self) {
        if !self.connection.as_ref().is_some_and(|c| c.up) {
            return;
        }
        self.refill_tokens();
        while self.in_flight.len() < window(&self.config) {
            if let Some(id) = self.resend.pop_front() {
                if !self.send_again(id) {
                    break;
                }
                continue;
            }
            let Some((id, record, from_backlog)) = self.next_record() else {
                break;
            };
            let Some((topic, frame)) = decode_record(&record) else {
                error!(
                    id,
                    "queue record without a valid telemetry topic; discarding it (counted as dropped)"
                );
                self.queue.ack(id);
                self.counters.dropped_frames += 1;
                continue;
            };
            let span = self.span_to_confirm(frame);
            let (topic, frame) = (topic.to_owned(), frame.to_vec());
            if !self.publish(topic, frame, false, Sent::Record(id)) {
                // Not sent: take the step back so the record goes out on the next try.
                if from_backlog {
                    self.backlog_cursor = id;
                    self.catch_up_tokens += 1.0;
                } else {
                    self.live_cursor = id;
                }
                break;
            }
            if let Some(span) = &span {
                self.awaiting.published(span);
            }
            self.in_flight.insert(id, span);
        }
    }

    /// What a confirmation will have to cover before the frame may go; `None` when the
    /// PUBACK suffices.
    fn span_to_confirm(&self, frame: &[u8]) -> Option<FrameSpan> {
        match self.confirm_mode() {
            ConfirmMode::Pipeline => FrameSpan::of(frame),
            ConfirmMode::Broker => None,
        }
    }

    /// Sends a waiting frame again; false if the connection could not take it (it is
    /// then due again at the next check).
    fn send_again(&mut self, id: RecordId) -> bool {
        let record = match self.queue.read_unacked(id, 1) {
            Ok(mut records) => records.pop().filter(|(found, _)| *found == id),
            Err(e) => {
                error!(error = %e, "could not read the queue");
                return false;
            }
        };
        // Dropped at the cap meanwhile: nothing left to send.
        let Some((topic, frame)) = record.as_ref().and_then(|(_, r)| decode_record(r)) else {
            self.awaiting.forget(id);
            return true;
        };
        let span = self.span_to_confirm(frame);
        let (topic, frame) = (topic.to_owned(), frame.to_vec());
        if !self.publish(topic, frame, false, Sent::Record(id)) {
            return false;
        }
        self.awaiting.resending(id);
        if let Some(span) = &span {
            self.awaiting.published(span);
        }
        self.in_flight.insert(id, span);
        self.counters.resent_frames += 1;
        true
    }

    fn refill_tokens(&mut self) {
        let rate = f64::from(self.config.delivery.catch_up_rate);
        let now = Instant::now();
        let earned = now.duration_since(self.tokens_at).as_secs_f64() * rate;
        self.catch_up_tokens = (self.catch_up_tokens + earned).min(rate);
        self.tokens_at = now;
    }

    /// The next record to send and whether it came from the backlog.
    fn next_record(&mut self) -> Option<(RecordId, Vec<u8>, bool)> {
        let backlog_allowed = self.backlog_cursor < self.backlog_end && self.catch_up_tokens >= 1.0;
        let order: [bool; 2] = match self.config.delivery.catch_up {
            CatchUp::LiveFirst => [false, true],
            CatchUp::Interleave if self.prefer_backlog => [true, false],
            CatchUp::Interleave => [false, true],
        };
        for from_backlog in order {
            if from_backlog && !backlog_allowed {
                continue;
            }
            let Some((id, record)) = self.next_unsent(from_backlog) else {
                continue;
            };
            if from_backlog {
                if id >= self.backlog_end {
                    self.backlog_cursor = self.backlog_end;
                    continue;
                }
                self.backlog_cursor = id + 1;
                self.catch_up_tokens -= 1.0;
            } else {
                self.live_cursor = id + 1;
            }
            self.prefer_backlog = !from_backlog;
            return Some((id, record, from_backlog));
        }
        None
    }

    /// The next record at the source's cursor that is not already with the broker and
    /// waiting for the cloud (those are skipped, the cursor moved past them).
    fn next_unsent(&mut self, from_backlog: bool) -> Option<(RecordId, Vec<u8>)> {
        loop {
            let cursor = if from_backlog {
                self.backlog_cursor
            } else {
                self.live_cursor
            };
            let (id, record) = match self.queue.read_unacked(cursor, 1) {
                Ok(mut records) => records.pop()?,
                Err(e) => {
                    error!(error = %e, "could not read the queue");
                    return None;
                }
            };
            if !self.awaiting.contains(id) || (from_backlog && id >= self.backlog_end) {
                return Some((id, record));
            }
            if from_backlog {
                self.backlog_cursor = id + 1;
            } else {
                self.live_cursor = id + 1;
            }
        }
    }

    /// Gives in-flight and queued frames up to `grace` to be acknowledged, then publishes
    /// the goodbye statuses, disconnects and syncs the queue.
    async fn shutdown(&mut self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        self.fill_window();
        while self.connection.as_ref().is_some_and(|c| c.up)
            && (!self.in_flight.is_empty() || !self.awaiting.is_empty() || self.has_unsent())
        {
            tokio::select! {
                event = next_event(&mut self.connection) => self.on_event(event),
                // The backlog's rate limit may hold frames back with nothing in flight.
                _ = tokio::time::sleep(Duration::from_millis(50)) => self.fill_window(),
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

    fn has_unsent(&mut self) -> bool {
        let from = self.live_cursor.min(self.backlog_cursor);
        self.queue
            .read_unacked(from, window(&self.config) + 1)
            .map(|records| {
                records
                    .iter()
                    .any(|(id, _)| !self.in_flight.contains_key(id) && !self.awaiting.contains(*id))
            })
            .unwrap_or(false)
    }
}

/// Waits for the current connection's next event; pends forever without a connection
/// (the reconnect timer then wins the select).
async fn next_event(connection: &mut Option<Connection>) -> ConnEvent {
    match connection {
        Some(conn) => conn
            .events
            .recv()
            .await
            .unwrap_or_else(|| ConnEvent::Down("event loop stopped".to_owned())),
        None => std::future::pending().await,
    }
}

/// Exponential back-off with jitter: between half and all of min × 2^attempts, capped.
fn backoff(attempts: u32, min: Duration, max: Duration) -> Duration {
    let ceiling = min.saturating_mul(1u32 << attempts.min(16)).min(max);
    let half = ceiling / 2;
    half + rand::rng().random_range(Duration::ZERO..=half)
}

fn load_tls(tls: &crate::config::TlsConfig) -> anyhow::Result<TlsConfiguration> {
    use anyhow::Context;
    let ca = std::fs::read(&tls.ca)
        .with_context(|| format!("mqtt.tls.ca: cannot read {}", tls.ca.display()))?;
    let client_auth = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => Some((
            std::fs::read(cert)
                .with_context(|| format!("mqtt.tls.client_cert: cannot read {}", cert.display()))?,
            std::fs::read(key)
                .with_context(|| format!("mqtt.tls.client_key: cannot read {}", key.display()))?,
        )),
        _ => None,
    };
    Ok(TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth,
    })
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

    #[test]
    fn pubacks_match_by_packet_id_in_any_order() {
        let mut ids = PacketIds::default();
        for sent in [Sent::Record(7), Sent::Control, Sent::Record(8)] {
            ids.handed(sent);
        }
        for pkid in [1, 2, 3] {
            assert_eq!(ids.published(pkid), Ok(()));
        }
        assert_eq!(ids.acked(3), Ok(Sent::Record(8)));
        // The broker acknowledged 3 before 1: rumqttc reuses 3 (after its PUBACK's event).
        ids.handed(Sent::Record(9));
        assert_eq!(ids.published(3), Ok(()));
        assert_eq!(ids.acked(1), Ok(Sent::Record(7)));
        assert_eq!(ids.acked(3), Ok(Sent::Record(9)));
        assert_eq!(ids.acked(2), Ok(Sent::Control));
    }

    #[test]
    fn every_inconsistency_is_a_mismatch() {
        let mut ids = PacketIds::default();
        assert_eq!(ids.published(1), Err(Mismatch::NothingHanded(1)));
        ids.handed(Sent::Record(1));
        ids.handed(Sent::Record(2));
        assert_eq!(ids.published(1), Ok(()));
        // Given out again before its PUBACK: the second publish is not mapped onto it.
        assert_eq!(ids.published(1), Err(Mismatch::MappedTwice(1)));
        assert_eq!(ids.acked(5), Err(Mismatch::NotInFlight(5)));
        assert_eq!(ids.acked(1), Ok(Sent::Record(1)));
        assert_eq!(
            ids.acked(1),
            Err(Mismatch::NotInFlight(1)),
            "a duplicate PUBACK"
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        for attempts in 0..40 {
            let ceiling = min.saturating_mul(1 << attempts.min(16)).min(max);
            let delay = backoff(attempts, min, max);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{attempts}: {delay:?}"
            );
        }
    }
}
