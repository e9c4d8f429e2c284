//! The Redis layout the ingester keeps for live views, under a configurable prefix
//! ([`DEFAULT_PREFIX`] unless set; the ingester's `redis_sink` documents each key's
//! rules in full):
//!
//! - `{prefix}:latest:{device}`: hash, field = channel id, value = [`LatestValue`] JSON;
//! - `{prefix}:recent:{device}`: stream of the last readings, entry id = reading time;
//! - `{prefix}:last_seen:{device}`: ms time of the device's newest reading, with a TTL,
//!   so an absent key means offline;
//! - `{prefix}:last_seen_order:{device}`: the order key (`boot_seen_us boot seq`) of that
//!   reading, so `last_seen` only moves forward;
//! - `{prefix}:alerts:open`: hash, field = alert id, value = [`crate::alerts::AlertView`].

use serde::{Deserialize, Serialize};

/// The prefix every binary uses unless configured otherwise (`plant:latest:furnace-01`).
pub const DEFAULT_PREFIX: &str = "plant";

/// The key names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisKeys {
    prefix: String,
}

impl RedisKeys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn latest(&self, device: &str) -> String {
        format!("{}{device}", self.latest_prefix())
    }

    /// What every `latest` key starts with, to find the devices by SCAN.
    pub fn latest_prefix(&self) -> String {
        format!("{}:latest:", self.prefix)
    }

    pub fn recent(&self, device: &str) -> String {
        format!("{}:recent:{device}", self.prefix)
    }

    pub fn last_seen(&self, device: &str) -> String {
        format!("{}:last_seen:{device}", self.prefix)
    }

    pub fn last_seen_order(&self, device: &str) -> String {
        format!("{}:last_seen_order:{device}", self.prefix)
    }

    pub fn open_alerts(&self) -> String {
        format!("{}:alerts:open", self.prefix)
    }
}

/// One channel's current value: a field of the `latest` hash. Short names, as a dashboard
/// reads thousands of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatestValue {
    /// Reading time, ms since the epoch (the device's clock).
    pub ts: i64,
    /// `null` when the reading was not a finite number (a faulted sensor).
    pub v: Option<f32>,
    /// Quality bits (`protocol::Quality`).
    pub q: i16,
    /// Boot id, 16 hex digits.
    pub boot: String,
    /// Sequence number within the boot.
    pub seq: i64,
    /// Whether the device's clock was synchronised.
    pub synced: bool,
    /// When the pipeline first saw this boot (µs, the ingester's clock): across boots the
    /// later-seen one is newer. Absent in values written before this order existed.
    #[serde(default)]
    pub boot_seen_us: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        let keys = RedisKeys::new("iot");
        assert_eq!(
            RedisKeys::new(DEFAULT_PREFIX).open_alerts(),
            "plant:alerts:open"
        );
        assert_eq!(keys.latest("furnace-01"), "iot:latest:furnace-01");
        assert_eq!(keys.recent("furnace-01"), "iot:recent:furnace-01");
        assert_eq!(keys.last_seen("furnace-01"), "iot:last_seen:furnace-01");
        assert_eq!(
            keys.last_seen_order("furnace-01"),
            "iot:last_seen_order:furnace-01"
        );
        assert_eq!(keys.open_alerts(), "iot:alerts:open");
        assert!(keys.latest("x").starts_with(&keys.latest_prefix()));
    }

    #[test]
    fn latest_values_are_compact_and_non_finite_values_are_null() -> Result<(), serde_json::Error> {
        let value = LatestValue {
            ts: 1_700_000_000_010,
            v: Some(f32::NAN),
            q: 1,
            boot: "ff00000000000001".into(),
            seq: 42,
            synced: false,
            boot_seen_us: Some(1_700_000_000_000_123),
        };
        let json = serde_json::to_string(&value)?;
        assert_eq!(
            json,
            r#"{"ts":1700000000010,"v":null,"q":1,"boot":"ff00000000000001","seq":42,"synced":false,"boot_seen_us":1700000000000123}"#
        );
        let read: LatestValue = serde_json::from_str(&json)?;
        assert_eq!(read.v, None);
        let old: LatestValue = serde_json::from_str(
            r#"{"ts":1,"v":851.25,"q":0,"boot":"0000000000000001","seq":7,"synced":true}"#,
        )?;
        assert_eq!((old.v, old.boot_seen_us), (Some(851.25), None));
        Ok(())
    }
}
