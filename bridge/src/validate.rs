//! The checks every message passes before it may enter `sensors-data` (what the
//! ingester's `validate` is to a record before it is stored).
//!
//! Kept free of I/O so that every rule is unit-tested and property-tested: whatever bytes
//! arrive, `check` returns a verdict and never panics.

use contracts::dead_letter::{Reason, Rejection};
use protocol::{BootId, Frame, Topic, TopicKind};

/// A message that must not go to `sensors-data`: why (its dead letter's headers, with
/// one of [`Reason::BRIDGE`]), and the device its topic names, when it names one (the
/// dead letter's key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub rejection: Rejection,
    pub device: Option<String>,
}

fn rejected(reason: Reason, detail: impl Into<String>, device: Option<String>) -> Rejected {
    Rejected {
        rejection: Rejection::new(reason, detail),
        device,
    }
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
pub fn check(prefix: &str, topic: &[u8], payload: &[u8]) -> Result<Accepted, Rejected> {
    let topic_text = std::str::from_utf8(topic)
        .map_err(|_| rejected(Reason::Topic, "topic is not UTF-8", None))?;
    let parsed = Topic::parse(topic_text)
        .map_err(|e| rejected(Reason::Topic, format!("topic {topic_text:?}: {e}"), None))?;
    let topic_device = Some(parsed.device.to_owned());
    if parsed.prefix != prefix || parsed.kind != TopicKind::Telemetry {
        return Err(rejected(
            Reason::Topic,
            format!("topic {topic_text:?} is not a {prefix}/…/telemetry topic"),
            topic_device,
        ));
    }
    let frame = Frame::decode(payload)
        .map_err(|e| rejected(Reason::Decode, e.to_string(), topic_device.clone()))?;
    if frame.device.as_str() != parsed.device {
        return Err(rejected(
            Reason::DeviceMismatch,
            format!(
                "frame is from device {:?} but was published on {topic_text:?}",
                frame.device.as_str()
            ),
            topic_device,
        ));
    }
    // `decode` refuses a frame without readings; checked again rather than indexed.
    let Some(newest) = frame.readings.last() else {
        return Err(rejected(
            Reason::Decode,
            "frame has no readings",
            topic_device,
        ));
    };
    Ok(Accepted {
        device: parsed.device.to_owned(),
        boot_id: frame.boot_id,
        last_seq: frame.seq(frame.readings.len() - 1),
        last_ts_ms: frame.timestamp_ms(newest),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use protocol::{DeviceId, Quality, Reading};

    /// A frame of three readings on channels 0 and 1, the last a sensor fault.
    pub(crate) fn frame_bytes(device: &str) -> Vec<u8> {
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

    pub(crate) const TOPIC: &[u8] = b"plant/plant1/line-a/press-01/telemetry";

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
        assert_eq!(reason(b"\xff\xfe", &good).rejection.reason, Reason::Topic);
        assert_eq!(
            reason(b"plant/a/b/telemetry", &good).rejection.reason,
            Reason::Topic
        );
        let other_prefix = reason(b"other/plant1/line-a/press-01/telemetry", &good);
        assert_eq!(other_prefix.rejection.reason, Reason::Topic);
        assert_eq!(other_prefix.device.as_deref(), Some("press-01"));
        assert_eq!(
            reason(b"plant/plant1/line-a/press-01/status", &good)
                .rejection
                .reason,
            Reason::Topic
        );
        let truncated = reason(TOPIC, &good[..good.len() - 3]);
        assert_eq!(truncated.rejection.reason, Reason::Decode);
        assert!(
            truncated.rejection.detail.contains("truncated"),
            "{}",
            truncated.rejection.detail
        );
        assert_eq!(reason(TOPIC, b"").rejection.reason, Reason::Decode);
        let forged = reason(TOPIC, &frame_bytes("furnace-01"));
        assert_eq!(forged.rejection.reason, Reason::DeviceMismatch);
        assert_eq!(forged.device.as_deref(), Some("press-01"));
        assert!(
            forged.rejection.detail.contains("furnace-01"),
            "{}",
            forged.rejection.detail
        );
    }

    proptest! {
        #[test]
        fn no_input_panics(topic in proptest::collection::vec(any::<u8>(), 0..80),
                           payload in proptest::collection::vec(any::<u8>(), 0..900)) {
            let verdict = check("plant", &topic, &payload);
            if verdict.is_ok() {
                prop_assert!(crate::latest::json::latest_json(&payload, 0, None).is_some());
            }
        }
    }
}
