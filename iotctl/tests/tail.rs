//! `iotctl tail` on Kafka: frames decoded, undecodable records explained, filtered by
//! device.

mod support;

use std::io::Read;
use std::time::{Duration, Instant};

use protocol::{BootId, DeviceId, Frame, Quality, Reading};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use sqlx::PgPool;
use testkit::ChildGuard;

use support::{create_topic, iotctl, kafka};

fn frame(device: &str, first_seq: u64, values: &[f32]) -> Vec<u8> {
    let mut frame = Frame::new(
        DeviceId::new(device).unwrap(),
        BootId([7; 8]),
        first_seq,
        service::clock::now_ms(),
    );
    for (i, value) in values.iter().enumerate() {
        frame
            .readings
            .push(Reading {
                channel: 0,
                offset_ms: i as u32 * 100,
                value: *value,
                quality: if i == 0 {
                    Quality::empty()
                } else {
                    Quality::OUT_OF_RANGE
                },
            })
            .unwrap();
    }
    let mut buf = [0u8; protocol::MAX_FRAME_LEN];
    frame.encode(&mut buf).unwrap().to_vec()
}

/// Spawns `iotctl tail` (its stdout a pipe, its stderr in a log) and waits at most 30 s
/// for its "listening" line.
fn spawn_tail(pool: &PgPool, args: &[&str]) -> ChildGuard {
    let mut child = ChildGuard::spawn_capturing_stdout("iotctl-tail", &mut iotctl(pool, args));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !child.log_tail().contains("listening") {
        if let Some(status) = child.try_wait() {
            panic!(
                "tail ended ({status}) before listening: {}",
                child.log_tail()
            );
        }
        assert!(
            Instant::now() < deadline,
            "tail not listening within 30 s: {}",
            child.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Waits (at most 30 s) for the child to end and returns its stdout.
fn finish(mut child: ChildGuard) -> (Option<i32>, String) {
    let Some(status) = child.wait_timeout(Duration::from_secs(30)) else {
        panic!(
            "tail did not stop after --count frames: {}",
            child.log_tail()
        );
    };
    let mut out = String::new();
    child
        .take_stdout()
        .expect("tail's stdout is a pipe")
        .read_to_string(&mut out)
        .unwrap();
    (status.code(), out)
}

async fn produce(topic: &str, records: &[(&str, Vec<u8>)]) {
    let producer: FutureProducer = kafka().create().unwrap();
    for (key, value) in records {
        producer
            .send(
                FutureRecord::to(topic).key(*key).payload(value),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn tail_decodes_frames_from_kafka(pool: PgPool) {
    let topic = testkit::unique_name("data");
    create_topic(&topic, 3).await;
    let child = spawn_tail(
        &pool,
        &[
            "--json",
            "--data-topic",
            &topic,
            "tail",
            "--source",
            "kafka",
            "--count",
            "2",
        ],
    );
    produce(
        &topic,
        &[
            ("furnace-01", frame("furnace-01", 10, &[850.5, 1500.0])),
            ("press-01", frame("press-01", 20, &[210.0])),
        ],
    )
    .await;
    let (code, out) = finish(child);
    assert_eq!(code, Some(0));
    let frames: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(frames.len(), 2, "{out}");
    let furnace = frames.iter().find(|f| f["device"] == "furnace-01").unwrap();
    assert_eq!(furnace["source"], "kafka");
    assert_eq!(furnace["topic"], topic.as_str());
    assert_eq!(furnace["boot"], "0707070707070707");
    assert_eq!(furnace["first_seq"], 10);
    let readings = furnace["readings"].as_array().unwrap();
    assert_eq!(readings.len(), 2);
    assert_eq!(readings[0]["channel"], "temperature");
    assert_eq!(readings[0]["unit"], "°C");
    assert_eq!(readings[0]["value"], 850.5);
    assert_eq!(readings[1]["seq"], 11);
    assert_eq!(readings[1]["quality"], serde_json::json!(["out-of-range"]));
    let press = frames.iter().find(|f| f["device"] == "press-01").unwrap();
    assert_eq!(press["readings"][0]["channel"], "pressure");
}

#[sqlx::test(migrations = "../migrations")]
async fn tail_says_why_a_record_does_not_decode_and_filters_by_device(pool: PgPool) {
    let topic = testkit::unique_name("data");
    create_topic(&topic, 3).await;
    let child = spawn_tail(
        &pool,
        &[
            "--data-topic",
            &topic,
            "tail",
            "--source",
            "kafka",
            "--device",
            "press-01",
            "--count",
            "2",
        ],
    );
    produce(
        &topic,
        &[
            ("furnace-01", frame("furnace-01", 1, &[850.0])),
            ("press-01", b"\x01not a frame".to_vec()),
            ("press-01", frame("press-01", 5, &[210.25])),
        ],
    )
    .await;
    let (code, out) = finish(child);
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines.iter().all(|l| !l.contains("furnace-01")), "{out}");
    let junk = lines
        .iter()
        .find(|l| l.contains("undecodable"))
        .expect(&out);
    assert!(
        junk.contains("press-01") && junk.contains("12 bytes"),
        "{junk}"
    );
    let reading = lines
        .iter()
        .find(|l| l.contains("pressure=210.25 bar ok"))
        .expect(&out);
    assert!(reading.contains("press-01 0707070707070707/5"), "{reading}");
}
