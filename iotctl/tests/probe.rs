//! The probe's happy path: `iotctl health` times readings through the real bridge and
//! ingester, run in this process, and leaves nothing behind.

mod support;

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use sqlx::PgPool;

use support::{iotctl, json, stderr};

/// The bridge (embedded broker) and the ingester, in this process, on topics of their
/// own; the ingester writes the test's database and Redis under `prefix`.
struct Services {
    mqtt: std::net::SocketAddr,
    bridge_http: std::net::SocketAddr,
    stop_bridge: tokio::sync::oneshot::Sender<()>,
    bridge: tokio::task::JoinHandle<anyhow::Result<bridge::stats::StatsSnapshot>>,
    stop_ingester: tokio::sync::oneshot::Sender<()>,
    ingester: tokio::task::JoinHandle<anyhow::Result<cloud_ingester::stats::IngestSnapshot>>,
}

impl Services {
    async fn start(pool: &PgPool, prefix: &str) -> Self {
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
        config.embedded.allow_anonymous = true;
        let mut ingester_config = cloud_ingester::config::IngesterConfig {
            id: "iotctl-test".to_owned(),
            ..Default::default()
        };
        ingester_config.kafka.brokers = testkit::kafka_brokers();
        ingester_config.kafka.group = testkit::unique_name("ingest");
        ingester_config.kafka.topic = config.kafka.topic.clone();
        ingester_config.kafka.dlq_topic = config.kafka.dlq_topic.clone();
        ingester_config.kafka.alerts_topic = String::new();
        ingester_config.kafka.confirm_topic = String::new();
        ingester_config.kafka.metrics_topic = String::new();
        ingester_config.redis.url = testkit::redis_url();
        ingester_config.redis.prefix = prefix.to_owned();
        ingester_config.http.listen = ([127, 0, 0, 1], 0).into();
        // Creates its topics before it returns.
        let started = bridge::Bridge::start(config).await.expect("bridge starts");
        let (mqtt, bridge_http) = (started.mqtt_addr().unwrap(), started.http_addr());
        let bridge_readiness = started.readiness();
        let (stop_bridge, stopped) = tokio::sync::oneshot::channel::<()>();
        let bridge = tokio::spawn(started.run_until(async {
            let _ = stopped.await;
        }));

        // Kafka counts as connected once librdkafka's first statistics arrive.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !bridge_readiness.ready() {
            assert!(Instant::now() < deadline, "the bridge is not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Reads the catalog now, as at every start: the probe device must exist by then.
        let started = cloud_ingester::Ingester::start_on(ingester_config, pool.clone())
            .await
            .expect("ingester starts");
        let (stop_ingester, stopped) = tokio::sync::oneshot::channel::<()>();
        let ingester = tokio::spawn(started.run_until(async {
            let _ = stopped.await;
        }));
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
        let _ = self.stop_ingester.send(());
        self.ingester.await.unwrap().unwrap();
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
    let services = Services::start(&pool, &prefix).await;

    let mqtt = services.mqtt.to_string();
    let bridge_http = format!("http://{}", services.bridge_http);
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
    services.stop().await;
}
