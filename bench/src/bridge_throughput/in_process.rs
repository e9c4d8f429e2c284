//! The bridge itself under the bridge bench: the library started in this process on its
//! own runtime (threads `bench-bridge`, so its CPU is told apart from the publishers'),
//! in client mode against a private Mosquitto or in embedded mode, timed from the first
//! publish until its own counter of Kafka-confirmed messages reaches N.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bridge::config::{BridgeConfig, EmbeddedTls, Mode};
use bridge::readiness::BridgeReadiness;
use bridge::stats::{Stats, StatsSnapshot};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::cpu::{mosquitto_pid, CpuWatch};
use super::kafka::{on_fresh_topics, percentiles, Probe};
use super::publishers::{warm_up, Publishers};
use super::registry::Registry;
use super::scenarios::{processes, wait_until, Outcome};
use super::workload::Workload;
use super::Settings;

pub(super) fn bridge_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-bridge")
        .enable_all()
        .build()
        .context("bridge runtime")
}

/// A bridge running on its own runtime (threads `bench-bridge`), so its CPU time is told
/// apart from the publishers'.
struct RunningBridge {
    stats: Arc<Stats>,
    readiness: Arc<BridgeReadiness>,
    mqtt_addr: Option<SocketAddr>,
    stop: oneshot::Sender<()>,
    done: JoinHandle<anyhow::Result<StatsSnapshot>>,
    runtime: tokio::runtime::Runtime,
}

impl RunningBridge {
    async fn start(config: BridgeConfig) -> anyhow::Result<Self> {
        config.validate().context("bench bridge configuration")?;
        let runtime = bridge_runtime()?;
        let (started_tx, started_rx) = oneshot::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let done = runtime.spawn(async move {
            let bridge = bridge::Bridge::start(config).await?;
            let _ = started_tx.send((bridge.stats(), bridge.readiness(), bridge.mqtt_addr()));
            bridge
                .run_until(async {
                    let _ = stop_rx.await;
                })
                .await
        });
        match started_rx.await {
            Ok((stats, readiness, mqtt_addr)) => Ok(RunningBridge {
                stats,
                readiness,
                mqtt_addr,
                stop,
                done,
                runtime,
            }),
            Err(_) => {
                let error = match done.await {
                    Ok(Err(e)) => e,
                    _ => anyhow::anyhow!("the bridge task ended without starting"),
                };
                runtime.shutdown_background();
                Err(error.context("starting the bridge"))
            }
        }
    }

    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let readiness = self.readiness.clone();
        wait_until(Instant::now() + timeout, || readiness.ready())
            .await
            .map(|_| ())
            .with_context(|| {
                format!("the bridge was not ready (MQTT and Kafka connected) within {timeout:?}")
            })
    }

    async fn stop(self) -> anyhow::Result<StatsSnapshot> {
        let _ = self.stop.send(());
        let snapshot = self.done.await.context("the bridge task panicked")?;
        // rumqttd (embedded mode) has no stop: its threads idle until the bench exits.
        self.runtime.shutdown_background();
        snapshot
    }
}

fn bridge_config(
    settings: &Settings,
    mode: Mode,
    prefix: &str,
    topic: &str,
    dlq: &str,
) -> BridgeConfig {
    let mut config = BridgeConfig {
        mode,
        id: testkit::unique_name("bridge"),
        topic_prefix: prefix.to_owned(),
        kafka: settings.kafka(topic, dlq),
        ..BridgeConfig::default()
    };
    config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.embedded.listen = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    config.embedded.allow_anonymous = true;
    config.mqtt.host = "127.0.0.1".to_owned();
    config.mqtt.shared_group = "bench".to_owned();
    config
}

pub(super) async fn bridge_scenario(settings: &Settings, mode: Mode) -> anyhow::Result<Outcome> {
    let workload = Arc::new(Workload::new(settings));
    let topic = testkit::unique_name("data");
    let dlq = testkit::unique_name("dlq");
    let scenario = bridge_run(settings, mode, &workload, &topic, &dlq, None);
    on_fresh_topics(&settings.kafka_brokers, &[&topic, &dlq], scenario).await
}

