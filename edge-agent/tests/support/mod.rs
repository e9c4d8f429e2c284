//! Shared by the agent's integration tests: a configuration on a private broker and
//! queue, a subscriber that records every frame it receives, and the ledger checks.

#![allow(dead_code)] // each test binary uses its own subset

pub mod queue;
pub mod sensors;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_agent::agent::{self, RunReport};
use edge_agent::config::{AgentConfig, CliOverrides};
use edge_agent::delivery::decode_record;
use protocol::{BootId, Frame};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::oneshot;

/// The devices of [`Setup::config_toml`].
pub const DEVICES: [&str; 2] = ["furnace-01", "press-01"];

/// How long a test waits for an effect it needs before declaring that it did not happen:
/// generous, because a loaded machine is slow, and free when the effect comes sooner.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `check` every 50 ms until it returns `Ok`, and returns its value; panics naming
/// `what` and the last state `check` reported if `within` passes first.
pub async fn wait_until<T>(
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check() {
            Ok(value) => return value,
            Err(state) => assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: did not happen within {within:?}; last seen: {state}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the agent in this process until the returned sender fires (or is dropped).
pub fn spawn_agent(
    config: AgentConfig,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<RunReport>) {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        agent::run(
            config,
            async {
                let _ = stop_rx.await;
            },
            Duration::from_secs(10),
        )
        .await
        .expect("agent run")
    });
    (stop_tx, task)
}

pub struct Setup {
    pub prefix: String,
    pub dir: tempfile::TempDir,
}

impl Setup {
    pub fn new() -> Self {
        Self {
            prefix: testkit::unique_name("agent"),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn queue_dir(&self) -> PathBuf {
        self.dir.path().join("queue")
    }

    /// Two simulated devices sampling fast, small frames, quick reconnects.
    /// Frames leave the queue on PUBACK (`delivery.confirm = "broker"`): these tests are
    /// about the MQTT hop; tests/confirm.rs covers confirmations from the cloud.
    pub fn config_toml(&self, port: u16, queue_cap: &str) -> String {
        self.config_toml_with(port, queue_cap, "8 KiB")
    }

    pub fn config_toml_with(&self, port: u16, queue_cap: &str, segment: &str) -> String {
        self.config_toml_confirm(port, queue_cap, segment, "broker")
    }

    pub fn config_toml_confirm(
        &self,
        port: u16,
        queue_cap: &str,
        segment: &str,
        confirm: &str,
    ) -> String {
        format!(
            r#"
[gateway]
id = "{prefix}"
site = "plant1"
line = "line-a"
topic_prefix = "{prefix}"

[mqtt]
host = "127.0.0.1"
port = {port}
keep_alive = "2s"
inflight = 20
reconnect_min = "50ms"
reconnect_max = "300ms"

[queue]
dir = "{queue}"
max_bytes = "{queue_cap}"
segment_bytes = "{segment}"
fsync_interval = "200ms"

[batch]
max_readings = 10
max_age = "100ms"

[delivery]
confirm = "{confirm}"
confirm_grace = "500ms"
confirm_timeout = "5s"

[health]
interval = "1s"

[[devices]]
id = "furnace-01"
[[devices.channels]]
id = 0
name = "temperature"
unit = "°C"
period = "10ms"
range = [0.0, 1400.0]
source = {{ kind = "simulated", model = "furnace" }}

[[devices]]
id = "press-01"
line = "line-b"
[[devices.channels]]
id = 0
name = "pressure"
unit = "bar"
period = "20ms"
source = {{ kind = "simulated", model = "press_pressure" }}
"#,
            prefix = self.prefix,
            queue = self.queue_dir().display(),
        )
    }

    pub fn write_config(&self, port: u16, queue_cap: &str) -> PathBuf {
        self.write(self.config_toml(port, queue_cap))
    }

    fn write(&self, toml: String) -> PathBuf {
        let path = self.dir.path().join("agent.toml");
        std::fs::write(&path, toml).expect("write config");
        path
    }

    pub fn config(&self, port: u16, queue_cap: &str) -> AgentConfig {
        self.load(self.config_toml(port, queue_cap))
    }

    /// Frames stay on disk until a confirmation covers them.
    pub fn config_confirming(&self, port: u16) -> AgentConfig {
        self.load(self.config_toml_confirm(port, "4 MiB", "8 KiB", "pipeline"))
    }

    /// Confirming, with small segments under a small cap.
    pub fn config_confirming_capped(&self, port: u16, queue_cap: &str) -> AgentConfig {
        self.load(self.config_toml_confirm(port, queue_cap, "4 KiB", "pipeline"))
    }

    /// With small queue segments, so a small cap can be tested quickly.
    pub fn config_small_segments(&self, port: u16, queue_cap: &str) -> AgentConfig {
        self.load(self.config_toml_with(port, queue_cap, "4 KiB"))
    }

    fn load(&self, toml: String) -> AgentConfig {
        AgentConfig::load(&self.write(toml), &CliOverrides::default())
            .expect("test config is valid")
    }
}

/// One frame as a subscriber saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub frame: Frame,
}

/// Subscribes (persistent session, QoS 1) to every telemetry topic under `prefix` and
/// records each frame; reconnects by itself across broker restarts.
pub struct Subscriber {
    pub received: Arc<Mutex<Vec<Received>>>,
    pub retained: Arc<Mutex<BTreeMap<String, serde_json::Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    pub async fn start(port: u16, prefix: &str) -> Self {
        Self::start_with(port, prefix, |_| {}).await
    }

