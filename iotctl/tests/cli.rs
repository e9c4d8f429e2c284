//! The `iotctl` binary against the stack's real services: each test has its own database
//! (`#[sqlx::test]`), and its own Kafka topic and Redis key prefix (testkit names), so the
//! tests run in parallel and never touch operator data.

use std::io::Read;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use protocol::{BootId, DeviceId, Frame, Quality, Reading};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use redis::AsyncCommands;
use serde_json::Value;
use sqlx::PgPool;
use testkit::ChildGuard;

/// The URL of the test's own database: the stack's URL with its database name.
fn database_url(pool: &PgPool) -> String {
    let name = pool
        .connect_options()
        .get_database()
        .expect("sqlx::test databases have a name")
        .to_owned();
    let base = testkit::database_url();
    let slash = base.rfind('/').expect("DATABASE_URL has a database path");
    format!("{}/{name}", &base[..slash])
}

/// `iotctl` with the stack's addresses and the test's database, except where `args`
/// give an address of their own (clap refuses a flag given twice).
fn iotctl(pool: &PgPool, args: &[&str]) -> Command {
    let (mqtt_host, mqtt_port) = testkit::mqtt_host_port();
    let defaults = [
        ("--database-url", database_url(pool)),
        ("--redis-url", testkit::redis_url()),
        ("--kafka-brokers", testkit::kafka_brokers()),
        ("--mqtt", format!("{mqtt_host}:{mqtt_port}")),
        // Nothing listens there: no bridge or ingester runs during the tests.
        (
            "--bridge-metrics",
            format!("http://127.0.0.1:{}", testkit::free_port()),
        ),
        (
            "--ingester-metrics",
            format!("http://127.0.0.1:{}", testkit::free_port()),
        ),
    ];
    let mut command = Command::new(env!("CARGO_BIN_EXE_iotctl"));
    command.env_remove("IOTCTL_MQTT");
    for (flag, value) in defaults {
        if !args.contains(&flag) {
            command.args([flag, value.as_str()]);
        }
    }
    command.args(args);
    command
}

fn run(pool: &PgPool, args: &[&str]) -> Output {
    iotctl(pool, args).output().expect("run iotctl")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            stdout(output),
            stderr(output)
        )
    })
}

fn kafka() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", testkit::kafka_brokers());
    config
}

async fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = kafka().create().unwrap();
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for result in admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }
}

/// Every record of `topic` from the start: (key, value), until `expected` arrived or
/// 15 s passed.
fn read_topic(topic: &str, expected: usize) -> Vec<(String, Value)> {
    let consumer: BaseConsumer = kafka()
        .set("group.id", testkit::unique_name("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while records.len() < expected && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.unwrap();
            let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            let value = serde_json::from_slice(message.payload().unwrap_or_default()).unwrap();
            records.push((key, value));
        }
    }
    records
}

fn frame(device: &str, first_seq: u64, values: &[f32]) -> Vec<u8> {
    let mut frame = Frame::new(
        DeviceId::new(device).unwrap(),
        BootId([7; 8]),
        first_seq,
        service::clock::now_ms(),
    );
    for (i, value) in values.iter().enumerate() {
        frame
            .readings
            .push(Reading {
                channel: 0,
                offset_ms: i as u32 * 100,
                value: *value,
                quality: if i == 0 {
                    Quality::empty()
                } else {
                    Quality::OUT_OF_RANGE
                },
            })
            .unwrap();
    }
    let mut buf = [0u8; protocol::MAX_FRAME_LEN];
    frame.encode(&mut buf).unwrap().to_vec()
}

const CHECKS: [&str; 10] = [
    "postgresql",
    "schema",
    "seed-devices",
    "redis",
    "redis-memory",
    "kafka",
    "kafka-topics",
    "mqtt",
    "bridge",
    "ingester",
];

