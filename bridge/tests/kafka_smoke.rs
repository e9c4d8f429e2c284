//! The stack's Kafka-compatible broker is real: the pipeline's topics exist with their
//! partition counts, and an idempotent acks=all producer and a consumer group (the
//! settings the bridge and the ingester rely on) round-trip keyed records with headers,
//! keeping each key's records in order.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio::time::timeout;

fn config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", testkit::kafka_brokers());
    config
}

#[test]
fn pipeline_topics_exist_with_their_partition_counts() -> anyhow::Result<()> {
    let consumer: BaseConsumer = config().create()?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .context("fetching Kafka metadata")?;
    let partitions: HashMap<&str, usize> = metadata
        .topics()
        .iter()
        .map(|t| (t.name(), t.partitions().len()))
        .collect();
    for topic in protocol::kafka::ALL_TOPICS {
        assert_eq!(
            partitions.get(topic.name).copied(),
            Some(topic.partitions as usize),
            "topic {} (all topics: {partitions:?})",
            topic.name
        );
    }
    Ok(())
}

#[tokio::test]
async fn idempotent_producer_and_consumer_group_round_trip() -> anyhow::Result<()> {
    let topic = testkit::unique_name("kafka");
    let admin: AdminClient<DefaultClientContext> = config().create()?;
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for result in created {
        result.map_err(|(name, code)| anyhow::anyhow!("creating {name}: {code}"))?;
    }

    let producer: FutureProducer = config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()?;
    let devices = ["furnace-01", "press-01", "compressor-01"];
    for seq in 0..20u32 {
        for device in devices {
            let value = format!("{device}:{seq}");
            let headers = OwnedHeaders::new().insert(Header {
                key: "content-type",
                value: Some("application/x-telemetry-frame"),
            });
            let record = FutureRecord::to(&topic)
                .key(device)
                .payload(&value)
                .headers(headers);
            producer
                .send(record, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
                .context("delivery report")?;
        }
    }

    let consumer: StreamConsumer = config()
        .set("group.id", testkit::unique_name("group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[&topic])?;
    let mut next_seq: HashMap<String, u32> = HashMap::new();
    for _ in 0..devices.len() * 20 {
        let message = timeout(Duration::from_secs(30), consumer.recv())
            .await
            .context("timed out waiting for a record")??;
        let key = std::str::from_utf8(message.key().context("record without key")?)?;
        let payload = std::str::from_utf8(message.payload().context("empty record")?)?;
        let header = message.headers().context("record without headers")?.get(0);
        assert_eq!(header.key, "content-type");
        assert_eq!(header.value, Some(&b"application/x-telemetry-frame"[..]));
        let expected = next_seq.entry(key.to_owned()).or_default();
        assert_eq!(payload, format!("{key}:{expected}"), "per-key order");
        *expected += 1;
    }
    assert!(next_seq.values().all(|&n| n == 20), "{next_seq:?}");

    admin.delete_topics(&[&topic], &AdminOptions::new()).await?;
    Ok(())
}
