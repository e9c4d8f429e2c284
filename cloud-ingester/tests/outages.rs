//! The binary through long outages (issue 15, items 4 and 5): a stop during a Kafka
//! outage ends within `shutdown_grace` even while the batch in hand waits for its dead
//! letters to be confirmed, and a PostgreSQL outage longer than librdkafka's
//! `max.poll.interval.ms` ends with the same instance going on, nothing lost.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use service::clock::now_ms;
use sqlx::PgPool;
use support::frame;
use support::process::{events, eventually};
use testkit::ChildGuard;

/// The ingester's `shutdown_grace` in the stop test: short, so the test is quick.
const GRACE: Duration = Duration::from_secs(3);

fn client(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    config
}

/// Creates the topics with `partitions` partitions each on the broker at `brokers`.
async fn create_topics_on(brokers: &str, names: &[&str], partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = client(brokers).create().unwrap();
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(1)))
        .collect();
    for created in admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .unwrap()
    {
        created.unwrap();
    }
}

/// Produces the (key, payload) records in order and waits for every delivery.
async fn produce_to(brokers: &str, topic: &str, records: &[(String, Vec<u8>)]) {
    let producer: FutureProducer = client(brokers)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for (key, payload) in records {
        producer
            .send(
                FutureRecord::to(topic).key(key).payload(payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

/// `frames` frames of 10 readings of channel 0 of each of `devices` in turn, the
/// sequence numbers of each device going on from `first`, keyed by device.
fn frames(devices: &[&str], first: u64, frames: u64) -> Vec<(String, Vec<u8>)> {
    let base = now_ms() - 60_000;
    (first..first + frames)
        .map(|i| {
            let device = devices[i as usize % devices.len()];
            let n = i / devices.len() as u64;
            (
                device.to_owned(),
                frame(device, &[0], n * 10, 10, base + n * 100),
            )
        })
        .collect()
}

fn log_of(child: &ChildGuard) -> String {
    std::fs::read_to_string(child.log_path()).unwrap_or_default()
}

/// The stored next offset of each partition of `topic`, in partition order.
async fn next_offsets(pool: &PgPool, topic: &str) -> Vec<Option<i64>> {
    sqlx::query_scalar(
        "SELECT next_offset FROM ingest_partitions WHERE topic = $1 ORDER BY partition",
    )
    .bind(topic)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The URL of the database `pool` is connected to, on the stack's server.
async fn url_of(pool: &PgPool) -> String {
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .unwrap();
    let base = testkit::database_url();
    match base.rfind('/') {
        Some(slash) => format!("{}/{db}", &base[..slash]),
        None => panic!("DATABASE_URL {base:?} has no database path"),
    }
}

/// SIGTERM while Kafka is frozen and the batch in hand holds dead letters: Kafka's
/// confirmation of them would wait for as long as the outage lasts
/// (`message.timeout.ms = 0`), but the stop wins within `shutdown_grace` and stores no
/// offset for the batch. Once Kafka is back, the restarted ingester reads those records
/// again, dead-letters them and moves the offset on.
#[sqlx::test(migrations = "../migrations")]
async fn a_stop_during_a_kafka_outage_ends_within_the_grace_and_leaves_the_dead_letters_to_the_restart(
    pool: PgPool,
) {
    let tansu = testkit::Tansu::start();
    let brokers = tansu.brokers();
    let topic = testkit::unique_name("data");
    let dlq = testkit::unique_name("dlq");
    let metrics = testkit::unique_name("metrics");
    // One partition, so the offsets below are the records' positions.
    create_topics_on(&brokers, &[&topic, &dlq, &metrics], 1).await;
    // Five frames of a seed device fill a batch (50 readings) that is stored at once;
    // three frames of a device nobody registered follow, dead letters in a batch that
    // stays open (a minute's batch age) until the stop closes it.
    let mut records = frames(&["press-01"], 0, 5);
    let unknown = frames(&["ghost-01"], 0, 3);
    records.extend(unknown.iter().cloned());
    produce_to(&brokers, &topic, &records).await;

    let url = url_of(&pool).await;
    let id = testkit::unique_name("ingest");
    let group = testkit::unique_name("group");
    let spawn = |batch_age: &str| {
        ChildGuard::spawn(
            "cloud-ingester",
            Command::new(env!("CARGO_BIN_EXE_cloud-ingester"))
                .args(["--topic", &topic, "--dlq-topic", &dlq, "--group", &group])
                .args(["--id", &id, "--batch-rows", "50", "--batch-age", batch_age])
                .args(["--http-listen", "127.0.0.1:0"])
                .env("INGESTER_SHUTDOWN_GRACE", "3s")
                // Metrics records pile up in the producer during the outage, as they
                // would in production: the stop's last flushes must not wait for them.
                .env("INGESTER_KAFKA__METRICS_TOPIC", &metrics)
                .env("INGESTER_KAFKA__METRICS_INTERVAL", "1s")
                .env("INGESTER_KAFKA__ALERTS_TOPIC", "")
                .env("INGESTER_KAFKA__CONFIRM_TOPIC", "")
                .env("DATABASE_URL", &url)
                .env("REDIS_URL", "")
                .env("KAFKA_BROKERS", &brokers)
                .env("RUST_LOG", "info"),
        )
    };

    let mut first = spawn("60s");
    eventually(
        "the full batch stored",
        Duration::from_secs(60),
        &first,
        || async { (next_offsets(&pool, &topic).await == [Some(5)]).then_some(()) },
    )
    .await;
    // The dead letters came in the same fetch as the full batch: a moment for them to
    // open the next batch, and for the stored offset's commit to Kafka.
    tokio::time::sleep(Duration::from_secs(3)).await;
    tansu.pause();
    let signalled = Instant::now();
    // The behaviour's deadline: the grace, and a generous margin for the rest of the
    // stop on a busy machine. Panics quoting the log if it still runs then.
    let status = first.terminate(GRACE + Duration::from_secs(20));
    let took = signalled.elapsed();
    let log = log_of(&first);
    assert!(status.success(), "{status}; log:\n{log}");
    assert!(
        log.contains("Kafka did not confirm the batch's dead letters"),
        "the stop came with the dead letters in hand; log:\n{log}"
    );
    assert!(log.contains("cloud-ingester stopped"), "log:\n{log}");
    assert_eq!(
        next_offsets(&pool, &topic).await,
        [Some(5)],
        "no offset stored for the unconfirmed dead letters"
    );
    assert_eq!(events(&pool, &id, "stop").await.len(), 1);
    eprintln!("stopped {took:?} after SIGTERM during the Kafka outage (grace {GRACE:?})");

    tansu.resume();
    // A short batch age: the dead letters go at once, not when a minute has passed.
    let mut second = spawn("200ms");
    eventually(
        "the dead letters' offsets stored after the restart",
        Duration::from_secs(90),
        &second,
        || async { (next_offsets(&pool, &topic).await == [Some(8)]).then_some(()) },
    )
    .await;
    assert!(second.terminate(Duration::from_secs(30)).success());

    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM sensor_readings")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 50, "the seed device's readings, once");
    // Every dead letter is in the DLQ; the first instance's attempt may have reached
    // the frozen broker too, so one may be there twice (a replay, never a loss).
    let reader: BaseConsumer = client(&brokers)
        .set("group.id", testkit::unique_name("reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&[&dlq]).unwrap();
    let mut found: Vec<Vec<u8>> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !unknown.iter().all(|(_, payload)| found.contains(payload)) {
        assert!(
            Instant::now() < deadline,
            "{} of the 3 dead letters in the DLQ",
            unknown
                .iter()
                .filter(|(_, payload)| found.contains(payload))
                .count()
        );
        if let Some(Ok(message)) = reader.poll(Duration::from_millis(200)) {
            found.push(message.payload().unwrap_or_default().to_vec());
        }
    }
    eprintln!("{} dead-letter records for 3 dead letters", found.len());
}

/// PostgreSQL away for longer than librdkafka's `max.poll.interval.ms` (shortened to 6 s
/// through `kafka.properties`) and than the leases last (10 s), while the ingester
/// retries a batch's write without polling Kafka. The ingester assigns itself its
/// partitions (no group membership), so librdkafka has no group to leave, and nobody
/// else claimed the expired leases: when PostgreSQL is back, the same process goes on
/// with the same leases, and every reading produced before, during and after the outage
/// is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_longer_than_the_poll_interval_ends_with_the_same_instance_and_nothing_lost(
) {
    const MAX_POLL_INTERVAL: Duration = Duration::from_secs(6);
    let mut postgres = testkit::Postgres::start();
    let url = postgres.url("postgres");
    let topic = testkit::unique_name("data");
    let dlq = testkit::unique_name("dlq");
    support::create_topics(&[&topic, &dlq]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ingester.toml");
    let poll_ms = MAX_POLL_INTERVAL.as_millis();
    // librdkafka refuses a poll interval below the session timeout (45 s by default).
    std::fs::write(
        &config,
        format!(
            "[kafka.properties]\n\"max.poll.interval.ms\" = {poll_ms}\n\
             \"session.timeout.ms\" = {poll_ms}\n"
        ),
    )
    .unwrap();
    let id = testkit::unique_name("ingest");
    let mut ingester = ChildGuard::spawn(
        "cloud-ingester",
        Command::new(env!("CARGO_BIN_EXE_cloud-ingester"))
            .arg("--config")
            .arg(Path::new(&config))
            .args(["--migrate", "--topic", &topic, "--dlq-topic", &dlq])
            .args(["--group", &testkit::unique_name("group"), "--id", &id])
            .args(["--batch-age", "200ms", "--http-listen", "127.0.0.1:0"])
            .env("INGESTER_KAFKA__METRICS_TOPIC", "")
            .env("INGESTER_KAFKA__ALERTS_TOPIC", "")
            .env("INGESTER_KAFKA__CONFIRM_TOPIC", "")
            .env("DATABASE_URL", &url)
            // A private cluster, entered as its superuser.
            .env("INGESTER_DATABASE__ALLOW_SUPERUSER", "true")
            .env("REDIS_URL", "")
            .env("KAFKA_BROKERS", testkit::kafka_brokers())
            .env("RUST_LOG", "info"),
    );
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
        .unwrap();
    let devices = ["press-01", "furnace-01", "compressor-01"];
    let per_phase = 60;
    let stored = &pool;
    // `Some` once the readings of `phases` phases are stored; `None` also while
    // PostgreSQL does not answer.
    let rows = |phases: i64| async move {
        let count: Option<i64> = sqlx::query_scalar("SELECT count(*) FROM sensor_readings")
            .fetch_one(stored)
            .await
            .ok();
        (count == Some(phases * per_phase as i64 * 10)).then_some(())
    };

    produce_to(
        &testkit::kafka_brokers(),
        &topic,
        &frames(&devices, 0, per_phase),
    )
    .await;
    eventually(
        "the first readings stored",
        Duration::from_secs(90),
        &ingester,
        || rows(1),
    )
    .await;
    let leases = || async {
        sqlx::query_as::<_, (i32, Option<String>, i64)>(
            "SELECT partition, owner, lease_epoch FROM ingest_partitions \
             WHERE topic = $1 ORDER BY partition",
        )
        .bind(&topic)
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let held_before = leases().await;
    assert_eq!(held_before.len(), 3, "{held_before:?}");

    postgres.stop();
    // Records the ingester reads and cannot store: it retries their batch, not polling.
    produce_to(
        &testkit::kafka_brokers(),
        &topic,
        &frames(&devices, per_phase, per_phase),
    )
    .await;
    eventually(
        "the ingester retrying its write",
        Duration::from_secs(30),
        &ingester,
        || async {
            log_of(&ingester)
                .contains("PostgreSQL write failed")
                .then_some(())
        },
    )
    .await;
    // Past the poll interval and the leases' 10 s, with margin.
    tokio::time::sleep(MAX_POLL_INTERVAL + Duration::from_secs(14)).await;
    postgres.restart();
    produce_to(
        &testkit::kafka_brokers(),
        &topic,
        &frames(&devices, 2 * per_phase, per_phase),
    )
    .await;
    eventually(
        "every reading stored after the outage",
        Duration::from_secs(120),
        &ingester,
        || rows(3),
    )
    .await;

    assert!(
        ingester.try_wait().is_none(),
        "the ingester still runs; log:\n{}",
        ingester.log_tail()
    );
    assert_eq!(
        events(&pool, &id, "start").await.len(),
        1,
        "one instance, never restarted"
    );
    assert_eq!(
        leases().await,
        held_before,
        "the same member holds the same leases (same epochs: never lost or re-claimed)"
    );
    let distinct: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT DISTINCT device_id, boot_id, seq FROM sensor_readings) d",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let counted: i64 = sqlx::query_scalar("SELECT sum(count)::bigint FROM device_stats_hourly")
        .fetch_one(&pool)
        .await
        .unwrap();
    let expected = 3 * per_phase as i64 * 10;
    assert_eq!(
        (distinct, counted),
        (expected, expected),
        "each reading once"
    );
    let outage = events(&pool, &id, "error").await;
    assert_eq!(outage.len(), 1, "{outage:?}");
    // The scenario's premise, not a speed: the batch waited, unpolled, longer than the
    // poll interval and the leases.
    let waited = outage[0]["seconds"].as_f64().unwrap_or_default();
    let premise = MAX_POLL_INTERVAL.max(cloud_ingester::ownership::LEASE_TTL);
    assert!(
        waited > premise.as_secs_f64(),
        "the write was retried for {waited} s, not past {premise:?}"
    );
    // librdkafka enforces the interval only on a subscribed consumer (its MAXPOLL
    // warning, then leaving the group); an assigned one has no group to leave.
    let log = log_of(&ingester);
    assert!(!log.contains("MAXPOLL"), "log:\n{log}");
    assert!(ingester.terminate(Duration::from_secs(30)).success());
    pool.close().await;
}
