//! Embedded mode: rumqttd runs inside the bridge, so devices and MQTT Explorer connect
//! to the bridge itself and no separate broker is needed.
//!
//! rumqttd acknowledges a device's publish when it receives it and keeps messages in an
//! in-memory log (`embedded.memory_budget`). The bridge reads that log through an
//! in-process link; when Kafka is slow the bridge stops reading and the log grows, and
//! if Kafka stays away long enough for the log to wrap, the oldest messages are lost.
//! A crash loses what the log held. That is the price of one process on one box;
//! production belongs on client mode with a broker that persists sessions.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::{
    Broker, Config, ConnectionSettings, Notification, RouterConfig, ServerSettings, TlsConfig,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::EmbeddedConfig;
use crate::gateway_auth::{self, Authenticator};
use crate::inbound::{Ack, Inbound};
use crate::meta::Metas;
use crate::stats::Stats;
use service::clock::now_ms;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("cannot listen for MQTT on {addr}: {error} (is another broker running there? set embedded.listen, or use --mode client)")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("the embedded broker did not start listening on {0} within 5 s")]
    NotListening(SocketAddr),
    #[error("cannot attach to the embedded broker: {0}")]
    Link(String),
}

/// The client id of the bridge's own subscription inside rumqttd.
const FORWARDER_CLIENT_ID: &str = "bridge-forwarder";

pub struct EmbeddedBroker {
    pub addr: SocketAddr,
    /// The forwarder's subscription.
    pub subscription: (LinkTx, LinkRx),
    /// For the `latest` messages.
    pub publisher: LinkTx,
    /// The publisher link's notifications: the devices' meta messages, when `start` was
    /// given a meta filter (read them with [`read_metas`]).
    pub metas: LinkRx,
    /// For the confirmations relayed from Kafka (`confirm_relay`), with its
    /// notifications' receiver, held by whoever publishes.
    pub confirmations: (LinkTx, LinkRx),
    /// rumqttd's alerts, which report when its log overran the subscription.
    pub alerts: rumqttd::alerts::AlertsLink,
}

