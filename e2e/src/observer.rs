//! The witness of what the agents produced: an MQTT subscriber on the broker the agents
//! publish to, with a persistent QoS 1 session, recording every (device, boot, seq) it
//! sees. It is independent of the bridge, Kafka and the ingester, so the ledger can hold
//! what reached PostgreSQL against it.
//!
//! An agent numbers readings 0, 1, 2, … within a boot and a frame only gets numbers once
//! it is on disk, so the seqs of a boot that reached the broker are a prefix with no
//! holes; a hole the observer sees is a durable frame that never reached the broker
//! (dropped at the queue's cap, or lost).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use contracts::status::{Health, AGENT_KIND};
use protocol::Frame;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Deserialize;
use tokio::task::JoinHandle;

/// The telemetry topics of every device (`plant/{site}/{line}/{device}/telemetry`).
const TELEMETRY: &str = "plant/+/+/+/telemetry";
/// Status topics, the gateways' among them (`plant/{site}/{line}/{gateway}/status`).
const STATUS: &str = "plant/+/+/+/status";

/// What the observer saw.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// Sequence numbers seen, per (device, boot id as PostgreSQL stores it).
    pub seqs: BTreeMap<(String, i64), BTreeSet<u64>>,
    /// Telemetry messages that were not the workload's frames: undecodable, a device
    /// other than the topic's, or a device no agent simulates.
    pub foreign: u64,
    /// The newest status of each edge-agent gateway, by gateway id.
    pub gateways: BTreeMap<String, serde_json::Value>,
    /// The newest health report of each gateway (a clean stop's goodbye carries the last).
    pub health: BTreeMap<String, Health>,
}

impl Observed {
    /// Readings seen, replays counted once.
    pub fn readings(&self) -> u64 {
        self.seqs.values().map(|s| s.len() as u64).sum()
    }
}

pub struct Observer {
    seen: Arc<Mutex<Observed>>,
    client: AsyncClient,
    task: JoinHandle<()>,
}

impl Observer {
    /// Connects to the broker on `port`, subscribes, and returns once the broker has
    /// confirmed the subscription, so nothing published after this is missed.
    pub async fn start(port: u16, client_id: &str, devices: &[&str]) -> Result<Self> {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(options, 1000);
        for filter in [TELEMETRY, STATUS] {
            client
                .subscribe(filter, QoS::AtLeastOnce)
                .await
                .context("subscribing the observer")?;
        }
        let mut confirmed = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let event = tokio::time::timeout_at(deadline, events.poll())
                .await
                .context("the broker did not confirm the observer's subscription in 20 s")?;
            match event {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    confirmed += 1;
                    if confirmed == 2 {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if tokio::time::Instant::now() > deadline {
                        bail!("observer cannot reach the broker on port {port}: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let seen = Arc::new(Mutex::new(Observed::default()));
        let devices: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
        let task = tokio::spawn({
            let seen = seen.clone();
            let client = client.clone();
            async move {
                loop {
                    match events.poll().await {
                        Ok(Event::Incoming(Packet::Publish(publish))) => {
                            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                            record(&mut seen, &devices, &publish.topic, &publish.payload);
                        }
                        // A broker that forgot the session (the embedded one keeps it
                        // in memory) needs the subscription again.
                        Ok(Event::Incoming(Packet::ConnAck(ack))) if !ack.session_present => {
                            let _ = client.try_subscribe(TELEMETRY, QoS::AtLeastOnce);
                            let _ = client.try_subscribe(STATUS, QoS::AtLeastOnce);
                        }
                        Ok(_) => {}
                        // The broker restarts in some scenarios: keep polling, which
                        // reconnects and resumes the persistent session.
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        });
        Ok(Self { seen, client, task })
    }

    /// A copy of what was seen so far.
    fn snapshot(&self) -> Observed {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The frames in gateway `id`'s queue, by its last report, if that report says it is
    /// online and connected: unsent, and sent but not confirmed yet (among those, the
    /// frames a broker lost, which the agent resends only after `confirm_grace` or
    /// `confirm_timeout`).
    pub fn queued(&self, id: &str) -> Option<u64> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let status = seen.gateways.get(id)?;
        let health = &status["health"];
        if status["state"] != "online" || health["connected"] != true {
            return None;
        }
        health["queue_records"].as_u64()
    }

    /// Disconnects and returns what was seen; the task ends when the observer drops.
    pub async fn stop(self) -> Observed {
        let _ = self.client.disconnect().await;
        self.snapshot()
    }
}

impl Drop for Observer {
    /// A pipeline torn down early (a failed scenario) must not leave the task polling a
    /// broker that is gone.
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn record(seen: &mut Observed, devices: &[String], topic: &str, payload: &[u8]) {
    let topic_device = topic.split('/').nth(3).unwrap_or_default();
    if topic.ends_with("/status") {
        if let Ok(status) = serde_json::from_slice::<serde_json::Value>(payload) {
            if status["kind"] == AGENT_KIND {
                if let Some(Ok(health)) = status.get("health").map(Health::deserialize) {
                    seen.health.insert(topic_device.to_owned(), health);
                }
                seen.gateways.insert(topic_device.to_owned(), status);
            }
        }
        return;
    }
    match Frame::decode(payload) {
        Ok(frame)
            if frame.device.as_str() == topic_device
                && devices.iter().any(|d| d == topic_device) =>
        {
            let seqs = seen
                .seqs
                .entry((topic_device.to_owned(), frame.boot_id.as_i64()))
                .or_default();
            seqs.extend(frame.first_seq..frame.first_seq + frame.readings.len() as u64);
        }
        _ => seen.foreign += 1,
    }
}
