//! The ingest loop run in the test process, against the stack's Kafka and a test's
//! database, and what the tests count of its work.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::kafka;
use cloud_ingester::config::KafkaConfig;
use cloud_ingester::health::Health;
use cloud_ingester::kafka::IngestContext;
use cloud_ingester::pipeline::{Pipeline, PipelineSettings};
use cloud_ingester::redis_sink::RedisSink;
use cloud_ingester::stats::IngestStats;
use cloud_ingester::store::Store;
use cloud_ingester::validate::Catalog;
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
    let producer: FutureProducer = kafka().set("enable.idempotence", "true").create().unwrap();
    start_with_producer(pool, redis, topic, dlq_topic, group, producer).await
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
    let catalog = Catalog::load(pool).await.unwrap();
    let stats = Arc::new(IngestStats::default());
    let health = Arc::new(Health::default());
    let kafka_config = KafkaConfig {
        brokers: brokers.to_owned(),
        group: group.to_owned(),
        ..KafkaConfig::default()
    };
    let consumer =
        cloud_ingester::kafka::consumer(&kafka_config, "test", IngestContext::new(health.clone()))
            .unwrap();
    let pipeline = Pipeline {
        consumer: Arc::new(consumer),
        producer,
        store: Store::new(pool.clone()),
        redis,
        catalog,
        confirm: None,
        settings: PipelineSettings {
            group: group.to_owned(),
            topic: topic.to_owned(),
            dlq_topic: dlq_topic.to_owned(),
            alerts_topic: String::new(),
            instance: "test".to_owned(),
            batch_rows: 500,
            batch_age: Duration::from_millis(100),
            retention_days: None,
            data_loss: Default::default(),
            max_ahead: cloud_ingester::config::ClockConfig::default().max_ahead,
            shutdown_grace: Duration::from_secs(10),
        },
        stats: stats.clone(),
        health,
    };
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
