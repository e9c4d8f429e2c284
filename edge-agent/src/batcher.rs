//! Turns a device's stream of samples into protocol frames, sealed by count or by age.
//!
//! Sequence numbers are assigned here, at sealing, consecutively per device within a
//! boot: a frame that reaches the disk queue therefore never leaves a hole, and a hole
//! downstream always means a lost frame. Readings still in an open batch when the process
//! dies were never durable and never got a sequence number, so their loss leaves no hole.

use std::time::{Duration, Instant};

use protocol::{BootId, DeviceId, Frame, Quality, Reading};

use crate::sensors::Sample;

/// Widest time span one frame may cover. Offsets are `u32` milliseconds on the wire;
/// a clock step larger than this (NTP correcting a Pi that booted in 1970) starts a new
/// frame instead of producing an unencodable one.
const MAX_SPAN_MS: u64 = 3_600_000;

struct Pending {
    ts_ms: u64,
    channel: u8,
    sample: Sample,
}

pub struct Batcher {
    device: DeviceId,
    boot_id: BootId,
    next_seq: u64,
    max_readings: usize,
    max_age: Duration,
    pending: Vec<Pending>,
    opened_at: Option<Instant>,
}

impl Batcher {
    pub fn new(device: DeviceId, boot_id: BootId, max_readings: usize, max_age: Duration) -> Self {
        Self {
            device,
            boot_id,
            next_seq: 0,
            max_readings: max_readings.clamp(1, protocol::MAX_READINGS),
            max_age,
            pending: Vec::with_capacity(max_readings),
            opened_at: None,
        }
    }

    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    /// Sequence number the next sealed reading will get (= readings sealed so far).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Adds a reading taken at wall-clock `ts_ms`; returns the frames this sealed (the
    /// previous batch if the reading could not join it, and this batch if it is full).
    pub fn push(
        &mut self,
        ts_ms: u64,
        channel: u8,
        mut sample: Sample,
        now: Instant,
    ) -> Vec<Frame> {
        let mut sealed = Vec::new();
        if !self.fits(ts_ms) {
            sealed.extend(self.seal(true));
        }
        if !sample.value.is_finite() {
            // Only a fault may carry a non-number; the frame would not encode otherwise.
            sample.quality |= Quality::SENSOR_FAULT;
        }
        self.opened_at.get_or_insert(now);
        self.pending.push(Pending {
            ts_ms,
            channel,
            sample,
        });
        if self.pending.len() >= self.max_readings {
            sealed.extend(self.seal(true));
        }
        sealed
    }

    fn fits(&self, ts_ms: u64) -> bool {
        self.pending
            .iter()
            .all(|p| p.ts_ms.abs_diff(ts_ms) <= MAX_SPAN_MS)
    }

    /// When the open batch must be sealed by age, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|opened| opened + self.max_age)
    }

    /// Seals the open batch if it has reached its age.
    pub fn seal_if_due(&mut self, now: Instant, clock_synced: bool) -> Option<Frame> {
        match self.deadline() {
            Some(deadline) if deadline <= now => self.seal(clock_synced),
            _ => None,
        }
    }

    /// Seals whatever is pending into a frame, in time order.
    pub fn seal(&mut self, clock_synced: bool) -> Option<Frame> {
        if self.pending.is_empty() {
            return None;
        }
        // Stable: readings taken in the same millisecond keep their sampling order.
        self.pending.sort_by_key(|p| p.ts_ms);
        let base_ts_ms = self.pending[0].ts_ms;
        let mut frame = Frame::new(self.device.clone(), self.boot_id, self.next_seq, base_ts_ms);
        frame.clock_synced = clock_synced;
        for p in self.pending.drain(..) {
            let reading = Reading {
                channel: p.channel,
                // fits() kept the span within MAX_SPAN_MS, far below u32::MAX.
                offset_ms: (p.ts_ms - base_ts_ms) as u32,
                value: p.sample.value,
                quality: p.sample.quality,
            };
            // max_readings <= MAX_READINGS, so the frame has room for every reading.
            let _ = frame.readings.push(reading);
        }
        self.next_seq += frame.readings.len() as u64;
        self.opened_at = None;
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(value: f32) -> Sample {
        Sample {
            value,
            quality: Quality::empty(),
        }
    }

    fn batcher(max_readings: usize) -> Batcher {
        Batcher::new(
            DeviceId::new("press-01").unwrap(),
            BootId([1; 8]),
            max_readings,
            Duration::from_millis(500),
        )
    }

    #[test]
    fn seals_by_count_with_consecutive_sequence_numbers() {
        let mut b = batcher(3);
        let now = Instant::now();
        let mut frames = Vec::new();
        for i in 0..7u64 {
            frames.extend(b.push(1_000 + i * 200, 0, sample(i as f32), now));
        }
        assert_eq!(frames.len(), 2);
        assert_eq!((frames[0].first_seq, frames[1].first_seq), (0, 3));
        assert_eq!(frames[1].base_ts_ms, 1_600);
        let last = b.seal(true).unwrap();
        assert_eq!((last.first_seq, last.readings.len()), (6, 1));
        assert_eq!(b.next_seq(), 7);
        assert!(b.seal(true).is_none());
    }

    #[test]
    fn seals_by_age_and_sorts_by_time() {
        let mut b = batcher(50);
        let start = Instant::now();
        assert!(b.push(5_000, 1, sample(2.0), start).is_empty());
        assert!(b.push(4_990, 0, sample(1.0), start).is_empty());
        assert!(b
            .seal_if_due(start + Duration::from_millis(499), true)
            .is_none());
        let frame = b
            .seal_if_due(start + Duration::from_millis(500), false)
            .unwrap();
        assert_eq!(frame.base_ts_ms, 4_990);
        assert!(!frame.clock_synced);
        let order: Vec<(u8, u32)> = frame
            .readings
            .iter()
            .map(|r| (r.channel, r.offset_ms))
            .collect();
        assert_eq!(order, [(0, 0), (1, 10)]);
        assert!(b.deadline().is_none());
    }

    #[test]
    fn a_clock_step_starts_a_new_frame_and_nan_is_flagged() {
        let mut b = batcher(50);
        let now = Instant::now();
        assert!(b.push(1_000, 0, sample(1.0), now).is_empty());
        let sealed = b.push(1_000 + MAX_SPAN_MS + 1, 0, sample(f32::NAN), now);
        assert_eq!(sealed.len(), 1);
        let frame = b.seal(true).unwrap();
        assert!(frame.readings[0].quality.contains(Quality::SENSOR_FAULT));
        let mut buf = [0u8; protocol::MAX_FRAME_LEN];
        frame
            .encode(&mut buf)
            .expect("a frame with a flagged NaN encodes");
    }
}
