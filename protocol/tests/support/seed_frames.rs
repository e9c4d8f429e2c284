//! Frames as the five seed devices produce them, shared by the size test and the
//! `wire_size` example so the asserted and the printed figures come from the same data.

use protocol::{BootId, DeviceId, Frame, Quality, Reading};

/// 2026-11-30T08:00:00Z: a realistic timestamp, so its varint has a realistic width.
pub const NOW_MS: u64 = 1_796_025_600_000;

/// (channel id, name, sampling period in ms, nominal value, noise amplitude).
pub type Channel = (u8, &'static str, u32, f32, f32);

/// The seed devices' channels at the sampling periods the `devices` table seeds.
pub const SEED_DEVICES: [(&str, &[Channel]); 5] = [
    ("furnace-01", &[(0, "temperature", 1000, 850.0, 12.0)]),
    (
        "cnc-spindle-01",
        &[
            (0, "vibration_rms", 100, 2.8, 1.1),
            (1, "bearing_temp", 1000, 45.0, 2.0),
        ],
    ),
    ("press-01", &[(0, "pressure", 200, 210.0, 8.0)]),
    (
        "paint-booth-01",
        &[
            (0, "humidity", 2000, 55.0, 4.0),
            (1, "temperature", 2000, 22.0, 0.8),
        ],
    ),
    (
        "compressor-01",
        &[
            (0, "active_power", 1000, 55.0, 9.0),
            (1, "line_current", 1000, 93.0, 15.0),
        ],
    ),
];

/// `count` readings of `channels`, interleaved in time order, with full-precision
/// values, a random boot id and a sequence number a week of 10 Hz into the boot (a
/// 4-byte varint), so the header is as large as in the field.
pub fn seed_frame(device: &str, channels: &[Channel], count: usize) -> Frame {
    let mut frame = Frame::new(
        DeviceId::new(device).expect("seed ids are valid"),
        BootId(*b"\x8f\x1d\x3a\x77\xc4\x02\x5e\x91"),
        6_048_000,
        NOW_MS,
    );
    let mut t = 0u32;
    while frame.readings.len() < count {
        for &(channel, _, period, nominal, noise) in channels {
            if t.is_multiple_of(period) && frame.readings.len() < count {
                let value = nominal + (t as f32 * 0.731 + f32::from(channel)).sin() * noise;
                let reading = Reading {
                    channel,
                    offset_ms: t,
                    value,
                    quality: Quality::empty(),
                };
                frame.readings.push(reading).expect("count <= MAX_READINGS");
            }
        }
        t += 100;
    }
    frame
}
