//! The commands that report what the pipeline stored: `stats`, `completeness`, `latest`
//! and `devices`, and `watch`'s one-screen summary.

mod support;

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::Value;
use sqlx::PgPool;

use support::{json, run, stderr, stdout};

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
