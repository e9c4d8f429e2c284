//! The confirmations to the devices, against the stack's Kafka-compatible broker and a
//! throw-away PostgreSQL database: after each commit the ingester tells each device and
//! boot what PostgreSQL holds (a prefix, the ranges above a hole) and what it refused
//! for good, on the device's confirm topic, coalesced to a few per second.

mod support;

use std::time::{Duration, Instant};

use protocol::kafka::{headers, CONFIRM_CONTENT_TYPE};
use protocol::{BootId, Confirmation, SeqRange};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use service::clock::now_ms;
use sqlx::PgPool;
use support::ingester::{self, Running};
use support::{create_topics, frame, kafka};

/// How long any effect may take to show.
const WITHIN: Duration = Duration::from_secs(60);
/// The boot id `support::frame` gives every frame.
const BOOT: BootId = BootId([9; 8]);

struct Topics {
    data: String,
    dlq: String,
    confirm: String,
}

impl Topics {
    async fn new() -> Self {
        let topics = Self {
            data: testkit::unique_name("data"),
            dlq: testkit::unique_name("dlq"),
            confirm: testkit::unique_name("confirm"),
        };
        create_topics(&[&topics.data, &topics.dlq, &topics.confirm]).await;
        topics
    }
}

/// The pipeline in this process, confirming to `topics.confirm`; a batch closes at
/// `batch_rows` readings.
async fn start(pool: &PgPool, topics: &Topics, batch_rows: usize) -> Running {
    let group = testkit::unique_name("ingest");
    let mut config = ingester::config(&topics.data, &topics.dlq, &group);
    config.kafka.confirm_topic = topics.confirm.clone();
    config.batch.rows = batch_rows;
    config.batch.age = Duration::from_millis(50);
    ingester::start_config(&config, pool, None, ingester::idempotent_producer()).await
}

fn telemetry_topic(device: &str) -> String {
    format!("plant/site-a/line-1/{device}/telemetry")
}

fn confirm_topic(device: &str) -> String {
    format!("plant/site-a/line-1/{device}/confirm")
}

/// Produces (device, payload, mqtt-topic header) records, all in flight at once (the
/// idempotent producer keeps their order per partition), and waits for every delivery.
async fn produce(topic: &str, records: &[(&str, Vec<u8>, Option<String>)]) {
    let producer: FutureProducer = kafka()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let deliveries: Vec<_> = records
        .iter()
        .map(|(key, payload, mqtt_topic)| {
            let mut record = FutureRecord::to(topic).key(*key).payload(payload);
            if let Some(mqtt_topic) = mqtt_topic {
                record = record.headers(OwnedHeaders::new().insert(Header {
                    key: headers::MQTT_TOPIC,
                    value: Some(mqtt_topic),
                }));
            }
            producer.send_result(record).map_err(|(e, _)| e).unwrap()
        })
        .collect();
    for delivery in deliveries {
        delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// One record of the confirm topic, checked for its key and headers and decoded.
#[derive(Debug)]
struct Received {
    key: String,
    mqtt_topic: String,
    confirmation: Confirmation,
}

/// Reads the confirm topic from its beginning.
struct ConfirmReader {
    consumer: StreamConsumer,
    received: Vec<Received>,
}

impl ConfirmReader {
    fn new(topic: &str) -> Self {
        let consumer: StreamConsumer = kafka()
            .set("group.id", testkit::unique_name("reader"))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "50")
            .create()
            .unwrap();
        let mut list = TopicPartitionList::new();
        for partition in 0..3 {
            list.add_partition_offset(topic, partition, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&list).unwrap();
        Self {
            consumer,
            received: Vec::new(),
        }
    }

    /// Reads until a confirmation satisfies `done`, at most [`WITHIN`]; returns it.
    async fn until(&mut self, what: &str, done: impl Fn(&Received) -> bool) -> &Received {
        let deadline = Instant::now() + WITHIN;
        loop {
            if let Some(index) = self.received.iter().position(&done) {
                return &self.received[index];
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no confirmation {what} within {WITHIN:?}; received: {:#?}",
                self.received
            );
            let Ok(message) = tokio::time::timeout(left, self.consumer.recv()).await else {
                continue;
            };
            let message = message.expect("the confirm topic is readable");
            let header = |name: &str| {
                message
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == name))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8(v.to_vec()).expect("a UTF-8 header"))
            };
            assert_eq!(
                header(headers::CONTENT_TYPE).as_deref(),
                Some(CONFIRM_CONTENT_TYPE)
            );
            let confirmation =
                Confirmation::decode(message.payload().expect("a payload")).expect("it decodes");
            self.received.push(Received {
                key: String::from_utf8(message.key().expect("a key").to_vec()).unwrap(),
                mqtt_topic: header(headers::MQTT_TOPIC).expect("an mqtt-topic header"),
                confirmation,
            });
        }
    }

    fn of<'a>(&'a self, device: &'a str) -> impl Iterator<Item = &'a Received> {
        self.received
            .iter()
            .filter(move |r| r.confirmation.device.as_str() == device)
    }
}

fn is_of(received: &Received, device: &str) -> bool {
    received.confirmation.device.as_str() == device && received.confirmation.boot_id == BOOT
}

fn ranges(list: &[(u64, u64)]) -> protocol::confirm::Ranges {
    list.iter().map(|&(s, e)| SeqRange::new(s, e)).collect()
}

