//! The bridge bench's scenarios that need no bridge or no Kafka consumer of their own: the
//! Kafka ceiling (rdkafka with the bridge's producer settings), publish-only (the load
//! generator and Mosquitto alone) and the bridge's MQTT side alone; and what every
//! scenario hands back, its `Outcome`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bridge::readiness::BridgeReadiness;
use bridge::stats::Stats;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::cpu::{mosquitto_pid, tansu_pid, CpuReport, CpuWatch};
use super::in_process::bridge_runtime;
use super::kafka::{on_fresh_topics, percentiles, Percentiles, Probe};
use super::publishers::{warm_up, Publishers};
use super::workload::{Workload, WARM_UP_DEVICE};
use super::Settings;

/// One scenario's measurements.
pub(super) struct Outcome {
    /// Messages confirmed by Kafka (by the publishers' broker for `publish-only`).
    pub(super) delivered: usize,
    /// From the first publish to the last confirmation.
    pub(super) elapsed: Duration,
    /// From the first publish to the last PUBACK.
    pub(super) publishers: Option<Duration>,
    pub(super) latency: Option<Percentiles>,
    pub(super) to_bridge: Option<Percentiles>,
    /// Records the latency probe saw (of `delivered`).
    pub(super) probed: usize,
    pub(super) cpu: CpuReport,
    pub(super) notes: Vec<String>,
}

