//! What a frame must be, beyond decoding, before its readings are stored: from a device
//! and channels the `devices` table knows. Anything else is dead-lettered with the reason
//! instead of failing the batch it came in.
//!
//! A reading's time is never a reason (the clock policy, `service::clock`): a Pi whose
//! clock is unset (1970) or wrong (a day ahead) still measured something, and a refusal
//! would be confirmed to its agent as refused, so the agent would drop it. Such readings
//! are stored; the live views and alerts keep them out (see `future_dated`).

use std::collections::{HashMap, HashSet};

use contracts::dead_letter::{Reason, Rejection};
use protocol::Frame;
use sqlx::PgPool;

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
    pub fn check(&self, payload: &[u8]) -> Result<Frame, Rejection> {
        let frame = Frame::decode(payload).map_err(|e| Rejection {
            reason: Reason::Decode,
            detail: e.to_string(),
        })?;
        let device = frame.device.as_str();
        let Some(channels) = self.channels.get(device) else {
            return Err(Rejection {
                reason: Reason::UnknownDevice,
                detail: format!("device {device:?} is not in the devices table"),
            });
        };
        for (_, _, reading) in frame.iter() {
            if !channels.contains(&reading.channel) {
                return Err(Rejection {
                    reason: Reason::UnknownChannel,
                    detail: format!(
                        "device {device:?} has no channel {} in device_channels",
                        reading.channel
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
        let reason = |payload: &[u8]| catalog.check(payload).unwrap_err().reason;
        assert!(catalog.check(&encode("press-01", 1, NOW)).is_ok());
        assert_eq!(reason(b"garbage"), Reason::Decode);
        assert_eq!(reason(&encode("ghost-01", 0, NOW)), Reason::UnknownDevice);
        assert_eq!(reason(&encode("press-01", 7, NOW)), Reason::UnknownChannel);
    }

    #[test]
    fn no_reading_is_refused_for_its_clock() {
        let catalog = Catalog::from_pairs([("press-01", 0)]);
        for ts in [0, 1_000, NOW, NOW + 2 * 86_400_000] {
            assert!(catalog.check(&encode("press-01", 0, ts)).is_ok(), "{ts}");
        }
    }
}
