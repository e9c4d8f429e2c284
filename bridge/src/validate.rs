//! The checks every message passes before it may enter `sensors-data` (what the
//! ingester's `validate` is to a record before it is stored), and the readable rendering
//! of a frame for the `latest` topic.
//!
//! Kept free of I/O so that every rule is unit-tested and property-tested: whatever bytes
//! arrive, `check` returns a verdict and never panics.

use contracts::dead_letter::Reason;
use protocol::{BootId, Frame, Quality, Topic, TopicKind};
use serde_json::{json, Map, Value};

use crate::meta::Labels;

/// A message that must not go to `sensors-data`, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// One of [`Reason::BRIDGE`].
    pub reason: Reason,
    pub detail: String,
    /// The device the topic names, when it names one: the DLQ record's key.
    pub device: Option<String>,
}

/// A message that may go to `sensors-data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The Kafka key.
    pub device: String,
    pub boot_id: BootId,
    /// Sequence number of the frame's last reading.
    pub last_seq: u64,
    /// Timestamp of the frame's last reading, the newest (readings are in time order),
    /// in ms since the Unix epoch by the device's clock.
    pub last_ts_ms: u64,
}

/// Checks one MQTT message.
pub fn check(prefix: &str, topic: &[u8], payload: &[u8]) -> Result<Accepted, Rejection> {
    let topic_text = std::str::from_utf8(topic).map_err(|_| Rejection {
        reason: Reason::Topic,
        detail: "topic is not UTF-8".to_owned(),
        device: None,
    })?;
    let parsed = Topic::parse(topic_text).map_err(|e| Rejection {
        reason: Reason::Topic,
        detail: format!("topic {topic_text:?}: {e}"),
        device: None,
    })?;
    let topic_device = Some(parsed.device.to_owned());
    if parsed.prefix != prefix || parsed.kind != TopicKind::Telemetry {
        return Err(Rejection {
            reason: Reason::Topic,
            detail: format!("topic {topic_text:?} is not a {prefix}/…/telemetry topic"),
            device: topic_device,
        });
    }
    let frame = Frame::decode(payload).map_err(|e| Rejection {
        reason: Reason::Decode,
        detail: e.to_string(),
        device: topic_device.clone(),
    })?;
    if frame.device.as_str() != parsed.device {
        return Err(Rejection {
            reason: Reason::DeviceMismatch,
            detail: format!(
                "frame is from device {:?} but was published on {topic_text:?}",
                frame.device.as_str()
            ),
            device: topic_device,
        });
    }
    // `decode` refuses a frame without readings; checked again rather than indexed.
    let Some(newest) = frame.readings.last() else {
        return Err(Rejection {
            reason: Reason::Decode,
            detail: "frame has no readings".to_owned(),
            device: topic_device,
        });
    };
    Ok(Accepted {
        device: parsed.device.to_owned(),
        boot_id: frame.boot_id,
        last_seq: frame.seq(frame.readings.len() - 1),
        last_ts_ms: frame.timestamp_ms(newest),
    })
}

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
    use proptest::prelude::*;
    use protocol::{DeviceId, Reading};

    fn frame_bytes(device: &str) -> Vec<u8> {
        let mut frame = Frame::new(
            DeviceId::new(device).unwrap(),
            BootId([1, 2, 3, 4, 5, 6, 7, 8]),
            10,
            1_700_000_000_000,
        );
        for (i, value) in [1.5f32, 2.5, f32::NAN].into_iter().enumerate() {
            frame
                .readings
                .push(Reading {
                    channel: (i % 2) as u8,
                    offset_ms: i as u32 * 100,
                    value,
                    quality: if value.is_nan() {
                        Quality::SENSOR_FAULT
                    } else {
                        Quality::empty()
                    },
                })
                .unwrap();
        }
        let mut buf = [0u8; protocol::MAX_FRAME_LEN];
        frame.encode(&mut buf).unwrap().to_vec()
    }

    const TOPIC: &[u8] = b"plant/plant1/line-a/press-01/telemetry";

    #[test]
    fn a_valid_frame_on_its_own_topic_passes_keyed_by_device() {
        assert_eq!(
            check("plant", TOPIC, &frame_bytes("press-01")),
            Ok(Accepted {
                device: "press-01".to_owned(),
                boot_id: BootId([1, 2, 3, 4, 5, 6, 7, 8]),
                last_seq: 12,
                last_ts_ms: 1_700_000_000_200,
            })
        );
    }

    #[test]
    fn each_kind_of_bad_message_gets_its_reason() {
        let reason = |topic: &[u8], payload: &[u8]| check("plant", topic, payload).unwrap_err();
        let good = frame_bytes("press-01");
        assert_eq!(reason(b"\xff\xfe", &good).reason, Reason::Topic);
        assert_eq!(reason(b"plant/a/b/telemetry", &good).reason, Reason::Topic);
        let other_prefix = reason(b"other/plant1/line-a/press-01/telemetry", &good);
        assert_eq!(other_prefix.reason, Reason::Topic);
        assert_eq!(other_prefix.device.as_deref(), Some("press-01"));
        assert_eq!(
            reason(b"plant/plant1/line-a/press-01/status", &good).reason,
            Reason::Topic
        );
        let truncated = reason(TOPIC, &good[..good.len() - 3]);
        assert_eq!(truncated.reason, Reason::Decode);
        assert!(
            truncated.detail.contains("truncated"),
            "{}",
            truncated.detail
        );
        assert_eq!(reason(TOPIC, b"").reason, Reason::Decode);
        let forged = reason(TOPIC, &frame_bytes("furnace-01"));
        assert_eq!(forged.reason, Reason::DeviceMismatch);
        assert_eq!(forged.device.as_deref(), Some("press-01"));
        assert!(forged.detail.contains("furnace-01"), "{}", forged.detail);
    }

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

    proptest! {
        #[test]
        fn no_input_panics(topic in proptest::collection::vec(any::<u8>(), 0..80),
                           payload in proptest::collection::vec(any::<u8>(), 0..900)) {
            let verdict = check("plant", &topic, &payload);
            if verdict.is_ok() {
                prop_assert!(latest_json(&payload, 0, None).is_some());
            }
        }
    }
}
