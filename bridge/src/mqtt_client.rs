//! Client mode: a persistent MQTT 5 session on an external broker, with manual
//! acknowledgements, feeding the forwarder.
//!
//! Each connection gets a fresh rumqttc client and event loop. A message's `Ack` holds
//! the client it came from, so an acknowledgement that arrives after its connection has
//! dropped fails instead of being sent on the next connection, where its packet id may
//! already name another message. The broker redelivers the unacknowledged messages on
//! the new connection (same session), which is at-least-once, never loss.
//!
//! Beside the telemetry it subscribes to the devices' retained `meta` topics at QoS 0
//! (when `latest` is on); those messages name the channels for `latest`
//! (`crate::meta`) and never reach the forwarder.
//!
//! Receive Maximum is the forwarder's in-flight window, so the broker should never send
//! more than the bridge may hold: when Kafka is slow the broker keeps the messages and
//! this loop keeps polling, which keeps the connection alive with pings and lets the
//! acknowledgements out. Some brokers overshoot Receive Maximum (Mosquitto 2.0.11
//! miscounts its send quota, eclipse/mosquitto#2301, and resends a whole backlog on
//! reconnect). Then the channel to the forwarder (two windows) fills and this loop waits
//! for room, which stops reading the socket: TCP flow control holds the broker back and
//! memory stays bounded. The forwarder never waits on this loop, so the wait ends as
//! soon as Kafka confirms more; only if Kafka stays away longer than about 1.5
//! keep-alives does the broker drop the connection, and the session resumes after.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Filter, Packet, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::MqttClientConfig;
use crate::inbound::{Ack, Inbound};
use crate::meta::{self, Metas};
use crate::readiness::BridgeReadiness;
use crate::stats::Stats;
use service::clock::now_ms;

pub struct ClientSource {
    pub config: MqttClientConfig,
    pub client_id: String,
    /// The subscription, `$share/...` or plain.
    pub filter: String,
    /// The devices' meta topics, subscribed at QoS 0 beside the telemetry (never
    /// shared: every bridge names every device's channels); `None` when `latest` is off.
    pub meta_filter: Option<String>,
    pub receive_maximum: u16,
}

/// Where the client's messages and state go.
pub struct Outlets {
    pub tx: mpsc::Sender<Inbound>,
    pub readiness: Arc<BridgeReadiness>,
    pub stats: Arc<Stats>,
    pub stop: CancellationToken,
    /// The client of the live connection, `None` between connections: the
    /// confirmation relay publishes through it.
    pub connected: watch::Sender<Option<AsyncClient>>,
    /// Where the devices' meta messages go (`None` when `latest` is off).
    pub metas: Option<Arc<Metas>>,
}

/// One connection's client, event loop and liveness flag.
struct Connection {
    client: AsyncClient,
    eventloop: EventLoop,
    alive: Arc<AtomicBool>,
}

impl ClientSource {
    /// The options of the next connection; the password and TLS files are read now, so
    /// a rotated secret or renewed certificate needs no restart.
    fn options(&self) -> anyhow::Result<MqttOptions> {
        let c = &self.config;
        let mut options = MqttOptions::new(&self.client_id, &c.host, c.port);
        options
            .set_keep_alive(c.keep_alive)
            .set_clean_start(false)
            .set_session_expiry_interval(Some(c.session_expiry.as_secs() as u32))
            .set_manual_acks(true)
            .set_receive_maximum(Some(self.receive_maximum))
            .set_max_packet_size(Some(c.max_packet_size.as_u64() as u32));
        if let Some(username) = &c.username {
            let password = match &c.password_file {
                Some(path) => service::secret_file::read(path)
                    .map_err(|e| anyhow::anyhow!("mqtt.password_file: {e}"))?,
                None => c.password.clone().unwrap_or_default(),
            };
            options.set_credentials(username, password);
        }
        if let Some(tls) = &c.tls {
            options.set_transport(tls.transport("mqtt")?);
        }
        Ok(options)
    }

    /// Runs connections until `stop`, then sends what acknowledgements are queued and
    /// disconnects cleanly (the session stays on the broker).
    pub async fn run(self, outlets: Outlets) {
        let broker = format!("{}:{}", self.config.host, self.config.port);
        let mut backoff = self.config.reconnect_min;
        loop {
            // Acks go through the request channel too: room for a full window of them.
            let capacity = usize::from(self.receive_maximum) + 1024;
            let options = match self.options() {
                Ok(options) => options,
                Err(e) => {
                    error!("cannot connect to the MQTT broker {broker}: {e:#}");
                    tokio::select! {
                        _ = outlets.stop.cancelled() => return,
                        _ = tokio::time::sleep(self.config.reconnect_max) => {}
                    }
                    continue;
                }
            };
            let (client, eventloop) = AsyncClient::new(options, capacity);
            // One SUBSCRIBE, telemetry first: the SUBACK's codes come in this order. The
            // broker sends the retained metas on every subscribe.
            let filters = std::iter::once(Filter::new(self.filter.as_str(), QoS::AtLeastOnce))
                .chain(
                    self.meta_filter
                        .as_deref()
                        .map(|filter| Filter::new(filter, QoS::AtMostOnce)),
                );
            if let Err(e) = client.try_subscribe_many(filters) {
                error!("cannot queue the MQTT subscription: {e}");
            }
            let mut connection = Connection {
                client,
                eventloop,
                alive: Arc::new(AtomicBool::new(true)),
            };
            let outcome = self
                .serve(&mut connection, &outlets, &broker, &mut backoff)
                .await;
            outlets.readiness.set_mqtt(false);
            outlets.connected.send_replace(None);
            if let ConnectionEnd::Stop = outcome {
                disconnect(&connection.client, &mut connection.eventloop).await;
            }
            // From here on, acks still due for this connection fail instead of reaching
            // the next one (the request queue dies with the event loop).
            connection.alive.store(false, Ordering::Release);
            drop(connection);
            if let ConnectionEnd::Stop = outcome {
                return;
            }
            tokio::select! {
                _ = outlets.stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.config.reconnect_max);
        }
    }

