//! The bridge bench's load generator: C rumqttc connections publishing the workload's
//! frames at QoS 1 (as fast as PUBACKs return, or paced), counting the PUBACKs, and the
//! warm-up frames that prove the subscriber side is connected before the clock starts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::registry::Gateway;
use super::tls::ClientTls;
use super::workload::Workload;
use super::Settings;

/// Options for a publisher; `login` is (client id suffix, gateway) when the broker
/// authenticates against the registry, `tls` how to reach a TLS listener.
fn mqtt_options(
    port: u16,
    inflight: u16,
    login: Option<(&str, &Gateway)>,
    tls: Option<&ClientTls>,
) -> MqttOptions {
    let client_id = match login {
        Some(("", gateway)) => gateway.id.clone(),
        Some((suffix, gateway)) => format!("{}@{suffix}", gateway.id),
        None => testkit::unique_name("pub"),
    };
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    if let Some((_, gateway)) = login {
        options.set_credentials(gateway.id.clone(), gateway.secret.clone());
    }
    if let Some(tls) = tls {
        options.set_transport(tls.transport());
    }
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_inflight(inflight)
        .set_max_packet_size(1 << 20, 1 << 20);
    options
}

/// Polls until CONNACK, then counts PUBACKs; returns when `expected` have come back,
/// with the instant of the last one.
async fn drive_connection(
    mut eventloop: EventLoop,
    connected: oneshot::Sender<()>,
    expected: usize,
) -> anyhow::Result<Instant> {
    let mut connected = Some(connected);
    let mut acked = 0;
    let mut last = Instant::now();
    while acked < expected || connected.is_some() {
        match eventloop.poll().await.context("publisher connection")? {
            Event::Incoming(Packet::ConnAck(_)) => {
                if let Some(tx) = connected.take() {
                    let _ = tx.send(());
                }
            }
            Event::Incoming(Packet::PubAck(_)) => {
                acked += 1;
                last = Instant::now();
            }
            _ => {}
        }
    }
    Ok(last)
}

struct Connection {
    client: AsyncClient,
    frames: Vec<usize>,
    acks: JoinHandle<anyhow::Result<Instant>>,
}

/// C connected publishers, each with its share of the frames, waiting for `start`.
pub(super) struct Publishers {
    connections: Vec<Connection>,
}

/// Publishing under way: `t0` is the instant the first publish was allowed.
pub(super) struct Publishing {
    pub(super) t0: Instant,
    pub(super) t0_ms: u64,
    sending: Vec<JoinHandle<anyhow::Result<()>>>,
    acks: Vec<JoinHandle<anyhow::Result<Instant>>>,
}

impl Publishers {
    pub(super) async fn connect(
        port: u16,
        workload: &Workload,
        settings: &Settings,
    ) -> anyhow::Result<Self> {
        let mut connections = Vec::new();
        for c in 0..workload.connections {
            let frames = workload.frames_of_connection(c);
            let login = workload.gateway(c).map(|gateway| ("", gateway));
            let (client, eventloop) = AsyncClient::new(
                mqtt_options(port, settings.inflight, login, workload.tls.as_ref()),
                64,
            );
            let (connected_tx, connected_rx) = oneshot::channel();
            let acks = tokio::spawn(drive_connection(eventloop, connected_tx, frames.len()));
            tokio::time::timeout(Duration::from_secs(10), connected_rx)
                .await
                .with_context(|| {
                    format!("publisher {c}: no CONNACK from 127.0.0.1:{port} within 10 s")
                })?
                .with_context(|| format!("publisher {c}: connection failed"))?;
            connections.push(Connection {
                client,
                frames,
                acks,
            });
        }
        Ok(Publishers { connections })
    }

    pub(super) fn start(self, workload: &Arc<Workload>, rate: Option<f64>) -> Publishing {
        let per_connection_interval =
            rate.map(|r| Duration::from_secs_f64(self.connections.len() as f64 / r.max(1.0)));
        let t0 = Instant::now();
        let t0_ms = service::clock::now_ms();
        let mut sending = Vec::new();
        let mut acks = Vec::new();
        for connection in self.connections {
            let workload = workload.clone();
            sending.push(tokio::spawn(publish_frames(
                connection.client,
                workload,
                connection.frames,
                t0,
                per_connection_interval,
            )));
            acks.push(connection.acks);
        }
        Publishing {
            t0,
            t0_ms,
            sending,
            acks,
        }
    }
}

async fn publish_frames(
    client: AsyncClient,
    workload: Arc<Workload>,
    frames: Vec<usize>,
    t0: Instant,
    interval: Option<Duration>,
) -> anyhow::Result<()> {
    for (k, &index) in frames.iter().enumerate() {
        if let Some(interval) = interval {
            tokio::time::sleep_until((t0 + interval.mul_f64(k as f64)).into()).await;
        }
        let payload = workload.payload(index, service::clock::now_ms());
        client
            .publish(
                workload.device(index).topic.as_str(),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .context("publish")?;
    }
    // Keeps the client (and so the request channel) alive until the acks are counted.
    std::future::pending::<()>().await;
    Ok(())
}

impl Publishing {
    /// Waits for every PUBACK; returns the instant of the last one.
    pub(super) async fn last_puback(self, timeout: Duration) -> anyhow::Result<Instant> {
        let mut last = self.t0;
        for acks in self.acks {
            let at = tokio::time::timeout(timeout, acks)
                .await
                .context("publishers: PUBACKs still missing at the timeout")???;
            last = last.max(at);
        }
        for sending in &self.sending {
            sending.abort();
        }
        for sending in self.sending {
            if let Ok(Err(e)) = sending.await {
                return Err(e);
            }
        }
        Ok(last)
    }
}

/// Publishes a warm-up frame every 250 ms until `ready` holds: the subscriber (bridge or
/// pipeline) is subscribed, connected to Kafka, and the latency probe sees its records.
pub(super) async fn warm_up(
    port: u16,
    workload: &Workload,
    ready: impl Fn() -> bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let login = workload.gateway(0).map(|gateway| ("warm-up", gateway));
    let (client, mut eventloop) =
        AsyncClient::new(mqtt_options(port, 10, login, workload.tls.as_ref()), 16);
    let poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let deadline = Instant::now() + timeout;
    let outcome = async {
        loop {
            client
                .publish(
                    workload.warm_up.topic.as_str(),
                    QoS::AtLeastOnce,
                    false,
                    workload.warm_up_payload(service::clock::now_ms()),
                )
                .await?;
            for _ in 0..25 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                if ready() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("warm-up frames did not reach Kafka within {timeout:?}");
            }
        }
    }
    .await;
    poller.abort();
    outcome
}
