//! Bridge throughput and latency, measured beside what bounds them on the same machine in
//! the same run.
//!
//! The bar (design brief, "Numbers that matter"): at least 100k messages/s with QoS 1 and
//! acknowledgement after Kafka, on 2 cores, with frames of 50 readings — or the measured
//! reason why not. A throughput figure alone cannot say whether the bridge, the broker,
//! Kafka or the load generator was the limit, so every scenario also records how much CPU
//! each part used and how long it waited for one (/proc schedstat), and the publishers'
//! own rate; the client-mode verdict turns these into CPU per message.
//!
//! Scenarios (all the same workload: N frames of 50 readings from D devices, published at
//! QoS 1 over C MQTT 3.1.1 connections with rumqttc, `inflight` PUBLISHes in flight each;
//! the publishers run in this process and their rate is part of what is measured):
//!
//! 1. `ceiling`: the same N payloads produced straight into Kafka by an rdkafka
//!    FutureProducer built from `bridge::kafka::producer_config` (the bridge's own
//!    settings: idempotent, acks=all, lz4, linger), with the bridge's key, headers and
//!    in-flight window; waits for every delivery report.
//! 2. `publish-only`: the publishers against a private Mosquitto nobody subscribes to:
//!    how fast the load generator and Mosquitto alone take the messages.
//! 3. `mqtt-side`: the bridge's own MQTT client code (`mqtt_client::ClientSource`) on a
//!    private Mosquitto, acknowledging each message at once instead of after Kafka: what
//!    client mode could reach if Kafka cost nothing.
//! 4. `client`: the bridge in-process in client mode, subscribed to a private Mosquitto
//!    (shared subscription, MQTT 5, manual acks after Kafka's delivery report).
//! 5. `embedded`: the bridge in-process in embedded mode; publishers connect to its
//!    rumqttd, which acknowledges on receipt.
//! 6. `shell`: the everyday alternative, `mosquitto_sub -q 1 -F '%t %x' | python` with a
//!    confluent-kafka producer using the same librdkafka settings. mosquitto_sub
//!    acknowledges on receipt: no end-to-end guarantee.
//!
//! Run: `scripts/bench-bridge.sh [-- flags]` (installs the Python producer, exports the
//! stack's addresses), or with the stack's addresses exported yourself
//! (`set -a; . .stack/env; set +a`):
//! `cargo bench -p bridge --bench throughput -- [--frames N] [--devices D]
//! [--connections C] [--inflight I] [--rate MSGS_PER_S] [--only ceiling,client,...]
//! [--timeout SECONDS] [--python PATH]`.
//! The same knobs as environment variables: BENCH_FRAMES (default 200000), BENCH_DEVICES
//! (100), BENCH_CONNECTIONS (4), BENCH_INFLIGHT (1000), BENCH_RATE (total msgs/s to pace
//! the publishers at, for latency at a given load; default unpaced), BENCH_ONLY (all),
//! BENCH_TIMEOUT_S (60, per scenario), BENCH_PYTHON (an interpreter with confluent_kafka;
//! default target/bench-venv/bin/python), BENCH_MOSQUITTO (extra lines for the private
//! Mosquittos' config, `\n`-separated; default `max_inflight_messages 0` as in the stack).
//! Logs: RUST_LOG (default warn).

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bridge::config::{BridgeConfig, KafkaConfig, Mode};
use bridge::health::Health;
use bridge::stats::{Stats, StatsSnapshot};
use futures_util::stream::{FuturesUnordered, StreamExt};
use protocol::{BootId, DeviceId, Frame, Quality, Reading, MAX_FRAME_LEN};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Readings per frame: the size the bar is stated for.
const READINGS_PER_FRAME: usize = 50;
/// Partitions of each run's data topic, as `sensors-data` has.
const PARTITIONS: i32 = 3;
/// Device id of the warm-up frames; the latency probe skips them.
const WARM_UP_DEVICE: &str = "warm-up";
/// Bar from the brief, for the client-mode row.
const BAR_MSGS_PER_S: f64 = 100_000.0;
/// Extra settings of the private Mosquittos, by default the stack's own
/// (`scripts/stack.sh`): no cap on the messages in flight to a subscriber (Mosquitto's
/// default is 20). BENCH_MOSQUITTO replaces them (`\n` between lines).
const MOSQUITTO_SETTINGS: &str = "max_inflight_messages 0";

// ---------------------------------------------------------------------------------------
// Settings

#[derive(Debug, Clone)]
struct Settings {
    frames: usize,
    devices: usize,
    connections: usize,
    inflight: u16,
    /// Total publish rate in messages/s; `None` publishes as fast as PUBACKs come back.
    rate: Option<f64>,
    timeout: Duration,
    only: Vec<String>,
    python: PathBuf,
    kafka_brokers: String,
    /// Extra lines for the private Mosquittos' configuration.
    mosquitto: String,
    /// The bridge's in-flight window (its default), also the ceiling producer's.
    max_in_flight: usize,
}

const SCENARIOS: [&str; 6] = [
    "ceiling",
    "publish-only",
    "mqtt-side",
    "client",
    "embedded",
    "shell",
];

/// Flag (`--frames N`) and environment variable of each knob; flags win.
const KNOBS: [(&str, &str); 8] = [
    ("frames", "BENCH_FRAMES"),
    ("devices", "BENCH_DEVICES"),
    ("connections", "BENCH_CONNECTIONS"),
    ("inflight", "BENCH_INFLIGHT"),
    ("rate", "BENCH_RATE"),
    ("only", "BENCH_ONLY"),
    ("timeout", "BENCH_TIMEOUT_S"),
    ("python", "BENCH_PYTHON"),
];