    async fn serve(
        &self,
        connection: &mut Connection,
        outlets: &Outlets,
        broker: &str,
        backoff: &mut Duration,
    ) -> ConnectionEnd {
        loop {
            let event = tokio::select! {
                _ = outlets.stop.cancelled() => return ConnectionEnd::Stop,
                event = connection.eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                    outlets.stats.mqtt_connected();
                    outlets
                        .connected
                        .send_replace(Some(connection.client.clone()));
                    *backoff = self.config.reconnect_min;
                    info!(
                        broker,
                        session_present = connack.session_present,
                        "connected to the MQTT broker"
                    );
                }
                Ok(Event::Incoming(Packet::SubAck(suback))) => {
                    let mut codes = suback.return_codes.iter();
                    let telemetry = codes.next();
                    if let Some(code) = codes
                        .next()
                        .filter(|code| !matches!(code, SubscribeReasonCode::Success(_)))
                    {
                        warn!(
                            filter = self.meta_filter.as_deref().unwrap_or_default(),
                            "the broker refused the meta subscription: {code:?}; the \
                             retained latest names channels by number only"
                        );
                    }
                    match telemetry {
                        Some(SubscribeReasonCode::Success(_)) => outlets.readiness.set_mqtt(true),
                        code => error!(
                            filter = self.filter,
                            "the broker refused the subscription: {code:?}{}",
                            if matches!(
                                code,
                                Some(SubscribeReasonCode::SharedSubscriptionsNotSupported)
                            ) {
                                " (set mqtt.shared_group = \"\" for brokers without shared subscriptions)"
                            } else {
                                ""
                            }
                        ),
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish)))
                    if meta::is_meta_topic(&publish.topic) =>
                {
                    // Channel names for `latest`, not telemetry: never forwarded. Meta
                    // is subscribed at QoS 0; a broker that sends it at QoS 1 anyway
                    // gets its PUBACK here, or its packet would hold a Receive Maximum
                    // slot for good.
                    if publish.qos != QoS::AtMostOnce {
                        let _ = connection.client.try_ack(&publish);
                    }
                    if let Some(metas) = &outlets.metas {
                        metas.offer(&publish.topic, &publish.payload);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let ack = if publish.qos == QoS::AtMostOnce {
                        Ack::Nothing
                    } else {
                        Ack::Mqtt {
                            client: connection.client.clone(),
                            pkid: publish.pkid,
                            connection: connection.alive.clone(),
                        }
                    };
                    let inbound = Inbound {
                        topic: publish.topic,
                        payload: publish.payload,
                        received_at_ms: now_ms(),
                        ack,
                    };
                    // Waits while the forwarder's channel is full, which holds back
                    // reading from the socket (TCP flow control) but also pings; a wait
                    // longer than the keep-alive marks the connection not ready.
                    let send = outlets.tx.send(inbound);
                    tokio::pin!(send);
                    let stalled = tokio::select! {
                        _ = &mut send => false,
                        _ = tokio::time::sleep(self.config.keep_alive) => true,
                    };
                    if stalled {
                        outlets.stats.mqtt_stall();
                        outlets.readiness.set_mqtt(false);
                        warn!(
                            broker,
                            "the broker has sent more unacknowledged messages than the \
                             Receive Maximum of {} allows and Kafka is behind: not reading \
                             from the broker until the forwarder catches up",
                            self.receive_maximum
                        );
                        // Fails only once the forwarder has stopped taking messages; the
                        // message stays unacknowledged and the broker keeps it.
                        let _ = send.await;
                        outlets.readiness.set_mqtt(true);
                    }
                }
                Ok(Event::Incoming(Packet::Disconnect(disconnect))) => {
                    warn!(
                        broker,
                        "the MQTT broker disconnected the bridge: {:?}", disconnect.reason_code
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    error!(
                        "MQTT broker {broker}: {e}; reconnecting in {}",
                        humantime::format_duration(*backoff)
                    );
                    return ConnectionEnd::Lost;
                }
            }
        }
    }
}

enum ConnectionEnd {
    Stop,
    Lost,
}

/// Lets the event loop send the queued acknowledgements, then DISCONNECT.
async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let drain = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        warn!("the MQTT broker did not take the disconnect within 5 s");
    }
}
