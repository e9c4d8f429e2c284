//! Wires the parts together: the MQTT side (embedded broker or client), the forwarder,
//! the confirmation relay, the metrics record, the HTTP endpoints; and takes them down
//! in the order that loses nothing.
//!
//! Shutdown order: the confirmation relay stops at once (a confirmation is state: the
//! device gets the next one) while the forwarder stops taking messages and waits for
//! Kafka to confirm those in flight, acknowledging them; then the MQTT side sends those
//! acknowledgements and disconnects; then the metrics records are flushed and the HTTP
//! endpoints close.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::producer::{FutureProducer, Producer as _};
use service::http::Readiness as _;
use service::metrics_record::Recorder;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{BridgeConfig, Mode};
use crate::confirm_relay::{ConfirmRelay, ConfirmSink};
use crate::embedded;
use crate::forward::{Forwarder, ForwarderSettings};
use crate::gateway_auth::{self, Authenticator};
use crate::kafka::{create_metrics_producer, ensure_topics, ProducerFactory, QuietContext};
use crate::latest::{Latest, LatestSink};
use crate::meta::Metas;
use crate::mqtt_client::{ClientSource, Outlets};
use crate::readiness::BridgeReadiness;
use crate::seal_check::{SealCheck, SealSettings};
use crate::stats::{Stats, StatsSnapshot};

/// At most this long, embedded mode keeps forwarding at shutdown.
const EMBEDDED_DRAIN: Duration = Duration::from_secs(2);

pub struct Bridge {
    http_addr: SocketAddr,
    mqtt_addr: Option<SocketAddr>,
    stats: Arc<Stats>,
    readiness: Arc<BridgeReadiness>,
    /// `None` when `kafka.metrics_topic` is empty.
    metrics_producer: Option<FutureProducer<QuietContext>>,
    forwarder: JoinHandle<anyhow::Result<()>>,
    source: JoinHandle<()>,
    /// `None` when `kafka.confirm_topic` is empty.
    relay: Option<JoinHandle<()>>,
    http: JoinHandle<()>,
    stop_forwarding: CancellationToken,
    stop_relay: CancellationToken,
    stop_source: CancellationToken,
    stop_rest: CancellationToken,
}

