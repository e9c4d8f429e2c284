//! Shared by the bridge's integration tests: building frames, publishing them over real
//! MQTT, reading back what reached the real Kafka-compatible broker, and running the
//! bridge in-process or as its binary.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bridge::{Bridge, BridgeConfig, Mode};
use protocol::{BootId, DeviceId, Frame, Quality, Reading};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use testkit::ChildGuard;

pub const SITE: &str = "plant1";
pub const LINE: &str = "line-a";

/// A valid frame of `readings` readings; the first reading's value is `first_seq` so a
/// record can be matched to what was sent.
pub fn frame(device: &str, boot: u8, first_seq: u64, readings: usize) -> Vec<u8> {
    frame_at(
        device,
        boot,
        first_seq,
        readings,
        1_764_000_000_000 + first_seq,
    )
}

/// The same, its readings 1 ms apart from `base_ts_ms` (ms since the Unix epoch).
pub fn frame_at(
    device: &str,
    boot: u8,
    first_seq: u64,
    readings: usize,
    base_ts_ms: u64,
) -> Vec<u8> {
    let mut frame = Frame::new(
        DeviceId::new(device).expect("test device id"),
        BootId([boot; 8]),
        first_seq,
        base_ts_ms,
    );
    for i in 0..readings {
        frame
            .readings
            .push(Reading {
                channel: (i % 2) as u8,
                offset_ms: i as u32,
                value: first_seq as f32 + i as f32,
                quality: Quality::empty(),
            })
            .expect("at most 64 readings");
    }
    let mut buf = [0u8; protocol::MAX_FRAME_LEN];
    frame.encode(&mut buf).expect("valid test frame").to_vec()
}

pub fn telemetry_topic(prefix: &str, device: &str) -> String {
    format!("{prefix}/{SITE}/{LINE}/{device}/telemetry")
}

/// Publishes `messages` in order at QoS 1 on one connection and returns once the
/// broker has acknowledged every one.
pub async fn publish_all(port: u16, client_id: &str, messages: &[(String, Vec<u8>)]) {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(10))
        .set_inflight(200)
        .set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let total = messages.len();
    let pump = tokio::spawn(async move {
        let mut acked = 0;
        while acked < total {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher connection failed after {acked} acks: {e}"),
            }
        }
        eventloop
    });
    for (topic, payload) in messages {
        client
            .publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone())
            .await
            .expect("queue publish");
    }
    let mut eventloop = tokio::time::timeout(Duration::from_secs(60), pump)
        .await
        .expect("broker acknowledged every publish within 60 s")
        .expect("publisher task");
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await;
}

/// Publishes one retained message at QoS 1 and returns once the broker has it.
pub async fn publish_retained(port: u16, topic: &str, payload: &[u8]) {
    let mut options = MqttOptions::new(testkit::unique_name("retain"), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .publish(topic, QoS::AtLeastOnce, true, payload.to_vec())
        .await
        .expect("queue publish");
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("retained publish on {topic} failed: {e}"),
            }
        }
    })
    .await
    .expect("the broker acknowledged the retained publish within 30 s");
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await;
}

/// One record read back from Kafka.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub partition: i32,
}

