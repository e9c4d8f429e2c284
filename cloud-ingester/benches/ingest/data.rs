//! The bench's readings: generated up front, as rows (what the store writes) and as the
//! encoded frames they came from (what Kafka carries to the pipeline).

use cloud_ingester::rows::{rows_from_frame, Row};
use protocol::{BootId, DeviceId, Frame, Quality, Reading};

use crate::{DEVICES, PERIOD_MS, READINGS_PER_FRAME};

/// An encoded frame and its Kafka key (the device id).
pub type KeyedFrame = (String, Vec<u8>);

/// `n` readings from `DEVICES` devices, as 50-reading frames, round robin across
/// devices (the order a Kafka consumer sees them in), turned into rows as the ingester
/// does. Timestamps start two hours ago, so every reading lands in a day partition the
/// migration created (yesterday .. a week ahead) and the hourly stats see a few buckets.
pub fn generate(n: usize) -> anyhow::Result<(Vec<Row>, Vec<KeyedFrame>)> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let base = now_ms - 2 * 3_600_000;
    let ids: Vec<DeviceId> = (0..DEVICES)
        .map(|d| DeviceId::new(&format!("bench-dev-{d:03}")))
        .collect::<Result<_, _>>()?;
    let mut rows = Vec::with_capacity(n);
    let mut frames = Vec::with_capacity(n / READINGS_PER_FRAME + 1);
    let mut encoded = [0u8; protocol::MAX_FRAME_LEN];
    let mut frame_no = 0usize;
    while rows.len() < n {
        let device = frame_no % DEVICES;
        let per_device = (frame_no / DEVICES) as u64;
        let first_seq = per_device * READINGS_PER_FRAME as u64;
        let mut frame = Frame::new(
            ids[device].clone(),
            BootId((0x5eed_0000_0000_0000_u64 + device as u64).to_be_bytes()),
            first_seq,
            base + first_seq * PERIOD_MS,
        );
        for i in 0..READINGS_PER_FRAME.min(n - rows.len()) {
            let seq = first_seq + i as u64;
            frame
                .readings
                .push(Reading {
                    channel: (seq % 4) as u8,
                    offset_ms: (i as u64 * PERIOD_MS) as u32,
                    value: 20.0 + 5.0 * ((seq as f32) * 0.01 + device as f32).sin(),
                    quality: Quality::empty(),
                })
                .map_err(|_| anyhow::anyhow!("frame full"))?;
        }
        frame.validate()?;
        rows_from_frame(&frame, &mut rows);
        frames.push((
            frame.device.as_str().to_owned(),
            frame.encode(&mut encoded)?.to_vec(),
        ));
        frame_no += 1;
    }
    Ok((rows, frames))
}