/// `frames` frames of `per_frame` readings of `device`'s channel 0 from seq `first`,
/// with the header the bridge writes.
fn run_of(
    device: &'static str,
    first: u64,
    frames: u64,
    per_frame: usize,
) -> Vec<(&'static str, Vec<u8>, Option<String>)> {
    let base = now_ms() - 60_000;
    (0..frames)
        .map(|i| {
            let seq = first + i * per_frame as u64;
            let payload = frame(device, &[0], seq, per_frame, base + seq * 10);
            (device, payload, Some(telemetry_topic(device)))
        })
        .collect()
}

#[sqlx::test(migrations = "../migrations")]
async fn committed_frames_are_confirmed_as_a_prefix_on_the_devices_confirm_topic(pool: PgPool) {
    let topics = Topics::new().await;
    // A record without the header cannot be routed: no confirmation, counted.
    let base = now_ms() - 60_000;
    let mut records = vec![(
        "cnc-spindle-01",
        frame("cnc-spindle-01", &[0, 1], 0, 10, base),
        None,
    )];
    records.extend(run_of("furnace-01", 0, 10, 50));
    produce(&topics.data, &records).await;
    let running = start(&pool, &topics, 500).await;
    let mut reader = ConfirmReader::new(&topics.confirm);

    let last = reader
        .until("saying furnace-01 holds 0..500", |r| {
            is_of(r, "furnace-01") && r.confirmation.committed_below == 500
        })
        .await;
    assert_eq!(last.key, "furnace-01");
    assert_eq!(last.mqtt_topic, confirm_topic("furnace-01"));
    assert!(last.confirmation.committed.is_empty(), "{last:?}");
    assert!(last.confirmation.refused.is_empty(), "{last:?}");
    let deadline = Instant::now() + WITHIN;
    while running.stats.snapshot().confirmations_unsent == 0 {
        assert!(
            Instant::now() < deadline,
            "the unroutable confirmation was not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(reader.of("cnc-spindle-01").count(), 0);
    assert!(running.stats.snapshot().confirmations_sent >= 1);
    running.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_hole_is_confirmed_as_the_prefix_below_it_and_a_range_above(pool: PgPool) {
    let topics = Topics::new().await;
    let mut records = run_of("furnace-01", 0, 2, 50);
    records.extend(run_of("furnace-01", 200, 2, 50));
    produce(&topics.data, &records).await;
    let running = start(&pool, &topics, 500).await;
    let mut reader = ConfirmReader::new(&topics.confirm);

    let last = reader
        .until("with 0..100 and 200..300", |r| {
            is_of(r, "furnace-01") && r.confirmation.committed == ranges(&[(200, 300)])
        })
        .await;
    assert_eq!(last.confirmation.committed_below, 100, "{last:?}");
    assert!(last.confirmation.refused.is_empty(), "{last:?}");
    running.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn frames_of_an_unknown_device_or_channel_are_confirmed_as_refused(pool: PgPool) {
    let topics = Topics::new().await;
    let base = now_ms() - 60_000;
    let mut records = run_of("furnace-01", 0, 1, 50);
    records.push((
        "furnace-01",
        frame("furnace-01", &[7], 50, 5, base + 1_000),
        Some(telemetry_topic("furnace-01")),
    ));
    records.push((
        "ghost-01",
        frame("ghost-01", &[0], 0, 5, base),
        Some(telemetry_topic("ghost-01")),
    ));
    produce(&topics.data, &records).await;
    let running = start(&pool, &topics, 500).await;
    let mut reader = ConfirmReader::new(&topics.confirm);

    let ghost = reader
        .until("refusing ghost-01's 0..5", |r| {
            is_of(r, "ghost-01") && r.confirmation.refused == ranges(&[(0, 5)])
        })
        .await;
    assert_eq!(ghost.key, "ghost-01");
    assert_eq!(ghost.mqtt_topic, confirm_topic("ghost-01"));
    assert_eq!(ghost.confirmation.committed_below, 0, "{ghost:?}");
    let furnace = reader
        .until("refusing furnace-01's channel 7 at 50..55", |r| {
            is_of(r, "furnace-01") && r.confirmation.refused == ranges(&[(50, 55)])
        })
        .await;
    assert_eq!(furnace.confirmation.committed_below, 50, "{furnace:?}");
    assert!(furnace.confirmation.committed.is_empty(), "{furnace:?}");
    running.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_burst_of_frames_is_confirmed_far_fewer_times_than_there_are_commits(pool: PgPool) {
    let topics = Topics::new().await;
    const FRAMES: u64 = 200;
    // A batch closes at every frame: each frame is a commit of its own.
    produce(&topics.data, &run_of("furnace-01", 0, FRAMES, 10)).await;
    let running = start(&pool, &topics, 10).await;
    let mut reader = ConfirmReader::new(&topics.confirm);

    reader
        .until("saying furnace-01 holds every frame", |r| {
            is_of(r, "furnace-01") && r.confirmation.committed_below == FRAMES * 10
        })
        .await;
    let batches = running.stats.snapshot().batches;
    assert!(
        batches >= FRAMES / 2,
        "only {batches} batches: not one commit per frame"
    );
    let confirmations = reader.of("furnace-01").count() as u64;
    assert!(
        confirmations < FRAMES / 4,
        "{confirmations} confirmations for {FRAMES} frames in {batches} batches"
    );
    running.stop().await;
}