/// Reads `topic` from the start until `expected` records arrived, or `wait` passed
/// with nothing new, and returns them in per-partition order. The partitions are
/// assigned, not subscribed to: a consumer group's rebalance would read a partition
/// again from its start, and its repeats would count towards `expected`.
pub fn read_topic(brokers: &str, topic: &str, expected: usize, wait: Duration) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", testkit::unique_name("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    // The topic may still be being created (by a bridge starting beside the test).
    let started = Instant::now();
    let partitions = loop {
        let partitions = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .ok()
            .and_then(|m| {
                m.topics()
                    .iter()
                    .find(|t| t.name() == topic && t.error().is_none())
                    .map(|t| t.partitions().len() as i32)
            })
            .unwrap_or(0);
        if partitions > 0 {
            break partitions;
        }
        assert!(
            started.elapsed() < wait,
            "{topic} has no partitions after {wait:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let mut records = Vec::new();
    let mut last_progress = Instant::now();
    while records.len() < expected && last_progress.elapsed() < wait {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                last_progress = Instant::now();
                let headers = message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(Record {
                    key: message
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: message.payload().unwrap_or_default().to_vec(),
                    headers,
                    partition: message.partition(),
                });
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    records
}

/// Per device, the first sequence numbers of the frames in the order Kafka holds them.
pub fn sequences_by_device(records: &[Record]) -> HashMap<String, Vec<u64>> {
    let mut by_device: HashMap<String, Vec<u64>> = HashMap::new();
    for record in records {
        let frame = Frame::decode(&record.value).expect("sensors-data holds valid frames");
        by_device
            .entry(frame.device.as_str().to_owned())
            .or_default()
            .push(frame.first_seq);
    }
    by_device
}

/// A bridge configuration for tests: private topic names (created by the bridge, except
/// the confirm topic, which the ingester owns), ephemeral HTTP port, no metrics record.
pub fn test_config(mode: Mode, prefix: &str, brokers: &str) -> BridgeConfig {
    let mut config = BridgeConfig {
        mode,
        id: testkit::unique_name("bridge"),
        topic_prefix: prefix.to_owned(),
        ..BridgeConfig::default()
    };
    config.kafka.brokers = brokers.to_owned();
    config.kafka.topic = testkit::unique_name("data");
    config.kafka.dlq_topic = testkit::unique_name("dlq");
    // Private, and absent until a test creates it: the relay waits for it.
    config.kafka.confirm_topic = testkit::unique_name("confirm");
    config.kafka.metrics_topic = String::new();
    config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.embedded.listen = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    // These tests are about forwarding; tests/gateway_auth.rs is about who may connect.
    config.embedded.allow_anonymous = true;
    config.forward.shutdown_grace = Duration::from_secs(10);
    config
}

/// [`test_config`] in embedded mode, authenticating against the gateway registry in the
/// test's own database (`pool`).
pub async fn registry_config(pool: &sqlx::PgPool) -> BridgeConfig {
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .unwrap();
    let prefix = testkit::unique_name("plant");
    let mut config = test_config(Mode::Embedded, &prefix, &testkit::kafka_brokers());
    config.embedded.allow_anonymous = false;
    config.embedded.registry_url = testkit::database_url_of(&database);
    config
}

/// The project's agent, run for two seconds as gateway `gateway` (its secret in an
/// owner-only file in `dir`) under topic prefix `prefix`, against the broker on `port`:
/// one simulated furnace-01 channel every 10 ms, frames of 10 deleted on PUBACK.
/// `mqtt` adds lines to its `[mqtt]` table (TLS). Returns its last health.
pub async fn run_agent(
    dir: &std::path::Path,
    prefix: &str,
    port: u16,
    gateway: &str,
    secret: &str,
    mqtt: &str,
) -> edge_agent::status::Health {
    use std::os::unix::fs::PermissionsExt;
    let secret_file = dir.join("gateway.secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let agent_toml = dir.join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            r#"
[gateway]
id = "{gateway}"
site = "{SITE}"
line = "{LINE}"
topic_prefix = "{prefix}"
[mqtt]
host = "127.0.0.1"
port = {port}
password_file = "{secret_file}"
{mqtt}
[queue]
dir = "{queue}"
[batch]
max_readings = 10
max_age = "100ms"
[delivery]
confirm = "broker"
[[devices]]
id = "furnace-01"
[[devices.channels]]
id = 0
name = "temperature"
unit = "°C"
period = "10ms"
source = {{ kind = "simulated", model = "furnace" }}
"#,
            secret_file = secret_file.display(),
            queue = dir.join("queue").display(),
        ),
    )
    .unwrap();
    let config = edge_agent::config::AgentConfig::load(&agent_toml, &Default::default()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(edge_agent::agent::run(
        config,
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(10),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop.send(());
    agent.await.unwrap().unwrap().health
}

/// A bridge running in this process.
pub struct InProcess {
    pub http: SocketAddr,
    pub mqtt: Option<SocketAddr>,
    pub stats: std::sync::Arc<bridge::stats::Stats>,
    pub readiness: std::sync::Arc<bridge::readiness::BridgeReadiness>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<bridge::stats::StatsSnapshot>>,
}

impl InProcess {
    pub async fn start(config: BridgeConfig) -> Self {
        let bridge = Bridge::start(config).await.expect("bridge starts");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let http = bridge.http_addr();
        let mqtt = bridge.mqtt_addr();
        let stats = bridge.stats();
        let readiness = bridge.readiness();
        let task = tokio::spawn(bridge.run_until(async {
            let _ = stopped.await;
        }));
        let started = Self {
            http,
            mqtt,
            stats,
            readiness,
            stop,
            task,
        };
        started.wait_ready(Duration::from_secs(30)).await;
        started
    }

    pub async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.readiness.ready() {
            assert!(
                Instant::now() < deadline,
                "bridge not ready within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the bridge has settled (forwarded or dead-lettered) `count` messages.
    pub async fn wait_settled(&self, count: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let s = self.stats.snapshot();
            if s.produced + s.dead_lettered >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "bridge settled {} of {count} messages within {within:?}: {s:?}",
                s.produced + s.dead_lettered
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(self) -> bridge::stats::StatsSnapshot {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("bridge task")
            .expect("bridge stops cleanly")
    }
}

/// The bridge binary, configured by a TOML file, for tests that kill it or measure
/// its memory. Its output goes to a log under `target/test-logs/`, quoted if the test
/// panics.
pub struct Process {
    child: ChildGuard,
    pub http_port: u16,
    config_file: PathBuf,
}

impl Process {
    pub fn spawn(config: &BridgeConfig) -> Self {
        let http_port = testkit::free_port();
        let mut config = config.clone();
        config.http.listen = SocketAddr::from(([127, 0, 0, 1], http_port));
        let config_file =
            std::env::temp_dir().join(format!("{}.toml", testkit::unique_name("bridge")));
        let toml = toml::to_string(&config).expect("config serializes to TOML");
        std::fs::write(&config_file, toml).expect("write bridge config");
        let child = ChildGuard::spawn(
            "bridge",
            Command::new(env!("CARGO_BIN_EXE_bridge"))
                .arg("--config")
                .arg(&config_file)
                .env("RUST_LOG", "info,rumqttd=off"),
        );
        let process = Self {
            child,
            http_port,
            config_file,
        };
        process.wait_ready(Duration::from_secs(30));
        process
    }

    /// Status and body of a GET to the bridge's HTTP endpoints.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.http_port)).ok()?;
        // Generous: a loaded machine answers slowly, and no answer reads as "not ready".
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split(' ').nth(1)?.parse().ok()?;
        let body = response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        Some((status, body))
    }

    pub fn ready(&self) -> bool {
        matches!(self.get("/readyz"), Some((200, _)))
    }

    /// The body of `/readyz`, e.g. "mqtt connected\nkafka down\n".
    pub fn readiness(&self) -> String {
        self.get("/readyz")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// A counter or gauge from `/metrics`, summed over its labels.
    pub fn metric(&self, name: &str) -> f64 {
        let Some((_, body)) = self.get("/metrics") else {
            return f64::NAN;
        };
        body.lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.ready() {
            assert!(
                Instant::now() < deadline,
                "bridge process not ready within {within:?}: {}",
                self.readiness()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resident memory of the process, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }

    /// SIGKILL, and reaped.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// SIGTERM, and the exit status (a panic quoting the log if it takes over 60 s).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.child.terminate(Duration::from_secs(60))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // The child goes with its guard.
        let _ = std::fs::remove_file(&self.config_file);
    }
}