impl Settings {
    fn load() -> Self {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mut values: HashMap<String, String> = KNOBS
            .into_iter()
            .filter_map(|(key, var)| Some((key.to_owned(), env(var)?)))
            .collect();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            // `cargo bench` passes --bench to every bench binary.
            if arg == "--bench" {
                continue;
            }
            let key = arg
                .strip_prefix("--")
                .filter(|k| KNOBS.iter().any(|(flag, _)| flag == k))
                .unwrap_or_else(|| panic!("unknown argument {arg:?}; see the doc comment of bridge/benches/throughput.rs"));
            let value = args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
            values.insert(key.to_owned(), value);
        }
        let number = |key: &str, default: usize| -> usize {
            values.get(key).map_or(default, |v| {
                v.replace('_', "")
                    .parse()
                    .unwrap_or_else(|_| panic!("{key} = {v:?} is not a whole number"))
            })
        };
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let settings = Settings {
            frames: number("frames", 200_000),
            devices: number("devices", 100),
            connections: number("connections", 4),
            inflight: u16::try_from(number("inflight", 1000)).expect("inflight: at most 65535"),
            rate: values.get("rate").map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("rate = {v:?} is not a number"))
            }),
            timeout: Duration::from_secs(number("timeout", 60) as u64),
            only: values.get("only").map_or_else(
                || SCENARIOS.iter().map(|s| s.to_string()).collect(),
                |v| v.split(',').map(|s| s.trim().to_owned()).collect(),
            ),
            python: values.get("python").map_or_else(
                || workspace.join("target/bench-venv/bin/python"),
                PathBuf::from,
            ),
            kafka_brokers: testkit::kafka_brokers(),
            mosquitto: env("BENCH_MOSQUITTO")
                .map_or_else(|| MOSQUITTO_SETTINGS.to_owned(), |v| v.replace("\\n", "\n")),
            max_in_flight: bridge::config::ForwardConfig::default().max_in_flight,
        };
        assert!(settings.frames > 0, "frames: at least 1");
        assert!(
            (1..=10_000).contains(&settings.devices),
            "devices: between 1 and 10000"
        );
        assert!(
            (1..=settings.devices).contains(&settings.connections),
            "connections: between 1 and the number of devices"
        );
        assert!(settings.inflight > 0, "inflight: at least 1");
        for name in &settings.only {
            assert!(
                SCENARIOS.contains(&name.as_str()),
                "unknown scenario {name:?}; known: {SCENARIOS:?}"
            );
        }
        settings
    }

    fn wants(&self, scenario: &str) -> bool {
        self.only.iter().any(|s| s == scenario)
    }

    fn kafka(&self, topic: &str, dlq_topic: &str) -> KafkaConfig {
        KafkaConfig {
            brokers: self.kafka_brokers.clone(),
            topic: topic.to_owned(),
            dlq_topic: dlq_topic.to_owned(),
            metrics_topic: String::new(),
            ..KafkaConfig::default()
        }
    }
}

// ---------------------------------------------------------------------------------------
// The workload

struct Device {
    id: DeviceId,
    topic: String,
}

/// N frames; frame `i` comes from device `i % D`, and device `d` publishes over
/// connection `d % C`, so each device's frames stay in order on one connection.
struct Workload {
    prefix: String,
    devices: Vec<Device>,
    frames: usize,
    connections: usize,
    warm_up: Device,
}

impl Workload {
    /// Topics under a fresh prefix, so no other subscriber of the broker sees them.
    fn new(settings: &Settings) -> Self {
        let prefix = testkit::unique_name("bench");
        let device = |id: String, line: usize| Device {
            topic: format!("{prefix}/bench/line-{line}/{id}/telemetry"),
            id: DeviceId::new(&id).expect("bench device ids are valid"),
        };
        let devices = (0..settings.devices)
            .map(|d| device(format!("dev-{d:04}"), d % 4))
            .collect();
        let warm_up = device(WARM_UP_DEVICE.to_owned(), 0);
        Workload {
            prefix,
            devices,
            frames: settings.frames,
            connections: settings.connections,
            warm_up,
        }
    }

    fn device(&self, frame: usize) -> &Device {
        &self.devices[frame % self.devices.len()]
    }

    fn frames_of_connection(&self, connection: usize) -> Vec<usize> {
        (0..self.frames)
            .filter(|i| (i % self.devices.len()) % self.connections == connection)
            .collect()
    }

    /// Frame `index`, stamped with `ts_ms` (the publish time the latency is measured
    /// from): 5 channels sampled every 100 ms, 50 readings.
    fn payload(&self, index: usize, ts_ms: u64) -> Vec<u8> {
        let device = self.device(index);
        let first_seq = (index / self.devices.len() * READINGS_PER_FRAME) as u64;
        encode_frame(&device.id, first_seq, ts_ms, index)
    }

    fn warm_up_payload(&self, ts_ms: u64) -> Vec<u8> {
        encode_frame(&self.warm_up.id, 0, ts_ms, 0)
    }

    fn filter(&self) -> String {
        format!("{}/+/+/+/telemetry", self.prefix)
    }
}

fn encode_frame(device: &DeviceId, first_seq: u64, ts_ms: u64, salt: usize) -> Vec<u8> {
    let mut frame = Frame::new(device.clone(), BootId(*b"benchrun"), first_seq, ts_ms);
    for r in 0..READINGS_PER_FRAME {
        let reading = Reading {
            channel: (r % 5) as u8,
            offset_ms: (r / 5) as u32 * 100,
            value: 20.0 + ((salt * READINGS_PER_FRAME + r) % 1000) as f32 * 0.01,
            quality: Quality::empty(),
        };
        frame
            .readings
            .push(reading)
            .expect("50 readings fit a frame");
    }
    let mut buf = [0u8; MAX_FRAME_LEN];
    frame
        .encode(&mut buf)
        .expect("bench frames are valid")
        .to_vec()
}

// ---------------------------------------------------------------------------------------
// Kafka: topics and the latency probe

fn kafka_client(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    config
}

async fn create_topics(brokers: &str, names: &[&str]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka_client(brokers).create()?;
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|name| NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&topics, &options).await? {
        result.map_err(|(name, code)| anyhow::anyhow!("creating Kafka topic {name}: {code}"))?;
    }
    Ok(())
}

/// Frees the broker's memory (Tansu keeps topics in memory); failure only warns.
async fn delete_topics(brokers: &str, names: &[&str]) {
    let deleted = async {
        let admin: AdminClient<DefaultClientContext> = kafka_client(brokers).create()?;
        admin.delete_topics(names, &AdminOptions::new()).await?;
        anyhow::Ok(())
    };
    if let Err(e) = deleted.await {
        eprintln!("note: could not delete topics {names:?}: {e}");
    }
}

