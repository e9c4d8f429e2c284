//! Prints how many bytes a reading costs on the wire, frame header included, beside the
//! same readings as JSON, for frames of 10 and 50 readings from each seed device.
//!
//! Run: `cargo run -p protocol --example wire_size`

use protocol::{Frame, MAX_FRAME_LEN};
use serde_json::json;

#[path = "../tests/support/seed_frames.rs"]
mod seed_frames;
use seed_frames::{seed_frame, Channel, SEED_DEVICES};

/// The frame as one JSON document, field names as a JSON API would spell them.
fn as_json_document(frame: &Frame, channels: &[Channel]) -> Vec<u8> {
    let readings: Vec<_> = frame
        .iter()
        .map(|(seq, ts, r)| {
            json!({"seq": seq, "channel": channel_name(channels, r.channel), "ts": ts,
                   "value": r.value, "quality": r.quality.bits()})
        })
        .collect();
    let doc = json!({"device": frame.device.as_str(), "boot_id": frame.boot_id.to_string(),
                     "clock_synced": frame.clock_synced, "readings": readings});
    serde_json::to_vec(&doc).expect("JSON of plain values")
}

/// One self-contained JSON message per reading, as the Node.js seed system sent them.
fn as_json_messages(frame: &Frame, channels: &[Channel]) -> Vec<u8> {
    frame
        .iter()
        .flat_map(|(seq, ts, r)| {
            serde_json::to_vec(&json!({"device_id": frame.device.as_str(),
                "boot_id": frame.boot_id.to_string(), "seq": seq,
                "sensor": channel_name(channels, r.channel), "timestamp": ts,
                "value": r.value, "quality": r.quality.bits()}))
            .expect("JSON of plain values")
        })
        .collect()
}

fn channel_name(channels: &[Channel], id: u8) -> &'static str {
    channels
        .iter()
        .find(|c| c.0 == id)
        .map_or("unknown", |c| c.1)
}

fn main() {
    println!("Bytes per reading, frame header included (MQTT framing not counted).");
    println!("Readings: each seed device's channels at their seeded sampling periods, values");
    println!("with full f32 mantissas, seq 6,048,000 (a week of 10 Hz), a 2026 timestamp.");
    println!();
    println!("| device | readings | postcard frame | JSON document | JSON per reading |");
    println!("|---|---:|---:|---:|---:|");
    let mut worst = [0f64; 2];
    for (device, channels) in SEED_DEVICES {
        for (slot, count) in [10usize, 50].into_iter().enumerate() {
            let frame = seed_frame(device, channels, count);
            let mut buf = [0u8; MAX_FRAME_LEN];
            let wire = frame.encode(&mut buf).expect("valid frame").len();
            let per = |bytes: usize| bytes as f64 / count as f64;
            worst[slot] = worst[slot].max(per(wire));
            println!(
                "| {device} | {count} | {:.2} | {:.1} | {:.1} |",
                per(wire),
                per(as_json_document(&frame, channels).len()),
                per(as_json_messages(&frame, channels).len()),
            );
        }
    }
    // The header carries the device id, so the longest id allowed costs the most.
    let longest_id = "x".repeat(protocol::MAX_ID_LEN);
    for count in [10usize, 50] {
        let frame = seed_frame(&longest_id, SEED_DEVICES[0].1, count);
        let mut buf = [0u8; MAX_FRAME_LEN];
        let wire = frame.encode(&mut buf).expect("valid frame").len();
        println!(
            "| furnace-01's channel under a {}-char id (the longest) | {count} | {:.2} | | |",
            protocol::MAX_ID_LEN,
            wire as f64 / count as f64
        );
    }
    println!();
    println!(
        "worst seed device: {:.2} B/reading at 10 (bar 12), {:.2} B/reading at 50 (bar 8)",
        worst[0], worst[1]
    );
}