#[sqlx::test(migrations = "../migrations")]
async fn health_lists_every_check_and_passes_what_the_stack_provides(pool: PgPool) {
    let output = run(&pool, &["--json", "health", "--no-probe"]);
    let checks = json(&output);
    let checks = checks.as_array().expect("an array of checks");
    let names: Vec<&str> = checks
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(names, CHECKS);
    for check in checks {
        let name = check["check"].as_str().unwrap();
        let ok = check["ok"].as_bool().unwrap();
        assert!(check["detail"].as_str().is_some_and(|d| !d.is_empty()));
        if matches!(name, "bridge" | "ingester") {
            // Not running during the tests.
            assert!(!ok, "{check}");
            assert!(check["fix"].as_str().is_some_and(|f| f.contains("start")));
        } else {
            assert!(ok, "{check}");
            assert!(check["fix"].is_null());
        }
    }
    assert_eq!(
        output.status.code(),
        Some(1),
        "a failed check fails the command"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_wrong_redis_url_fails_the_redis_checks_with_a_fix(pool: PgPool) {
    let dead = format!("redis://127.0.0.1:{}", testkit::free_port());
    let output = run(&pool, &["--redis-url", &dead, "health", "--no-probe"]);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("FAIL redis: "))
        .unwrap_or_else(|| panic!("no FAIL redis line:\n{text}"));
    assert!(
        lines[at].contains(&dead),
        "names the address: {}",
        lines[at]
    );
    assert!(lines[at + 1].trim_start().starts_with("fix: "), "{text}");
    assert!(lines
        .iter()
        .any(|l| l.starts_with("FAIL redis-memory: not checked")));
    assert!(
        lines.iter().any(|l| l.starts_with("ok postgresql: ")),
        "{text}"
    );
    assert!(lines
        .iter()
        .any(|l| l.starts_with("ok schema: at the latest migration")));
}

#[sqlx::test(migrations = "../migrations")]
async fn without_a_broker_the_probe_fails_naming_the_address_and_leaves_nothing(pool: PgPool) {
    let mqtt = format!("127.0.0.1:{}", testkit::free_port());
    let started = Instant::now();
    let output = run(&pool, &["--mqtt", &mqtt, "health"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(20), "fails fast");
    let text = stdout(&output);
    let probe = text
        .lines()
        .find(|l| l.starts_with("FAIL probe: "))
        .unwrap_or_else(|| panic!("no FAIL probe line:\n{text}"));
    assert!(probe.contains(&mqtt), "{probe}");
    let devices: i64 =
        sqlx::query_scalar("SELECT count(*) FROM devices WHERE device_id = 'iotctl-probe'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        devices, 0,
        "the probe registers nothing before it can publish"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn alerts_are_listed_acknowledged_and_resolved_and_announced(pool: PgPool) {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO alerts (device_id, channel_id, rule, severity, value, threshold, value_ts, message) \
         VALUES ('furnace-01', 0, 'high', 'warning', 905, 900, now(), 'too hot') RETURNING alert_id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let id_text = id.to_string();
    let topic = testkit::unique_name("alerts");
    create_topic(&topic, 2).await;
    let prefix = testkit::unique_name("iotctl");
    let isolated = [
        "--alerts-topic",
        topic.as_str(),
        "--redis-prefix",
        prefix.as_str(),
    ];
    let alerts_cmd = |args: &[&str]| {
        let mut all = isolated.to_vec();
        all.extend_from_slice(args);
        run(&pool, &all)
    };

    let listed = json(&alerts_cmd(&["--json", "alerts", "list"]));
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["alert_id"], id);
    assert_eq!(listed[0]["state"], "open");
    assert_eq!(listed[0]["channel"], "temperature");
    let table = stdout(&alerts_cmd(&["alerts", "list"]));
    assert!(
        table.contains("905 °C") && table.contains("too hot"),
        "{table}"
    );

    let acked = alerts_cmd(&["alerts", "ack", &id_text, "--by", "alice"]);
    assert!(acked.status.success(), "{}", stderr(&acked));
    assert!(stdout(&acked).contains(&format!("alert {id} acknowledged by alice")));
    let (state, by): (String, Option<String>) =
        sqlx::query_as("SELECT state::text, acknowledged_by FROM alerts WHERE alert_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), by.as_deref()),
        ("acknowledged", Some("alice"))
    );
    let mut redis = redis::Client::open(testkit::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("{prefix}:alerts:open");
    let view: Option<String> = redis.hget(&key, id).await.unwrap();
    let view: Value = serde_json::from_str(&view.expect("acknowledged alert in Redis")).unwrap();
    assert_eq!(view["state"], "acknowledged");
    assert_eq!(view["alert_id"], id);

    let twice = alerts_cmd(&["alerts", "ack", &id_text, "--by", "bob"]);
    assert_eq!(twice.status.code(), Some(1));
    assert!(
        stderr(&twice).contains("already acknowledged (by alice"),
        "{}",
        stderr(&twice)
    );

    let resolved = alerts_cmd(&["alerts", "resolve", &id_text, "--by", "bob"]);
    assert!(resolved.status.success(), "{}", stderr(&resolved));
    let state: String = sqlx::query_scalar("SELECT state::text FROM alerts WHERE alert_id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "resolved");
    let view: Option<String> = redis.hget(&key, id).await.unwrap();
    assert_eq!(view, None, "resolved alerts leave the open-alerts hash");

    let late = alerts_cmd(&["alerts", "ack", &id_text, "--by", "carol"]);
    assert_eq!(late.status.code(), Some(1));
    assert!(stderr(&late).contains("is resolved"), "{}", stderr(&late));
    let missing = alerts_cmd(&["alerts", "resolve", "999999"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("does not exist"));

    let records = read_topic(&topic, 2);
    assert_eq!(records.len(), 2, "{records:?}");
    for ((key, record), transition) in records.iter().zip(["acknowledged", "resolved"]) {
        assert_eq!(key, "furnace-01");
        assert_eq!(record["transition"], transition);
        assert_eq!(record["alert_id"], id);
        assert_eq!(record["rule"], "high");
        assert!(record["at_ms"].as_i64().is_some());
    }

    let unresolved = json(&alerts_cmd(&["--json", "alerts", "list"]));
    assert_eq!(unresolved.as_array().unwrap().len(), 0);
    let all = json(&alerts_cmd(&["--json", "alerts", "list", "--all"]));
    assert_eq!(all[0]["state"], "resolved");
    assert_eq!(all[0]["acknowledged_by"], "alice");
    let logged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM system_events WHERE service = 'iotctl' AND details->>'alert_id' = $1",
    )
    .bind(&id_text)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(logged, 2, "each change is in the operation log");
    let _: () = redis.del(&key).await.unwrap();
}

/// A device-level alert (`data_loss`, no channel) goes through list, ack and resolve
/// like a channel's, and its records and Redis view say it has no channel.
#[sqlx::test(migrations = "../migrations")]
async fn a_data_loss_alert_without_a_channel_is_listed_acknowledged_and_resolved(pool: PgPool) {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO alerts (device_id, rule, severity, value, threshold, value_ts, message) \
         VALUES ('press-01', 'data_loss', 'warning', 312, 1, now(), \
                 '312 readings missing in boot 0000000000000001: 1200-1499, 1700-1711') \
         RETURNING alert_id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let id_text = id.to_string();
    let topic = testkit::unique_name("alerts");
    create_topic(&topic, 2).await;
    let prefix = testkit::unique_name("iotctl");
    let alerts_cmd = |args: &[&str]| {
        let mut all = vec!["--alerts-topic", &topic, "--redis-prefix", &prefix];
        all.extend_from_slice(args);
        run(&pool, &all)
    };

    let listed = json(&alerts_cmd(&["--json", "alerts", "list"]));
    assert_eq!(listed[0]["alert_id"], id);
    assert_eq!(listed[0]["channel_id"], Value::Null);
    assert_eq!(listed[0]["unit"], "readings");
    let table = stdout(&alerts_cmd(&["alerts", "list"]));
    assert!(
        table.contains("data_loss") && table.contains("312 readings") && table.contains("device"),
        "{table}"
    );

    let acked = alerts_cmd(&["alerts", "ack", &id_text, "--by", "alice"]);
    assert!(acked.status.success(), "{}", stderr(&acked));
    assert!(
        stdout(&acked).contains("press-01 device data_loss warning (312 readings"),
        "{}",
        stdout(&acked)
    );
    let mut redis = redis::Client::open(testkit::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("{prefix}:alerts:open");
    let view: Option<String> = redis.hget(&key, id).await.unwrap();
    let view: Value = serde_json::from_str(&view.expect("acknowledged alert in Redis")).unwrap();
    assert_eq!(
        (&view["state"], &view["channel_id"]),
        (&"acknowledged".into(), &Value::Null)
    );

    let resolved = alerts_cmd(&["alerts", "resolve", &id_text, "--by", "bob"]);
    assert!(resolved.status.success(), "{}", stderr(&resolved));
    let (state, resolved_value): (String, Option<f64>) =
        sqlx::query_as("SELECT state::text, resolved_value FROM alerts WHERE alert_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    // No resolved_value: by hand, which the ingester reads as "this loss is accepted".
    assert_eq!((state.as_str(), resolved_value), ("resolved", None));
    let view: Option<String> = redis.hget(&key, id).await.unwrap();
    assert_eq!(view, None);
    let records = read_topic(&topic, 2);
    assert_eq!(records.len(), 2, "{records:?}");
    for ((key, record), transition) in records.iter().zip(["acknowledged", "resolved"]) {
        assert_eq!(key, "press-01");
        assert_eq!(record["transition"], transition);
        assert_eq!(record["rule"], "data_loss");
        assert_eq!(record["channel_id"], Value::Null);
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn stats_derive_mean_and_stddev_per_hour(pool: PgPool) {
    // Readings 1, 2, 3, 4 this hour; one more two days ago.
    sqlx::query(
        "INSERT INTO device_stats_hourly (device_id, channel_id, hour, count, min, max, sum, sum_sq) \
         VALUES ('furnace-01', 0, date_trunc('hour', now()), 4, 1, 4, 10, 30), \
                ('furnace-01', 0, date_trunc('hour', now()) - interval '48 hours', 1, 7, 7, 7, 49), \
                ('press-01', 0, date_trunc('hour', now()), 1, 200, 200, 200, 40000)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let stats = json(&run(&pool, &["--json", "stats", "--device", "furnace-01"]));
    let stats = stats.as_array().unwrap();
    assert_eq!(stats.len(), 1, "{stats:?}");
    assert_eq!(stats[0]["channel"], "temperature");
    assert_eq!(stats[0]["unit"], "°C");
    assert_eq!(stats[0]["count"], 4);
    assert_eq!(stats[0]["mean"], 2.5);
    let sd = stats[0]["stddev"].as_f64().unwrap();
    assert!((sd - (5.0f64 / 3.0).sqrt()).abs() < 1e-9, "{sd}");

    let longer = json(&run(&pool, &["--json", "stats", "--hours", "72"]));
    assert_eq!(longer.as_array().unwrap().len(), 3);
    let single = longer
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["device_id"] == "press-01")
        .unwrap();
    assert!(single["stddev"].is_null(), "no deviation from one reading");

    let table = stdout(&run(&pool, &["stats"]));
    assert!(table.contains("HOUR (UTC)"), "{table}");
    assert!(
        table.contains("2.500") && table.contains("1.291"),
        "{table}"
    );
}

/// Publishes a retained message to the stack's broker (an empty payload clears it).
async fn publish_retained(topic: &str, payload: &[u8]) {
    let (host, port) = testkit::mqtt_host_port();
    let options = rumqttc::MqttOptions::new(testkit::unique_name("retain"), host, port);
    let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
    client
        .publish(topic, rumqttc::QoS::AtLeastOnce, true, payload.to_vec())
        .await
        .unwrap();
    let acked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("publishing to {topic}: {e}"),
            }
        }
    })
    .await;
    assert!(acked.is_ok(), "no PUBACK for {topic}");
    let _ = client.disconnect().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn completeness_counts_made_stored_and_missing_readings_per_boot(pool: PgPool) {
    let rows = |device: &str, boot: i64, seqs: std::ops::Range<i64>| {
        seqs.map(|seq| cloud_ingester::rows::Row {
            device_id: device.to_owned(),
            boot_id: boot,
            seq,
            ts_ms: service::clock::now_ms() as i64 - 60_000 + seq,
            value: 1.0,
            channel_id: 0,
            quality: 0,
            clock_synced: true,
        })
        .collect::<Vec<_>>()
    };
    let store = cloud_ingester::store::Store::new(pool.clone());
    let mut batch = rows("furnace-01", 1, 0..100);
    batch.extend(rows("furnace-01", 1, 150..200));
    batch.extend(rows("press-01", 3, 5..10));
    store.write_batch(&batch).await.unwrap();
    store
        .write_batch(&rows("furnace-01", 2, 0..10))
        .await
        .unwrap();
    // A resend fills part of the hole.
    store
        .write_batch(&rows("furnace-01", 1, 140..150))
        .await
        .unwrap();
    // The furnace's agent reported dropping 100..130 at its byte cap (20 of them never
    // acknowledged by the broker, 10 after their PUBACK), in its retained status.
    let prefix = testkit::unique_name("plant");
    let gateway_status = format!("{prefix}/site/line/gateway-a/status");
    publish_retained(
        &gateway_status,
        br#"{"state":"offline","kind":"edge-agent","reason":"shutdown","health":{"dropped":[
            {"device":"furnace-01","boot":"0000000000000001","unsent":[[100,120]],"after_puback":[[120,130]]},
            {"device":"press-01","boot":"0000000000000009","unsent":[[0,5]],"after_puback":[]}]}}"#,
    )
    .await;
    // A boot that stored nothing for three days.
    store
        .write_batch(&rows("compressor-01", 4, 0..10))
        .await
        .unwrap();
    sqlx::query(
        "UPDATE reading_coverage SET updated_at = now() - interval '3 days' \
          WHERE device_id = 'compressor-01'",
    )
    .execute(&pool)
    .await
    .unwrap();

    let report = json(&run(
        &pool,
        &["--json", "--mqtt-prefix", &prefix, "completeness"],
    ));
    let summary: Vec<Value> = report
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            serde_json::json!([
                b["device_id"],
                b["expected"],
                b["stored"],
                b["missing"],
                b["dropped_at_edge"],
                b["unexplained"],
                b["recovered"],
                b["missing_ranges"],
            ])
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            serde_json::json!(["furnace-01", 200, 160, 40, 30, 10, 10, [[100, 140]]]),
            serde_json::json!(["furnace-01", 10, 10, 0, 0, 0, 0, []]),
            // The agent's report names another boot: these holes are unexplained.
            serde_json::json!(["press-01", 10, 5, 5, 0, 5, 0, [[0, 5]]]),
        ],
        "{report:#}"
    );
    publish_retained(&gateway_status, b"").await;
    // Without a broker the stored figures still come, the agents' part marked unknown.
    let no_broker = format!("127.0.0.1:{}", testkit::free_port());
    let without = run(
        &pool,
        &[
            "--json",
            "--mqtt",
            &no_broker,
            "completeness",
            "--device",
            "press-01",
        ],
    );
    assert!(without.status.success(), "{}", stderr(&without));
    let without = json(&without);
    assert_eq!(without[0]["missing"], 5);
    assert!(without[0]["dropped_at_edge"].is_null(), "{without:#}");
    assert_eq!(report[0]["boot_id"], "0000000000000001");

    let older = json(&run(
        &pool,
        &[
            "--json",
            "completeness",
            "--since",
            "4d",
            "--device",
            "compressor-01",
        ],
    ));
    assert_eq!(older.as_array().unwrap().len(), 1, "{older:#}");

    let table = stdout(&run(&pool, &["completeness", "--device", "press-01"]));
    assert!(
        table.contains("MISSING SEQS")
            && table.contains("DROPPED AT EDGE")
            && table.contains("0-4"),
        "{table}"
    );
    let refused = run(&pool, &["completeness", "--since", "soon"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("not a duration"),
        "{}",
        stderr(&refused)
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn latest_values_and_devices_come_from_redis_with_names_from_postgres(pool: PgPool) {
    let prefix = testkit::unique_name("iotctl");
    let mut redis = redis::Client::open(testkit::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let ts = service::clock::now_ms() as i64 - 1500;
    let latest_key = format!("{prefix}:latest:furnace-01");
    let seen_key = format!("{prefix}:last_seen:furnace-01");
    let value = format!(
        r#"{{"ts":{ts},"v":851.25,"q":1,"boot":"0707070707070707","seq":42,"synced":true}}"#
    );
    let _: () = redis.hset(&latest_key, "0", value).await.unwrap();
    let _: () = redis.set_ex(&seen_key, ts, 60).await.unwrap();

    let latest = json(&run(
        &pool,
        &[
            "--json",
            "--redis-prefix",
            &prefix,
            "latest",
            "--device",
            "furnace-01",
        ],
    ));
    let latest = latest.as_array().unwrap();
    assert_eq!(latest.len(), 1, "{latest:?}");
    assert_eq!(latest[0]["channel"], "temperature");
    assert_eq!(latest[0]["unit"], "°C");
    assert_eq!(latest[0]["value"], 851.25);
    assert_eq!(latest[0]["quality"], serde_json::json!(["anomaly"]));
    assert_eq!(latest[0]["seq"], 42);
    assert!(latest[0]["age_ms"].as_i64().unwrap() >= 1500);
    let table = stdout(&run(&pool, &["--redis-prefix", &prefix, "latest"]));
    assert!(
        table.contains("temperature") && table.contains("851.25"),
        "{table}"
    );

    let devices = json(&run(
        &pool,
        &["--json", "--redis-prefix", &prefix, "devices"],
    ));
    let devices = devices.as_array().unwrap();
    assert_eq!(devices.len(), 5);
    for device in devices {
        let furnace = device["device_id"] == "furnace-01";
        assert_eq!(device["online"], furnace, "{device}");
        if furnace {
            assert_eq!(device["last_seen_ms"], ts);
            assert_eq!(device["last_seen_from"], "redis");
            assert_eq!(device["channels"], 1);
        } else {
            assert!(
                device["last_seen_ms"].is_null(),
                "no readings stored: {device}"
            );
        }
    }
    let _: () = redis.del(&[latest_key, seen_key]).await.unwrap();
}

/// Spawns `iotctl tail` (its stdout a pipe, its stderr in a log) and waits at most 30 s
/// for its "listening" line.
fn spawn_tail(pool: &PgPool, args: &[&str]) -> ChildGuard {
    let mut child = ChildGuard::spawn_capturing_stdout("iotctl-tail", &mut iotctl(pool, args));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !child.log_tail().contains("listening") {
        if let Some(status) = child.try_wait() {
            panic!(
                "tail ended ({status}) before listening: {}",
                child.log_tail()
            );
        }
        assert!(
            Instant::now() < deadline,
            "tail not listening within 30 s: {}",
            child.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Waits (at most 30 s) for the child to end and returns its stdout.
fn finish(mut child: ChildGuard) -> (Option<i32>, String) {
    let Some(status) = child.wait_timeout(Duration::from_secs(30)) else {
        panic!(
            "tail did not stop after --count frames: {}",
            child.log_tail()
        );
    };
    let mut out = String::new();
    child
        .take_stdout()
        .expect("tail's stdout is a pipe")
        .read_to_string(&mut out)
        .unwrap();
    (status.code(), out)
}

async fn produce(topic: &str, records: &[(&str, Vec<u8>)]) {
    let producer: FutureProducer = kafka().create().unwrap();
    for (key, value) in records {
        producer
            .send(
                FutureRecord::to(topic).key(*key).payload(value),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn tail_decodes_frames_from_kafka(pool: PgPool) {
    let topic = testkit::unique_name("data");
    create_topic(&topic, 3).await;
    let child = spawn_tail(
        &pool,
        &[
            "--json",
            "--data-topic",
            &topic,
            "tail",
            "--source",
            "kafka",
            "--count",
            "2",
        ],
    );
    produce(
        &topic,
        &[
            ("furnace-01", frame("furnace-01", 10, &[850.5, 1500.0])),
            ("press-01", frame("press-01", 20, &[210.0])),
        ],
    )
    .await;
    let (code, out) = finish(child);
    assert_eq!(code, Some(0));
    let frames: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(frames.len(), 2, "{out}");
    let furnace = frames.iter().find(|f| f["device"] == "furnace-01").unwrap();
    assert_eq!(furnace["source"], "kafka");
    assert_eq!(furnace["topic"], topic.as_str());
    assert_eq!(furnace["boot"], "0707070707070707");
    assert_eq!(furnace["first_seq"], 10);
    let readings = furnace["readings"].as_array().unwrap();
    assert_eq!(readings.len(), 2);
    assert_eq!(readings[0]["channel"], "temperature");
    assert_eq!(readings[0]["unit"], "°C");
    assert_eq!(readings[0]["value"], 850.5);
    assert_eq!(readings[1]["seq"], 11);
    assert_eq!(readings[1]["quality"], serde_json::json!(["out-of-range"]));
    let press = frames.iter().find(|f| f["device"] == "press-01").unwrap();
    assert_eq!(press["readings"][0]["channel"], "pressure");
}

#[sqlx::test(migrations = "../migrations")]
async fn tail_says_why_a_record_does_not_decode_and_filters_by_device(pool: PgPool) {
    let topic = testkit::unique_name("data");
    create_topic(&topic, 3).await;
    let child = spawn_tail(
        &pool,
        &[
            "--data-topic",
            &topic,
            "tail",
            "--source",
            "kafka",
            "--device",
            "press-01",
            "--count",
            "2",
        ],
    );
    produce(
        &topic,
        &[
            ("furnace-01", frame("furnace-01", 1, &[850.0])),
            ("press-01", b"\x01not a frame".to_vec()),
            ("press-01", frame("press-01", 5, &[210.25])),
        ],
    )
    .await;
    let (code, out) = finish(child);
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines.iter().all(|l| !l.contains("furnace-01")), "{out}");
    let junk = lines
        .iter()
        .find(|l| l.contains("undecodable"))
        .expect(&out);
    assert!(
        junk.contains("press-01") && junk.contains("12 bytes"),
        "{junk}"
    );
    let reading = lines
        .iter()
        .find(|l| l.contains("pressure=210.25 bar ok"))
        .expect(&out);
    assert!(reading.contains("press-01 0707070707070707/5"), "{reading}");
}

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

/// `watch` in one refresh: the open alerts from PostgreSQL, the latest values from Redis
/// with their channel names, and each service that does not answer named as such.
#[sqlx::test(migrations = "../migrations")]
async fn watch_summarises_alerts_and_latest_values_and_names_what_is_down(pool: PgPool) {
    sqlx::query(
        "INSERT INTO alerts (device_id, channel_id, rule, severity, value, threshold, value_ts, message) \
         VALUES ('press-01', 0, 'high', 'critical', 290, 280, now(), 'pressure high')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let prefix = testkit::unique_name("iotctl");
    let mut redis = redis::Client::open(testkit::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("{prefix}:latest:press-01");
    let value = format!(
        r#"{{"ts":{},"v":212.5,"q":0,"boot":"0707070707070707","seq":7,"synced":true}}"#,
        service::clock::now_ms() - 1000
    );
    let _: () = redis.hset(&key, "0", value).await.unwrap();
    let dead_mqtt = format!("127.0.0.1:{}", testkit::free_port());
    let dead_bridge = format!("http://127.0.0.1:{}", testkit::free_port());

    let output = run(
        &pool,
        &[
            "--json",
            "--redis-prefix",
            &prefix,
            "--mqtt",
            &dead_mqtt,
            "--bridge-metrics",
            &dead_bridge,
            "watch",
            "--count",
            "1",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = json(&output);
    assert_eq!(summary["open_alerts"], serde_json::json!({"critical": 1}));
    assert_eq!(summary["newest_alerts"][0]["message"], "pressure high");
    let latest = summary["latest"].as_array().unwrap();
    assert_eq!(latest.len(), 1, "{latest:?}");
    assert_eq!(latest[0]["channel"], "pressure");
    assert_eq!(latest[0]["value"], 212.5);
    let down = summary["unavailable"].to_string();
    assert!(
        down.contains(&format!("bridge {dead_bridge}")) && down.contains("ingester http://"),
        "no bridge or ingester runs in this test, and each is named by its address: {down}"
    );
    let _: () = redis.del(&key).await.unwrap();
}