/// Publish-to-consume latencies in ms, and publish-to-bridge (the bridge's
/// `received-at-ms` header) when the records carry it.
#[derive(Default)]
struct Latencies {
    end_to_end: Vec<u32>,
    to_bridge: Vec<u32>,
}

/// A consumer on its own thread reading the data topic while the scenario runs; for each
/// record, consume time minus the frame's `base_ts_ms` (stamped at publish), in ms.
struct Probe {
    seen: Arc<AtomicUsize>,
    warm: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    expected: usize,
    thread: Option<std::thread::JoinHandle<anyhow::Result<Latencies>>>,
    /// Its librdkafka threads, told apart from the producer's in the CPU table.
    tids: HashSet<u32>,
}

impl Probe {
    /// Returns once the consumer holds all partitions from their beginning (manual
    /// assignment: no group rebalance delay can inflate the first latencies).
    async fn start(brokers: &str, topic: &str, expected: usize) -> anyhow::Result<Probe> {
        let before = thread_ids();
        let consumer: BaseConsumer = kafka_client(brokers)
            .set("group.id", testkit::unique_name("group"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .context("creating the latency consumer")?;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let seen = Arc::new(AtomicUsize::new(0));
        let warm = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("bench-latency".to_owned())
            .spawn({
                let (seen, warm, stop) = (seen.clone(), warm.clone(), stop.clone());
                let topic = topic.to_owned();
                move || {
                    consumer
                        .fetch_metadata(Some(&topic), Duration::from_secs(10))
                        .context("latency consumer: Kafka metadata")?;
                    let _ = ready_tx.send(());
                    consume(&consumer, expected, &seen, &warm, &stop)
                }
            })?;
        ready_rx
            .await
            .context("the latency consumer could not reach Kafka")?;
        let tids = thread_ids().difference(&before).copied().collect();
        Ok(Probe {
            seen,
            warm,
            stop,
            expected,
            thread: Some(thread),
            tids,
        })
    }

    fn saw_warm_up(&self) -> bool {
        self.warm.load(Ordering::Relaxed)
    }

    /// Waits up to `wait` for the consumer to see every record, then stops it.
    async fn finish(mut self, wait: Duration) -> anyhow::Result<(Latencies, usize)> {
        let deadline = Instant::now() + wait;
        while self.seen.load(Ordering::Relaxed) < self.expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        let thread = self
            .thread
            .take()
            .context("latency consumer already joined")?;
        let latencies = tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the latency consumer panicked"))??;
        let seen = latencies.end_to_end.len();
        Ok((latencies, seen))
    }
}

/// A scenario that failed before `finish` still stops the consumer thread.
impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn consume(
    consumer: &BaseConsumer,
    expected: usize,
    seen: &AtomicUsize,
    warm: &AtomicBool,
    stop: &AtomicBool,
) -> anyhow::Result<Latencies> {
    let mut latencies = Latencies::default();
    while latencies.end_to_end.len() < expected && !stop.load(Ordering::Relaxed) {
        let message = match consumer.poll(Duration::from_millis(50)) {
            None => continue,
            Some(Err(e)) => {
                eprintln!("latency consumer: {e}");
                continue;
            }
            Some(Ok(message)) => message,
        };
        let consumed_ms = service::clock::now_ms();
        if message.key() == Some(WARM_UP_DEVICE.as_bytes()) {
            warm.store(true, Ordering::Relaxed);
            continue;
        }
        let frame = Frame::decode(message.payload().unwrap_or_default())
            .context("latency consumer: a record that is not a frame")?;
        latencies
            .end_to_end
            .push(consumed_ms.saturating_sub(frame.base_ts_ms) as u32);
        let received_at = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == protocol::kafka::headers::RECEIVED_AT_MS)
                .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse::<u64>().ok())
        });
        if let Some(received_at) = received_at {
            latencies
                .to_bridge
                .push(received_at.saturating_sub(frame.base_ts_ms) as u32);
        }
        seen.store(latencies.end_to_end.len(), Ordering::Relaxed);
    }
    Ok(latencies)
}

#[derive(Debug, Clone, Copy)]
struct Percentiles {
    p50: u32,
    p90: u32,
    p99: u32,
    max: u32,
}

fn percentiles(values: &mut [u32]) -> Option<Percentiles> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    Some(Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: values[values.len() - 1],
    })
}

// ---------------------------------------------------------------------------------------
// MQTT publishers

