//! One decoded reading, shaped as a `sensor_readings` row: what every writer (the
//! PostgreSQL store, the Redis writer, the alert rules) consumes.

use protocol::{Frame, Quality};

/// One reading with its identity, ready to store. Timestamps are ms since the epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub device_id: String,
    /// The frame's boot id as PostgreSQL stores it (the 8 bytes, big endian).
    pub boot_id: i64,
    pub seq: i64,
    pub ts_ms: i64,
    pub value: f32,
    pub channel_id: i16,
    /// The quality bits (`protocol::Quality`), 0..=7.
    pub quality: i16,
    pub clock_synced: bool,
}

/// Appends the rows of one valid frame (from `Frame::decode`, which has checked every
/// range these conversions rely on: seq < 2^63, timestamps up to year 9999).
pub fn rows_from_frame(frame: &Frame, out: &mut Vec<Row>) {
    let device_id = frame.device.as_str();
    let boot_id = frame.boot_id.as_i64();
    for (seq, ts_ms, reading) in frame.iter() {
        out.push(Row {
            device_id: device_id.to_owned(),
            boot_id,
            seq: seq as i64,
            ts_ms: ts_ms as i64,
            value: reading.value,
            channel_id: i16::from(reading.channel),
            quality: i16::from(reading.quality.bits()),
            clock_synced: frame.clock_synced,
        });
    }
}

impl Row {
    pub fn quality(&self) -> Quality {
        Quality::from_bits_truncate(self.quality as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{BootId, DeviceId, Reading};

    #[test]
    fn a_frame_becomes_one_row_per_reading_with_its_identity() {
        let mut frame = Frame::new(
            DeviceId::new("press-01").unwrap(),
            BootId([0xff, 0, 0, 0, 0, 0, 0, 1]),
            41,
            1_700_000_000_000,
        );
        frame.clock_synced = false;
        for (i, quality) in [Quality::empty(), Quality::SENSOR_FAULT]
            .into_iter()
            .enumerate()
        {
            frame
                .readings
                .push(Reading {
                    channel: 3,
                    offset_ms: 10 * i as u32,
                    value: i as f32,
                    quality,
                })
                .unwrap();
        }
        let mut rows = Vec::new();
        rows_from_frame(&frame, &mut rows);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].device_id, "press-01");
        assert_eq!(
            rows[1].boot_id,
            i64::from_be_bytes([0xff, 0, 0, 0, 0, 0, 0, 1])
        );
        assert_eq!((rows[0].seq, rows[1].seq), (41, 42));
        assert_eq!(rows[1].ts_ms, 1_700_000_000_010);
        assert_eq!(rows[1].quality(), Quality::SENSOR_FAULT);
        assert!(!rows[1].clock_synced);
        assert_eq!(rows[1].channel_id, 3);
    }
}
