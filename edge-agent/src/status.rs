//! The retained JSON messages that make the topic tree readable in MQTT Explorer: the
//! gateway's status (birth, health, and last will), each device's status and `meta`.
//!
//! MQTT allows one last will per connection, and one connection serves every device of a
//! gateway, so the will goes on the gateway's own `status` topic (as Sparkplug does with
//! its node death certificate). Each device's status names its gateway, so a reader who
//! sees the gateway `offline` knows its devices are too; on a clean shutdown the agent
//! also marks every device `offline` itself.

use contracts::meta::{ChannelMeta, DeviceMeta, Thresholds};
use serde_json::json;

use crate::config::{AgentConfig, DeviceConfig};

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The agent's own figures, reported every `health.interval` (the shape readers share).
pub use contracts::status::Health;

pub fn gateway_online(config: &AgentConfig, boot_id: &str, health: &Health) -> Vec<u8> {
    let devices: Vec<&str> = config.devices.iter().map(|d| d.id.as_str()).collect();
    to_bytes(json!({
        "state": "online",
        "kind": contracts::status::AGENT_KIND,
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
        "kind": contracts::status::AGENT_KIND,
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

/// Channels, units, sampling periods, ranges and thresholds, for people and dashboards
/// (and the bridge's readable `latest`).
pub fn device_meta(config: &AgentConfig, device: &DeviceConfig) -> Vec<u8> {
    let channels = device
        .channels
        .iter()
        .map(|c| ChannelMeta {
            id: c.id,
            name: Some(c.name.clone()),
            unit: Some(c.unit.clone()),
            period_ms: Some(c.period.as_millis() as u64),
            range: c.range,
            // The configuration's own type refuses unknown fields; the message's does not.
            thresholds: Some(Thresholds {
                warn_low: c.thresholds.warn_low,
                warn_high: c.thresholds.warn_high,
                crit_low: c.thresholds.crit_low,
                crit_high: c.thresholds.crit_high,
            }),
            source: Some(c.source.kind().to_owned()),
        })
        .collect();
    let meta = DeviceMeta {
        device: Some(device.id.clone()),
        site: Some(config.gateway.site.clone()),
        line: Some(device.line(&config.gateway).to_owned()),
        gateway: Some(config.gateway.id.clone()),
        encoding: Some("postcard frame v1 (protocol crate)".to_owned()),
        channels,
    };
    // Serialising plain data cannot fail.
    serde_json::to_vec(&meta).unwrap_or_default()
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
