//! The ingest loop run in the test process, against the stack's Kafka and a test's
//! database, and what the tests count of its work.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::kafka;
use cloud_ingester::config::IngesterConfig;
use cloud_ingester::pipeline::Pipeline;
use cloud_ingester::redis_sink::RedisSink;
use cloud_ingester::stats::IngestStats;
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub struct Running {
    pub stats: Arc<IngestStats>,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

pub async fn start(pool: &PgPool, topic: &str, dlq_topic: &str) -> Running {
    start_with_redis(pool, None, topic, dlq_topic).await
}

pub async fn start_with_redis(
    pool: &PgPool,
    redis: Option<RedisSink>,
    topic: &str,
    dlq_topic: &str,
) -> Running {
    start_in_group(
        pool,
        redis,
        topic,
        dlq_topic,
        &testkit::unique_name("ingest"),
    )
    .await
}

pub async fn start_in_group(
    pool: &PgPool,
    redis: Option<RedisSink>,
    topic: &str,
    dlq_topic: &str,
    group: &str,
) -> Running {
    start_with_producer(pool, redis, topic, dlq_topic, group, idempotent_producer()).await
}

pub async fn start_with_producer(
    pool: &PgPool,
    redis: Option<RedisSink>,
    topic: &str,
    dlq_topic: &str,
    group: &str,
    producer: FutureProducer,
) -> Running {
    let brokers = testkit::kafka_brokers();
    start_on(&brokers, pool, redis, topic, dlq_topic, group, producer).await
}

/// The pipeline in this process against the Kafka at `brokers`.
pub async fn start_on(
    brokers: &str,
    pool: &PgPool,
    redis: Option<RedisSink>,
    topic: &str,
    dlq_topic: &str,
    group: &str,
    producer: FutureProducer,
) -> Running {
    let mut config = config(topic, dlq_topic, group);
    config.kafka.brokers = brokers.to_owned();
    start_config(&config, pool, redis, producer).await
}

/// What the tests run the pipeline with: the stack's Kafka, their own topics and group,
/// instance `test`; no alert records, confirmations or metrics record; a batch closes at
/// 500 readings or after 100 ms.
pub fn config(topic: &str, dlq_topic: &str, group: &str) -> IngesterConfig {
    let mut config = IngesterConfig {
        id: "test".to_owned(),
        ..IngesterConfig::default()
    };
    config.kafka.brokers = testkit::kafka_brokers();
    config.kafka.group = group.to_owned();
    config.kafka.topic = topic.to_owned();
    config.kafka.dlq_topic = dlq_topic.to_owned();
    config.kafka.alerts_topic = String::new();
    config.kafka.confirm_topic = String::new();
    config.kafka.metrics_topic = String::new();
    config.batch.rows = 500;
    config.batch.age = Duration::from_millis(100);
    config
}

/// The producer of dead letters and alert records the tests give the pipeline.
pub fn idempotent_producer() -> FutureProducer {
    kafka().set("enable.idempotence", "true").create().unwrap()
}

/// The pipeline of `config` in this process, on the test's database.
pub async fn start_config(
    config: &IngesterConfig,
    pool: &PgPool,
    redis: Option<RedisSink>,
    producer: FutureProducer,
) -> Running {
    let pipeline = Pipeline::connect(config, pool, producer, redis)
        .await
        .unwrap();
    let stats = pipeline.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { pipeline.run(stop).await.unwrap() }
    });
    Running { stats, stop, task }
}

impl Running {
    pub async fn wait_records(&self, records: u64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.stats.snapshot().records < records {
            assert!(
                Instant::now() < deadline,
                "ingested {:?} within {within:?}",
                self.stats.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

pub async fn count_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM sensor_readings")
        .fetch_one(pool)
        .await
        .unwrap()
}
