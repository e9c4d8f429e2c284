//! The console's pages and live stream against the stack's real PostgreSQL, Redis and
//! Kafka, over HTTP.

mod support;

use std::time::Duration;

use sqlx::PgPool;
use support::{client, config, get_until, put_latest, start, tile};

#[sqlx::test(migrations = "../migrations")]
async fn the_overview_shows_every_seed_device_with_values_units_and_states(pool: PgPool) {
    let started = start(config(&pool).await).await;
    put_latest(&started.prefix, "furnace-01", 0, 851.25).await;
    let page = get_until(
        &format!("{}/", started.base),
        Duration::from_secs(10),
        |p| p.contains("851.25"),
    )
    .await;
    for device in [
        "furnace-01",
        "cnc-spindle-01",
        "press-01",
        "paint-booth-01",
        "compressor-01",
    ] {
        assert!(
            page.contains(&format!("data-device=\"{device}\"")),
            "{device} is on the overview"
        );
    }
    let furnace = tile(&page, "furnace-01/0");
    assert!(furnace.contains("851.25"), "{furnace}");
    assert!(furnace.contains("°C"), "{furnace}");
    assert!(
        furnace.contains("level-normal") && furnace.contains(">normal<"),
        "{furnace}"
    );
    assert!(page.contains("data-presence=\"furnace-01\""));
    // A device that never reported is offline, in words.
    let press = &page[page.find("data-presence=\"press-01\"").unwrap()..];
    assert!(press[..200].contains("offline"), "{}", &press[..200]);

    // Past the critical threshold (950 °C): the tile says so, in a word and a class.
    put_latest(&started.prefix, "furnace-01", 0, 980.5).await;
    let page = get_until(
        &format!("{}/", started.base),
        Duration::from_secs(10),
        |p| p.contains("980.5"),
    )
    .await;
    let furnace = tile(&page, "furnace-01/0");
    assert!(
        furnace.contains("level-critical") && furnace.contains(">critical<"),
        "{furnace}"
    );
    started.console.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn the_event_stream_sends_the_whole_view_then_only_what_changed(pool: PgPool) {
    let started = start(config(&pool).await).await;
    put_latest(&started.prefix, "press-01", 0, 120.5).await;
    let mut events = client()
        .get(format!("{}/events", started.base))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let mut seen = String::new();
    let mut updates = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut changed = false;
    while tokio::time::Instant::now() < deadline && updates.len() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(1), events.chunk()).await;
        if let Ok(Ok(Some(bytes))) = chunk {
            seen.push_str(&String::from_utf8_lossy(&bytes));
        }
        while let Some(end) = seen.find("\n\n") {
            let event: String = seen.drain(..end + 2).collect();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                let update: serde_json::Value = serde_json::from_str(data).unwrap();
                let mentions_press = update["tiles"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t["id"] == "press-01/0" && t["value"] == "120.5");
                if updates.is_empty() && !mentions_press {
                    continue; // a view from before the value arrived
                }
                updates.push(update);
            }
        }
        if updates.len() == 1 && !changed {
            put_latest(&started.prefix, "press-01", 0, 131.75).await;
            changed = true;
        }
    }
    assert_eq!(updates.len(), 2, "the whole view, then a change");
    let whole = updates[0]["tiles"].as_array().unwrap().len();
    assert!(whole >= 8, "the first update has every tile, got {whole}");
    let change = updates[1]["tiles"].as_array().unwrap();
    assert_eq!(change.len(), 1, "only the changed tile: {change:?}");
    assert_eq!(change[0]["id"], "press-01/0");
    assert_eq!(change[0]["value"], "131.75");
    assert_eq!(updates[1]["live"], true);
    started.console.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_requests_get_a_clear_message_and_unknown_devices_a_404(pool: PgPool) {
    let started = start(config(&pool).await).await;
    let get = |path: &str| {
        let url = format!("{}{path}", started.base);
        async move {
            let response = client().get(url).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, body) = get("/devices/no-such-machine").await;
    assert_eq!(status, 404);
    assert!(
        body.contains("there is no device &quot;no-such-machine&quot;"),
        "{body}"
    );
    let (status, body) = get("/devices/furnace-01?range=2h").await;
    assert_eq!(status, 400);
    assert!(body.contains("not one of 15m, 1h, 24h, 7d"), "{body}");
    let (status, body) = get("/alerts?severity=urgent").await;
    assert_eq!(status, 400);
    assert!(body.contains("is not warning or critical"), "{body}");
    let (status, body) = get("/alerts?since=yesterday").await;
    assert_eq!(status, 400);
    assert!(body.contains("is not a duration"), "{body}");
    let (status, body) = get("/alerts?device=../etc").await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = get("/devices/furnace-01?range=7d").await;
    assert_eq!(status, 200);
    started.console.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_day_of_a_10_hz_channel_is_charted_in_at_most_2000_points(pool: PgPool) {
    // 24 h at 10 Hz: 864 000 readings of press-01's pressure.
    sqlx::query(
        "INSERT INTO sensor_readings (device_id, boot_id, seq, ts, value, channel_id, clock_synced) \
         SELECT 'press-01', 1, i, now() - interval '24 hours' + i * interval '100 ms', \
                150 + 20 * sin(i / 3000.0), 0, true \
           FROM generate_series(0, 863999) AS i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let started = start(config(&pool).await).await;
    let response = client()
        .get(format!("{}/devices/press-01?range=24h", started.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let page = response.text().await.unwrap();
    let chart = &page[page.find("data-channel=\"0\"").unwrap()..];
    let points: usize = chart["data-channel=\"0\" data-points=\"".len()..]
        .split('"')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1900..=2000).contains(&points),
        "a day is about 1 000 buckets of min and max: {points} points"
    );
    assert!(chart.contains("polygon"), "the band is drawn");
    started.console.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_bad_configuration_exits_2_naming_the_key(_pool: PgPool) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_console"))
        .arg("--check-config")
        .env("DATABASE_URL", testkit::database_url())
        .env("REDIS_URL", testkit::redis_url())
        .env("CONSOLE_LIVE__INTERVAL", "1ms")
        .env("CONSOLE_ACCESS__VIEWING", "login")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("live.interval: between 50 ms and 10 s"),
        "{stderr}"
    );
    assert!(
        stderr.contains("access.viewing: \"login\" needs at least one entry"),
        "{stderr}"
    );

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_console"))
        .arg("--check-config")
        .env("DATABASE_URL", testkit::database_url())
        .env("REDIS_URL", testkit::redis_url())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !stdout.contains(":telemetry@"),
        "the password is hidden: {stdout}"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn without_redis_the_pages_say_live_view_paused_and_resume_by_themselves(pool: PgPool) {
    let mut redis = testkit::Redis::start();
    let mut config = config(&pool).await;
    config.redis.url = redis.url();
    let prefix = config.redis.prefix.clone();
    let redis_url = redis.url();
    let started = start(config).await;
    let put = |value: f32| {
        let url = redis_url.clone();
        let prefix = prefix.clone();
        async move {
            let keys = contracts::redis::RedisKeys::new(&prefix);
            let mut connection = redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let latest = contracts::redis::LatestValue {
                ts: service::clock::now_ms_i64(),
                v: Some(value),
                q: 0,
                boot: "00000000000000aa".into(),
                seq: 1,
                synced: true,
                boot_seen_us: Some(1),
            };
            let _: () = redis::AsyncCommands::hset(
                &mut connection,
                keys.latest("furnace-01"),
                0,
                serde_json::to_string(&latest).unwrap(),
            )
            .await
            .unwrap();
        }
    };
    put(860.5).await;
    let overview = format!("{}/", started.base);
    let page = get_until(&overview, Duration::from_secs(10), |p| p.contains("860.5")).await;
    assert!(
        page.contains("id=\"live-paused\" role=\"status\" hidden"),
        "no banner while Redis answers"
    );

    redis.stop();
    let page = get_until(&overview, Duration::from_secs(15), |p| {
        p.contains("id=\"live-paused\" role=\"status\">")
    })
    .await;
    assert!(
        page.contains("id=\"live-paused\" role=\"status\">Live view paused"),
        "the banner shows"
    );
    assert!(page.contains("860.5"), "the last known value stays");
    let ready = client()
        .get(format!("{}/readyz", started.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("redis down"));
    let page = client()
        .get(format!("{}/alerts", started.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        page.status(),
        200,
        "alerts come from PostgreSQL and still render"
    );

    redis.restart();
    put(871.25).await;
    let page = get_until(&overview, Duration::from_secs(15), |p| p.contains("871.25")).await;
    assert!(
        page.contains("871.25"),
        "live values resume without a restart"
    );
    assert!(page.contains("id=\"live-paused\" role=\"status\" hidden"));
    started.console.stop().await;
}
