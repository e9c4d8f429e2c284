//! What the Kafka topics hold at the end of a scenario: the dead letters by reason and
//! the data topic's records, read by explicit assignment (no consumer group).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::workload;

/// Every record of `sensors-dlq`, counted by its `dlq-reason` header.
pub(super) fn dead_letter_reasons(brokers: &str) -> Result<BTreeMap<String, u64>> {
    let mut reasons = BTreeMap::new();
    read_topic(brokers, protocol::kafka::SENSORS_DLQ, |record| {
        let reason = record
            .headers()
            .and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key == protocol::kafka::headers::DLQ_REASON)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
            .unwrap_or_else(|| "(no reason)".to_owned());
        *reasons.entry(reason).or_default() += 1;
    })?;
    Ok(reasons)
}

/// The hop between the bridge and the ingester: distinct readings of the workload's
/// devices in `sensors-data`, and the records that are not the workload's. A frame's
/// readings are a run of seqs, so runs are kept (per boot) rather than readings.
pub(super) fn kafka_hop(brokers: &str) -> Result<(u64, u64, u64)> {
    let devices = workload::devices();
    let mut runs: BTreeMap<(String, i64), Vec<(u64, u64)>> = BTreeMap::new();
    let mut copies = 0;
    let mut foreign = 0;
    read_topic(
        brokers,
        protocol::kafka::SENSORS_DATA,
        |record| match protocol::Frame::decode(record.payload().unwrap_or_default()) {
            Ok(frame) if devices.contains(&frame.device.as_str()) => {
                let len = frame.readings.len() as u64;
                copies += len;
                runs.entry((frame.device.as_str().to_owned(), frame.boot_id.as_i64()))
                    .or_default()
                    .push((frame.first_seq, frame.first_seq + len));
            }
            _ => foreign += 1,
        },
    )?;
    let mut distinct = 0;
    for boot in runs.values_mut() {
        boot.sort_unstable();
        // Seqs below `covered` are counted already.
        let mut covered = 0;
        for &(start, end) in boot.iter() {
            distinct += end.saturating_sub(start.max(covered));
            covered = covered.max(end);
        }
    }
    Ok((distinct, copies, foreign))
}

/// Reads every record a topic holds now: each partition past its reported high
/// watermark, then on until no record came for `QUIET`. Tansu reports as the high
/// watermark its last batch's first offset plus one, so the rest of that batch lies
/// beyond it (the services have stopped: nothing new arrives).
fn read_topic(
    brokers: &str,
    topic: protocol::kafka::KafkaTopic,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<()> {
    const QUIET: Duration = Duration::from_secs(2);
    let consumer = ledger_consumer(brokers)?;
    let mut assignment = TopicPartitionList::new();
    // Per partition not yet read past its reported high watermark, that watermark.
    let mut ends = BTreeMap::new();
    for partition in 0..topic.partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic.name, partition, Duration::from_secs(10))
            .with_context(|| format!("watermarks of {}/{partition}", topic.name))?;
        if high > 0 {
            ends.insert(partition, high);
            assignment
                .add_partition_offset(topic.name, partition, Offset::Beginning)
                .context("building the assignment")?;
        }
    }
    if ends.is_empty() {
        return Ok(());
    }
    consumer
        .assign(&assignment)
        .with_context(|| format!("assigning {}", topic.name))?;
    // Patience measured from the last record, not over the whole read: at the
    // benchmark's rate the data topic holds hundreds of thousands of records.
    let patience = Duration::from_secs(60);
    let mut last_record = std::time::Instant::now();
    loop {
        let idle = last_record.elapsed();
        if ends.is_empty() && idle >= QUIET {
            return Ok(());
        }
        if idle > patience {
            anyhow::bail!(
                "{} partitions unread to their end: nothing read for 60 s",
                topic.name
            );
        }
        let Some(record) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        last_record = std::time::Instant::now();
        let record = record.with_context(|| format!("reading {}", topic.name))?;
        each(&record);
        if ends
            .get(&record.partition())
            .is_some_and(|&end| record.offset() + 1 >= end)
        {
            ends.remove(&record.partition());
        }
    }
}

fn ledger_consumer(brokers: &str) -> Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "e2e-ledger")
        .set("enable.auto.commit", "false")
        .create()
        .context("Kafka consumer for the ledger")
}

#[cfg(test)]
mod tests {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    use super::*;

    /// Tansu answers a request for the latest offset with its last batch's first offset
    /// plus one: a read that stops at the high watermark misses the rest of that batch.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_topic_is_read_to_its_last_record_not_its_reported_high_watermark() {
        let brokers = testkit::kafka_brokers();
        let name: &'static str = Box::leak(testkit::unique_name("ledger").into_boxed_str());
        let admin: AdminClient<_> = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        admin
            .create_topics(
                &[NewTopic::new(name, 1, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await
            .unwrap();
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("linger.ms", "200")
            .create()
            .unwrap();
        // One batch: all are queued within the linger.
        let deliveries: Vec<_> = (0..100)
            .map(|i| {
                producer
                    .send_result(FutureRecord::<(), _>::to(name).payload(&format!("{i}")))
                    .unwrap()
            })
            .collect();
        for delivery in deliveries {
            delivery.await.unwrap().unwrap();
        }
        let topic = protocol::kafka::KafkaTopic {
            name,
            partitions: 1,
        };
        let read = tokio::task::spawn_blocking(move || {
            let mut read = 0;
            read_topic(&brokers, topic, |_| read += 1).map(|()| read)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(read, 100);
    }
}
