//! What the ingester's integration tests share: the stack's Kafka, topics of their own,
//! frames of seed devices, and producing them; and, by subject, the helpers of the
//! pipeline (`ingester`), process (`process`), schema, store and Redis sink tests.

// Each test binary uses its own subset.
#![allow(dead_code)]

pub mod ingester;
pub mod process;
pub mod redis_sink;
pub mod schema;
pub mod store;

use protocol::{BootId, DeviceId, Frame, Quality, Reading};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// A client configuration for the stack's Kafka-compatible broker.
pub fn kafka() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", testkit::kafka_brokers());
    config
}

/// Creates the topics (3 partitions each) and waits for the broker to confirm them.
pub async fn create_topics(names: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = kafka().create().unwrap();
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|n| NewTopic::new(n, 3, TopicReplication::Fixed(1)))
        .collect();
    for result in admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }
}

/// A frame of `readings` readings of `channels` in turn, 10 ms apart, starting at
/// `first_seq`; each reading's value is its seq.
pub fn frame(
    device: &str,
    channels: &[u8],
    first_seq: u64,
    readings: usize,
    base_ms: u64,
) -> Vec<u8> {
    let mut frame = Frame::new(
        DeviceId::new(device).unwrap(),
        BootId([9; 8]),
        first_seq,
        base_ms,
    );
    for i in 0..readings {
        frame
            .readings
            .push(Reading {
                channel: channels[i % channels.len()],
                offset_ms: i as u32 * 10,
                value: (first_seq + i as u64) as f32,
                quality: Quality::empty(),
            })
            .unwrap();
    }
    let mut buf = [0u8; protocol::MAX_FRAME_LEN];
    frame.encode(&mut buf).unwrap().to_vec()
}

/// Produces (key, payload) records and waits for every delivery, all in flight at once
/// (the idempotent producer keeps their order per partition).
pub async fn produce(topic: &str, records: &[(String, Vec<u8>)]) {
    let producer: FutureProducer = kafka()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let deliveries: Vec<_> = records
        .iter()
        .map(|(key, payload)| {
            producer
                .send_result(FutureRecord::to(topic).key(key).payload(payload))
                .map_err(|(e, _)| e)
                .unwrap()
        })
        .collect();
    for delivery in deliveries {
        delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}
