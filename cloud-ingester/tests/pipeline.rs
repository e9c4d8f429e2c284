//! The ingest loop against the stack's real Kafka-compatible broker and a throw-away
//! PostgreSQL database: replays and duplicates add no rows and no statistics, a poison
//! record goes to the DLQ while its neighbours are stored, and the catalog and the
//! dead-letter bursts are handled on the way.

mod support;

use std::time::{Duration, Instant};

use contracts::dead_letter::Reason;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureProducer;
use service::clock::now_ms;
use sqlx::PgPool;
use support::ingester::{count_rows, start, start_with_producer};
use support::{create_topics, frame, kafka, produce};

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
        (b"garbage".to_vec(), Reason::Decode),
        (frame("ghost-01", &[0], 0, 5, now), Reason::UnknownDevice),
        (frame("furnace-01", &[9], 0, 5, now), Reason::UnknownChannel),
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
            assert_eq!(Reason::from_code(&reason), Some(*expected), "{reason}");
            reasons.push(reason);
        }
    }
    assert_eq!(reasons.len(), 3, "{reasons:?}");
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
        Some(Reason::Decode.code())
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