impl Bridge {
    /// Binds the listeners and starts every part. Kafka need not be reachable yet: the
    /// forwarder waits for it (logging) before it takes any message.
    pub async fn start(config: BridgeConfig) -> anyhow::Result<Bridge> {
        let stats = Arc::new(Stats::new());
        let readiness = Arc::new(BridgeReadiness::new(config.forward.stall_after));
        let stop_forwarding = CancellationToken::new();
        let stop_source = CancellationToken::new();
        let stop_relay = CancellationToken::new();
        let stop_rest = CancellationToken::new();

        let (http_addr, http) =
            service::http::serve(&config.http, readiness.clone(), stop_rest.clone()).await?;
        tokio::spawn(watch_progress(
            stats.clone(),
            readiness.clone(),
            stop_rest.clone(),
        ));
        let producers = ProducerFactory {
            config: config.kafka.clone(),
            client_id: config.id.clone(),
            max_in_flight: config.forward.max_in_flight,
            stats: stats.clone(),
            readiness: readiness.clone(),
        };
        let metrics_producer = if config.kafka.metrics_topic.is_empty() {
            None
        } else {
            Some(
                create_metrics_producer(&config.kafka, &config.id)
                    .context("cannot create the Kafka producer (check kafka.properties)")?,
            )
        };

        // Two windows: room for a broker that overshoots Receive Maximum (see
        // mqtt_client.rs) before the MQTT side has to wait.
        let (tx, rx) = mpsc::channel(2 * config.forward.max_in_flight);
        let telemetry = protocol::TopicKind::Telemetry;
        // The channel names `latest` shows, from the devices' meta topics.
        let metas = config.latest.enabled.then(|| {
            Arc::new(Metas::new(
                config.topic_prefix.clone(),
                config.latest.max_devices,
                stats.clone(),
            ))
        });
        let meta_filter = match &metas {
            Some(_) => Some(
                protocol::topic::filter(&config.topic_prefix, protocol::TopicKind::Meta)
                    .map_err(|e| anyhow::anyhow!("topic_prefix: {e}"))?
                    .to_string(),
            ),
            None => None,
        };
        let registry = match (config.mode, config.embedded.registry_url.as_str()) {
            (Mode::Embedded, url) if !url.is_empty() => {
                Some(gateway_auth::registry_pool(url).context("embedded.registry_url")?)
            }
            _ => None,
        };
        let seals = registry.clone().map(|pool| {
            SealCheck::new(
                pool,
                SealSettings {
                    trust_for: config.embedded.auth_cache,
                    rotation_grace: config.embedded.rotation_grace,
                    accept_unsealed: config.embedded.accept_unsealed,
                },
                stats.clone(),
            )
        });
        let (source, sink, confirm_sink, mqtt_addr) = match config.mode {
            Mode::Embedded => {
                let filter = protocol::topic::filter(&config.topic_prefix, telemetry)
                    .map_err(|e| anyhow::anyhow!("topic_prefix: {e}"))?;
                let authenticator = Arc::new(Authenticator::new(
                    config.embedded.users.clone(),
                    registry.clone(),
                    config.embedded.auth_cache,
                    stats.clone(),
                ));
                let broker = embedded::start(
                    &config.embedded,
                    authenticator,
                    &filter,
                    meta_filter.as_deref(),
                )?;
                readiness.set_mqtt(true);
                let (sub_tx, sub_rx) = broker.subscription;
                tokio::spawn(embedded::watch_overruns(broker.alerts, stats.clone()));
                if let Some(metas) = &metas {
                    tokio::spawn(embedded::read_metas(
                        broker.metas,
                        metas.clone(),
                        stop_source.clone(),
                    ));
                }
                let source = tokio::spawn(embedded::forward(
                    sub_tx,
                    sub_rx,
                    tx,
                    stats.clone(),
                    stop_source.clone(),
                ));
                let (link, notifications) = broker.confirmations;
                let confirm_sink = ConfirmSink::Embedded {
                    link,
                    _notifications: notifications,
                };
                (
                    source,
                    LatestSink::Embedded(broker.publisher),
                    confirm_sink,
                    Some(broker.addr),
                )
            }
            Mode::Client => {
                let filter = if config.mqtt.shared_group.is_empty() {
                    protocol::topic::filter(&config.topic_prefix, telemetry)
                } else {
                    protocol::topic::shared_filter(
                        &config.mqtt.shared_group,
                        &config.topic_prefix,
                        telemetry,
                    )
                }
                .map_err(|e| anyhow::anyhow!("topic filter: {e}"))?;
                // Unusable TLS files stop the start, by key; read again at every
                // connection after that.
                if let Some(tls) = &config.mqtt.tls {
                    tls.transport("mqtt")?;
                }
                let client = ClientSource {
                    config: config.mqtt.clone(),
                    client_id: config.id.clone(),
                    filter: filter.to_string(),
                    meta_filter,
                    receive_maximum: config.forward.max_in_flight as u16,
                };
                let (connected, connection) = watch::channel(None);
                let source = tokio::spawn(client.run(Outlets {
                    tx,
                    readiness: readiness.clone(),
                    stats: stats.clone(),
                    stop: stop_source.clone(),
                    connected,
                    metas: metas.clone(),
                }));
                (
                    source,
                    LatestSink::Client(None),
                    ConfirmSink::Client(connection),
                    None,
                )
            }
        };

        let relay = (!config.kafka.confirm_topic.is_empty()).then(|| {
            let relay = ConfirmRelay {
                kafka: config.kafka.clone(),
                client_id: config.id.clone(),
                topic_prefix: config.topic_prefix.clone(),
                sink: confirm_sink,
                stats: stats.clone(),
            };
            tokio::spawn(relay.run(stop_relay.clone()))
        });
        let latest = metas.map(|metas| {
            Latest::new(
                &config.latest,
                config.clock.max_ahead,
                sink,
                metas,
                stats.clone(),
            )
        });
        // rumqttd has acknowledged what it holds: at shutdown, take what is still coming
        // for a moment rather than drop it (client mode leaves it with the broker).
        let drain_on_stop = (config.mode == Mode::Embedded)
            .then(|| config.forward.shutdown_grace.min(EMBEDDED_DRAIN));
        let forwarder = Forwarder::new(
            producers,
            readiness.clone(),
            ForwarderSettings {
                data_topic: config.kafka.topic.clone(),
                dlq_topic: config.kafka.dlq_topic.clone(),
                topic_prefix: config.topic_prefix.clone(),
                max_in_flight: config.forward.max_in_flight,
                drain_on_stop,
                replace_wedged_after: 2 * config.forward.stall_after,
                seals,
            },
            latest,
            stats.clone(),
        )
        .context("cannot create the Kafka producer (check kafka.properties)")?;
        let forwarder = tokio::spawn(forward_when_ready(
            config.clone(),
            forwarder,
            metrics_producer.clone(),
            rx,
            stop_forwarding.clone(),
            stop_rest.clone(),
            readiness.clone(),
        ));
        info!(
            mode = ?config.mode,
            http = %http_addr,
            kafka = %config.kafka.brokers,
            "bridge started"
        );
        Ok(Bridge {
            http_addr,
            mqtt_addr,
            stats,
            readiness,
            metrics_producer,
            forwarder,
            source,
            relay,
            http,
            stop_forwarding,
            stop_relay,
            stop_source,
            stop_rest,
        })
    }