/// Starts rumqttd on its own threads and subscribes to `filter` (telemetry) and, on the
/// `latest` publisher's link, to `meta_filter`.
pub fn start(
    config: &EmbeddedConfig,
    authenticator: Arc<Authenticator>,
    filter: &str,
    meta_filter: Option<&str>,
) -> Result<EmbeddedBroker, EmbeddedError> {
    let addr = config.listen;
    if config.allow_anonymous {
        warn!(%addr, "the embedded broker accepts anonymous clients (embedded.allow_anonymous = true): anyone who reaches it can publish as any device");
    }
    // rumqttd binds on its own thread and only logs a failure: check first.
    drop(TcpListener::bind(addr).map_err(|error| EmbeddedError::Listen { addr, error })?);

    let max_payload = config.max_payload_size.as_u64() as usize;
    let budget = config.memory_budget.as_u64() as usize;
    let segment_size = (budget / 8).max(4 * max_payload);
    let connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: max_payload,
        max_inflight_count: 500,
        // Every CONNECT goes to the gateway_auth module, which knows `users` too.
        auth: None,
        external_auth: (!config.allow_anonymous).then(|| gateway_auth::hook(authenticator)),
        dynamic_filters: true,
    };
    let tls = config.tls.as_ref().map(|tls| TlsConfig::Rustls {
        capath: Some(tls.client_ca.display().to_string()),
        certpath: tls.cert.display().to_string(),
        keypath: tls.key.display().to_string(),
    });
    let server = ServerSettings {
        name: "embedded".to_owned(),
        listen: addr,
        tls,
        next_connection_delay_ms: 1,
        connections,
    };
    let broker_config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: config.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: segment_size,
            max_segment_count: (budget / segment_size).max(2),
            ..RouterConfig::default()
        },
        v4: Some([("embedded".to_owned(), server)].into_iter().collect()),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    let mut broker = Broker::new(broker_config);
    let link_error = |e: rumqttd::local::LinkError| EmbeddedError::Link(e.to_string());
    let (mut sub_tx, sub_rx) = broker.link(FORWARDER_CLIENT_ID).map_err(link_error)?;
    sub_tx.subscribe(filter).map_err(link_error)?;
    let (mut publisher, metas) = broker.link("bridge-latest").map_err(link_error)?;
    // A link of its own: the `latest` publisher belongs to the forwarder's task. The
    // channel names it shows come in on the same link: started before any device
    // connects, it sees every meta as the devices publish it.
    if let Some(meta_filter) = meta_filter {
        publisher.subscribe(meta_filter).map_err(link_error)?;
    }
    let confirmations = broker.link("bridge-confirm").map_err(link_error)?;
    let alerts = broker
        .alerts()
        .map_err(|e| EmbeddedError::Link(e.to_string()))?;
    std::thread::Builder::new()
        .name("rumqttd".to_owned())
        .spawn(move || {
            if let Err(e) = broker.start() {
                error!("embedded broker stopped: {e}");
            }
        })
        .map_err(|error| EmbeddedError::Listen { addr, error })?;

    let probe = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            return Err(EmbeddedError::NotListening(addr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let transport = if config.tls.is_some() {
        "TLS, client certificates required"
    } else {
        "plain MQTT"
    };
    info!(%addr, transport, "embedded MQTT broker listening (acknowledges on receipt, keeps messages in memory)");
    Ok(EmbeddedBroker {
        addr,
        subscription: (sub_tx, sub_rx),
        publisher,
        metas,
        confirmations,
        alerts,
    })
}

/// Hands what the subscription receives to the forwarder until `stop`. Reading stops
/// while the forwarder's channel is full, and the router then stops feeding this link.
/// Once the forwarder has closed its channel (shutdown, after its drain), whatever still
/// arrives was acknowledged to a device and is lost: it is counted.
pub async fn forward(
    _sub_tx: LinkTx,
    mut rx: LinkRx,
    tx: mpsc::Sender<Inbound>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    loop {
        let notification = tokio::select! {
            _ = stop.cancelled() => return,
            notification = rx.next() => notification,
        };
        match notification {
            Ok(Some(Notification::Forward(forward))) => {
                let inbound = Inbound {
                    topic: forward.publish.topic,
                    payload: forward.publish.payload,
                    received_at_ms: now_ms(),
                    ack: Ack::Nothing,
                };
                if tx.is_closed() || tx.send(inbound).await.is_err() {
                    stats.dropped_at_shutdown();
                }
            }
            // The router paused this link because its buffer filled; it resumes it
            // when asked, which is now: the buffered messages have been taken.
            Ok(Some(Notification::Unschedule)) => {
                if rx.wake().await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                error!("embedded broker link closed: {e}");
                return;
            }
        }
    }
}

/// Hands the meta messages the `latest` publisher's link receives to `metas` until
/// `stop`, re-arming the link when rumqttd pauses it.
pub async fn read_metas(mut rx: LinkRx, metas: Arc<Metas>, stop: CancellationToken) {
    loop {
        let notification = tokio::select! {
            _ = stop.cancelled() => return,
            notification = rx.next() => notification,
        };
        match notification {
            Ok(Some(Notification::Forward(forward))) => {
                metas.offer(&forward.publish.topic, &forward.publish.payload);
            }
            Ok(Some(Notification::Unschedule)) => {
                if rx.wake().await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                warn!("embedded broker link for meta messages closed: {e}; channel names stay as they are");
                return;
            }
        }
    }
}

/// Counts and logs each time rumqttd's in-memory log overran the bridge's subscription
/// (rumqttd reports a "cursor jump": the messages in between are gone).
pub async fn watch_overruns(alerts: rumqttd::alerts::AlertsLink, stats: Arc<Stats>) {
    while let Ok(batch) = alerts.next().await {
        for alert in batch {
            // rumqttd does not export the alert kind's type; its name is stable.
            if alert.kind.name() == "cursor_jump" && alert.client_id == FORWARDER_CLIENT_ID {
                stats.embedded_overrun();
                warn!(
                    "the embedded broker's log overran while Kafka was behind ({}): \
                     messages were lost (raise embedded.memory_budget, or use client mode)",
                    alert.kind.description()
                );
            }
        }
    }
}
