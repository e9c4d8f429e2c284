//! A frame rendered for the retained `latest` topic: JSON a person reads in MQTT
//! Explorer. Kept free of I/O (and property-tested with the checks in
//! `crate::validate`): whatever an accepted message holds, it renders.

use protocol::{Frame, Quality, Topic, TopicKind};
use serde_json::{json, Map, Value};

use crate::meta::Labels;

/// The `latest` topic of a telemetry topic already accepted by `check`.
pub fn latest_topic(telemetry_topic: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(telemetry_topic).ok()?;
    let topic = Topic::parse(text).ok()?;
    Some(topic.with_kind(TopicKind::Latest).to_string())
}

/// The newest reading of each channel in the frame, as JSON a person can read in MQTT
/// Explorer, with each channel's name and unit where the device's meta gave them.
/// `None` when the payload is not a valid frame.
///
/// The retained `latest` topic's contract (fields are only ever added):
///
/// ```json
/// {"device": "furnace-01", "boot_id": "00ab…", "seq": 4711, "clock_synced": true,
///  "received_at_ms": 1764000000950,
///  "channels": {"0": {"name": "temperature", "unit": "°C", "value": 851.2,
///                     "ts_ms": 1764000000900, "seq": 4710, "quality": []}}}
/// ```
///
/// Channels are keyed by their number; `name` and `unit` are absent while the device's
/// meta is unknown (or names no such channel). `value` is `null` for a sensor fault;
/// `quality` lists `simulated-anomaly`, `out-of-range`, `sensor-fault`. `seq` and `ts_ms`
/// are the reading's own; the top-level `seq` is the frame's last.
pub fn latest_json(payload: &[u8], received_at_ms: u64, labels: Option<&Labels>) -> Option<Value> {
    let frame = Frame::decode(payload).ok()?;
    let mut channels = Map::new();
    let mut last_seq = frame.first_seq;
    for (seq, ts_ms, reading) in frame.iter() {
        last_seq = seq;
        let value = if reading.value.is_finite() {
            json!(reading.value)
        } else {
            Value::Null
        };
        let mut channel = json!({
            "value": value,
            "ts_ms": ts_ms,
            "seq": seq,
            "quality": quality_names(reading.quality),
        });
        if let Some(label) = labels.and_then(|labels| labels.get(&reading.channel)) {
            if let Some(name) = &label.name {
                channel["name"] = json!(name);
            }
            if let Some(unit) = &label.unit {
                channel["unit"] = json!(unit);
            }
        }
        channels.insert(reading.channel.to_string(), channel);
    }
    Some(json!({
        "device": frame.device.as_str(),
        "boot_id": frame.boot_id.to_string(),
        "seq": last_seq,
        "clock_synced": frame.clock_synced,
        "received_at_ms": received_at_ms,
        "channels": channels,
    }))
}

fn quality_names(quality: Quality) -> Vec<&'static str> {
    let mut names = Vec::new();
    if quality.contains(Quality::SIMULATED_ANOMALY) {
        names.push("simulated-anomaly");
    }
    if quality.contains(Quality::OUT_OF_RANGE) {
        names.push("out-of-range");
    }
    if quality.contains(Quality::SENSOR_FAULT) {
        names.push("sensor-fault");
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::tests::{frame_bytes, TOPIC};

    #[test]
    fn latest_shows_the_newest_reading_of_each_channel() {
        let json = latest_json(&frame_bytes("press-01"), 42, None).unwrap();
        assert_eq!(json["device"], "press-01");
        assert_eq!(json["boot_id"], "0102030405060708");
        assert_eq!(json["seq"], 12);
        assert_eq!(json["channels"]["1"]["value"], 2.5);
        assert_eq!(json["channels"]["1"]["seq"], 11);
        assert_eq!(json["channels"]["0"]["value"], Value::Null);
        assert_eq!(json["channels"]["0"]["quality"], json!(["sensor-fault"]));
        assert_eq!(json["channels"]["0"]["ts_ms"], 1_700_000_000_200u64);
        assert!(json["channels"]["0"].get("name").is_none());
        assert_eq!(
            latest_topic(TOPIC).as_deref(),
            Some("plant/plant1/line-a/press-01/latest")
        );
    }

    #[test]
    fn latest_names_the_channels_the_meta_knows_and_numbers_the_rest() {
        let labels = crate::meta::parse(
            br#"{"channels":[{"id":0,"name":"force","unit":"kN"},{"id":1,"name":"stroke"}]}"#,
        )
        .unwrap();
        let json = latest_json(&frame_bytes("press-01"), 42, Some(&labels)).unwrap();
        let zero = &json["channels"]["0"];
        assert_eq!(
            (&zero["name"], &zero["unit"]),
            (&json!("force"), &json!("kN"))
        );
        assert_eq!(zero["seq"], 12, "the reading's fields stay");
        let one = &json["channels"]["1"];
        assert_eq!(one["name"], "stroke");
        assert!(one.get("unit").is_none());
        assert_eq!(one["value"], 2.5);

        let other = crate::meta::parse(br#"{"channels":[{"id":7,"name":"x"}]}"#).unwrap();
        let json = latest_json(&frame_bytes("press-01"), 42, Some(&other)).unwrap();
        assert!(json["channels"]["0"].get("name").is_none());
    }
}
