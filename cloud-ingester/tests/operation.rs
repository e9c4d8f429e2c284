//! The binary in operation against the stack: it reports ready, exports its counters and
//! consumer lag to Prometheus, publishes the metrics record on Kafka, logs its start and
//! stop in `system_events`, and exits 0 on SIGTERM.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use sqlx::PgPool;
use support::process::{events, eventually};
use support::{create_topics, frame, kafka, produce};
use testkit::ChildGuard;

/// Status and body of a plain HTTP GET; `None` while nothing listens.
async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    Some((status, body.to_owned()))
}

#[sqlx::test(migrations = "../migrations")]
async fn the_binary_reports_readiness_metrics_and_its_start_and_stop(pool: PgPool) {
    let topic = testkit::unique_name("data");
    let dlq = testkit::unique_name("dlq");
    let metrics_topic = testkit::unique_name("metrics");
    create_topics(&[&topic, &dlq, &metrics_topic]).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let records: Vec<(String, Vec<u8>)> = (0..10u64)
        .map(|i| {
            let device = ["press-01", "furnace-01"][i as usize % 2];
            (
                device.to_owned(),
                frame(device, &[0], i * 20, 20, now - 60_000 + i * 200),
            )
        })
        .collect();
    produce(&topic, &records).await;
    let inserted = 10 * 20;

    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let base = testkit::database_url();
    let url = format!("{}/{db}", &base[..base.rfind('/').unwrap()]);
    let (id, group) = (
        testkit::unique_name("ingest"),
        testkit::unique_name("group"),
    );
    let http = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    let mut running = ChildGuard::spawn(
        "cloud-ingester",
        Command::new(env!("CARGO_BIN_EXE_cloud-ingester"))
            .args(["--topic", &topic, "--dlq-topic", &dlq, "--group", &group])
            .args(["--id", &id, "--http-listen", &http.to_string()])
            .env("DATABASE_URL", url)
            .env("REDIS_URL", "")
            .env("KAFKA_BROKERS", testkit::kafka_brokers())
            .env("INGESTER_KAFKA__METRICS_TOPIC", &metrics_topic)
            .env("INGESTER_KAFKA__METRICS_INTERVAL", "1s")
            .env("INGESTER_KAFKA__ALERTS_TOPIC", "")
            .env("RUST_LOG", "warn"),
    );

    let ready = eventually("/readyz 200", Duration::from_secs(30), &running, || async {
        http_get(http, "/readyz")
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;
    assert_eq!(ready.1, "kafka connected\npostgresql connected\n");
    assert_eq!(
        http_get(http, "/livez").await,
        Some((200, "ok\n".to_owned()))
    );

    let metrics = eventually(
        "every reading counted and the lag reported on /metrics",
        Duration::from_secs(30),
        &running,
        || async {
            let (_, body) = http_get(http, "/metrics").await?;
            let counted = body
                .lines()
                .any(|l| l == format!("ingester_readings_inserted_total {inserted}"));
            (counted && body.contains("ingester_consumer_lag{partition=")).then_some(body)
        },
    )
    .await;
    for name in [
        "ingester_records_total 10",
        "ingester_batch_rows_bucket",
        "ingester_flush_seconds_bucket",
        "ingester_alert_transitions_total{transition=\"opened\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }

    let reader: BaseConsumer = kafka()
        .set("group.id", testkit::unique_name("reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&[&metrics_topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let record = loop {
        assert!(
            Instant::now() < deadline,
            "no metrics record counted it all"
        );
        let Some(Ok(message)) = reader.poll(Duration::from_millis(200)) else {
            continue;
        };
        let record: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        if record["counters"]["inserted"] == inserted {
            assert_eq!(message.key(), Some(id.as_bytes()));
            break record;
        }
    };
    assert_eq!(record["service"], "cloud-ingester");
    assert_eq!(record["instance"], id.as_str());
    assert!(record["at_ms"].as_u64().unwrap() >= now);
    assert_eq!(record["connected"]["postgresql"], true);
    assert!(record["per_s"]["inserted"].as_f64().is_some(), "{record}");

    let started = events(&pool, &id, "start").await;
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0]["group"], group.as_str());
    assert_eq!(started[0]["topic"], topic.as_str());

    // SIGTERM; a panic quoting the ingester's log if it still runs 30 s later.
    let status = running.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}");
    let stopped = events(&pool, &id, "stop").await;
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    assert_eq!(stopped[0]["counters"]["inserted"], inserted);
    assert!(stopped[0].get("per_s").is_none(), "{}", stopped[0]);
}
