//! The console's pages and live stream against the stack's real PostgreSQL, Redis and
//! Kafka, over HTTP.

mod support;

use std::time::Duration;

use sqlx::PgPool;
use support::{client, config, element, get, get_until, put_latest, put_latest_at, start};

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
            page.contains(&format!("<section class=\"device\" id=\"{device}\"")),
            "{device} is on the overview"
        );
    }
    let furnace = element(&page, "furnace-01/0");
    assert!(furnace.contains("<i>851.25</i> °C"), "{furnace}");
    assert!(
        furnace.contains("class=\"tile normal\"") && furnace.contains("<em>normal</em>"),
        "{furnace}"
    );
    assert!(element(&page, "furnace-01").contains("online · last seen"));
    // A device that never reported is offline, in words.
    let press = element(&page, "press-01");
    assert!(
        press.contains("<span class=\"off\">offline</span>"),
        "{press}"
    );

    // Past the critical threshold (950 °C): the tile says so, in a word and a class.
    put_latest(&started.prefix, "furnace-01", 0, 980.5).await;
    let page = get_until(
        &format!("{}/", started.base),
        Duration::from_secs(10),
        |p| p.contains("980.5"),
    )
    .await;
    let furnace = element(&page, "furnace-01/0");
    assert!(
        furnace.contains("class=\"tile critical\"") && furnace.contains("<em>critical</em>"),
        "{furnace}"
    );
    started.console.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn the_event_stream_sends_the_whole_view_then_only_what_changed(pool: PgPool) {
    let started = start(config(&pool).await).await;
    put_latest(&started.prefix, "press-01", 0, 120.5).await;
    // The value is in the live view before the stream opens: its first event has it.
    get_until(
        &format!("{}/", started.base),
        Duration::from_secs(10),
        |p| p.contains("120.5"),
    )
    .await;
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
                    .any(|t| t["i"] == "press-01/0" && t["v"] == "120.5");
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
    assert_eq!(change[0]["i"], "press-01/0");
    assert_eq!(change[0]["v"], "131.75");
    assert_eq!(updates[1]["live"], true);
    drop(events);
    started.console.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_requests_get_a_clear_message_and_unknown_devices_a_404(pool: PgPool) {
    let started = start(config(&pool).await).await;
    let get = |path: &str| {
        let url = format!("{}{path}", started.base);
        async move {
            let answer = get(&url, None).await;
            (answer.status, answer.body)
        }
    };
    let (status, body) = get("/devices/no-such-machine").await;
    assert_eq!(status, 404);
    assert!(
        body.contains("there is no device &quot;no-such-machine&quot;"),
        "{body}"
    );
    let (status, body) = get("/devices/no%20such").await;
    assert_eq!(status, 400);
    assert!(body.contains("device &quot;no such&quot;"), "{body}");
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

/// The chart of channel 0 in a device page: its point count and its markup.
fn chart_zero(page: &str) -> (usize, &str) {
    let chart = &page[page.find("data-channel=\"0\"").unwrap()..];
    let points = chart["data-channel=\"0\" data-points=\"".len()..]
        .split('"')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (points, &chart[..chart.find("</section>").unwrap()])
}

#[sqlx::test(migrations = "../migrations")]
async fn a_day_of_a_10_hz_channel_is_charted_in_at_most_2000_points(pool: PgPool) {
    // 24 h of the spindle's 10 Hz vibration: 864 000 readings, and their hourly
    // statistics as the ingester keeps them.
    sqlx::query(
        "INSERT INTO sensor_readings (device_id, boot_id, seq, ts, value, channel_id, clock_synced) \
         SELECT 'cnc-spindle-01', 1, i, now() - interval '24 hours' + i * interval '100 ms', \
                2.8 + sin(i / 3000.0), 0, true \
           FROM generate_series(0, 863999) AS i",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO device_stats_hourly (device_id, channel_id, hour, count, min, max, sum, sum_sq) \
         SELECT device_id, channel_id, to_timestamp(floor(extract(epoch FROM ts) / 3600) * 3600), \
                count(*), min(value), max(value), sum(value), sum(value::float8 * value) \
           FROM sensor_readings GROUP BY 1, 2, 3",
    )
    .execute(&pool)
    .await
    .unwrap();
    let started = start(config(&pool).await).await;
    let page = |range: &'static str| {
        let url = format!("{}/devices/cnc-spindle-01?range={range}", started.base);
        async move {
            let answer = get(&url, None).await;
            assert_eq!(answer.status, 200);
            answer.body
        }
    };
    let day = page("24h").await;
    let (points, chart) = chart_zero(&day);
    assert!(
        chart.contains("hourly statistics"),
        "864 000 readings are too many to scan: {chart}"
    );
    assert!(
        (48..=50).contains(&points),
        "24 or 25 hours of min and max: {points} points"
    );
    assert!(chart.contains("polygon"), "the band is drawn");

    let hour = page("1h").await;
    let (points, chart) = chart_zero(&hour);
    assert!(chart.contains("readings, min–max band"), "{chart}");
    assert!(
        (1900..=2000).contains(&points),
        "36 000 readings in about 1 000 buckets of min and max: {points} points"
    );
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
        page.contains("id=\"console:live-paused\" role=\"status\" hidden"),
        "no banner while Redis answers"
    );

    redis.stop();
    let page = get_until(&overview, Duration::from_secs(15), |p| {
        p.contains("id=\"console:live-paused\" role=\"status\">")
    })
    .await;
    assert!(
        page.contains("id=\"console:live-paused\" role=\"status\">Live view paused"),
        "the banner shows"
    );
    assert!(page.contains("860.5"), "the last known value stays");
    let ready = get(&format!("{}/readyz", started.base), None).await;
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("redis down"));
    let page = get(&format!("{}/alerts", started.base), None).await;
    assert_eq!(
        page.status, 200,
        "alerts come from PostgreSQL and still render"
    );

    redis.restart();
    put(871.25).await;
    let page = get_until(&overview, Duration::from_secs(15), |p| p.contains("871.25")).await;
    assert!(
        page.contains("871.25"),
        "live values resume without a restart"
    );
    assert!(page.contains("id=\"console:live-paused\" role=\"status\" hidden"));
    started.console.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn sparklines_keep_the_last_value_of_each_half_minute(pool: PgPool) {
    let started = start(config(&pool).await).await;
    let step = 30_000;
    let now = service::clock::now_ms_i64();
    let slot = now / step;
    let sparks = format!("{}/sparks", started.base);
    // Two readings in one slot (the later one stays), a slot with none, then one more.
    for (ts, value) in [
        ((slot - 3) * step + 1_000, 840.0),
        ((slot - 3) * step + 2_000, 845.5),
        (slot * step + 500, 851.25),
    ] {
        put_latest_at(&started.prefix, "furnace-01", 0, value, ts).await;
        let expected = format!("{value}");
        get_until(&sparks, Duration::from_secs(10), |body| {
            body.contains(&expected)
        })
        .await;
    }
    let body = get(&sparks, None).await.body;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["step"], step);
    assert_eq!(
        json["sparks"]["furnace-01/0"],
        serde_json::json!([slot - 3, [845.5, null, null, 851.25]]),
        "{body}"
    );
    started.console.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn without_postgresql_the_overview_shows_redis_and_says_history_unavailable(pool: PgPool) {
    let mut postgres = testkit::Postgres::start();
    let own = sqlx::PgPool::connect(&postgres.url("postgres"))
        .await
        .unwrap();
    sqlx::migrate!("../migrations").run(&own).await.unwrap();
    own.close().await;
    let mut config = config(&pool).await;
    config.database.url = postgres.url("postgres");
    let prefix = config.redis.prefix.clone();
    let started = start(config).await;
    put_latest(&prefix, "furnace-01", 0, 861.5).await;
    let overview = format!("{}/", started.base);
    let page = get_until(&overview, Duration::from_secs(10), |p| p.contains("861.5")).await;
    assert!(
        page.contains("Heat-treatment furnace 1"),
        "names from PostgreSQL"
    );
    assert!(page.contains("id=\"console:history-unavailable\" role=\"status\" hidden"));

    // PostgreSQL goes away: live values go on, the banner says what is missing.
    postgres.stop();
    put_latest(&prefix, "furnace-01", 0, 872.25).await;
    let page = get_until(&overview, Duration::from_secs(20), |p| {
        p.contains("872.25") && p.contains("id=\"console:history-unavailable\" role=\"status\">")
    })
    .await;
    assert!(page.contains("872.25"), "live values go on");
    assert!(
        page.contains("id=\"console:history-unavailable\" role=\"status\">History unavailable"),
        "the banner shows"
    );
    let device = get(&format!("{}/devices/furnace-01", started.base), None).await;
    assert_eq!(device.status, 503);
    let body = device.body;
    assert!(body.contains("History unavailable"), "{body}");
    assert!(
        !body.contains("error returned from database") && !body.contains("Connection refused"),
        "no internals: {body}"
    );
    assert_eq!(
        get(&format!("{}/readyz", started.base), None).await.status,
        503
    );
    started.console.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_console_started_without_postgresql_finds_the_devices_in_redis(pool: PgPool) {
    let mut config = config(&pool).await;
    config.database.url = format!("postgres://nobody@127.0.0.1:{}/none", testkit::free_port());
    let prefix = config.redis.prefix.clone();
    put_latest(&prefix, "press-01", 0, 205.5).await;
    let started = start(config).await;
    let page = get_until(
        &format!("{}/", started.base),
        Duration::from_secs(15),
        |p| p.contains("205.5"),
    )
    .await;
    let tile = element(&page, "press-01/0");
    assert!(tile.contains("<i>205.5</i>"), "{tile}");
    assert!(page.contains("id=\"console:history-unavailable\" role=\"status\">History unavailable"));
    let alerts = get(&format!("{}/alerts", started.base), None).await;
    assert_eq!(alerts.status, 503, "history pages say so, and do not crash");
    started.console.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_device_its_agent_reports_offline_says_so(pool: PgPool) {
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    let (host, port) = testkit::mqtt_host_port();
    let prefix = testkit::unique_name("plant");
    let topic = format!("{prefix}/plant1/line-b/press-01/status");
    let (client, mut events) = AsyncClient::new(
        MqttOptions::new(testkit::unique_name("status"), host.clone(), port),
        10,
    );
    let pump = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    // As the agent leaves it after a clean stop.
    client
        .publish(
            &topic,
            QoS::AtLeastOnce,
            true,
            r#"{"state":"offline","gateway":"gw-1","reason":"shutdown"}"#,
        )
        .await
        .unwrap();
    let mut config = config(&pool).await;
    config.pipeline.mqtt_host = host;
    config.pipeline.mqtt_port = port;
    config.pipeline.topic_prefix = prefix;
    let started = start(config).await;
    let page = get_until(
        &format!("{}/", started.base),
        Duration::from_secs(15),
        |p| p.contains("offline · agent: offline"),
    )
    .await;
    let press = element(&page, "press-01");
    assert!(
        press.contains("<span class=\"off\">offline · agent: offline</span>"),
        "{press}"
    );
    let furnace = element(&page, "furnace-01");
    assert!(
        furnace.contains("<span class=\"off\">offline</span>"),
        "unheard: {furnace}"
    );
    // The retained message goes with the test.
    client
        .publish(&topic, QoS::AtLeastOnce, true, Vec::<u8>::new())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    pump.abort();
    started.console.stop().await;
}
