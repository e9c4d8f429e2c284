//! The broker connection: a fresh rumqttc client and event loop per connection, whose
//! events reach [`Delivery`] over a channel; what happens when it comes up (births,
//! subscriptions, resending everything unacknowledged), on each event (PUBACKs through
//! [`PacketIds`]), and when it goes down (back-off before the next attempt).

use std::time::{Duration, Instant};

use rand::Rng;
use rumqttc::{
    AsyncClient, ConnectionError, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, StateError,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::packet_ids::{Mismatch, PacketIds, Sent};
use super::{control_burst, window, Delivery, MAX_PACKET};
use crate::config::ConfirmMode;
use crate::status;

/// What a connection's event loop tells the delivery task.
pub(super) enum ConnEvent {
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

/// One broker connection: its client, the events of its event loop, and what it has in
/// flight.
pub(super) struct Connection {
    pub(super) client: AsyncClient,
    events: mpsc::Receiver<ConnEvent>,
    poller: JoinHandle<()>,
    pub(super) up: bool,
    pub(super) pkids: PacketIds,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl Delivery {
    pub(super) fn connect(&mut self) {
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
        match mqtt.credentials(&self.config.gateway.id) {
            Ok(Some((user, password))) => {
                self.frame_key = Some(protocol::FrameKey::derive(password.as_bytes()));
                options.set_credentials(user, password);
            }
            Ok(None) => {}
            Err(e) => warn!("mqtt.password_file: {e}; connecting without a password"),
        }
        if let Some(transport) = &self.tls {
            options.set_transport(transport.clone());
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

    pub(super) fn on_event(&mut self, event: ConnEvent) {
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
}

/// Waits for the current connection's next event; pends forever without a connection
/// (the reconnect timer then wins the select).
pub(super) async fn next_event(connection: &mut Option<Connection>) -> ConnEvent {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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