/// Embedded mode with the gateway registry: logins checked, every frame sealed and
/// checked; with `tls`, over TLS with client certificates as well.
pub(super) async fn sealed_scenario(settings: &Settings, tls: bool) -> anyhow::Result<Outcome> {
    let workload = Workload::new(settings);
    let mut registry = Registry::start(&workload).await?;
    let mut workload = workload.sealed_by(std::mem::take(&mut registry.gateways));
    let certificates = tempfile::tempdir().context("a directory for the certificates")?;
    let mut listener = None;
    if tls {
        let (broker, client) = super::tls::make(certificates.path())?;
        workload = workload.over_tls(client);
        listener = Some(broker);
    }
    let workload = Arc::new(workload);
    let topic = testkit::unique_name("data");
    let dlq = testkit::unique_name("dlq");
    let scenario = bridge_run(
        settings,
        Mode::Embedded,
        &workload,
        &topic,
        &dlq,
        Some((&registry.url, listener)),
    );
    on_fresh_topics(&settings.kafka_brokers, &[&topic, &dlq], scenario).await
}

async fn bridge_run(
    settings: &Settings,
    mode: Mode,
    workload: &Arc<Workload>,
    topic: &str,
    dlq: &str,
    registry: Option<(&str, Option<EmbeddedTls>)>,
) -> anyhow::Result<Outcome> {
    let mosquitto =
        (mode == Mode::Client).then(|| testkit::Mosquitto::start_with(&settings.mosquitto));
    let probe = Probe::start(&settings.kafka_brokers, topic, workload.frames).await?;
    let mut config = bridge_config(settings, mode, &workload.prefix, topic, dlq);
    if let Some(mosquitto) = &mosquitto {
        config.mqtt.port = mosquitto.port();
    }
    if let Some((url, tls)) = registry {
        config.embedded.allow_anonymous = false;
        config.embedded.registry_url = url.to_owned();
        config.embedded.tls = tls;
    }
    let bridge = RunningBridge::start(config).await?;
    let measured = measure_bridge(settings, workload, &bridge, mosquitto.as_ref(), probe).await;
    let snapshot = bridge.stop().await?;
    let mut outcome = measured?;
    if snapshot.dead_lettered + snapshot.failed > 0 {
        outcome.notes.push(format!(
            "UNEXPECTED: {} dead-lettered, {} failed",
            snapshot.dead_lettered, snapshot.failed
        ));
    }
    if snapshot.stale_acks > 0 {
        outcome
            .notes
            .push(format!("{} stale acks", snapshot.stale_acks));
    }
    Ok(outcome)
}

async fn measure_bridge(
    settings: &Settings,
    workload: &Arc<Workload>,
    bridge: &RunningBridge,
    mosquitto: Option<&testkit::Mosquitto>,
    probe: Probe,
) -> anyhow::Result<Outcome> {
    bridge.wait_ready(Duration::from_secs(30)).await?;
    let port = match (mosquitto, bridge.mqtt_addr) {
        (Some(mosquitto), _) => mosquitto.port(),
        (None, Some(addr)) => addr.port(),
        (None, None) => bail!("embedded mode without an MQTT address"),
    };
    let stats = bridge.stats.clone();
    warm_up(
        port,
        workload,
        || stats.snapshot().produced > 0 && probe.saw_warm_up(),
        Duration::from_secs(30),
    )
    .await?;
    // Let straggling warm-up frames settle, then count from here.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = stats.snapshot().produced as usize;
    let target = base + workload.frames;

    let publishers = Publishers::connect(port, workload, settings).await?;
    let mosquitto_pid = mosquitto.and_then(|m| mosquitto_pid(m.port()));
    let cpu = CpuWatch::start(
        &processes(settings, &[("mosquitto", mosquitto_pid)]),
        &probe.tids,
    );
    let publishing = publishers.start(workload, settings.rate);
    let t0 = publishing.t0;
    let end = wait_until(t0 + settings.timeout, || {
        stats.snapshot().produced as usize >= target
    })
    .await;
    let cpu = cpu.stop();
    let produced = (stats.snapshot().produced as usize).saturating_sub(base);
    let last_puback = publishing.last_puback(Duration::from_secs(5)).await;
    let (mut latencies, probed) = probe.finish(Duration::from_secs(10)).await?;
    let mut notes = Vec::new();
    let elapsed = match end {
        Some(end) => end - t0,
        None => {
            notes.push(format!(
                "TIMEOUT: only {produced} of {} confirmed by Kafka within {:?}",
                workload.frames, settings.timeout
            ));
            settings.timeout
        }
    };
    let publishers = match last_puback {
        Ok(at) => Some(at - t0),
        Err(e) => {
            notes.push(format!("publishers: {e:#}"));
            None
        }
    };
    Ok(Outcome {
        delivered: produced.min(workload.frames),
        elapsed,
        publishers,
        latency: percentiles(&mut latencies.end_to_end),
        to_bridge: percentiles(&mut latencies.to_bridge),
        probed,
        cpu,
        notes,
    })
}
