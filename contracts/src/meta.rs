//! A device's retained `meta` message (`{prefix}/{site}/{line}/{device}/meta`): its
//! channels, units, sampling periods, ranges and thresholds, for people and dashboards.
//! The edge agent writes it on connect; the bridge reads the channels' names and units
//! for the readable `latest` topic.
//!
//! Read tolerantly, because the agent and its readers are upgraded apart: unknown fields
//! are ignored, a field that is missing or of another type is taken as absent, and a
//! channel entry without a valid `id` (0 to 255) is skipped. Only a message that is not a
//! JSON object with a `channels` array is no meta at all.

use serde::de::{Deserializer, IgnoredAny};
use serde::{Deserialize, Serialize};

/// The whole message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceMeta {
    #[serde(default, deserialize_with = "or_absent")]
    pub device: Option<String>,
    #[serde(default, deserialize_with = "or_absent")]
    pub site: Option<String>,
    #[serde(default, deserialize_with = "or_absent")]
    pub line: Option<String>,
    #[serde(default, deserialize_with = "or_absent")]
    pub gateway: Option<String>,
    /// How the device's telemetry is encoded, for people.
    #[serde(default, deserialize_with = "or_absent")]
    pub encoding: Option<String>,
    #[serde(deserialize_with = "valid_entries")]
    pub channels: Vec<ChannelMeta>,
}

/// One channel of the device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChannelMeta {
    /// The channel number in the device's frames.
    pub id: u8,
    #[serde(default, deserialize_with = "or_absent")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "or_absent")]
    pub unit: Option<String>,
    #[serde(default, deserialize_with = "or_absent")]
    pub period_ms: Option<u64>,
    /// The sensor's physical range, `[low, high]`; `null` when unbounded.
    #[serde(default, deserialize_with = "or_absent")]
    pub range: Option<[f64; 2]>,
    #[serde(default, deserialize_with = "or_absent")]
    pub thresholds: Option<Thresholds>,
    /// Where the readings come from: `simulated`, `file` or `command`.
    #[serde(default, deserialize_with = "or_absent")]
    pub source: Option<String>,
}

/// A channel's alarm levels, each `null` when unset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Thresholds {
    pub warn_low: Option<f64>,
    pub warn_high: Option<f64>,
    pub crit_low: Option<f64>,
    pub crit_high: Option<f64>,
}

/// A `T`, or any other JSON value (another type, a newer shape): absent.
#[derive(Deserialize)]
#[serde(untagged)]
enum OrAnything<T> {
    Value(T),
    Anything(IgnoredAny),
}

fn or_absent<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(match Option::<OrAnything<T>>::deserialize(deserializer)? {
        Some(OrAnything::Value(value)) => Some(value),
        Some(OrAnything::Anything(_)) | None => None,
    })
}

/// An array's entries that read as `T`; the others skipped.
fn valid_entries<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let entries = Vec::<OrAnything<T>>::deserialize(deserializer)?;
    Ok(entries
        .into_iter()
        .filter_map(|entry| match entry {
            OrAnything::Value(value) => Some(value),
            OrAnything::Anything(_) => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_meta_reads_back_and_anything_odd_in_it_is_absent_or_skipped(
    ) -> Result<(), serde_json::Error> {
        let meta = DeviceMeta {
            device: Some("furnace-01".into()),
            channels: vec![ChannelMeta {
                id: 0,
                name: Some("temperature".into()),
                range: Some([0.0, 1200.0]),
                thresholds: Some(Thresholds {
                    crit_high: Some(1100.0),
                    ..Thresholds::default()
                }),
                ..ChannelMeta::default()
            }],
            ..DeviceMeta::default()
        };
        let read: DeviceMeta = serde_json::from_slice(&serde_json::to_vec(&meta)?)?;
        assert_eq!(read, meta);

        let odd: DeviceMeta = serde_json::from_str(
            r#"{"device":7,"new":"field","channels":[
                {"id":1,"name":["x"],"unit":"kN","period_ms":"soon","range":[1],
                 "thresholds":{"warn_low":"cold"}},
                {"id":256},{"id":-1},{"name":"no id"},"text"]}"#,
        )?;
        assert_eq!(odd.device, None);
        assert_eq!(
            odd.channels,
            vec![ChannelMeta {
                id: 1,
                unit: Some("kN".into()),
                ..ChannelMeta::default()
            }]
        );
        for not_a_meta in ["{}", r#"{"channels":{}}"#, r#"{"channels":null}"#, "[]"] {
            assert!(
                serde_json::from_str::<DeviceMeta>(not_a_meta).is_err(),
                "{not_a_meta}"
            );
        }
        Ok(())
    }
}
