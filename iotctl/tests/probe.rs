//! The probe's happy path: `iotctl health` times readings through the real bridge and
//! ingester, run in this process, and leaves nothing behind.

mod support;

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use sqlx::PgPool;

use support::{iotctl, json, kafka, stderr};

/// The bridge (embedded broker) and the ingester's pipeline, in this process, on topics
/// of their own; the ingester writes the test's database and Redis under `prefix`.
struct Pipeline {
    mqtt: std::net::SocketAddr,
    bridge_http: std::net::SocketAddr,
    stop_bridge: tokio::sync::oneshot::Sender<()>,
    bridge: tokio::task::JoinHandle<anyhow::Result<bridge::stats::StatsSnapshot>>,
    stop_ingester: tokio_util::sync::CancellationToken,
    ingester: tokio::task::JoinHandle<()>,
}

impl Pipeline {
    async fn start(pool: &PgPool, prefix: &str) -> Self {
        use cloud_ingester::pipeline::{Pipeline as Ingest, PipelineSettings};

        let mut config = bridge::BridgeConfig {
            id: testkit::unique_name("bridge"),
            ..Default::default()
        };
        config.kafka.brokers = testkit::kafka_brokers();
        config.kafka.topic = testkit::unique_name("data");
        config.kafka.dlq_topic = testkit::unique_name("dlq");
        config.kafka.metrics_topic = String::new();
        config.http.listen = ([127, 0, 0, 1], 0).into();
        config.embedded.listen = ([127, 0, 0, 1], testkit::free_port()).into();
        let topic = config.kafka.topic.clone();
        let dlq_topic = config.kafka.dlq_topic.clone();
        // Creates its topics before it returns.
        let started = bridge::Bridge::start(config).await.expect("bridge starts");
        let (mqtt, bridge_http) = (started.mqtt_addr().unwrap(), started.http_addr());
        let bridge_health = started.health();
        let (stop_bridge, stopped) = tokio::sync::oneshot::channel::<()>();
        let bridge = tokio::spawn(started.run_until(async {
            let _ = stopped.await;
        }));

        // Kafka counts as connected once librdkafka's first statistics arrive.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !bridge_health.ready() {
            assert!(Instant::now() < deadline, "the bridge is not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let stats = std::sync::Arc::new(cloud_ingester::stats::IngestStats::default());
        let health = std::sync::Arc::new(cloud_ingester::health::Health::default());
        let kafka_config = cloud_ingester::config::KafkaConfig {
            brokers: testkit::kafka_brokers(),
            group: testkit::unique_name("ingest"),
            ..Default::default()
        };
        let pipeline = Ingest {
            consumer: std::sync::Arc::new(
                cloud_ingester::kafka::consumer(
                    &kafka_config,
                    "iotctl-test",
                    cloud_ingester::kafka::IngestContext::new(health.clone()),
                )
                .unwrap(),
            ),
            producer: kafka().create().unwrap(),
            store: cloud_ingester::store::Store::new(pool.clone()),
            redis: Some(
                cloud_ingester::redis_sink::RedisSink::connect(&testkit::redis_url(), prefix)
                    .await
                    .unwrap(),
            ),
            // Read now, as the ingester does at start: the probe device must exist by then.
            catalog: cloud_ingester::validate::Catalog::load(pool).await.unwrap(),
            confirm: None,
            settings: PipelineSettings {
                group: kafka_config.group.clone(),
                topic,
                dlq_topic,
                alerts_topic: String::new(),
                instance: "iotctl-test".to_owned(),
                batch_rows: 20_000,
                batch_age: Duration::from_millis(50),
                retention_days: None,
                data_loss: Default::default(),
                max_ahead: cloud_ingester::config::ClockConfig::default().max_ahead,
                shutdown_grace: Duration::from_secs(10),
            },
            stats,
            health,
        };
        let stop_ingester = tokio_util::sync::CancellationToken::new();
        let ingester = tokio::spawn({
            let stop = stop_ingester.clone();
            async move { pipeline.run(stop).await.unwrap() }
        });
        Self {
            mqtt,
            bridge_http,
            stop_bridge,
            bridge,
            stop_ingester,
            ingester,
        }
    }

    async fn stop(self) {
        self.stop_ingester.cancel();
        self.ingester.await.unwrap();
        let _ = self.stop_bridge.send(());
        self.bridge.await.unwrap().unwrap();
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn the_probe_times_readings_end_to_end_and_leaves_no_trace(pool: PgPool) {
    // As an earlier probe would have left it: a device the ingester reads at its start
    // is accepted at once (a new one only at the ingester's next device refresh).
    sqlx::query(
        "INSERT INTO devices (device_id, name, kind, site, line, enabled) \
         VALUES ('iotctl-probe', 'probe', 'probe', 'probe', 'probe', false)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO device_channels (device_id, channel_id, name, unit, sample_period_ms, \
                                      range_min, range_max) \
         VALUES ('iotctl-probe', 0, 'probe', '', 10, -1e9, 1e9)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let prefix = testkit::unique_name("iotctl");
    let pipeline = Pipeline::start(&pool, &prefix).await;

    let mqtt = pipeline.mqtt.to_string();
    let bridge_http = format!("http://{}", pipeline.bridge_http);
    let mut command = iotctl(
        &pool,
        &[
            "--json",
            "--mqtt",
            &mqtt,
            "--bridge-metrics",
            &bridge_http,
            "--redis-prefix",
            &prefix,
            "health",
            "--probe-readings",
            "1000",
        ],
    );
    // The bridge and the ingester run on this test's runtime: wait elsewhere.
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let checks = json(&output);
    let check = |name: &str| {
        checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no {name} check: {checks}"))
            .clone()
    };
    let probe = check("probe");
    assert_eq!(probe["ok"], true, "{probe}\nstderr: {}", stderr(&output));
    let figures = &probe["measurements"];
    assert_eq!(figures["stored"], 1000);
    assert_eq!(figures["frames"], 20);
    assert_eq!(figures["frames_acknowledged"], 20);
    assert!(figures["readings_per_s"].as_f64().unwrap() > 0.0);
    let (p50, p99) = (
        figures["latency_p50_ms"].as_f64().unwrap(),
        figures["latency_p99_ms"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99, "{figures}");
    assert!(probe["detail"].as_str().unwrap().contains("readings/s"));
    let bridge = check("bridge");
    assert_eq!(bridge["ok"], true, "{bridge}");

    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM sensor_readings WHERE device_id = 'iotctl-probe') \
              + (SELECT count(*) FROM device_stats_hourly WHERE device_id = 'iotctl-probe') \
              + (SELECT count(*) FROM alerts WHERE device_id = 'iotctl-probe')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(left, 0, "the probe's rows are deleted");
    let mut redis = redis::Client::open(testkit::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis.keys(format!("{prefix}:*")).await.unwrap();
    assert!(
        keys.is_empty(),
        "the probe's Redis keys are deleted: {keys:?}"
    );
    pipeline.stop().await;
}
