//! The retained JSON messages that make the topic tree readable in MQTT Explorer: the
//! gateway's status (birth, health, and last will), each device's status and `meta`.
//!
//! MQTT allows one last will per connection, and one connection serves every device of a
//! gateway, so the will goes on the gateway's own `status` topic (as Sparkplug does with
//! its node death certificate). Each device's status names its gateway, so a reader who
//! sees the gateway `offline` knows its devices are too; on a clean shutdown the agent
//! also marks every device `offline` itself.

use serde::Serialize;
use serde_json::json;

use crate::config::{AgentConfig, DeviceConfig};

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The agent's own figures, reported every `health.interval`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Health {
    pub connected: bool,
    pub uptime_s: u64,
    pub readings: u64,
    pub frames: u64,
    pub queue_records: u64,
    pub queue_bytes: u64,
    pub queue_disk_bytes: u64,
    pub queue_segments: u64,
    /// Frames dropped by the queue's byte cap (or a full disk), since start.
    pub dropped_frames: u64,
    pub reconnects: u64,
    /// Frames PUBACKed and still waiting for the cloud's confirmation.
    pub awaiting_confirm: u64,
    /// Frames deleted on a confirmation, since start.
    pub confirmed_frames: u64,
    /// Frames the cloud refused for good (dead-lettered), dropped, since start.
    pub refused_frames: u64,
    /// Confirmations ignored as untrustworthy (see the log), since start.
    pub ignored_confirmations: u64,
    /// Frames sent again because no confirmation covered them in time, since start.
    pub resent_frames: u64,
    /// MQTT protocol errors since start: a PUBACK for a packet id not in flight (unknown,
    /// or a duplicate), or a packet id given out twice. Each dropped the connection and
    /// deleted nothing; the frames not yet acknowledged were sent again.
    pub protocol_errors: u64,
    /// Sampling ticks missed since start, all channels together: a tick whose time
    /// passed without the channel being sampled, because the sampler had to wait for
    /// delivery (more than 8 frames behind, e.g. on a slow disk) or was not scheduled in
    /// time. Sampling then resumes on its schedule; the missed ticks leave no reading.
    pub missed_ticks: u64,
    /// PUBACK to confirmation of the frames confirmed since start, median and 99th
    /// percentile, as the upper bound of a histogram bucket (5, 10, 20, 50, 100, 150,
    /// 200, 300, 400, 500, 750 ms, 1, 2, 5, 30 s); absent before the first.
    pub confirm_wait_p50_ms: Option<u64>,
    pub confirm_wait_p99_ms: Option<u64>,
    /// Exactly which readings the byte cap gave up since start, per device and boot.
    pub dropped: Vec<crate::dropped::DroppedSpan>,
    /// Milliseconds since the last PUBACK; absent before the first.
    pub last_puback_age_ms: Option<u64>,
    pub rss_bytes: Option<u64>,
}

pub fn gateway_online(config: &AgentConfig, boot_id: &str, health: &Health) -> Vec<u8> {
    let devices: Vec<&str> = config.devices.iter().map(|d| d.id.as_str()).collect();
    to_bytes(json!({
        "state": "online",
        "kind": "edge-agent",
        "version": AGENT_VERSION,
        "boot_id": boot_id,
        "devices": devices,
        "health": health,
    }))
}

/// The last will (without health: it is fixed at connect time), and what a clean
/// shutdown publishes (with the final health, so what the queue dropped stays readable
/// while the agent is stopped: `iotctl completeness` reads it there).
pub fn gateway_offline(
    config: &AgentConfig,
    boot_id: &str,
    reason: &str,
    health: Option<&Health>,
) -> Vec<u8> {
    let devices: Vec<&str> = config.devices.iter().map(|d| d.id.as_str()).collect();
    let mut status = json!({
        "state": "offline",
        "kind": "edge-agent",
        "version": AGENT_VERSION,
        "boot_id": boot_id,
        "devices": devices,
        "reason": reason,
    });
    if let Some(health) = health {
        status["health"] = json!(health);
    }
    to_bytes(status)
}

fn channels(device: &DeviceConfig) -> Vec<serde_json::Value> {
    device
        .channels
        .iter()
        .map(|c| json!({"id": c.id, "name": c.name, "unit": c.unit}))
        .collect()
}

pub fn device_online(gateway: &str, device: &DeviceConfig, boot_id: &str) -> Vec<u8> {
    to_bytes(json!({
        "state": "online",
        "gateway": gateway,
        "version": AGENT_VERSION,
        "boot_id": boot_id,
        "channels": channels(device),
    }))
}

pub fn device_offline(gateway: &str, device: &DeviceConfig, boot_id: &str) -> Vec<u8> {
    to_bytes(json!({
        "state": "offline",
        "gateway": gateway,
        "version": AGENT_VERSION,
        "boot_id": boot_id,
        "channels": channels(device),
        "reason": "shutdown",
    }))
}

/// Channels, units, sampling periods, ranges and thresholds, for people and dashboards.
pub fn device_meta(config: &AgentConfig, device: &DeviceConfig) -> Vec<u8> {
    let channels: Vec<_> = device
        .channels
        .iter()
        .map(|c| {
            json!({
                "id": c.id,
                "name": c.name,
                "unit": c.unit,
                "period_ms": c.period.as_millis() as u64,
                "range": c.range,
                "thresholds": c.thresholds,
                "source": c.source.kind(),
            })
        })
        .collect();
    to_bytes(json!({
        "device": device.id,
        "site": config.gateway.site,
        "line": device.line(&config.gateway),
        "gateway": config.gateway.id,
        "encoding": "postcard frame v1 (protocol crate)",
        "channels": channels,
    }))
}

fn to_bytes(value: serde_json::Value) -> Vec<u8> {
    // Serialising a Value built from plain data cannot fail.
    serde_json::to_vec(&value).unwrap_or_default()
}

/// Resident set size of this process, from /proc (Linux); None elsewhere.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
