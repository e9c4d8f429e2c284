//! Wire-format behaviour: round trips, the size bar, and one test per decoding error.

use proptest::prelude::*;
use protocol::{
    BootId, DecodeError, DeviceId, EncodeError, Field, Frame, InvalidFrame, Quality, Reading,
    MAX_FRAME_LEN, MAX_READINGS, MAX_SEQ, MAX_TIMESTAMP_MS,
};

#[path = "support/seed_frames.rs"]
mod seed_frames;
use seed_frames::NOW_MS;

fn reading(channel: u8, offset_ms: u32, value: f32) -> Reading {
    Reading {
        channel,
        offset_ms,
        value,
        quality: Quality::empty(),
    }
}

fn frame(readings: &[Reading]) -> Frame {
    let mut frame = Frame::new(
        DeviceId::new("furnace-01").unwrap(),
        BootId([0x9c, 0x41, 0x07, 0xee, 0x12, 0x5a, 0xb3, 0x70]),
        41,
        NOW_MS,
    );
    frame.readings.extend_from_slice(readings).unwrap();
    frame
}

fn encode(frame: &Frame) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    frame.encode(&mut buf).unwrap().to_vec()
}

#[test]
fn round_trip_keeps_every_field() {
    let mut original = frame(&[
        reading(0, 0, 851.25),
        Reading {
            quality: Quality::SIMULATED_ANOMALY | Quality::OUT_OF_RANGE,
            ..reading(1, 0, -3.5)
        },
        Reading {
            quality: Quality::SENSOR_FAULT,
            ..reading(255, 70_000, f32::NAN)
        },
    ]);
    original.clock_synced = false;
    let bytes = encode(&original);
    let decoded = Frame::decode(&bytes).unwrap();
    assert_eq!(decoded.device, original.device);
    assert_eq!(decoded.boot_id, original.boot_id);
    assert_eq!(decoded.first_seq, 41);
    assert_eq!(decoded.base_ts_ms, NOW_MS);
    assert!(!decoded.clock_synced);
    assert_eq!(decoded.readings[..2], original.readings[..2]);
    assert_eq!(decoded.readings[2].channel, 255);
    assert_eq!(decoded.readings[2].offset_ms, 70_000);
    assert!(decoded.readings[2].value.is_nan());
    assert_eq!(decoded.readings[2].quality, Quality::SENSOR_FAULT);
    let ids: Vec<(u64, u64)> = decoded.iter().map(|(seq, ts, _)| (seq, ts)).collect();
    assert_eq!(
        ids,
        [(41, NOW_MS), (42, NOW_MS), (43, NOW_MS + 70_000)],
        "sequence numbers are implicit, timestamps are base + offset"
    );
}

