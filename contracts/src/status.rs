//! The edge agent's health report: the `health` object of its gateway's retained status
//! message (`{prefix}/{site}/gateways/{gateway}/status`), sent every `health.interval`
//! and, with the final figures, on a clean stop. `iotctl completeness` reads
//! [`Health::dropped`] there, to tell readings the agent gave up from readings lost.
//!
//! Every field has a default when read, so a reader takes reports from older and newer
//! agents alike.

use serde::{Deserialize, Serialize};

/// `kind` of an edge agent's gateway status (a device's status has none).
pub const AGENT_KIND: &str = "edge-agent";

/// A gateway status message as a reader needs it; its other fields (version, boot id,
/// devices, the reason of an `offline`) are for people.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct GatewayStatus {
    /// `online` or `offline`.
    pub state: String,
    /// [`AGENT_KIND`] for an edge agent.
    pub kind: String,
    /// Absent in the last will, which is fixed when the agent connects.
    pub health: Option<Health>,
}

/// A device's retained status as a reader needs it: `online` while its agent runs,
/// `offline` after a clean stop (a crashed agent leaves `online`: its gateway's last
/// will says `offline`), and which gateway it is attached to.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct DeviceStatus {
    pub state: String,
    pub gateway: String,
}

/// The agent's own figures, since its start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Health {
    pub connected: bool,
    pub uptime_s: u64,
    pub readings: u64,
    pub frames: u64,
    pub queue_records: u64,
    pub queue_bytes: u64,
    pub queue_disk_bytes: u64,
    pub queue_segments: u64,
    /// Frames dropped by the queue's byte cap (or a full disk).
    pub dropped_frames: u64,
    pub reconnects: u64,
    /// Frames PUBACKed and still waiting for the cloud's confirmation.
    pub awaiting_confirm: u64,
    /// Frames deleted on a confirmation.
    pub confirmed_frames: u64,
    /// Frames the cloud refused for good (dead-lettered), dropped.
    pub refused_frames: u64,
    /// Confirmations ignored as untrustworthy (see the agent's log).
    pub ignored_confirmations: u64,
    /// Frames sent again because no confirmation covered them in time.
    pub resent_frames: u64,
    /// MQTT protocol errors: a PUBACK for a packet id not in flight (unknown, or a
    /// duplicate), or a packet id given out twice. Each dropped the connection and
    /// deleted nothing; the frames not yet acknowledged were sent again.
    pub protocol_errors: u64,
    /// Sampling ticks missed, all channels together: a tick whose time passed without
    /// the channel being sampled, because the sampler had to wait for delivery (more
    /// than 8 frames behind, e.g. on a slow disk) or was not scheduled in time. Sampling
    /// then resumes on its schedule; the missed ticks leave no reading.
    pub missed_ticks: u64,
    /// PUBACK to confirmation of the frames confirmed, median and 99th percentile, as
    /// the upper bound of a histogram bucket (5, 10, 20, 50, 100, 150, 200, 300, 400,
    /// 500, 750 ms, 1, 2, 5, 30 s); absent before the first.
    pub confirm_wait_p50_ms: Option<u64>,
    pub confirm_wait_p99_ms: Option<u64>,
    /// Exactly which readings the byte cap gave up, per device and boot.
    pub dropped: Vec<DroppedSpan>,
    /// Milliseconds since the last PUBACK; absent before the first.
    pub last_puback_age_ms: Option<u64>,
    pub rss_bytes: Option<u64>,
}

/// One (device, boot)'s dropped readings, as half-open `[start, end)` ranges of
/// sequence numbers, sorted and disjoint.
///
/// A span must name its device and boot: one that does not is no report at all, and makes
/// the health report it is in unreadable rather than count against a device of no name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedSpan {
    pub device: String,
    /// 16 hex digits, as everywhere else the boot id is shown.
    pub boot: String,
    /// Never acknowledged by the broker: lost, unless a frame in flight got through.
    #[serde(default)]
    pub unsent: Vec<[u64; 2]>,
    /// Acknowledged by the broker before they were dropped: they may still be stored.
    #[serde(default)]
    pub after_puback: Vec<[u64; 2]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_and_missing_fields_default() -> Result<(), serde_json::Error> {
        let health = Health {
            readings: 10,
            dropped: vec![DroppedSpan {
                device: "press-01".into(),
                boot: "abababababababab".into(),
                unsent: vec![[0, 50]],
                after_puback: vec![],
            }],
            ..Health::default()
        };
        let status = format!(
            r#"{{"state":"online","kind":"edge-agent","health":{}}}"#,
            serde_json::to_string(&health)?
        );
        let read: GatewayStatus = serde_json::from_str(&status)?;
        assert_eq!(
            (read.state.as_str(), read.kind.as_str()),
            ("online", AGENT_KIND)
        );
        assert_eq!(read.health, Some(health));

        let will: GatewayStatus = serde_json::from_str(r#"{"state":"offline","reason":"lost"}"#)?;
        assert_eq!(will.health, None);
        let older: GatewayStatus = serde_json::from_str(r#"{"health":{"readings":3}}"#)?;
        assert_eq!(
            older.health.map(|h| (h.readings, h.dropped.len())),
            Some((3, 0))
        );
        Ok(())
    }
}
