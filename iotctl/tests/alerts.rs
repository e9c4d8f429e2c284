//! `iotctl alerts`: list, acknowledge and resolve against PostgreSQL, with each change
//! announced on Kafka and reflected in Redis.

mod support;

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use redis::AsyncCommands;
use serde_json::Value;
use sqlx::PgPool;

use support::{create_topic, json, kafka, run, stderr, stdout};

/// Every record of `topic` from the start: (key, value), until `expected` arrived or
/// 15 s passed.
/// The open-alerts hash in Redis under a test's prefix.
struct OpenAlerts {
    redis: redis::aio::MultiplexedConnection,
    key: String,
}

impl OpenAlerts {
    async fn of(prefix: &str) -> Self {
        let redis = redis::Client::open(testkit::redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let key = contracts::redis::RedisKeys::new(prefix).open_alerts();
        Self { redis, key }
    }

    async fn view(&mut self, id: i64) -> Option<Value> {
        let view: Option<String> = self.redis.hget(&self.key, id).await.unwrap();
        view.map(|text| serde_json::from_str(&text).unwrap())
    }

    async fn clear(&mut self) {
        let _: () = self.redis.del(&self.key).await.unwrap();
    }
}

/// Partitions of each test's private alerts topic.
const ALERT_PARTITIONS: i32 = 2;

/// Reads `topic` (created with `ALERT_PARTITIONS`) from its start by assignment: a
/// consumer group's rebalance would read a partition again, and the repeats would
/// count towards `expected`.
fn read_topic(topic: &str, expected: usize) -> Vec<(String, Value)> {
    let consumer: BaseConsumer = kafka()
        .set("group.id", testkit::unique_name("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..ALERT_PARTITIONS {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
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
    create_topic(&topic, ALERT_PARTITIONS).await;
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
    let mut open_alerts = OpenAlerts::of(&prefix).await;
    let view = open_alerts
        .view(id)
        .await
        .expect("the acknowledged alert in Redis");
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
    assert_eq!(
        open_alerts.view(id).await,
        None,
        "resolved alerts leave the open-alerts hash"
    );

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
    open_alerts.clear().await;
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
    create_topic(&topic, ALERT_PARTITIONS).await;
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
    let mut open_alerts = OpenAlerts::of(&prefix).await;
    let view = open_alerts
        .view(id)
        .await
        .expect("the acknowledged alert in Redis");
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
    assert_eq!(open_alerts.view(id).await, None);
    let records = read_topic(&topic, 2);
    assert_eq!(records.len(), 2, "{records:?}");
    for ((key, record), transition) in records.iter().zip(["acknowledged", "resolved"]) {
        assert_eq!(key, "press-01");
        assert_eq!(record["transition"], transition);
        assert_eq!(record["rule"], "data_loss");
        assert_eq!(record["channel_id"], Value::Null);
    }
}