#[test]
fn boot_id_maps_to_bigint_and_back() {
    let boot = BootId([0xff, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(BootId::from_i64(boot.as_i64()), boot);
    assert!(boot.as_i64() < 0, "the high bit becomes the sign bit");
    assert_eq!(boot.to_string(), "ff00000000000001");
}

fn bytes_per_reading(device: &str, channels: &[seed_frames::Channel], count: usize) -> f64 {
    encode(&seed_frames::seed_frame(device, channels, count)).len() as f64 / count as f64
}

/// The seed devices under their own ids, and their channels again under the longest
/// id allowed (the header carries the id, so that is the worst case).
fn size_cases() -> Vec<(String, &'static [seed_frames::Channel])> {
    let longest = "x".repeat(protocol::MAX_ID_LEN);
    seed_frames::SEED_DEVICES
        .iter()
        .flat_map(|&(device, channels)| {
            [(device.to_owned(), channels), (longest.clone(), channels)]
        })
        .collect()
}

#[test]
fn fifty_readings_cost_at_most_8_bytes_each_header_included() {
    for (device, channels) in size_cases() {
        let per_reading = bytes_per_reading(&device, channels, 50);
        assert!(per_reading <= 8.0, "{device}: {per_reading} B/reading");
    }
}

#[test]
fn ten_readings_cost_at_most_12_bytes_each_header_included() {
    for (device, channels) in size_cases() {
        let per_reading = bytes_per_reading(&device, channels, 10);
        assert!(per_reading <= 12.0, "{device}: {per_reading} B/reading");
    }
}

#[test]
fn largest_frame_fits_max_frame_len() {
    let mut frame = Frame::new(
        DeviceId::new(&"d".repeat(protocol::MAX_ID_LEN)).unwrap(),
        BootId([0xff; 8]),
        MAX_SEQ - MAX_READINGS as u64 + 1,
        MAX_TIMESTAMP_MS - u64::from(u32::MAX),
    );
    for i in 0..MAX_READINGS {
        let offset = if i == MAX_READINGS - 1 { u32::MAX } else { 0 };
        let r = Reading {
            quality: Quality::all(),
            ..reading(255, offset, f32::MAX)
        };
        frame.readings.push(r).unwrap();
    }
    let bytes = encode(&frame);
    assert!(bytes.len() <= MAX_FRAME_LEN);
    assert_eq!(Frame::decode(&bytes).unwrap().readings.len(), MAX_READINGS);
}

#[test]
fn encode_reports_a_small_buffer() {
    let frame = frame(&[reading(0, 0, 1.0)]);
    let needed = encode(&frame).len();
    for size in 0..needed {
        let mut buf = vec![0u8; size];
        assert_eq!(
            frame.encode(&mut buf).unwrap_err(),
            EncodeError::BufferTooSmall,
            "buffer of {size}"
        );
    }
}

#[test]
fn encode_refuses_invalid_frames() {
    let cases = [
        (frame(&[]), InvalidFrame::NoReadings),
        (
            frame(&[reading(0, 10, 1.0), reading(0, 9, 1.0)]),
            InvalidFrame::OutOfOrder { index: 1 },
        ),
        (
            frame(&[reading(0, 0, 1.0), reading(0, 0, f32::INFINITY)]),
            InvalidFrame::NonFiniteValue { index: 1 },
        ),
        (
            Frame {
                first_seq: MAX_SEQ,
                ..frame(&[reading(0, 0, 1.0), reading(0, 0, 1.0)])
            },
            InvalidFrame::SeqOutOfRange,
        ),
        (
            Frame {
                base_ts_ms: MAX_TIMESTAMP_MS,
                ..frame(&[reading(0, 0, 1.0), reading(0, 1, 1.0)])
            },
            InvalidFrame::TimestampOutOfRange { index: 1 },
        ),
    ];
    for (frame, expected) in cases {
        let mut buf = [0u8; MAX_FRAME_LEN];
        assert_eq!(frame.encode(&mut buf), Err(EncodeError::Invalid(expected)));
    }
}

#[test]
fn decode_errors_name_the_problem() {
    let good = encode(&frame(&[reading(0, 0, 1.0), reading(1, 5, 2.0)]));

    assert_eq!(Frame::decode(&[]), Err(DecodeError::Empty));

    let mut v3 = good.clone();
    v3[0] = 3;
    assert_eq!(Frame::decode(&v3), Err(DecodeError::UnknownVersion(3)));

    let mut flags = good.clone();
    flags[1] = 0b11;
    assert_eq!(
        Frame::decode(&flags),
        Err(InvalidFrame::UnknownFlags(0b11).into())
    );

    let mut trailing = good.clone();
    trailing.extend_from_slice(&[0, 0, 0]);
    assert_eq!(Frame::decode(&trailing), Err(DecodeError::TrailingBytes(3)));

    // The device id sits after version, flags and its length byte.
    let mut slash = good.clone();
    slash[2 + 7] = b'/';
    assert!(matches!(
        Frame::decode(&slash),
        Err(DecodeError::Invalid(InvalidFrame::Device(_)))
    ));

    let mut bad_utf8 = good.clone();
    bad_utf8[3] = 0xff;
    assert_eq!(
        Frame::decode(&bad_utf8),
        Err(DecodeError::Malformed(Field::Header))
    );
}

#[test]
fn every_truncation_is_reported_as_truncated() {
    let good = encode(&frame(&[reading(0, 0, 1.0), reading(1, 300, 2.0)]));
    for len in 1..good.len() {
        match Frame::decode(&good[..len]) {
            Err(DecodeError::Truncated(_)) => {}
            other => panic!("prefix of {len} bytes: {other:?}"),
        }
    }
}

/// Builds wire bytes by hand, for inputs the encoder refuses to produce.
fn handmade(count: u16, readings: &[(u16, u32, f32)]) -> Vec<u8> {
    let mut out = vec![1, 1];
    out.extend(postcard::to_stdvec(&("dev-1", [0u8; 8], 0u64, NOW_MS, count)).unwrap());
    for reading in readings {
        out.extend(postcard::to_stdvec(reading).unwrap());
    }
    out
}

#[test]
fn decode_refuses_what_encode_never_writes() {
    assert_eq!(
        Frame::decode(&handmade(0, &[])),
        Err(InvalidFrame::NoReadings.into())
    );
    let many = vec![(0, 0, 1.0); MAX_READINGS + 1];
    assert_eq!(
        Frame::decode(&handmade(many.len() as u16, &many)),
        Err(InvalidFrame::TooManyReadings(MAX_READINGS + 1).into())
    );
    assert_eq!(
        Frame::decode(&handmade(1, &[(256 << 3, 0, 1.0)])),
        Err(InvalidFrame::ChannelOutOfRange {
            index: 0,
            channel: 256
        }
        .into())
    );
    assert_eq!(
        Frame::decode(&handmade(2, &[(0, u32::MAX, 1.0), (0, 1, 1.0)])),
        Err(InvalidFrame::TimestampOutOfRange { index: 1 }.into())
    );
    assert_eq!(
        Frame::decode(&handmade(1, &[(0, 0, f32::NAN)])),
        Err(InvalidFrame::NonFiniteValue { index: 0 }.into())
    );
    assert!(Frame::decode(&handmade(1, &[(0b100, 0, f32::NAN)])).is_ok());
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let reading = (any::<u8>(), 0u32..100_000, any::<f32>(), 0u8..8).prop_map(
        |(channel, delta, value, quality)| {
            let quality = Quality::from_bits_truncate(quality);
            let value = if value.is_finite() || quality.contains(Quality::SENSOR_FAULT) {
                value
            } else {
                0.0
            };
            (
                delta,
                Reading {
                    channel,
                    offset_ms: 0,
                    value,
                    quality,
                },
            )
        },
    );
    (
        "[A-Za-z0-9._-]{1,24}",
        any::<[u8; 8]>(),
        0..=MAX_SEQ - MAX_READINGS as u64,
        0..=MAX_TIMESTAMP_MS / 2,
        any::<bool>(),
        prop::collection::vec(reading, 1..=MAX_READINGS),
    )
        .prop_map(|(device, boot, seq, ts, synced, readings)| {
            let mut frame = Frame::new(DeviceId::new(&device).unwrap(), BootId(boot), seq, ts);
            frame.clock_synced = synced;
            let mut offset = 0;
            for (delta, mut r) in readings {
                offset += delta;
                r.offset_ms = offset;
                frame.readings.push(r).unwrap();
            }
            frame
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1200)) {
        let _ = Frame::decode(&bytes);
        // Most random payloads stop at the version byte; these get past it.
        let _ = Frame::decode(&[&[1, 1][..], &bytes].concat());
    }

    #[test]
    fn decoding_mutated_frames_never_panics_and_what_decodes_re_encodes(
        frame in arb_frame(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encode(&frame);
        for (at, byte) in flips {
            let at = at.index(bytes.len());
            bytes[at] = byte;
        }
        bytes.truncate(cut.index(bytes.len()) + 1);
        if let Ok(decoded) = Frame::decode(&bytes) {
            let again = encode(&decoded);
            prop_assert_eq!(encode(&Frame::decode(&again).unwrap()), again);
        }
    }

    #[test]
    fn valid_frames_round_trip_within_max_len(frame in arb_frame()) {
        let bytes = encode(&frame);
        prop_assert!(bytes.len() <= MAX_FRAME_LEN);
        let decoded = Frame::decode(&bytes).unwrap();
        prop_assert_eq!(encode(&decoded), bytes);
        prop_assert_eq!(&decoded.device, &frame.device);
        prop_assert_eq!(decoded.readings.len(), frame.readings.len());
        for (a, b) in decoded.readings.iter().zip(&frame.readings) {
            prop_assert_eq!(a.value.to_bits(), b.value.to_bits());
            prop_assert_eq!((a.channel, a.offset_ms, a.quality), (b.channel, b.offset_ms, b.quality));
        }
    }
}

/// The fuzz seeds were written by hand from the format table in `frame.rs` (see
/// fuzz/seeds/README.md), so decoding them checks the documentation against the code.
#[test]
fn hand_written_seed_frames_decode_as_documented() {
    let furnace =
        Frame::decode(include_bytes!("../../fuzz/seeds/decode_frame/furnace-10")).unwrap();
    assert_eq!(furnace.device.as_str(), "furnace-01");
    assert_eq!(furnace.boot_id, BootId([0, 1, 2, 3, 4, 5, 6, 7]));
    assert_eq!((furnace.first_seq, furnace.base_ts_ms), (6_048_000, NOW_MS));
    assert!(furnace.clock_synced);
    let offsets: Vec<u32> = furnace.readings.iter().map(|r| r.offset_ms).collect();
    assert_eq!(offsets, (0..10).map(|i| i * 1000).collect::<Vec<_>>());
    assert_eq!(furnace.readings[9].value, 859.0);

    let spindle = Frame::decode(include_bytes!(
        "../../fuzz/seeds/decode_frame/spindle-flags"
    ))
    .unwrap();
    assert!(!spindle.clock_synced);
    let r = &spindle.readings;
    assert_eq!(
        (r[1].channel, r[1].quality),
        (1, Quality::SIMULATED_ANOMALY)
    );
    assert!(r[2].value.is_nan() && r[2].quality == Quality::SENSOR_FAULT);
    assert_eq!(
        (r[3].channel, r[3].offset_ms, r[3].quality),
        (200, 70_100, Quality::OUT_OF_RANGE)
    );
}