impl Outcome {
    pub(super) fn rate(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub(super) fn publisher_rate(&self, frames: usize) -> Option<f64> {
        self.publishers
            .map(|d| frames as f64 / d.as_secs_f64().max(1e-9))
    }
}

/// Parts that are neither this process's threads nor the named processes: Tansu always.
pub(super) fn processes<'a>(
    settings: &Settings,
    more: &[(&'a str, Option<u32>)],
) -> Vec<(&'a str, u32)> {
    let mut list: Vec<(&str, u32)> = more
        .iter()
        .filter_map(|(name, pid)| Some((*name, (*pid)?)))
        .collect();
    if let Some(pid) = tansu_pid(&settings.kafka_brokers) {
        list.push(("tansu (Kafka)", pid));
    }
    list
}

/// Polls `done` every millisecond; returns the instant it first held, or `None` at the
/// deadline.
pub(super) async fn wait_until(deadline: Instant, done: impl Fn() -> bool) -> Option<Instant> {
    loop {
        if done() {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

pub(super) async fn ceiling(settings: &Settings) -> anyhow::Result<Outcome> {
    let workload = Workload::new(settings);
    let topic = testkit::unique_name("ceil");
    let scenario = ceiling_on(settings, &workload, &topic);
    on_fresh_topics(&settings.kafka_brokers, &[&topic], scenario).await
}

async fn ceiling_on(
    settings: &Settings,
    workload: &Workload,
    topic: &str,
) -> anyhow::Result<Outcome> {
    let probe = Probe::start(&settings.kafka_brokers, topic, workload.frames).await?;
    let kafka = settings.kafka(topic, "unused");
    let producer: FutureProducer =
        bridge::kafka::producer_config(&kafka, "bench-ceiling", settings.max_in_flight)
            .create()
            .context("creating the ceiling producer")?;
    // Warm-up: one record, so the connection and the producer id exist before the clock.
    let warm = workload.warm_up_payload(service::clock::now_ms());
    producer
        .send(
            FutureRecord::to(topic).key(WARM_UP_DEVICE).payload(&warm),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .context("ceiling warm-up record")?;
    let cpu = CpuWatch::start(&processes(settings, &[]), &probe.tids);
    let t0 = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for index in 0..workload.frames {
        while in_flight.len() >= settings.max_in_flight {
            settle(in_flight.next().await)?;
        }
        let device = workload.device(index);
        let payload = workload.payload(index, service::clock::now_ms());
        loop {
            let record = FutureRecord::to(topic)
                .key(device.id.as_str())
                .payload(&payload)
                .headers(bridge::kafka::frame_headers(
                    device.topic.as_bytes(),
                    service::clock::now_ms(),
                ));
            match producer.send_result(record) {
                Ok(delivery) => {
                    in_flight.push(delivery);
                    break;
                }
                Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    settle(in_flight.next().await)?;
                }
                Err((e, _)) => return Err(e).context("ceiling produce"),
            }
        }
    }
    while let Some(delivery) = in_flight.next().await {
        settle(Some(delivery))?;
    }
    let elapsed = t0.elapsed();
    let cpu = cpu.stop();
    let (mut latencies, probed) = probe.finish(Duration::from_secs(10)).await?;
    Ok(Outcome {
        delivered: workload.frames,
        elapsed,
        publishers: None,
        latency: percentiles(&mut latencies.end_to_end),
        to_bridge: None,
        probed,
        cpu,
        notes: Vec::new(),
    })
}

/// What a delivery future yields.
type DeliveryOutcome = <rdkafka::producer::DeliveryFuture as std::future::Future>::Output;

fn settle(delivery: Option<DeliveryOutcome>) -> anyhow::Result<()> {
    match delivery {
        Some(Ok(Ok(_))) => Ok(()),
        Some(Ok(Err((e, _)))) => {
            Err(anyhow::Error::from(e).context("Kafka refused a ceiling record"))
        }
        Some(Err(_)) => bail!("the ceiling producer went away"),
        None => bail!("no delivery in flight"),
    }
}

pub(super) async fn publish_only(settings: &Settings) -> anyhow::Result<Outcome> {
    let workload = Arc::new(Workload::new(settings));
    let mosquitto = testkit::Mosquitto::start_with(&settings.mosquitto);
    let pid = mosquitto_pid(mosquitto.port());
    let publishers = Publishers::connect(mosquitto.port(), &workload, settings).await?;
    let cpu = CpuWatch::start(&processes(settings, &[("mosquitto", pid)]), &HashSet::new());
    let publishing = publishers.start(&workload, settings.rate);
    let t0 = publishing.t0;
    let last = publishing.last_puback(settings.timeout).await?;
    let cpu = cpu.stop();
    Ok(Outcome {
        delivered: workload.frames,
        elapsed: last - t0,
        publishers: Some(last - t0),
        latency: None,
        to_bridge: None,
        probed: 0,
        cpu,
        notes: vec!["no subscriber: Mosquitto drops each message after its PUBACK".to_owned()],
    })
}

/// The bridge's own MQTT client side (`bridge::mqtt_client::ClientSource`: MQTT 5,
/// shared subscription, manual acks, receive maximum = the bridge's window) against a
/// private Mosquitto, with the forwarder replaced by "acknowledge at once": what client
/// mode could reach if Kafka cost nothing.
pub(super) async fn mqtt_side(settings: &Settings) -> anyhow::Result<Outcome> {
    let workload = Arc::new(Workload::new(settings));
    let mosquitto = testkit::Mosquitto::start_with(&settings.mosquitto);
    let port = mosquitto.port();
    let runtime = bridge_runtime()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let readiness = Arc::new(BridgeReadiness::new(
        bridge::config::ForwardConfig::default().stall_after,
    ));
    let acked = Arc::new(AtomicUsize::new(0));
    let filter =
        protocol::topic::shared_filter("bench", &workload.prefix, protocol::TopicKind::Telemetry)
            .map_err(|e| anyhow::anyhow!("filter: {e}"))?;
    let source = bridge::mqtt_client::ClientSource {
        config: bridge::config::MqttClientConfig {
            host: "127.0.0.1".to_owned(),
            port,
            ..Default::default()
        },
        client_id: testkit::unique_name("side"),
        filter: filter.to_string(),
        // The MQTT side alone, as in a bridge with `latest` off.
        meta_filter: None,
        receive_maximum: settings.max_in_flight as u16,
    };
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<bridge::inbound::Inbound>(settings.max_in_flight);
    runtime.spawn(source.run(bridge::mqtt_client::Outlets {
        tx,
        readiness: readiness.clone(),
        stats: Arc::new(Stats::new()),
        stop: stop.clone(),
        connected: tokio::sync::watch::channel(None).0,
        metas: None,
    }));
    runtime.spawn({
        let acked = acked.clone();
        async move {
            while let Some(inbound) = rx.recv().await {
                while inbound.ack.try_send() == bridge::inbound::AckOutcome::QueueFull {
                    tokio::task::yield_now().await;
                }
                acked.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let measured = async {
        wait_until(Instant::now() + Duration::from_secs(10), || {
            readiness.mqtt()
        })
        .await
        .context("the MQTT side did not connect within 10 s")?;
        warm_up(
            port,
            &workload,
            || acked.load(Ordering::Relaxed) > 0,
            Duration::from_secs(30),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let target = acked.load(Ordering::Relaxed) + workload.frames;
        let publishers = Publishers::connect(port, &workload, settings).await?;
        let parts = [("mosquitto", mosquitto_pid(port))];
        let cpu = CpuWatch::start(&processes(settings, &parts), &HashSet::new());
        let publishing = publishers.start(&workload, settings.rate);
        let t0 = publishing.t0;
        let end = wait_until(t0 + settings.timeout, || {
            acked.load(Ordering::Relaxed) >= target
        })
        .await
        .context("the MQTT side did not receive every message in time")?;
        let cpu = cpu.stop();
        let last_puback = publishing.last_puback(Duration::from_secs(5)).await?;
        anyhow::Ok(Outcome {
            delivered: workload.frames,
            elapsed: end - t0,
            publishers: Some(last_puback - t0),
            latency: None,
            to_bridge: None,
            probed: 0,
            cpu,
            notes: vec!["no Kafka: each message acknowledged as soon as it arrives".to_owned()],
        })
    }
    .await;
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    runtime.shutdown_background();
    measured
}
