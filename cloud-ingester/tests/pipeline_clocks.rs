//! The ingest loop's live view, against the stack's real Kafka-compatible broker, Redis
//! and a throw-away PostgreSQL database: Redis gets the newest values after the commit and
//! its outage blocks nothing, and no device clock (a reading dated a day ahead, an old
//! boot's backlog) freezes or moves back Redis or the alerts.

mod support;

use std::time::{Duration, Instant};

use cloud_ingester::redis_sink::RedisSink;
use service::clock::now_ms;
use sqlx::PgPool;
use support::ingester::{count_rows, start_in_group, start_with_redis};
use support::{create_topics, frame, produce};

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
