//! (e): the whole ingest loop, from a preloaded Kafka topic into PostgreSQL, Redis and the
//! alert rules, as the ingester runs it.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use sqlx::postgres::PgPool;

use crate::data::KeyedFrame;
use crate::sql::reset;
use crate::Settings;

pub struct PipelineRun {
    pub rate: f64,
    pub batches: u64,
    pub flush_ms: f64,
}

/// Preloads a fresh topic with `frames`, then runs the ingester's pipeline on it (Redis
/// and alert rules on, the bench devices registered with thresholds none of their values
/// reach) until every reading is stored. Timed from the first batch's commit (not the
/// consumer group's join) to the last's.
pub async fn pipeline_rate(
    pool: &PgPool,
    settings: &Settings,
    frames: &[KeyedFrame],
    readings: u64,
) -> anyhow::Result<PipelineRun> {
    use cloud_ingester::config::IngesterConfig;
    use cloud_ingester::pipeline::Pipeline;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
    use rdkafka::ClientConfig;

    reset(pool).await?;
    sqlx::query(
        "INSERT INTO devices (device_id, name, kind, site, line) \
         SELECT DISTINCT device_id, device_id, 'bench', 'bench', 'bench' FROM unnest($1::text[]) AS d(device_id)",
    )
    .bind(frames.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>())
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO device_channels (device_id, channel_id, name, unit, sample_period_ms, \
             range_min, range_max, warn_high, crit_high, hysteresis, min_duration_ms) \
         SELECT device_id, c, 'ch' || c, 'u', 100, -100, 100, 40, 60, 1, 1000 \
           FROM devices, generate_series(0, 3) AS c WHERE kind = 'bench'",
    )
    .execute(pool)
    .await?;

    let brokers = std::env::var("KAFKA_BROKERS").context("KAFKA_BROKERS is not set")?;
    let redis_url = std::env::var("REDIS_URL").context("REDIS_URL is not set")?;
    let suffix = format!("{}-{}", std::process::id(), frames.len());
    let (topic, dlq, alerts, confirms) = (
        format!("bench-ingest-{suffix}"),
        format!("bench-ingest-dlq-{suffix}"),
        format!("bench-ingest-alerts-{suffix}"),
        format!("bench-ingest-confirm-{suffix}"),
    );
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &brokers);
    let admin: AdminClient<DefaultClientContext> = client.create()?;
    let new_topics: Vec<NewTopic> = [&topic, &dlq, &alerts, &confirms]
        .iter()
        .map(|name| NewTopic::new(name, 3, TopicReplication::Fixed(1)))
        .collect();
    for created in admin
        .create_topics(&new_topics, &AdminOptions::new())
        .await?
    {
        created.map_err(|(name, e)| anyhow::anyhow!("creating topic {name}: {e}"))?;
    }
    let producer: FutureProducer = client
        .clone()
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()?;
    for (device, payload) in frames {
        // As the bridge writes it: where the confirmations to the device are routed.
        let mqtt_topic = format!("bench/site/line/{device}/telemetry");
        let record_headers =
            rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                key: protocol::kafka::headers::MQTT_TOPIC,
                value: Some(&mqtt_topic),
            });
        let mut record = FutureRecord::to(&topic)
            .key(device)
            .payload(payload)
            .headers(record_headers);
        loop {
            match producer.send_result(record) {
                Ok(_) => break,
                Err((_, back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;

    let prefix = format!("bench{}", std::process::id());
    let redis = cloud_ingester::redis_sink::RedisSink::connect(&redis_url, &prefix).await?;
    let mut config = IngesterConfig {
        id: "bench".to_owned(),
        ..IngesterConfig::default()
    };
    config.kafka.brokers = brokers;
    config.kafka.group = format!("bench-ingest-{suffix}");
    config.kafka.topic = topic.clone();
    config.kafka.dlq_topic = dlq.clone();
    config.kafka.alerts_topic = alerts.clone();
    config.kafka.confirm_topic = confirms.clone();
    config.kafka.confirm_interval = Duration::from_millis(200);
    config.batch.rows = settings.batch;
    config.batch.age = Duration::from_millis(200);
    let pipeline = Pipeline::connect(&config, pool, producer.clone(), Some(redis)).await?;
    let stats = pipeline.stats();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(pipeline.run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(600);
    // Counted from the first batch's commit, so the group join is left out; the readings
    // of that batch are left out with it.
    let first = loop {
        let inserted = stats.snapshot().inserted;
        if inserted > 0 {
            break inserted;
        }
        anyhow::ensure!(Instant::now() < deadline, "the pipeline consumed nothing");
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let t = Instant::now();
    while stats.snapshot().inserted < readings {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the pipeline stalled: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = t.elapsed();
    stop.cancel();
    task.await??;
    let snapshot = stats.snapshot();
    anyhow::ensure!(
        snapshot.inserted == readings && snapshot.dead_lettered == 0,
        "the pipeline stored {snapshot:?}"
    );

    admin
        .delete_topics(&[&topic, &dlq, &alerts, &confirms], &AdminOptions::new())
        .await?;
    let redis_client = redis::Client::open(redis_url)?;
    let mut con = redis_client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut con)
        .await?;
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(&mut con).await?;
    }
    println!(
        "    confirmations sent {}, unsent {}",
        snapshot.confirmations_sent, snapshot.confirmations_unsent
    );
    Ok(PipelineRun {
        rate: (readings - first) as f64 / elapsed.as_secs_f64(),
        batches: snapshot.batches,
        flush_ms: 1000.0 * snapshot.flush_seconds / snapshot.batches.max(1) as f64,
    })
}