fn mqtt_options(port: u16, inflight: u16) -> MqttOptions {
    let mut options = MqttOptions::new(testkit::unique_name("pub"), "127.0.0.1", port);
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
struct Publishers {
    connections: Vec<Connection>,
}

/// Publishing under way: `t0` is the instant the first publish was allowed.
struct Publishing {
    t0: Instant,
    t0_ms: u64,
    sending: Vec<JoinHandle<anyhow::Result<()>>>,
    acks: Vec<JoinHandle<anyhow::Result<Instant>>>,
}

impl Publishers {
    async fn connect(port: u16, workload: &Workload, settings: &Settings) -> anyhow::Result<Self> {
        let mut connections = Vec::new();
        for c in 0..workload.connections {
            let frames = workload.frames_of_connection(c);
            let (client, eventloop) = AsyncClient::new(mqtt_options(port, settings.inflight), 64);
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

    fn start(self, workload: &Arc<Workload>, rate: Option<f64>) -> Publishing {
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
    async fn last_puback(self, timeout: Duration) -> anyhow::Result<Instant> {
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
async fn warm_up(
    port: u16,
    workload: &Workload,
    ready: impl Fn() -> bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let (client, mut eventloop) = AsyncClient::new(mqtt_options(port, 10), 16);
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

// ---------------------------------------------------------------------------------------
// CPU accounting from /proc

/// Time a thread (or the threads of a process, summed) spent running on a CPU and
/// runnable but waiting for one (/proc/.../schedstat), in ns.
#[derive(Debug, Clone, Copy, Default)]
struct Sched {
    run_ns: u64,
    wait_ns: u64,
}

impl Sched {
    fn read(path: &str) -> Option<Sched> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
        Some(Sched {
            run_ns: fields.next()??,
            wait_ns: fields.next()??,
        })
    }

    fn add(self, other: Sched) -> Sched {
        Sched {
            run_ns: self.run_ns + other.run_ns,
            wait_ns: self.wait_ns + other.wait_ns,
        }
    }

    fn since(self, before: Sched) -> Sched {
        Sched {
            run_ns: self.run_ns.saturating_sub(before.run_ns),
            wait_ns: self.wait_ns.saturating_sub(before.wait_ns),
        }
    }
}

fn task_ids(dir: &str) -> Vec<u32> {
    std::fs::read_dir(dir)
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn thread_ids() -> HashSet<u32> {
    task_ids("/proc/self/task").into_iter().collect()
}

/// Every thread of this process: (name, schedstat).
fn own_threads() -> HashMap<u32, (String, Sched)> {
    task_ids("/proc/self/task")
        .into_iter()
        .filter_map(|tid| {
            let name = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).ok()?;
            let sched = Sched::read(&format!("/proc/self/task/{tid}/schedstat"))?;
            Some((tid, (name.trim().to_owned(), sched)))
        })
        .collect()
}

/// All threads of another process, summed.
fn process_sched(pid: u32) -> Option<Sched> {
    let tasks = task_ids(&format!("/proc/{pid}/task"));
    (!tasks.is_empty()).then(|| {
        tasks
            .iter()
            .filter_map(|tid| Sched::read(&format!("/proc/{pid}/task/{tid}/schedstat")))
            .fold(Sched::default(), Sched::add)
    })
}

/// Every process on the machine: (name, user + system ticks of all its threads).
fn all_processes() -> HashMap<u32, (String, u64)> {
    task_ids("/proc")
        .into_iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1.to_owned();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some((pid, (name, ticks)))
        })
        .collect()
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// (busy, total) ticks of the whole machine.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let numbers: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = numbers.iter().take(8).sum();
    let idle = numbers.get(3).copied().unwrap_or(0) + numbers.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// What part of the system a thread of this process belongs to.
fn thread_part(name: &str, tid: u32, probe: &HashSet<u32>) -> &'static str {
    if probe.contains(&tid) || name.starts_with("bench-latency") {
        "latency consumer"
    } else if name.starts_with("bench-publish") {
        "publishers (bench)"
    } else if name.starts_with("bench-bridge") {
        "bridge tasks"
    } else if name.starts_with("rdk:") || name.starts_with("producer poll") {
        "librdkafka producer"
    } else if name == "embedded" || name == "timer" || name.starts_with("router-") {
        "rumqttd threads"
    } else {
        "bench other"
    }
}

/// One part's share of the measured interval, in % of one core: running, and runnable
/// but waiting for a CPU (a part that runs + waits close to 100% per thread was never
/// idle: it was limited by CPU it could not get).
#[derive(Debug, Clone, Default)]
struct Part {
    name: String,
    run: f64,
    wait: f64,
}

#[derive(Debug, Clone, Default)]
struct CpuReport {
    /// Busy share of the whole machine, % of one core (200 = both cores busy).
    machine: f64,
    parts: Vec<Part>,
    /// Processes that are no part of the scenario, by name, largest first.
    others: Vec<(String, f64)>,
}

impl CpuReport {
    fn part(&self, name: &str) -> Option<&Part> {
        self.parts.iter().find(|p| p.name == name)
    }
}

/// CPU used by each part between `start` and `stop`.
struct CpuWatch {
    at: Instant,
    machine: (u64, u64),
    threads: HashMap<u32, (String, Sched)>,
    processes: Vec<(String, u32, Sched)>,
    everything: HashMap<u32, (String, u64)>,
    probe: HashSet<u32>,
}

impl CpuWatch {
    fn start(processes: &[(&str, u32)], probe: &HashSet<u32>) -> Self {
        CpuWatch {
            at: Instant::now(),
            machine: machine_ticks(),
            threads: own_threads(),
            processes: processes
                .iter()
                .filter_map(|(name, pid)| Some((name.to_string(), *pid, process_sched(*pid)?)))
                .collect(),
            everything: all_processes(),
            probe: probe.clone(),
        }
    }

    fn stop(self) -> CpuReport {
        let wall_ns = self.at.elapsed().as_nanos().max(1) as f64;
        let mut parts: Vec<Part> = Vec::new();
        let mut add = |name: &str, used: Sched| {
            let index = match parts.iter().position(|p| p.name == name) {
                Some(index) => index,
                None => {
                    parts.push(Part {
                        name: name.to_owned(),
                        ..Part::default()
                    });
                    parts.len() - 1
                }
            };
            parts[index].run += used.run_ns as f64 / wall_ns * 100.0;
            parts[index].wait += used.wait_ns as f64 / wall_ns * 100.0;
        };
        for (tid, (name, now)) in own_threads() {
            let before = self.threads.get(&tid).map_or(Sched::default(), |(_, s)| *s);
            add(thread_part(&name, tid, &self.probe), now.since(before));
        }
        for (name, pid, before) in &self.processes {
            if let Some(now) = process_sched(*pid) {
                add(name, now.since(*before));
            }
        }
        parts.retain(|p| p.run >= 0.5);
        parts.sort_by(|a, b| b.run.total_cmp(&a.run));
        CpuReport {
            machine: self.machine_share(),
            parts,
            others: self.others(),
        }
    }

    fn machine_share(&self) -> f64 {
        let (busy, total) = machine_ticks();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        busy.saturating_sub(self.machine.0) as f64
            / total.saturating_sub(self.machine.1).max(1) as f64
            * cores
            * 100.0
    }

    /// Everything else that ran meanwhile (on a shared machine: other people's builds).
    fn others(&self) -> Vec<(String, f64)> {
        let seconds = self.at.elapsed().as_secs_f64().max(1e-3);
        let hz = clock_ticks_per_second();
        let mut known: HashSet<u32> = self.processes.iter().map(|(_, pid, _)| *pid).collect();
        known.insert(std::process::id());
        let mut others: Vec<(String, f64)> = Vec::new();
        for (pid, (name, ticks)) in all_processes() {
            if known.contains(&pid) {
                continue;
            }
            let before = self.everything.get(&pid).map_or(0, |(_, t)| *t);
            let pct = ticks.saturating_sub(before) as f64 / hz / seconds * 100.0;
            match others.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => *v += pct,
                None => others.push((name, pct)),
            }
        }
        others.retain(|(_, v)| *v >= 2.0);
        others.sort_by(|a, b| b.1.total_cmp(&a.1));
        others
    }
}

/// Pid of the process whose command line satisfies `matches`.
fn find_process(matches: impl Fn(&[String]) -> bool) -> Option<u32> {
    task_ids("/proc").into_iter().find(|pid| {
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        matches(&args)
    })
}

fn tansu_pid(brokers: &str) -> Option<u32> {
    let port = brokers.rsplit(':').next()?.to_owned();
    find_process(|args| {
        args.first().is_some_and(|a| a.ends_with("tansu"))
            && args.iter().any(|a| a.ends_with(&format!(":{port}")))
    })
}

/// The private Mosquitto on `port`: found through the `listener` line of its config file.
fn mosquitto_pid(port: u16) -> Option<u32> {
    let listener = format!("listener {port} ");
    find_process(|args| {
        args.first().is_some_and(|a| a.ends_with("mosquitto"))
            && args.get(2).is_some_and(|conf| {
                std::fs::read_to_string(conf).is_ok_and(|text| text.contains(&listener))
            })
    })
}

// ---------------------------------------------------------------------------------------
// Scenarios

/// One scenario's measurements.
struct Outcome {
    /// Messages confirmed by Kafka (by the publishers' broker for `publish-only`).
    delivered: usize,
    /// From the first publish to the last confirmation.
    elapsed: Duration,
    /// From the first publish to the last PUBACK.
    publishers: Option<Duration>,
    latency: Option<Percentiles>,
    to_bridge: Option<Percentiles>,
    /// Records the latency probe saw (of `delivered`).
    probed: usize,
    cpu: CpuReport,
    notes: Vec<String>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn publisher_rate(&self, frames: usize) -> Option<f64> {
        self.publishers
            .map(|d| frames as f64 / d.as_secs_f64().max(1e-9))
    }
}

/// Parts that are neither this process's threads nor the named processes: Tansu always.
fn processes<'a>(settings: &Settings, more: &[(&'a str, Option<u32>)]) -> Vec<(&'a str, u32)> {
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
async fn wait_until(deadline: Instant, done: impl Fn() -> bool) -> Option<Instant> {
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

async fn ceiling(settings: &Settings) -> anyhow::Result<Outcome> {
    let workload = Workload::new(settings);
    let topic = testkit::unique_name("ceil");
    create_topics(&settings.kafka_brokers, &[&topic]).await?;
    let outcome = ceiling_on(settings, &workload, &topic).await;
    delete_topics(&settings.kafka_brokers, &[&topic]).await;
    outcome
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

async fn publish_only(settings: &Settings) -> anyhow::Result<Outcome> {
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
async fn mqtt_side(settings: &Settings) -> anyhow::Result<Outcome> {
    let workload = Arc::new(Workload::new(settings));
    let mosquitto = testkit::Mosquitto::start_with(&settings.mosquitto);
    let port = mosquitto.port();
    let runtime = bridge_runtime()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let health = Arc::new(Health::default());
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
        health: health.clone(),
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
        wait_until(Instant::now() + Duration::from_secs(10), || health.mqtt())
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

fn bridge_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
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
    health: Arc<Health>,
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
            let _ = started_tx.send((bridge.stats(), bridge.health(), bridge.mqtt_addr()));
            bridge
                .run_until(async {
                    let _ = stop_rx.await;
                })
                .await
        });
        match started_rx.await {
            Ok((stats, health, mqtt_addr)) => Ok(RunningBridge {
                stats,
                health,
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
        let health = self.health.clone();
        wait_until(Instant::now() + timeout, || health.ready())
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
    config.mqtt.host = "127.0.0.1".to_owned();
    config.mqtt.shared_group = "bench".to_owned();
    config
}

async fn bridge_scenario(settings: &Settings, mode: Mode) -> anyhow::Result<Outcome> {
    let workload = Arc::new(Workload::new(settings));
    let topic = testkit::unique_name("data");
    let dlq = testkit::unique_name("dlq");
    create_topics(&settings.kafka_brokers, &[&topic, &dlq]).await?;
    let outcome = bridge_run(settings, mode, &workload, &topic, &dlq).await;
    delete_topics(&settings.kafka_brokers, &[&topic, &dlq]).await;
    outcome
}

async fn bridge_run(
    settings: &Settings,
    mode: Mode,
    workload: &Arc<Workload>,
    topic: &str,
    dlq: &str,
) -> anyhow::Result<Outcome> {
    let mosquitto =
        (mode == Mode::Client).then(|| testkit::Mosquitto::start_with(&settings.mosquitto));
    let probe = Probe::start(&settings.kafka_brokers, topic, workload.frames).await?;
    let mut config = bridge_config(settings, mode, &workload.prefix, topic, dlq);
    if let Some(mosquitto) = &mosquitto {
        config.mqtt.port = mosquitto.port();
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

/// The shell pipeline's Kafka producer: hex payload lines from mosquitto_sub on stdin,
/// produced with the given librdkafka settings, keyed by the topic's device. Prints one
/// line when `expected` data records are confirmed, then drains stdin until EOF so the
/// bench can read its CPU time before it exits.
const PIPELINE_PRODUCER: &str = r#"
import json, sys, time
from confluent_kafka import Producer

brokers, topic, expected, settings = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
settings["bootstrap.servers"] = brokers
producer = Producer(settings)
delivered = failed = 0

def report(err, _msg):
    global delivered, failed
    if err is None:
        delivered += 1
    else:
        failed += 1

data = 0
for line in sys.stdin:
    mqtt_topic, _, hex_payload = line.rstrip("\n").partition(" ")
    device = mqtt_topic.split("/")[3]
    while True:
        try:
            producer.produce(topic, bytes.fromhex(hex_payload), key=device, on_delivery=report)
            break
        except BufferError:
            producer.poll(0.005)
    producer.poll(0)
    if device != "warm-up":
        data += 1
        if data == expected:
            break
producer.flush()
print(f"delivered={delivered} failed={failed} done_ms={int(time.time() * 1000)}", flush=True)
for _ in sys.stdin:
    pass
"#;

fn python_can_produce(python: &Path) -> anyhow::Result<()> {
    let output = Command::new(python)
        .args(["-c", "import confluent_kafka"])
        .output()
        .with_context(|| format!("cannot run {} (set BENCH_PYTHON, or run scripts/bench-bridge.sh, which creates target/bench-venv)", python.display()))?;
    if !output.status.success() {
        bail!(
            "{} cannot import confluent_kafka (run scripts/bench-bridge.sh, which installs it): {}",
            python.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Children of the shell pipeline; killed when dropped.
struct Pipeline {
    subscriber: Child,
    producer: Child,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        for child in [&mut self.subscriber, &mut self.producer] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_pipeline(
    settings: &Settings,
    port: u16,
    workload: &Workload,
    topic: &str,
) -> anyhow::Result<(Pipeline, std::sync::mpsc::Receiver<String>)> {
    let mut subscriber = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-i", &testkit::unique_name("sub"), "-t", &workload.filter()])
        .args(["-F", "%t %x"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting mosquitto_sub (apt-get install mosquitto-clients)")?;
    let stdout = subscriber.stdout.take().context("mosquitto_sub stdout")?;
    let kafka = settings.kafka(topic, "unused");
    let mut properties: HashMap<String, String> =
        bridge::kafka::producer_config(&kafka, "bench-pipeline", settings.max_in_flight)
            .config_map()
            .clone();
    properties.remove("bootstrap.servers");
    properties.remove("statistics.interval.ms");
    let mut producer = Command::new(&settings.python)
        .args(["-c", PIPELINE_PRODUCER, &settings.kafka_brokers, topic])
        .arg(workload.frames.to_string())
        .arg(serde_json::to_string(&properties)?)
        .stdin(Stdio::from(stdout))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the Python producer")?;
    let lines = producer.stdout.take().context("python stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(lines).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    Ok((
        Pipeline {
            subscriber,
            producer,
        },
        rx,
    ))
}

/// Parses `delivered=N failed=F done_ms=T`.
fn parse_done(line: &str) -> anyhow::Result<(usize, usize, u64)> {
    let field = |name: &str| -> anyhow::Result<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("no {name} in {line:?}"))?
            .parse()
            .with_context(|| format!("{name} in {line:?}"))
    };
    Ok((
        field("delivered")? as usize,
        field("failed")? as usize,
        field("done_ms")?,
    ))
}

async fn shell(settings: &Settings) -> anyhow::Result<Outcome> {
    python_can_produce(&settings.python)?;
    let workload = Arc::new(Workload::new(settings));
    let topic = testkit::unique_name("shell");
    create_topics(&settings.kafka_brokers, &[&topic]).await?;
    let outcome = shell_on(settings, &workload, &topic).await;
    delete_topics(&settings.kafka_brokers, &[&topic]).await;
    outcome
}

async fn shell_on(
    settings: &Settings,
    workload: &Arc<Workload>,
    topic: &str,
) -> anyhow::Result<Outcome> {
    let mosquitto = testkit::Mosquitto::start_with(&settings.mosquitto);
    let port = mosquitto.port();
    let probe = Probe::start(&settings.kafka_brokers, topic, workload.frames).await?;
    let (pipeline, lines) = spawn_pipeline(settings, port, workload, topic)?;
    warm_up(
        port,
        workload,
        || probe.saw_warm_up(),
        Duration::from_secs(30),
    )
    .await?;
    let publishers = Publishers::connect(port, workload, settings).await?;
    let parts = [
        ("mosquitto", mosquitto_pid(port)),
        ("mosquitto_sub", Some(pipeline.subscriber.id())),
        ("python producer", Some(pipeline.producer.id())),
    ];
    let cpu = CpuWatch::start(&processes(settings, &parts), &probe.tids);
    let publishing = publishers.start(workload, settings.rate);
    let (t0, t0_ms) = (publishing.t0, publishing.t0_ms);
    let timeout = settings.timeout;
    let line = tokio::task::spawn_blocking(move || lines.recv_timeout(timeout)).await?;
    let cpu = cpu.stop();
    let last_puback = publishing.last_puback(Duration::from_secs(5)).await;
    drop(pipeline);
    let (mut latencies, probed) = probe.finish(Duration::from_secs(10)).await?;
    let line = line.map_err(|_| {
        anyhow::anyhow!(
            "the pipeline did not confirm {} records within {timeout:?}",
            workload.frames
        )
    })?;
    let (delivered, failed, done_ms) = parse_done(&line)?;
    let mut notes =
        vec!["mosquitto_sub acks on receipt: no end-to-end guarantee; no Kafka headers".to_owned()];
    if failed > 0 {
        notes.push(format!("{failed} records failed in the Python producer"));
    }
    Ok(Outcome {
        // `delivered` counts the warm-up records too.
        delivered: delivered.min(workload.frames),
        elapsed: Duration::from_millis(done_ms.saturating_sub(t0_ms)),
        publishers: last_puback.ok().map(|at| at - t0),
        latency: percentiles(&mut latencies.end_to_end),
        to_bridge: None,
        probed,
        cpu,
        notes,
    })
}

// ---------------------------------------------------------------------------------------
// Report

fn machine_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kib: u64 = m.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.0} GiB", kib as f64 / 1024.0 / 1024.0))
        })
        .unwrap_or_default();
    format!("{cores} cores (nproc), {model}, {memory} RAM")
}

fn date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn fmt_rate(rate: f64) -> String {
    let s = format!("{:.0}", rate);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `name run` and, when it waited noticeably for a CPU, `(+wait waiting)`.
fn fmt_part(part: &Part) -> String {
    if part.wait >= 5.0 {
        format!("{} {:.0} (+{:.0} waiting)", part.name, part.run, part.wait)
    } else {
        format!("{} {:.0}", part.name, part.run)
    }
}

fn fmt_latency(p: Option<Percentiles>) -> String {
    p.map_or("-".to_owned(), |p| {
        format!("{}/{}/{}/{}", p.p50, p.p90, p.p99, p.max)
    })
}

const LABELS: [(&str, &str); 6] = [
    ("ceiling", "Kafka ceiling (rdkafka, no MQTT)"),
    ("publish-only", "MQTT publish only (no subscriber)"),
    ("mqtt-side", "bridge MQTT side only, no Kafka"),
    ("client", "bridge, client mode (Mosquitto)"),
    ("embedded", "bridge, embedded mode (rumqttd)"),
    ("shell", "mosquitto_sub | python producer"),
];

fn label(scenario: &str) -> &'static str {
    LABELS
        .iter()
        .find(|(s, _)| *s == scenario)
        .map_or("?", |(_, l)| l)
}

fn print_report(
    settings: &Settings,
    frame_len: usize,
    results: &[(&'static str, anyhow::Result<Outcome>)],
) {
    let ceiling = results.iter().find_map(|(name, r)| match r {
        Ok(o) if *name == "ceiling" => Some(o.rate()),
        _ => None,
    });
    println!();
    println!("bridge throughput benchmark — {}", date());
    println!("machine: {}", machine_description());
    println!(
        "workload: N = {} frames × {READINGS_PER_FRAME} readings = {} readings; D = {} devices; C = {} MQTT connections (QoS 1, inflight {}); frame {frame_len} B; {}",
        settings.frames,
        settings.frames * READINGS_PER_FRAME,
        settings.devices,
        settings.connections,
        settings.inflight,
        settings.rate.map_or("publishers unpaced (as fast as PUBACKs return)".to_owned(), |r| format!("publishers paced at {} msgs/s in total", fmt_rate(r))),
    );
    println!();
    println!(
        "{:<36} {:>10} {:>12} {:>8} {:>12} {:>22} {:>18}",
        "scenario",
        "msgs/s",
        "readings/s",
        "÷ceiling",
        "pub msgs/s",
        "latency p50/p90/p99/max",
        "→bridge p50/p99"
    );
    for (name, result) in results {
        match result {
            Ok(o) => {
                let ratio = ceiling
                    .filter(|_| !matches!(*name, "publish-only" | "mqtt-side"))
                    .map_or("-".to_owned(), |c| format!("{:.2}", o.rate() / c));
                println!(
                    "{:<36} {:>10} {:>12} {:>8} {:>12} {:>22} {:>18}",
                    label(name),
                    fmt_rate(o.rate()),
                    fmt_rate(o.rate() * READINGS_PER_FRAME as f64),
                    ratio,
                    o.publisher_rate(settings.frames)
                        .map_or("-".to_owned(), fmt_rate),
                    fmt_latency(o.latency),
                    o.to_bridge
                        .map_or("-".to_owned(), |p| format!("{}/{}", p.p50, p.p99)),
                );
            }
            Err(e) => println!("{:<36} not measured: {e:#}", label(name)),
        }
    }
    println!();
    println!(
        "CPU during each measured interval, % of one core (machine total out of {}):",
        100 * std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for (name, result) in results {
        if let Ok(o) = result {
            let parts: Vec<String> = o.cpu.parts.iter().map(fmt_part).collect();
            let others: Vec<String> = o
                .cpu
                .others
                .iter()
                .map(|(part, pct)| format!("{part} {pct:.0}"))
                .collect();
            println!(
                "  {:<34} machine {:>3.0} | {}",
                label(name),
                o.cpu.machine,
                parts.join(", ")
            );
            if !others.is_empty() {
                println!(
                    "  {:<34} not part of the scenario: {}",
                    "",
                    others.join(", ")
                );
            }
        }
    }
    let notes: Vec<String> = results
        .iter()
        .filter_map(|(name, r)| r.as_ref().ok().map(|o| (name, o)))
        .flat_map(|(name, o)| {
            let mut notes: Vec<String> = o
                .notes
                .iter()
                .map(|n| format!("  {}: {n}", label(name)))
                .collect();
            if o.latency.is_some() && o.probed < o.delivered {
                notes.push(format!(
                    "  {}: latency from {} of {} records (the probe fell behind)",
                    label(name),
                    o.probed,
                    o.delivered
                ));
            }
            notes
        })
        .collect();
    if !notes.is_empty() {
        println!();
        println!("notes:");
        for note in notes {
            println!("{note}");
        }
    }
    print_verdict(settings, results);
    println!();
    println!("{}", HOW_MEASURED.trim());
}

fn print_verdict(settings: &Settings, results: &[(&str, anyhow::Result<Outcome>)]) {
    let find = |scenario: &str| {
        results
            .iter()
            .find(|(name, _)| *name == scenario)
            .and_then(|(_, r)| r.as_ref().ok())
    };
    let Some(client) = find("client") else {
        return;
    };
    println!();
    let rate = client.rate();
    if rate >= BAR_MSGS_PER_S {
        println!(
            "bar: ≥ {} msgs/s in client mode — MET ({} msgs/s)",
            fmt_rate(BAR_MSGS_PER_S),
            fmt_rate(rate)
        );
        return;
    }
    println!(
        "bar: ≥ {} msgs/s in client mode — NOT MET ({} msgs/s). Measured facts:",
        fmt_rate(BAR_MSGS_PER_S),
        fmt_rate(rate)
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!(
        "  - machine CPU during the client run: {:.0}% of {:.0}% ({})",
        client.cpu.machine,
        cores * 100.0,
        if client.cpu.machine >= cores * 90.0 {
            "saturated"
        } else {
            "not saturated"
        }
    );
    if let Some(m) = client.cpu.part("mosquitto") {
        println!(
            "  - mosquitto (one thread) ran {:.0}% of the interval and waited for a CPU {:.0}%{}",
            m.run,
            m.wait,
            if m.run + m.wait >= 90.0 {
                ": it was never idle, so it set the pace, limited by the CPU it got"
            } else {
                ""
            }
        );
    }
    if let Some(side) = find("mqtt-side") {
        println!(
            "  - the bridge's MQTT side alone (same client code, ack at once, no Kafka): {} msgs/s",
            fmt_rate(side.rate())
        );
    }
    print_cpu_per_message(client);
    if let Some(only) = find("publish-only") {
        println!(
            "  - publishers + Mosquitto alone, nobody subscribed: {} msgs/s{}",
            fmt_rate(only.rate()),
            if only.rate() < BAR_MSGS_PER_S {
                " — below the bar before the bridge does anything"
            } else {
                ""
            }
        );
    }
    if let Some(p) = client.publisher_rate(settings.frames) {
        println!(
            "  - publishers during the client run: {} msgs/s (bridge {} msgs/s){}",
            fmt_rate(p),
            fmt_rate(rate),
            if p > rate * 1.2 {
                ": the publishers were faster; the bridge side set the pace"
            } else {
                ": both moved at the pace of the slowest hop in between"
            }
        );
    }
    if let Some(c) = find("ceiling") {
        println!(
            "  - Kafka ceiling with the bridge's producer settings: {} msgs/s",
            fmt_rate(c.rate())
        );
    }
}

/// CPU each part spent per message in the client run, and what the bar would need.
fn print_cpu_per_message(client: &Outcome) {
    let per_message_us = |run: f64| {
        run / 100.0 * client.elapsed.as_secs_f64() / client.delivered.max(1) as f64 * 1e6
    };
    let mut total = 0.0;
    let parts: Vec<String> = client
        .cpu
        .parts
        .iter()
        .map(|p| {
            let us = per_message_us(p.run);
            total += us;
            format!("{} {us:.1}", p.name)
        })
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!(
        "  - CPU per message in the client run, µs: {} — {total:.1} in all, so {} msgs/s would need {:.0}% of a core where this machine has {:.0}%",
        parts.join(", "),
        fmt_rate(BAR_MSGS_PER_S),
        total * BAR_MSGS_PER_S / 1e4,
        cores * 100.0
    );
    if let Some(m) = client.cpu.part("mosquitto") {
        let need = per_message_us(m.run) * BAR_MSGS_PER_S / 1e4;
        println!(
            "  - Mosquitto alone would need {need:.0}% of its single thread at {} msgs/s{}",
            fmt_rate(BAR_MSGS_PER_S),
            if need > 100.0 {
                " — more than one core can give"
            } else {
                ""
            }
        );
    }
}

const HOW_MEASURED: &str = r#"
How measured. Each scenario gets fresh Kafka topics (3 partitions, created with rdkafka's
admin client, deleted afterwards) and a fresh topic prefix. The MQTT scenarios other than
embedded each get a private Mosquitto 2.0 (testkit::Mosquitto: persistence on,
max_queued_messages 1000000, plus max_inflight_messages 0 as in the stack's config).
Publishers are rumqttc v4 AsyncClients in this process (own 2-thread runtime), MQTT 3.1.1,
clean session, QoS 1; each encodes its frame just before publishing it, stamping base_ts_ms
with the wall clock, and publishes as fast as its inflight window of PUBACKs allows (or paced
with --rate). The publishers are part of what is measured: they share the 2 cores with the
broker, the bridge, Tansu and the latency consumer. "pub msgs/s" is N over the time from the
first publish to the last PUBACK. msgs/s is N over the time from the first publish to the last
Kafka confirmation: for the ceiling the last delivery report; for the bridge the moment its
own counter of Kafka-confirmed messages (stats().produced, counted after the delivery report,
as the MQTT ack is sent) reached N, polled every 1 ms; for the MQTT side alone the moment N
messages had been acknowledged; for the shell pipeline the Python producer's flush()
returning after N delivery reports. The bridge runs in-process (the library, on its own
2-thread runtime), default configuration except: unique topics, metrics record off, HTTP on
an ephemeral port; the "latest" values stay on. Before the clock starts, each scenario sends
warm-up frames until one is in Kafka and seen by the probe, so connecting, subscribing and
topic checks are not timed. Latency: a BaseConsumer on its own thread, manually assigned
every partition from the beginning (unique group id, auto.offset.reset=earliest,
fetch.wait.max.ms=10), takes consume wall time minus the frame's base_ts_ms, in whole
milliseconds (ms resolution, one clock); "→bridge" is the bridge's received-at-ms header
minus base_ts_ms. With unpaced publishers the latency is mostly queueing behind the
publishers' own backlog (C × inflight messages), not the bridge's per-message cost; use
--rate for latency at a given load. CPU: /proc/<pid>/task/*/schedstat for each thread of
this process (grouped by thread name) and for Mosquitto, Tansu, mosquitto_sub and Python,
over the measured interval, in % of one core: time running, and "+N waiting" runnable but
waiting for a CPU; "machine" is from /proc/stat; processes that are no part of the scenario
(on a shared machine) are listed when they used 2% or more.
"#;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let settings = Settings::load();
    let frame_len = Workload::new(&settings)
        .payload(0, service::clock::now_ms())
        .len();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-publish")
        .enable_all()
        .build()
        .expect("tokio runtime for the publishers");
    // Spawned, not run by block_on on the main thread: the ceiling's producing loop then
    // runs on the `bench-publish` threads, where the CPU table expects the load generator.
    let scenarios = runtime.spawn({
        let settings = settings.clone();
        async move { run_scenarios(&settings).await }
    });
    let results = runtime.block_on(scenarios).expect("the scenarios panicked");
    print_report(&settings, frame_len, &results);
    runtime.shutdown_background();
}

async fn run_scenarios(settings: &Settings) -> Vec<(&'static str, anyhow::Result<Outcome>)> {
    {
        let mut results: Vec<(&str, anyhow::Result<Outcome>)> = Vec::new();
        for scenario in SCENARIOS {
            if !settings.wants(scenario) {
                continue;
            }
            eprintln!("running {scenario} ...");
            let started = Instant::now();
            let outcome = match scenario {
                "ceiling" => ceiling(settings).await,
                "publish-only" => publish_only(settings).await,
                "mqtt-side" => mqtt_side(settings).await,
                "client" => bridge_scenario(settings, Mode::Client).await,
                "embedded" => bridge_scenario(settings, Mode::Embedded).await,
                "shell" => shell(settings).await,
                _ => unreachable!("scenario names are checked in Settings::load"),
            };
            match &outcome {
                Ok(o) => eprintln!(
                    "  {} msgs/s ({:.1} s in all)",
                    fmt_rate(o.rate()),
                    started.elapsed().as_secs_f64()
                ),
                Err(e) => eprintln!("  failed: {e:#}"),
            }
            results.push((scenario, outcome));
        }
        results
    }
}
