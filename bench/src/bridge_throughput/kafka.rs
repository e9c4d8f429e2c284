//! The bridge bench's Kafka side: each scenario's fresh topics, and the latency probe, a
//! consumer reading the data topic while the scenario runs and timing every record from
//! its publish (the frame's `base_ts_ms`) to its consumption.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use protocol::Frame;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::oneshot;

use super::cpu::thread_ids;
use super::workload::WARM_UP_DEVICE;

/// Partitions of each run's data topic, as `sensors-data` has.
const PARTITIONS: i32 = 3;

fn kafka_client(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    config
}

async fn create_topics(brokers: &str, names: &[&str]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka_client(brokers).create()?;
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|name| NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&topics, &options).await? {
        result.map_err(|(name, code)| anyhow::anyhow!("creating Kafka topic {name}: {code}"))?;
    }
    Ok(())
}

/// Frees the broker's memory (Tansu keeps topics in memory); failure only warns.
async fn delete_topics(brokers: &str, names: &[&str]) {
    let deleted = async {
        let admin: AdminClient<DefaultClientContext> = kafka_client(brokers).create()?;
        admin.delete_topics(names, &AdminOptions::new()).await?;
        anyhow::Ok(())
    };
    if let Err(e) = deleted.await {
        eprintln!("note: could not delete topics {names:?}: {e}");
    }
}

/// Runs `scenario` on the topics `names`, created fresh before it and deleted after it
/// whatever its outcome.
pub(super) async fn on_fresh_topics<T>(
    brokers: &str,
    names: &[&str],
    scenario: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    create_topics(brokers, names).await?;
    let outcome = scenario.await;
    delete_topics(brokers, names).await;
    outcome
}

/// Publish-to-consume latencies in ms, and publish-to-bridge (the bridge's
/// `received-at-ms` header) when the records carry it.
#[derive(Default)]
pub(super) struct Latencies {
    pub(super) end_to_end: Vec<u32>,
    pub(super) to_bridge: Vec<u32>,
}

/// A consumer on its own thread reading the data topic while the scenario runs; for each
/// record, consume time minus the frame's `base_ts_ms` (stamped at publish), in ms.
pub(super) struct Probe {
    seen: Arc<AtomicUsize>,
    warm: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    expected: usize,
    thread: Option<std::thread::JoinHandle<anyhow::Result<Latencies>>>,
    /// Its librdkafka threads, told apart from the producer's in the CPU table.
    pub(super) tids: HashSet<u32>,
}

impl Probe {
    /// Returns once the consumer holds all partitions from their beginning (manual
    /// assignment: no group rebalance delay can inflate the first latencies).
    pub(super) async fn start(
        brokers: &str,
        topic: &str,
        expected: usize,
    ) -> anyhow::Result<Probe> {
        let before = thread_ids();
        let consumer: BaseConsumer = kafka_client(brokers)
            .set("group.id", testkit::unique_name("group"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .context("creating the latency consumer")?;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let seen = Arc::new(AtomicUsize::new(0));
        let warm = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("bench-latency".to_owned())
            .spawn({
                let (seen, warm, stop) = (seen.clone(), warm.clone(), stop.clone());
                let topic = topic.to_owned();
                move || {
                    consumer
                        .fetch_metadata(Some(&topic), Duration::from_secs(10))
                        .context("latency consumer: Kafka metadata")?;
                    let _ = ready_tx.send(());
                    consume(&consumer, expected, &seen, &warm, &stop)
                }
            })?;
        ready_rx
            .await
            .context("the latency consumer could not reach Kafka")?;
        let tids = thread_ids().difference(&before).copied().collect();
        Ok(Probe {
            seen,
            warm,
            stop,
            expected,
            thread: Some(thread),
            tids,
        })
    }

    pub(super) fn saw_warm_up(&self) -> bool {
        self.warm.load(Ordering::Relaxed)
    }

    /// Waits up to `wait` for the consumer to see every record, then stops it.
    pub(super) async fn finish(mut self, wait: Duration) -> anyhow::Result<(Latencies, usize)> {
        let deadline = Instant::now() + wait;
        while self.seen.load(Ordering::Relaxed) < self.expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        let thread = self
            .thread
            .take()
            .context("latency consumer already joined")?;
        let latencies = tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the latency consumer panicked"))??;
        let seen = latencies.end_to_end.len();
        Ok((latencies, seen))
    }
}

/// A scenario that failed before `finish` still stops the consumer thread.
impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn consume(
    consumer: &BaseConsumer,
    expected: usize,
    seen: &AtomicUsize,
    warm: &AtomicBool,
    stop: &AtomicBool,
) -> anyhow::Result<Latencies> {
    let mut latencies = Latencies::default();
    while latencies.end_to_end.len() < expected && !stop.load(Ordering::Relaxed) {
        let message = match consumer.poll(Duration::from_millis(50)) {
            None => continue,
            Some(Err(e)) => {
                eprintln!("latency consumer: {e}");
                continue;
            }
            Some(Ok(message)) => message,
        };
        let consumed_ms = service::clock::now_ms();
        if message.key() == Some(WARM_UP_DEVICE.as_bytes()) {
            warm.store(true, Ordering::Relaxed);
            continue;
        }
        let frame = Frame::decode(message.payload().unwrap_or_default())
            .context("latency consumer: a record that is not a frame")?;
        latencies
            .end_to_end
            .push(consumed_ms.saturating_sub(frame.base_ts_ms) as u32);
        let received_at = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == protocol::kafka::headers::RECEIVED_AT_MS)
                .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse::<u64>().ok())
        });
        if let Some(received_at) = received_at {
            latencies
                .to_bridge
                .push(received_at.saturating_sub(frame.base_ts_ms) as u32);
        }
        seen.store(latencies.end_to_end.len(), Ordering::Relaxed);
    }
    Ok(latencies)
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Percentiles {
    pub(super) p50: u32,
    pub(super) p90: u32,
    pub(super) p99: u32,
    pub(super) max: u32,
}

pub(super) fn percentiles(values: &mut [u32]) -> Option<Percentiles> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    Some(Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: values[values.len() - 1],
    })
}
