//! The ingest loop against the stack's real Kafka-compatible broker and a throw-away
//! PostgreSQL database: replays and duplicates add no rows and no statistics, a poison
//! record goes to the DLQ while its neighbours are stored, and no device clock (a reading
//! dated a day ahead, an old boot's backlog) freezes or moves back Redis or the alerts.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cloud_ingester::config::KafkaConfig;
use cloud_ingester::health::Health;
use cloud_ingester::kafka::IngestContext;
use cloud_ingester::pipeline::{Pipeline, PipelineSettings};
use cloud_ingester::redis_sink::RedisSink;
use cloud_ingester::stats::IngestStats;
use cloud_ingester::store::Store;
use cloud_ingester::validate::Catalog;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureProducer;
use service::clock::now_ms;
use sqlx::PgPool;
use support::{create_topics, frame, kafka, produce};
use tokio_util::sync::CancellationToken;

struct Running {
    stats: Arc<IngestStats>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(pool: &PgPool, topic: &str, dlq_topic: &str) -> Running {
    start_with_redis(pool, None, topic, dlq_topic).await
}

async fn start_with_redis(
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

async fn start_in_group(
    pool: &PgPool,
    redis: Option<RedisSink>,
    topic: &str,
    dlq_topic: &str,
    group: &str,
) -> Running {
    let producer: FutureProducer = kafka().set("enable.idempotence", "true").create().unwrap();
    start_with_producer(pool, redis, topic, dlq_topic, group, producer).await
}

async fn start_with_producer(
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
async fn start_on(
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
    async fn wait_records(&self, records: u64, within: Duration) {
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

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn replays_and_duplicates_add_no_rows_and_no_statistics(pool: PgPool) {
    let (topic, dlq) = (testkit::unique_name("data"), testkit::unique_name("dlq"));
    create_topics(&[&topic, &dlq]).await;
    let base = now_ms() - 60_000;
    let mut records = Vec::new();
    for i in 0..20u64 {
        records.push((
            "furnace-01".to_owned(),
            frame("furnace-01", &[0], i * 50, 50, base + i * 500),
        ));
        records.push((
            "cnc-spindle-01".to_owned(),
            frame("cnc-spindle-01", &[0, 1], i * 50, 50, base + i * 500),
        ));
    }
    // Every record twice in a row, then the first half again: duplicates and a replay.
    let mut sent = Vec::new();
    for record in &records {
        sent.push(record.clone());
        sent.push(record.clone());
    }
    sent.extend(records[..20].iter().cloned());
    produce(&topic, &sent).await;

    let running = start(&pool, &topic, &dlq).await;
    running
        .wait_records(sent.len() as u64, Duration::from_secs(60))
        .await;
    let stats = running.stats.snapshot();
    running.stop().await;

    assert_eq!(
        count_rows(&pool).await,
        2000,
        "40 frames of 50 readings, each once"
    );
    assert_eq!(stats.inserted, 2000);
    assert_eq!(stats.duplicates, 2000 + 1000);
    let (count, sum): (i64, f64) =
        sqlx::query_as("SELECT sum(count)::bigint, sum(sum) FROM device_stats_hourly")
            .fetch_one(&pool)
            .await
            .unwrap();
    let expected_sum: f64 = sqlx::query_scalar("SELECT sum(value)::float8 FROM sensor_readings")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 2000, "hourly statistics count every reading once");
    assert!((sum - expected_sum).abs() < 1e-6 * expected_sum.abs().max(1.0));
}

#[sqlx::test(migrations = "../migrations")]
async fn poison_records_go_to_the_dlq_with_their_reason_and_neighbours_are_stored(pool: PgPool) {
    let (topic, dlq) = (testkit::unique_name("data"), testkit::unique_name("dlq"));
    create_topics(&[&topic, &dlq]).await;
    let now = now_ms();
    let poison = [
        (b"garbage".to_vec(), "decode"),
        (frame("ghost-01", &[0], 0, 5, now), "unknown-device"),
        (frame("furnace-01", &[9], 0, 5, now), "unknown-channel"),
    ];
    let mut sent = Vec::new();
    for (i, (payload, _)) in poison.iter().enumerate() {
        sent.push((
            "press-01".to_owned(),
            frame("press-01", &[0], i as u64 * 10, 10, now),
        ));
        sent.push(("press-01".to_owned(), payload.clone()));
    }
    // No reading is refused for its clock (service::clock): a 1970 clock and one two
    // days ahead are stored like the rest.
    for (first_seq, ts) in [(100, 1_000), (200, now + 2 * 86_400_000)] {
        sent.push((
            "press-01".to_owned(),
            frame("press-01", &[0], first_seq, 5, ts),
        ));
    }
    produce(&topic, &sent).await;

    let running = start(&pool, &topic, &dlq).await;
    running
        .wait_records(sent.len() as u64, Duration::from_secs(60))
        .await;
    let stats = running.stats.snapshot();
    running.stop().await;

    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sensor_readings WHERE device_id = 'press-01'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        rows, 40,
        "the good frames around the poison and the two with odd clocks are stored"
    );
    assert_eq!(stats.dead_lettered, 3);

    let consumer: BaseConsumer = kafka()
        .set("group.id", testkit::unique_name("reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&dlq]).unwrap();
    let mut reasons = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while reasons.len() < 3 && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let headers = message.headers().unwrap();
            let reason = headers
                .iter()
                .find(|h| h.key == protocol::kafka::headers::DLQ_REASON)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap();
            let payload = message.payload().unwrap().to_vec();
            let (_, expected) = poison
                .iter()
                .find(|(p, _)| *p == payload)
                .expect("original bytes");
            assert_eq!(&reason, expected);
            reasons.push(reason);
        }
    }
    assert_eq!(reasons.len(), 3, "{reasons:?}");
}

/// The binary, against the database of `pool` and the given topics; it dies with the
/// test, and its log is quoted if the test fails.
fn spawn_binary(pool_db: &str, topic: &str, dlq: &str, group: &str) -> testkit::ChildGuard {
    let base = testkit::database_url();
    let url = match base.rfind('/') {
        Some(slash) => format!("{}/{pool_db}", &base[..slash]),
        None => panic!("DATABASE_URL {base:?} has no database path"),
    };
    testkit::ChildGuard::spawn(
        "cloud-ingester",
        std::process::Command::new(env!("CARGO_BIN_EXE_cloud-ingester"))
            .args(["--topic", topic, "--dlq-topic", dlq, "--group", group])
            .args(["--batch-rows", "20000", "--batch-age", "200ms"])
            .args(["--http-listen", "127.0.0.1:0"])
            .env("INGESTER_KAFKA__ALERTS_TOPIC", "")
            .env("INGESTER_KAFKA__METRICS_TOPIC", "")
            .env("DATABASE_URL", url)
            .env("REDIS_URL", "")
            .env("KAFKA_BROKERS", testkit::kafka_brokers())
            .env("RUST_LOG", "info"),
    )
}

/// Readings counted in `device_stats_hourly`, over all devices and hours.
async fn counted_in_stats(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT sum(count)::bigint FROM device_stats_hourly")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn count_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM sensor_readings")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn killed_mid_batch_and_restarted_it_ends_with_exactly_the_readings_produced(pool: PgPool) {
    let (topic, dlq) = (testkit::unique_name("data"), testkit::unique_name("dlq"));
    create_topics(&[&topic, &dlq]).await;
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let base = now_ms() - 3_600_000;
    let devices = ["furnace-01", "press-01", "compressor-01", "paint-booth-01"];
    let mut records = Vec::new();
    for i in 0..1000u64 {
        for device in devices {
            records.push((
                device.to_owned(),
                frame(device, &[0], i * 50, 50, base + i * 1000),
            ));
        }
    }
    produce(&topic, &records).await;
    let expected = (records.len() * 50) as i64;

    let group = testkit::unique_name("ingest");
    let mut first = spawn_binary(&db, &topic, &dlq, &group);
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_rows(&pool).await < expected / 4 {
        assert!(
            Instant::now() < deadline,
            "the first ingester stored too little"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill();
    let at_kill = count_rows(&pool).await;

    let mut second = spawn_binary(&db, &topic, &dlq, &group);
    let deadline = Instant::now() + Duration::from_secs(120);
    while count_rows(&pool).await < expected {
        assert!(
            Instant::now() < deadline,
            "after the restart: {} of {expected}",
            count_rows(&pool).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        second.terminate(Duration::from_secs(30)).success(),
        "clean stop"
    );

    assert_eq!(
        count_rows(&pool).await,
        expected,
        "exactly the readings produced"
    );
    let distinct: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT DISTINCT device_id, boot_id, seq FROM sensor_readings) AS d",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(distinct, expected);
    let counted = counted_in_stats(&pool).await;
    assert_eq!(
        counted, expected,
        "hourly statistics count each reading once"
    );
    eprintln!("killed with {at_kill} of {expected} rows stored; restarted and completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_for_a_while_and_restarted_loses_nothing() {
    let mut postgres = testkit::Postgres::start();
    let admin = PgPool::connect(&postgres.url("postgres")).await.unwrap();
    sqlx::query("CREATE DATABASE ingest")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&postgres.url("ingest"))
        .await
        .unwrap();
    sqlx::migrate!("../migrations").run(&pool).await.unwrap();
    let (topic, dlq) = (testkit::unique_name("data"), testkit::unique_name("dlq"));
    create_topics(&[&topic, &dlq]).await;
    let base = now_ms() - 60_000;
    let batch = |from: u64| -> Vec<(String, Vec<u8>)> {
        (from..from + 50)
            .map(|i| {
                (
                    "press-01".to_owned(),
                    frame("press-01", &[0], i * 50, 50, base + i * 100),
                )
            })
            .collect()
    };

    let running = start(&pool, &topic, &dlq).await;
    produce(&topic, &batch(0)).await;
    running.wait_records(50, Duration::from_secs(30)).await;

    postgres.stop();
    produce(&topic, &batch(50)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while running.stats.snapshot().store_errors < 2 {
        assert!(
            Instant::now() < deadline,
            "the ingester never noticed PostgreSQL was down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    postgres.restart();
    running.wait_records(100, Duration::from_secs(60)).await;
    let stats = running.stats.snapshot();
    running.stop().await;

    assert_eq!(
        count_rows(&pool).await,
        100 * 50,
        "nothing lost across the outage"
    );
    let counted = counted_in_stats(&pool).await;
    assert_eq!(counted, 100 * 50);
    eprintln!(
        "PostgreSQL outage: {} failed writes retried, {stats:?}",
        stats.store_errors
    );
    let (level, attempts): (String, i64) = sqlx::query_as(
        "SELECT level, (details->>'attempts')::bigint FROM system_events WHERE kind = 'error'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(level, "error");
    assert!(
        attempts >= 2,
        "the outage logged once it was over: {attempts} attempts"
    );
    pool.close().await;
}

/// A dead letter Kafka refuses whole (here: larger than the producer's
/// `message.max.bytes`) goes to the DLQ cut short with its original length, and the
/// ingester goes on with its neighbours.
#[sqlx::test(migrations = "../migrations")]
async fn a_dead_letter_too_large_for_kafka_goes_cut_short(pool: PgPool) {
    let (topic, dlq) = (testkit::unique_name("data"), testkit::unique_name("dlq"));
    create_topics(&[&topic, &dlq]).await;
    let big = vec![0xAB_u8; 5000];
    let records = vec![
        ("press-01".to_owned(), big.clone()),
        (
            "press-01".to_owned(),
            frame("press-01", &[0], 0, 10, now_ms()),
        ),
    ];
    produce(&topic, &records).await;
    let producer: FutureProducer = kafka()
        .set("enable.idempotence", "true")
        .set("message.max.bytes", "3000")
        .create()
        .unwrap();
    let group = testkit::unique_name("ingest");
    let running = start_with_producer(&pool, None, &topic, &dlq, &group, producer).await;
    running.wait_records(2, Duration::from_secs(60)).await;
    let stats = running.stats.snapshot();
    running.stop().await;
    assert_eq!((stats.dead_lettered, stats.inserted), (1, 10), "{stats:?}");

    let consumer: BaseConsumer = kafka()
        .set("group.id", testkit::unique_name("reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&dlq]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let message = loop {
        assert!(Instant::now() < deadline, "no dead letter");
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            break message.detach();
        }
    };
    assert_eq!(message.payload().unwrap(), &big[..1024]);
    let header = |name: &str| {
        let headers = message.headers().unwrap();
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(
        header(protocol::kafka::headers::DLQ_ORIGINAL_LENGTH).as_deref(),
        Some("5000")
    );
    assert_eq!(
        header(protocol::kafka::headers::DLQ_REASON).as_deref(),
        Some("decode")
    );
}

/// A device registered while the ingester runs is stored from its first frame on: a
/// record of an unknown device re-reads the catalog (at most every 5 s) before it is
/// dead-lettered.
#[sqlx::test(migrations = "../migrations")]
async fn a_device_registered_while_running_is_stored_not_dead_lettered(pool: PgPool) {
    let (topic, dlq) = (testkit::unique_name("data"), testkit::unique_name("dlq"));
    create_topics(&[&topic, &dlq]).await;
    let running = start(&pool, &topic, &dlq).await;
    produce(
        &topic,
        &[(
            "press-01".to_owned(),
            frame("press-01", &[0], 0, 5, now_ms()),
        )],
    )
    .await;
    running.wait_records(1, Duration::from_secs(60)).await;
    // Past the 5 s re-check interval since the catalog was read at start.
    tokio::time::sleep(Duration::from_secs(6)).await;
    sqlx::raw_sql(
        "INSERT INTO devices (device_id, name, kind, site, line) \
             VALUES ('lathe-07', 'Lathe 7', 'lathe', 'plant1', 'line-c'); \
         INSERT INTO device_channels (device_id, channel_id, name, unit, sample_period_ms, \
             range_min, range_max) VALUES ('lathe-07', 0, 'spindle_speed', 'rpm', 100, 0, 6000)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let lathe: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                "lathe-07".to_owned(),
                frame("lathe-07", &[0], i * 5, 5, now_ms()),
            )
        })
        .collect();
    produce(&topic, &lathe).await;
    running.wait_records(4, Duration::from_secs(60)).await;
    let stats = running.stats.snapshot();
    running.stop().await;
    assert_eq!((stats.inserted, stats.dead_lettered), (20, 0), "{stats:?}");
}

/// Many dead letters within a minute are one `dlq_burst` system event, not one each.
#[sqlx::test(migrations = "../migrations")]
async fn a_burst_of_dead_letters_is_logged_once(pool: PgPool) {
    let (topic, dlq) = (testkit::unique_name("data"), testkit::unique_name("dlq"));
    create_topics(&[&topic, &dlq]).await;
    let garbage: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| ("press-01".to_owned(), format!("garbage {i}").into_bytes()))
        .collect();
    produce(&topic, &garbage).await;
    let running = start(&pool, &topic, &dlq).await;
    running.wait_records(300, Duration::from_secs(60)).await;
    running.stop().await;
    let bursts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT level, (details->>'count')::bigint FROM system_events WHERE kind = 'dlq_burst'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(bursts.len(), 1, "{bursts:?}");
    assert_eq!(bursts[0].0, "warning");
    assert!(bursts[0].1 >= 100, "{bursts:?}");
}

/// A private Redis, stopped mid-stream and started again empty: PostgreSQL ingestion goes
/// on meanwhile, the gap is logged as it begins and ends, and when Redis is back it gets
/// the newest values, including those of channels that only spoke during the gap.
#[sqlx::test(migrations = "../migrations")]
async fn redis_gets_the_newest_values_after_the_commit_and_an_outage_blocks_nothing(pool: PgPool) {
    let (topic, dlq) = (testkit::unique_name("data"), testkit::unique_name("dlq"));
    create_topics(&[&topic, &dlq]).await;
    let base = now_ms() - 60_000;
    let frames = |from: u64, to: u64, channels: &'static [u8]| -> Vec<(String, Vec<u8>)> {
        (from..to)
            .map(|i| {
                (
                    "compressor-01".to_owned(),
                    frame("compressor-01", channels, i * 50, 50, base + i * 1000),
                )
            })
            .collect()
    };
    let mut redis = testkit::Redis::start();
    let sink = RedisSink::new(&redis.url(), "plant").unwrap();
    let latest_key = sink.keys().latest("compressor-01");
    let redis_url = redis.url();
    let latest_seq = |channel: &'static str| {
        let url = redis_url.clone();
        let key = latest_key.clone();
        async move {
            let client = redis::Client::open(url).unwrap();
            let mut connection = client.get_multiplexed_async_connection().await.unwrap();
            let latest: Option<String> = redis::cmd("HGET")
                .arg(&key)
                .arg(channel)
                .query_async(&mut connection)
                .await
                .unwrap();
            latest.map(|json| {
                serde_json::from_str::<serde_json::Value>(&json).unwrap()["seq"].clone()
            })
        }
    };
    // Redis is written after the commit that the record counter follows: wait for Redis.
    let wait_latest = |channel: &'static str, seq: u64| {
        let latest_seq = &latest_seq;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let latest = latest_seq(channel).await;
                if latest == Some(serde_json::json!(seq)) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "channel {channel}'s latest seq is {latest:?}, not {seq}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let running = start_with_redis(&pool, Some(sink), &topic, &dlq).await;
    produce(&topic, &frames(0, 10, &[0])).await;
    running.wait_records(10, Duration::from_secs(60)).await;
    wait_latest("0", 499).await;

    // Redis down: both channels keep arriving and PostgreSQL keeps ingesting.
    redis.stop();
    produce(&topic, &frames(10, 20, &[0, 1])).await;
    running.wait_records(20, Duration::from_secs(60)).await;
    assert_eq!(count_rows(&pool).await, 1000);
    let deadline = Instant::now() + Duration::from_secs(30);
    while running.stats.snapshot().redis_errors == 0 {
        assert!(Instant::now() < deadline, "no Redis error counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Back, empty: the next batch brings the newest value of every channel.
    redis.restart();
    produce(&topic, &frames(20, 21, &[0])).await;
    running.wait_records(21, Duration::from_secs(60)).await;
    running.stop().await;
    assert_eq!(latest_seq("0").await, Some(serde_json::json!(1049)));
    assert_eq!(
        latest_seq("1").await,
        Some(serde_json::json!(999)),
        "the gap's newest value of a channel silent since"
    );
    let gap: Vec<(String, String)> = sqlx::query_as(
        "SELECT level, details->>'ended' FROM system_events \
          WHERE kind = 'redis_gap' ORDER BY event_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let expected =
        [("warning", "false"), ("info", "true")].map(|(a, b)| (a.to_owned(), b.to_owned()));
    assert_eq!(gap, expected, "the gap logged as it began and ended");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_second_ingester_joining_and_the_first_leaving_skips_and_doubles_nothing(pool: PgPool) {
    let (topic, dlq) = (testkit::unique_name("data"), testkit::unique_name("dlq"));
    create_topics(&[&topic, &dlq]).await;
    let base = now_ms() - 3_600_000;
    let devices = [
        "furnace-01",
        "press-01",
        "compressor-01",
        "paint-booth-01",
        "cnc-spindle-01",
    ];
    let mut records = Vec::new();
    for i in 0..400u64 {
        for device in devices {
            records.push((
                device.to_owned(),
                frame(device, &[0], i * 50, 50, base + i * 1000),
            ));
        }
    }
    let expected = (records.len() * 50) as i64;
    let group = testkit::unique_name("ingest");
    let first = start_in_group(&pool, None, &topic, &dlq, &group).await;
    produce(&topic, &records[..1000]).await;
    first.wait_records(200, Duration::from_secs(60)).await;
    // A second instance joins (a rebalance), more arrives, the first leaves (another
    // rebalance), and the rest arrives for the second alone.
    let second = start_in_group(&pool, None, &topic, &dlq, &group).await;
    produce(&topic, &records[1000..1500]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    first.stop().await;
    produce(&topic, &records[1500..]).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    while count_rows(&pool).await < expected {
        assert!(
            Instant::now() < deadline,
            "{} of {expected} rows after the rebalances",
            count_rows(&pool).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took_over = second.stats.clone();
    second.stop().await;
    assert!(
        took_over.snapshot().records > 0,
        "the second instance never got a partition"
    );
    assert_eq!(count_rows(&pool).await, expected);
    let counted = counted_in_stats(&pool).await;
    assert_eq!(
        counted, expected,
        "statistics count each reading once across rebalances"
    );
    // The first instance's first assignment, the second's, and the hand-over.
    let rebalances: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM system_events WHERE kind = 'rebalance' AND details->>'topic' = $1",
    )
    .bind(&topic)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(rebalances >= 3, "{rebalances} rebalance events");
}

/// An instance that takes over a partition whose stored offset lies inside a producer's
/// record batch stores the rest of that batch, and nothing before the offset: Tansu
/// answers a fetch with the first batch that *starts* at or after the offset asked for,
/// so reading from the stored offset itself would skip the batch's remaining records.
#[sqlx::test(migrations = "../migrations")]
async fn a_partition_taken_over_inside_a_producer_batch_is_read_from_its_stored_offset(
    pool: PgPool,
) {
    let (topic, dlq) = (testkit::unique_name("data"), testkit::unique_name("dlq"));
    create_topics(&[&topic, &dlq]).await;
    let base = now_ms() - 60_000;
    // One produce call: the records leave in as few batches as the producer can make.
    let records: Vec<(String, Vec<u8>)> = (0..100)
        .map(|i| {
            (
                "press-01".to_owned(),
                frame("press-01", &[0], i * 10, 10, base + i * 100),
            )
        })
        .collect();
    produce(&topic, &records).await;
    let group = testkit::unique_name("ingest");
    // An earlier owner stored the first 30 records of every partition and died.
    sqlx::query(
        "INSERT INTO ingest_partitions (consumer_group, topic, partition, next_offset) \
         SELECT $1, $2, p, 30 FROM generate_series(0, 2) AS p",
    )
    .bind(&group)
    .bind(&topic)
    .execute(&pool)
    .await
    .unwrap();
    let running = start_in_group(&pool, None, &topic, &dlq, &group).await;
    running.wait_records(70, Duration::from_secs(60)).await;
    let stats = running.stats.snapshot();
    running.stop().await;
    assert_eq!(count_rows(&pool).await, 70 * 10, "{stats:?}");
    let lowest: i64 = sqlx::query_scalar("SELECT min(seq) FROM sensor_readings")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        lowest, 300,
        "nothing before the stored offset was read again"
    );
    let next: Vec<i64> = sqlx::query_scalar(
        "SELECT next_offset FROM ingest_partitions WHERE topic = $1 AND next_offset > 30",
    )
    .bind(&topic)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(next, vec![100], "the offset stored with the rows");
}

/// Kafka frozen for longer than a consumer group's session lasts (the stall that once
/// left the ingester with no partitions for good): the instance holds its partitions in
/// PostgreSQL, not in the group, and goes on by itself when Kafka thaws.
#[sqlx::test(migrations = "../migrations")]
async fn kafka_frozen_past_a_session_timeout_then_thawed_ingestion_resumes_by_itself(pool: PgPool) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::producer::FutureRecord;

    let tansu = testkit::Tansu::start();
    let client = || {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", tansu.brokers());
        config
    };
    let (topic, dlq) = (testkit::unique_name("data"), testkit::unique_name("dlq"));
    let admin: AdminClient<DefaultClientContext> = client().create().unwrap();
    let topics = [&topic, &dlq].map(|name| NewTopic::new(name, 3, TopicReplication::Fixed(1)));
    for created in admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .unwrap()
    {
        created.unwrap();
    }
    let producer: FutureProducer = client()
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "120000")
        .create()
        .unwrap();
    let base = now_ms() - 60_000;
    let send = |from: u64| {
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            for i in from..from + 100 {
                let device = ["press-01", "furnace-01", "compressor-01"][(i % 3) as usize];
                let payload = frame(device, &[0], i * 10, 10, base + i * 100);
                producer
                    .send(
                        FutureRecord::to(&topic).key(device).payload(&payload),
                        Duration::from_secs(60),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
        }
    };
    let group = testkit::unique_name("ingest");
    let running = start_on(
        &tansu.brokers(),
        &pool,
        None,
        &topic,
        &dlq,
        &group,
        producer.clone(),
    )
    .await;
    send(0).await;
    running.wait_records(100, Duration::from_secs(60)).await;

    tansu.pause();
    tokio::time::sleep(Duration::from_secs(25)).await;
    tansu.resume();
    send(100).await;
    running.wait_records(200, Duration::from_secs(60)).await;
    running.stop().await;
    assert_eq!(count_rows(&pool).await, 200 * 10, "every reading, once");
}

// ---------------------------------------------------------------------------------
// Clocks (issue 15): no device clock orders readings. Within a boot the sequence number
// does, across boots the boot PostgreSQL first saw later; a reading dated beyond
// clock.max_ahead is stored but drives neither Redis nor the alerts.

/// A frame of `device`'s channel 0 in boot `boot` from `first_seq`, readings `step_ms`
/// apart from `base_ms`, with these values.
fn frame_of(device: &str, boot: u8, first_seq: u64, base_ms: u64, values: &[f32]) -> Vec<u8> {
    use protocol::{BootId, DeviceId, Frame, Quality, Reading};
    let mut frame = Frame::new(
        DeviceId::new(device).unwrap(),
        BootId([boot; 8]),
        first_seq,
        base_ms,
    );
    for (i, value) in values.iter().enumerate() {
        frame
            .readings
            .push(Reading {
                channel: 0,
                offset_ms: i as u32 * 200,
                value: *value,
                quality: Quality::empty(),
            })
            .unwrap();
    }
    let mut buf = [0u8; protocol::MAX_FRAME_LEN];
    frame.encode(&mut buf).unwrap().to_vec()
}

/// What Redis shows of `device`: channel 0's latest (boot hex, seq) and `last_seen`.
async fn live_view(prefix: &str, device: &str) -> (Option<(String, i64)>, Option<i64>) {
    let client = redis::Client::open(testkit::redis_url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let latest: Option<String> = redis::cmd("HGET")
        .arg(format!("{prefix}:latest:{device}"))
        .arg("0")
        .query_async(&mut con)
        .await
        .unwrap();
    let latest = latest.map(|json| {
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        (
            value["boot"].as_str().unwrap().to_owned(),
            value["seq"].as_i64().unwrap(),
        )
    });
    let seen: Option<i64> = redis::cmd("GET")
        .arg(format!("{prefix}:last_seen:{device}"))
        .query_async(&mut con)
        .await
        .unwrap();
    (latest, seen)
}

/// Polls Redis until channel 0's latest is `seq` of `boot` and `last_seen` is `ts`.
async fn wait_live(prefix: &str, device: &str, boot: u8, seq: i64, ts: u64) {
    let want = (
        Some((format!("{boot:02x}").repeat(8), seq)),
        Some(ts as i64),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = live_view(prefix, device).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Redis shows {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The high alerts of press-01 as (severity, state, value_ts in ms).
async fn press_high_alerts(pool: &PgPool) -> Vec<(String, String, i64)> {
    sqlx::query_as(
        "SELECT severity::text, state::text, (extract(epoch FROM value_ts) * 1000)::int8 \
           FROM alerts WHERE device_id = 'press-01' AND rule = 'high' ORDER BY alert_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// A Pi's clock jumps a day ahead for one frame (a bad GPS fix), then is right again:
/// the reading is stored and counted, logged once, and `latest`, `last_seen` and the
/// alerts follow the frames after it, also across a restart of the ingester.
#[sqlx::test(migrations = "../migrations")]
async fn a_reading_dated_a_day_ahead_freezes_neither_latest_last_seen_nor_alerts(pool: PgPool) {
    let (topic, dlq) = (testkit::unique_name("data"), testkit::unique_name("dlq"));
    create_topics(&[&topic, &dlq]).await;
    let prefix = testkit::unique_name("clock");
    let sink = || RedisSink::new(&testkit::redis_url(), &prefix).unwrap();
    let group = testkit::unique_name("ingest");
    let (device, boot) = ("press-01", 0x15);
    let send = |first_seq: u64, base_ms: u64, values: &[f32]| {
        let record = (
            device.to_owned(),
            frame_of(device, boot, first_seq, base_ms, values),
        );
        let topic = topic.clone();
        async move { produce(&topic, &[record]).await }
    };
    let now = now_ms();
    let normal = [210.0; 10];
    let running = start_in_group(&pool, Some(sink()), &topic, &dlq, &group).await;

    send(0, now - 20_000, &normal).await;
    running.wait_records(1, Duration::from_secs(60)).await;
    wait_live(&prefix, device, boot, 9, now - 20_000 + 9 * 200).await;

    // Nearly a day ahead (a bad GPS fix): stored, not live.
    let ahead = now + 23 * 3_600_000;
    send(10, ahead, &normal).await;
    running.wait_records(2, Duration::from_secs(60)).await;

    // Then right again, with a spike beyond critical (280 + 30): it must open an alert.
    let spike = [
        210.0, 210.0, 400.0, 400.0, 400.0, 400.0, 400.0, 400.0, 400.0, 400.0,
    ];
    let after = now - 17_000;
    send(20, after, &spike).await;
    running.wait_records(3, Duration::from_secs(60)).await;
    wait_live(&prefix, device, boot, 29, after + 9 * 200).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let opened = loop {
        let alerts = press_high_alerts(&pool).await;
        if !alerts.is_empty() || Instant::now() >= deadline {
            break alerts;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let opened_at = (after + 2 * 200) as i64;
    assert_eq!(
        opened,
        [("critical".to_owned(), "open".to_owned(), opened_at)],
        "the spike after the future-dated frame"
    );
    assert_eq!(running.stats.snapshot().readings_future_dated, 10);
    running.stop().await;

    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sensor_readings \
          WHERE device_id = 'press-01' AND seq BETWEEN 10 AND 19 \
            AND ts > now() + interval '22 hours'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stored, 10, "the future-dated frame, stored as sent");
    assert_eq!(count_rows(&pool).await, 30, "every reading is stored");
    let events: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT level, details FROM system_events WHERE kind = 'future_dated' ORDER BY event_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(events.len(), 1, "one event for the episode: {events:?}");
    assert_eq!(events[0].0, "warning");
    assert_eq!(events[0].1["device_id"], device);
    assert_eq!(events[0].1["seq"], 10);
    assert_eq!(events[0].1["readings"], 10);

    // Restarted, the ingester resumes after the newest stored reading, not after the
    // future-dated one: the value back to normal resolves the alert.
    let running = start_in_group(&pool, Some(sink()), &topic, &dlq, &group).await;
    let back = now - 15_000;
    send(30, back, &normal).await;
    wait_live(&prefix, device, boot, 39, back + 9 * 200).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while press_high_alerts(&pool).await[0].1 != "resolved" {
        assert!(
            Instant::now() < deadline,
            "not resolved after the restart: {:?}",
            press_high_alerts(&pool).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await;
}

/// An agent restarted (a new boot) while its old boot's frames were still on their way:
/// once the new boot is in `latest`, the old boot's backlog, dated later or earlier,
/// never moves it or `last_seen` back; the new boot's next reading moves both on.
#[sqlx::test(migrations = "../migrations")]
async fn an_older_boots_backlog_never_moves_latest_or_last_seen_back(pool: PgPool) {
    let (topic, dlq) = (testkit::unique_name("data"), testkit::unique_name("dlq"));
    create_topics(&[&topic, &dlq]).await;
    let prefix = testkit::unique_name("boots");
    let sink = RedisSink::new(&testkit::redis_url(), &prefix).unwrap();
    let device = "press-01";
    // The old boot's id sorts after the new one's: only the first sight may decide.
    let (old_boot, new_boot) = (0xee, 0x11);
    let send = |boot: u8, first_seq: u64, base_ms: u64| {
        let record = (
            device.to_owned(),
            frame_of(device, boot, first_seq, base_ms, &[210.0; 10]),
        );
        let topic = topic.clone();
        async move { produce(&topic, &[record]).await }
    };
    let now = now_ms();
    let running = start_with_redis(&pool, Some(sink), &topic, &dlq).await;

    send(old_boot, 0, now - 60_000).await;
    running.wait_records(1, Duration::from_secs(60)).await;
    wait_live(&prefix, device, old_boot, 9, now - 60_000 + 1_800).await;
    send(new_boot, 0, now - 30_000).await;
    running.wait_records(2, Duration::from_secs(60)).await;
    wait_live(&prefix, device, new_boot, 9, now - 30_000 + 1_800).await;

    // The old boot's backlog: later than the new boot's readings (its clock ran ahead),
    // then earlier, with higher sequence numbers.
    send(old_boot, 10, now - 2_000).await;
    send(old_boot, 20, now - 50_000).await;
    running.wait_records(4, Duration::from_secs(60)).await;
    // One more of the new boot, then the view must show exactly it: had the backlog
    // moved it back, this reading (older than the backlog's times) could not show.
    send(new_boot, 10, now - 28_000).await;
    running.wait_records(5, Duration::from_secs(60)).await;
    wait_live(&prefix, device, new_boot, 19, now - 28_000 + 1_800).await;
    running.stop().await;
    assert_eq!(count_rows(&pool).await, 50, "every reading is stored");
}