    /// Where `/metrics`, `/livez` and `/readyz` are served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the embedded broker listens (embedded mode only).
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt_addr
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    pub fn readiness(&self) -> Arc<BridgeReadiness> {
        self.readiness.clone()
    }

    /// Runs until `shutdown` completes or forwarding fails, then shuts down gracefully.
    /// Returns the final counters.
    pub async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<StatsSnapshot> {
        let ended_early = tokio::select! {
            _ = shutdown => None,
            result = &mut self.forwarder => Some(result),
        };
        info!("bridge stopping: confirming in-flight messages with Kafka");
        self.stop_forwarding.cancel();
        self.stop_relay.cancel();
        let forwarded = match ended_early {
            Some(result) => result,
            None => (&mut self.forwarder).await,
        };
        // Before the MQTT side goes: the relay publishes through it.
        if let Some(mut relay) = self.relay.take() {
            if tokio::time::timeout(Duration::from_secs(5), &mut relay)
                .await
                .is_err()
            {
                warn!("the confirmation relay did not stop within 5 s");
                relay.abort();
            }
        }
        self.stop_source.cancel();
        if tokio::time::timeout(Duration::from_secs(10), &mut self.source)
            .await
            .is_err()
        {
            warn!("the MQTT side did not stop within 10 s");
            self.source.abort();
        }
        if let Some(producer) = self.metrics_producer.take() {
            let flushed =
                tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
            if !matches!(flushed, Ok(Ok(()))) {
                warn!("some metrics records were not confirmed by Kafka before exit");
            }
        }
        self.stop_rest.cancel();
        let _ = self.http.await;
        let snapshot = self.stats.snapshot();
        info!(
            received = snapshot.received,
            produced = snapshot.produced,
            dead_lettered = snapshot.dead_lettered,
            dropped_at_shutdown = snapshot.dropped_at_shutdown,
            "bridge stopped"
        );
        forwarded.context("the forwarder task panicked")??;
        Ok(snapshot)
    }
}

/// Waits for Kafka and its topics, then forwards; also runs the metrics record.
async fn forward_when_ready(
    config: BridgeConfig,
    forwarder: Forwarder,
    metrics_producer: Option<FutureProducer<QuietContext>>,
    rx: mpsc::Receiver<crate::inbound::Inbound>,
    stop: CancellationToken,
    stop_rest: CancellationToken,
    readiness: Arc<BridgeReadiness>,
) -> anyhow::Result<()> {
    let mut topics = vec![config.kafka.topic.as_str(), config.kafka.dlq_topic.as_str()];
    if !config.kafka.metrics_topic.is_empty() {
        topics.push(config.kafka.metrics_topic.as_str());
    }
    if !ensure_topics(&config.kafka, &topics, &stop).await? {
        return Ok(());
    }
    info!(topics = ?topics, "Kafka topics present");
    if let Some(producer) = metrics_producer {
        tokio::spawn(service::metrics_record::publish_periodically(
            producer,
            config.kafka.metrics_topic.clone(),
            config.id.clone(),
            config.kafka.metrics_interval,
            metrics_record(&config, forwarder.stats().clone(), readiness),
            stop_rest,
        ));
    }
    forwarder
        .run(rx, stop, config.forward.shutdown_grace)
        .await
        .map_err(Into::into)
}

/// Shows the forwarder's counters to the readiness check every second, so a producer
/// that stops confirming while messages wait turns `/readyz` to 503 (see `readiness`).
async fn watch_progress(
    stats: Arc<Stats>,
    readiness: Arc<BridgeReadiness>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let snapshot = stats.snapshot();
                readiness.observe(snapshot.in_flight, snapshot.produced, std::time::Instant::now());
            }
            _ = stop.cancelled() => return,
        }
    }
}

/// The body of the periodic records on the metrics topic
/// (`contracts::metrics::MetricsRecord`).
fn metrics_record(
    config: &BridgeConfig,
    stats: Arc<Stats>,
    readiness: Arc<BridgeReadiness>,
) -> impl FnMut() -> serde_json::Value + Send + 'static {
    let mode = match config.mode {
        Mode::Embedded => "embedded",
        Mode::Client => "client",
    };
    let mut recorder = Recorder::new("bridge", &config.id, &[("mode", mode)]);
    move || {
        let counters = stats.snapshot();
        let rated = [
            ("received", counters.received),
            ("produced", counters.produced),
            ("dead_lettered", counters.dead_lettered),
        ];
        recorder.record(&readiness.checks(), counters, &rated)
    }
}