    /// Like [`Subscriber::start`], with `configure` applied to the connection options
    /// (TLS, credentials).
    pub async fn start_with(
        port: u16,
        prefix: &str,
        configure: impl FnOnce(&mut MqttOptions),
    ) -> Self {
        let mut options = MqttOptions::new(format!("{prefix}-sub"), "127.0.0.1", port);
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        configure(&mut options);
        let (client, mut events) = AsyncClient::new(options, 100);
        client
            .subscribe(format!("{prefix}/#"), QoS::AtLeastOnce)
            .await
            .expect("subscribe request");
        let received = Arc::new(Mutex::new(Vec::new()));
        let retained = Arc::new(Mutex::new(BTreeMap::new()));
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let (frames, json) = (received.clone(), retained.clone());
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if p.topic.ends_with("/telemetry") {
                            let frame = Frame::decode(&p.payload).expect("agent frames decode");
                            frames.lock().unwrap().push(Received {
                                topic: p.topic.clone(),
                                frame,
                            });
                        } else if let Ok(value) = serde_json::from_slice(&p.payload) {
                            json.lock().unwrap().insert(p.topic.clone(), value);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
            .await
            .expect("subscribed within 10 s")
            .expect("subscriber running");
        Self {
            received,
            retained,
            task,
        }
    }

    pub fn frames(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn retained(&self, topic: &str) -> Option<serde_json::Value> {
        self.retained.lock().unwrap().get(topic).cloned()
    }

    /// Waits until `done` holds for the frames received so far, up to `timeout`.
    pub async fn wait_for(&self, timeout: Duration, done: impl Fn(&Ledger) -> bool) -> Ledger {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ledger = Ledger::of(&self.frames());
            if done(&ledger) || tokio::time::Instant::now() >= deadline {
                return ledger;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (up to [`PATIENCE`]) until a frame of every device in [`DEVICES`] has
    /// arrived; panics otherwise, naming `what` the frames were needed for.
    pub async fn wait_for_every_device(&self, what: &str) -> Ledger {
        let ledger = self
            .wait_for(PATIENCE, |l| DEVICES.iter().all(|d| !l.boots(d).is_empty()))
            .await;
        let silent: Vec<&str> = DEVICES
            .iter()
            .copied()
            .filter(|d| ledger.boots(d).is_empty())
            .collect();
        assert!(
            silent.is_empty(),
            "no frame of {silent:?} arrived within {PATIENCE:?} ({what})"
        );
        ledger
    }

    /// Waits (up to [`PATIENCE`]) until the retained message on `topic` satisfies `done`
    /// and returns it; panics naming `what` and the last message seen otherwise.
    pub async fn wait_retained(
        &self,
        topic: &str,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_until(PATIENCE, &format!("{topic}: {what}"), || {
            match self.retained(topic) {
                Some(value) if done(&value) => Ok(value),
                Some(value) => Err(value.to_string()),
                None => Err("nothing retained".to_owned()),
            }
        })
        .await
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every reading identity received, per (device, boot), with how often it arrived.
#[derive(Debug, Default)]
pub struct Ledger {
    pub seqs: BTreeMap<(String, BootId), BTreeMap<u64, u32>>,
}

impl Ledger {
    pub fn of(frames: &[Received]) -> Self {
        let mut ledger = Ledger::default();
        for r in frames {
            assert!(
                r.topic.contains(&format!("/{}/telemetry", r.frame.device)),
                "device {} published on {}",
                r.frame.device,
                r.topic
            );
            let seqs = ledger
                .seqs
                .entry((r.frame.device.to_string(), r.frame.boot_id))
                .or_default();
            for (seq, _, _) in r.frame.iter() {
                *seqs.entry(seq).or_default() += 1;
            }
        }
        ledger
    }

    pub fn received(&self, device: &str, boot: BootId) -> BTreeSet<u64> {
        self.seqs
            .get(&(device.to_owned(), boot))
            .map(|s| s.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Every reading the run sealed arrived (`how`: "arrived", "correctly acknowledged"
    /// …), and nothing beyond.
    pub fn assert_holds_every_sealed_reading(&self, report: &RunReport, how: &str) {
        for (device, sealed) in &report.sealed {
            assert!(*sealed > 0, "{device} produced nothing");
            let received = self.received(device, report.boot_id);
            let missing: Vec<u64> = (0..*sealed).filter(|s| !received.contains(s)).collect();
            assert!(
                missing.is_empty(),
                "{device}: {} of {sealed} readings never {how}, first {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            );
            assert_eq!(
                received.len() as u64,
                *sealed,
                "{device}: readings beyond what was sealed"
            );
        }
    }

    /// Readings that arrived more than once.
    pub fn duplicates(&self) -> u64 {
        self.seqs
            .values()
            .flat_map(|s| s.values())
            .map(|&n| u64::from(n.saturating_sub(1)))
            .sum()
    }

    pub fn boots(&self, device: &str) -> BTreeSet<BootId> {
        self.seqs
            .keys()
            .filter(|(d, _)| d == device)
            .map(|(_, b)| *b)
            .collect()
    }

    /// True when `device` under `boot` has exactly the readings 0..n.
    pub fn complete(&self, device: &str, boot: BootId, n: u64) -> bool {
        self.received(device, boot) == (0..n).collect()
    }
}

/// Paths of the queue's segment files, oldest first.
pub fn segments(queue_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(queue_dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The frames in the queue's segment files, in queue order, read without opening the
/// queue (whose lock a running agent holds); a record still being written is left out.
/// Layout: see `edge_agent::queue` (a 16-byte segment header, then records of payload
/// length u32 LE, CRC u32 LE, payload).
pub fn frames_on_disk(queue_dir: &Path) -> Vec<Frame> {
    let mut frames = Vec::new();
    for segment in segments(queue_dir) {
        let bytes = std::fs::read(&segment).unwrap_or_default();
        let mut at = 16;
        while let Some(header) = bytes.get(at..at + 8) {
            let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
            let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
                break;
            };
            at += 8 + len;
            if let Some(frame) = decode_record(payload).and_then(|(_, f)| Frame::decode(f).ok()) {
                frames.push(frame);
            }
        }
    }
    frames
}
