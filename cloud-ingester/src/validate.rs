//! What a frame must be, beyond decoding, before its readings are stored: from a device
//! and channels the `devices` table knows, at a time that can be real. Anything else is
//! dead-lettered with the reason instead of failing the batch it came in.

use std::collections::{HashMap, HashSet};

use protocol::Frame;
use sqlx::PgPool;

/// Earliest plausible reading time: 2000-01-01T00:00:00Z. A device clock before that
/// has never been set (the agent flags unsynchronised clocks, which are still stored).
pub const EARLIEST_TS_MS: u64 = 946_684_800_000;
/// How far ahead of the ingester's clock a reading may be.
pub const MAX_FUTURE_MS: u64 = 24 * 3600 * 1000;

/// Why a record went to the dead-letter topic; the code is its `dlq-reason` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Not a valid frame (or not one of ours: wrong content type, no payload).
    Decode,
    UnknownDevice,
    UnknownChannel,
    /// A reading time before 2000 or more than a day ahead of now.
    Timestamp,
}

impl RejectReason {
    pub const ALL: [RejectReason; 4] = [
        RejectReason::Decode,
        RejectReason::UnknownDevice,
        RejectReason::UnknownChannel,
        RejectReason::Timestamp,
    ];

    pub fn code(self) -> &'static str {
        match self {
            RejectReason::Decode => "decode",
            RejectReason::UnknownDevice => "unknown-device",
            RejectReason::UnknownChannel => "unknown-channel",
            RejectReason::Timestamp => "timestamp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

/// The devices and channels the database knows.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    channels: HashMap<String, HashSet<u8>>,
}

impl Catalog {
    pub async fn load(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let rows: Vec<(String, i16)> =
            sqlx::query_as("SELECT device_id, channel_id FROM device_channels")
                .fetch_all(pool)
                .await?;
        let mut channels: HashMap<String, HashSet<u8>> = HashMap::new();
        for (device, channel) in rows {
            if let Ok(channel) = u8::try_from(channel) {
                channels.entry(device).or_default().insert(channel);
            }
        }
        Ok(Self { channels })
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, u8)>) -> Self {
        let mut channels: HashMap<String, HashSet<u8>> = HashMap::new();
        for (device, channel) in pairs {
            channels
                .entry(device.to_owned())
                .or_default()
                .insert(channel);
        }
        Self { channels }
    }

    pub fn devices(&self) -> usize {
        self.channels.len()
    }

    /// Decodes and checks one record's value.
    pub fn check(&self, payload: &[u8], now_ms: u64) -> Result<Frame, Rejection> {
        let frame = Frame::decode(payload).map_err(|e| Rejection {
            reason: RejectReason::Decode,
            detail: e.to_string(),
        })?;
        let device = frame.device.as_str();
        let Some(channels) = self.channels.get(device) else {
            return Err(Rejection {
                reason: RejectReason::UnknownDevice,
                detail: format!("device {device:?} is not in the devices table"),
            });
        };
        for (_, ts_ms, reading) in frame.iter() {
            if !channels.contains(&reading.channel) {
                return Err(Rejection {
                    reason: RejectReason::UnknownChannel,
                    detail: format!(
                        "device {device:?} has no channel {} in device_channels",
                        reading.channel
                    ),
                });
            }
            if ts_ms < EARLIEST_TS_MS || ts_ms > now_ms.saturating_add(MAX_FUTURE_MS) {
                return Err(Rejection {
                    reason: RejectReason::Timestamp,
                    detail: format!(
                        "reading time {ts_ms} ms is before 2000 or more than a day ahead of {now_ms}"
                    ),
                });
            }
        }
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{BootId, DeviceId, Quality, Reading};

    const NOW: u64 = 1_800_000_000_000;

    fn encode(device: &str, channel: u8, ts_ms: u64) -> Vec<u8> {
        let mut frame = Frame::new(DeviceId::new(device).unwrap(), BootId([1; 8]), 0, ts_ms);
        frame
            .readings
            .push(Reading {
                channel,
                offset_ms: 0,
                value: 1.0,
                quality: Quality::empty(),
            })
            .unwrap();
        let mut buf = [0u8; protocol::MAX_FRAME_LEN];
        frame.encode(&mut buf).unwrap().to_vec()
    }

    #[test]
    fn each_kind_of_bad_record_gets_its_reason() {
        let catalog = Catalog::from_pairs([("press-01", 0), ("press-01", 1)]);
        let reason = |payload: &[u8]| catalog.check(payload, NOW).unwrap_err().reason;
        assert!(catalog.check(&encode("press-01", 1, NOW), NOW).is_ok());
        assert_eq!(reason(b"garbage"), RejectReason::Decode);
        assert_eq!(
            reason(&encode("ghost-01", 0, NOW)),
            RejectReason::UnknownDevice
        );
        assert_eq!(
            reason(&encode("press-01", 7, NOW)),
            RejectReason::UnknownChannel
        );
        assert_eq!(
            reason(&encode("press-01", 0, 1_000)),
            RejectReason::Timestamp
        );
        assert_eq!(
            reason(&encode("press-01", 0, NOW + MAX_FUTURE_MS + 1)),
            RejectReason::Timestamp
        );
        assert!(catalog
            .check(&encode("press-01", 0, NOW + MAX_FUTURE_MS), NOW)
            .is_ok());
    }
}
