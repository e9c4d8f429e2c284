//! The console in a real browser (Debian's headless Chromium, driven over WebDriver by
//! fantoccini) against the real pipeline: frames in the agent's format published over
//! MQTT to the bridge's embedded broker, through Kafka, stored by the ingester in the
//! test's database and Redis, and shown by the console. Screenshots of every page at a
//! tablet's and a wall screen's size go to `target/console-screenshots/`.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use protocol::topic::{Topic, TopicKind};
use protocol::{BootId, DeviceId, Frame, Quality, Reading};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::json;
use sqlx::PgPool;
use testkit::ChildGuard;

use support::{config, create_topic, read_topic_until, start, PASSWORD, USER};

/// The bridge (embedded broker) and the ingester, in this process, on topics of their
/// own; the ingester writes the test's database and Redis under `prefix` and opens
/// alerts on `alerts_topic`.
struct Pipeline {
    mqtt: std::net::SocketAddr,
    bridge_http: std::net::SocketAddr,
    ingester_http: std::net::SocketAddr,
    dlq_topic: String,
    stop_bridge: tokio::sync::oneshot::Sender<()>,
    bridge: tokio::task::JoinHandle<anyhow::Result<bridge::stats::StatsSnapshot>>,
    stop_ingester: tokio::sync::oneshot::Sender<()>,
    ingester: tokio::task::JoinHandle<anyhow::Result<cloud_ingester::stats::IngestSnapshot>>,
}

impl Pipeline {
    async fn start(pool: &PgPool, prefix: &str, alerts_topic: &str) -> Self {
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
        let mut ingester = cloud_ingester::config::IngesterConfig {
            id: "console-test".to_owned(),
            ..Default::default()
        };
        ingester.kafka.brokers = testkit::kafka_brokers();
        ingester.kafka.group = testkit::unique_name("ingest");
        ingester.kafka.topic = config.kafka.topic.clone();
        ingester.kafka.dlq_topic = config.kafka.dlq_topic.clone();
        ingester.kafka.alerts_topic = alerts_topic.to_owned();
        ingester.kafka.confirm_topic = String::new();
        ingester.kafka.metrics_topic = String::new();
        ingester.redis.url = testkit::redis_url();
        ingester.redis.prefix = prefix.to_owned();
        ingester.http.listen = ([127, 0, 0, 1], 0).into();
        let dlq_topic = config.kafka.dlq_topic.clone();
        let started = bridge::Bridge::start(config).await.expect("bridge starts");
        let mqtt = started.mqtt_addr().unwrap();
        let bridge_http = started.http_addr();
        let readiness = started.readiness();
        let (stop_bridge, stopped) = tokio::sync::oneshot::channel::<()>();
        let bridge = tokio::spawn(started.run_until(async {
            let _ = stopped.await;
        }));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !readiness.ready() {
            assert!(Instant::now() < deadline, "the bridge is not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let started = cloud_ingester::Ingester::start_on(ingester, pool.clone())
            .await
            .expect("ingester starts");
        let ingester_http = started.http_addr();
        let (stop_ingester, stopped) = tokio::sync::oneshot::channel::<()>();
        let ingester = tokio::spawn(started.run_until(async {
            let _ = stopped.await;
        }));
        Self {
            mqtt,
            bridge_http,
            ingester_http,
            dlq_topic,
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

/// A device as the agent publishes it: one boot, sequence numbers counting up.
struct Agent {
    client: AsyncClient,
    boot: BootId,
    next_seq: u64,
}

impl Agent {
    fn connect(mqtt: std::net::SocketAddr) -> Self {
        let mut options = MqttOptions::new(
            testkit::unique_name("agent"),
            mqtt.ip().to_string(),
            mqtt.port(),
        );
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut events) = AsyncClient::new(options, 100);
        tokio::spawn(async move { while events.poll().await.is_ok() {} });
        Self {
            client,
            boot: BootId(rand::random()),
            next_seq: 0,
        }
    }

    /// Publishes the gateway's retained status, as the agent does every 10 s.
    async fn report_health(&self, gateway: &str, readings: u64, uptime_s: u64) {
        let status = json!({
            "state": "online",
            "kind": contracts::status::AGENT_KIND,
            "health": { "connected": true, "readings": readings, "uptime_s": uptime_s,
                        "queue_records": 3, "awaiting_confirm": 2 },
        });
        let topic = Topic::new("plant", "plant1", "line-a", gateway, TopicKind::Status)
            .unwrap()
            .to_string();
        self.client
            .publish(topic, QoS::AtLeastOnce, true, status.to_string())
            .await
            .unwrap();
    }

    /// Publishes one frame of `device`: (channel, value) readings `period_ms` apart,
    /// ending now.
    async fn publish(
        &mut self,
        site: &str,
        line: &str,
        device: &str,
        readings: &[(u8, f32)],
        period_ms: u32,
    ) {
        let span = u64::from(period_ms) * readings.len() as u64;
        let base = service::clock::now_ms() - span;
        let mut frame = Frame::new(
            DeviceId::new(device).unwrap(),
            self.boot,
            self.next_seq,
            base,
        );
        frame.clock_synced = true;
        for (i, (channel, value)) in readings.iter().enumerate() {
            frame
                .readings
                .push(Reading {
                    channel: *channel,
                    offset_ms: i as u32 * period_ms,
                    value: *value,
                    quality: Quality::empty(),
                })
                .unwrap();
        }
        self.next_seq += readings.len() as u64;
        let mut buf = [0u8; protocol::MAX_FRAME_LEN];
        let bytes = frame.encode(&mut buf).unwrap().to_vec();
        let topic = Topic::new("plant", site, line, device, TopicKind::Telemetry)
            .unwrap()
            .to_string();
        self.client
            .publish(topic, QoS::AtLeastOnce, false, bytes)
            .await
            .unwrap();
    }
}

/// ChromeDriver on a free port, and a headless Chromium session through it, with a
/// profile directory that goes with the test.
async fn browser() -> (ChildGuard, tempfile::TempDir, Client) {
    let port = testkit::free_port();
    let driver = ChildGuard::spawn(
        "chromedriver",
        Command::new("chromedriver").arg(format!("--port={port}")),
    );
    let profile = tempfile::tempdir().unwrap();
    let capabilities = json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage",
                format!("--user-data-dir={}", profile.path().display()),
            ]
        }
    });
    let capabilities = capabilities.as_object().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ClientBuilder::native()
            .capabilities(capabilities.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => return (driver, profile, client),
            Err(_) if Instant::now() < deadline => {
                // ChromeDriver is still starting.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no browser session through chromedriver: {e}"),
        }
    }
}

/// Runs `script` in the page until it returns true, or `within` passes.
async fn wait_for(browser: &Client, script: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let value = browser.execute(script, vec![]).await.unwrap();
        if value == json!(true) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The text of the element with `id` (a tile `furnace-01/0`, a device `furnace-01`).
fn text_of(id: &str) -> String {
    format!("return (document.getElementById('{id}') || {{}}).innerText || ''")
}

#[sqlx::test(migrations = "../migrations")]
async fn the_console_shows_the_plant_live_and_an_operator_acknowledges_a_breach(pool: PgPool) {
    let mut config = config(&pool).await;
    create_topic(&config.kafka.alerts_topic).await;
    let pipeline = Pipeline::start(&pool, &config.redis.prefix, &config.kafka.alerts_topic).await;
    config.pipeline.bridge_metrics = format!("http://{}", pipeline.bridge_http);
    config.pipeline.ingester_metrics = format!("http://{}", pipeline.ingester_http);
    config.pipeline.mqtt_host = pipeline.mqtt.ip().to_string();
    config.pipeline.mqtt_port = pipeline.mqtt.port();
    config.pipeline.dlq_topic = pipeline.dlq_topic.clone();
    config.pipeline.interval = Duration::from_millis(500);
    let started = start(config).await;
    let (_driver, _profile, browser) = browser().await;
    browser.set_window_size(1920, 1080).await.unwrap();

    // Every seed channel at its nominal value (its range's middle if it has none).
    let channels: Vec<(String, String, String, i16, f64)> = sqlx::query_as(
        "SELECT d.site, d.line, d.device_id, c.channel_id, \
                coalesce(c.nominal, (c.range_min + c.range_max) / 2) \
           FROM devices d JOIN device_channels c USING (device_id) WHERE d.enabled \
          ORDER BY d.device_id, c.channel_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut agent = Agent::connect(pipeline.mqtt);
    let mut devices: Vec<&str> = channels.iter().map(|c| c.2.as_str()).collect();
    devices.dedup();
    assert_eq!(devices.len(), 5, "the five seed devices");
    for device in &devices {
        let of_device: Vec<_> = channels.iter().filter(|c| c.2 == *device).collect();
        let readings: Vec<(u8, f32)> = of_device.iter().map(|c| (c.3 as u8, c.4 as f32)).collect();
        agent
            .publish(&of_device[0].0, &of_device[0].1, device, &readings, 1)
            .await;
    }

    browser.goto(&format!("{}/", started.base)).await.unwrap();
    browser
        .execute("window.stillTheSamePage = true; return true", vec![])
        .await
        .unwrap();
    let all_shown = channels
        .iter()
        .map(|c| {
            format!(
                "(document.getElementById('{}/{}') || {{ querySelector: () => ({{ textContent: '—' }}) }}).querySelector('i').textContent !== '—'",
                c.2, c.3
            )
        })
        .collect::<Vec<_>>()
        .join(" && ");
    assert!(
        wait_for(
            &browser,
            &format!("return {all_shown}"),
            Duration::from_secs(60)
        )
        .await,
        "every seed channel shows a value"
    );
    let furnace = browser
        .execute(&text_of("furnace-01/0"), vec![])
        .await
        .unwrap();
    let furnace = furnace.as_str().unwrap();
    assert!(
        furnace.contains("850") && furnace.contains("°C"),
        "{furnace}"
    );
    assert!(furnace.contains("normal"), "{furnace}");
    for device in &devices {
        let card = browser.execute(&text_of(device), vec![]).await.unwrap();
        let card = card.as_str().unwrap();
        assert!(card.contains("online · last seen"), "{device}: {card}");
    }

    // A breach through the front door: 12 s around 980 °C (critical above 950 °C, for
    // at least 10 s; varying, or it would be a stuck sensor too), published while the
    // page is open.
    let breach: Vec<(u8, f32)> = (0..13).map(|i| (0, 980.0 + i as f32 * 0.5)).collect();
    let published = Instant::now();
    agent
        .publish("plant1", "line-a", "furnace-01", &breach, 1000)
        .await;
    assert!(
        wait_for(
            &browser,
            "var t = document.getElementById('furnace-01/0'); \
             return t.classList.contains('critical') && t.innerText.includes('critical') \
                    && t.innerText.includes('986')",
            Duration::from_secs(60),
        )
        .await,
        "the furnace tile turns critical"
    );
    let to_critical = published.elapsed();
    assert_eq!(
        browser
            .execute("return window.stillTheSamePage === true", vec![])
            .await
            .unwrap(),
        json!(true),
        "without a reload"
    );
    let overview = browser.screenshot().await.unwrap();
    std::fs::write(
        screenshots().join("overview-breach-1920x1080.png"),
        overview,
    )
    .unwrap();

    // The alerts page, open before the alert shows up in it? The alert may already be
    // there: it is the ingester's first batch. Open it and wait for the row.
    browser
        .goto(&format!("{}/alerts", started.base))
        .await
        .unwrap();
    assert!(
        wait_for(
            &browser,
            "return Array.from(document.querySelectorAll('tr[data-alert]')).some(r => \
             r.innerText.includes('furnace-01') && r.innerText.includes('critical') && \
             r.dataset.state === 'open')",
            Duration::from_secs(60),
        )
        .await,
        "the alert is listed as open"
    );
    let alert_id: i64 = sqlx::query_scalar(
        "SELECT alert_id FROM alerts WHERE device_id = 'furnace-01' AND channel_id = 0 \
            AND severity = 'critical' AND state = 'open'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();

    // Log in through the form, then acknowledge in the page.
    browser
        .goto(&format!("{}/login", started.base))
        .await
        .unwrap();
    browser
        .find(Locator::Css("input[name=name]"))
        .await
        .unwrap()
        .send_keys(USER)
        .await
        .unwrap();
    browser
        .find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys(PASSWORD)
        .await
        .unwrap();
    browser
        .find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(
        wait_for(
            &browser,
            "return location.pathname === '/alerts'",
            Duration::from_secs(10)
        )
        .await,
        "a login lands on the alerts page"
    );
    let row = format!("tr[data-alert=\"{alert_id}\"]");
    browser
        .find(Locator::Css(&format!("{row} input[name=note]")))
        .await
        .unwrap()
        .send_keys("burner checked")
        .await
        .unwrap();
    browser
        .find(Locator::Css(&format!("{row} button[value=ack]")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(
        wait_for(
            &browser,
            &format!("var r = document.querySelector('{row}'); return !!r && r.dataset.state === 'acknowledged'"),
            Duration::from_secs(10),
        )
        .await,
        "the row shows the acknowledgement"
    );
    let (state, by): (String, Option<String>) =
        sqlx::query_as("SELECT state::text, acknowledged_by FROM alerts WHERE alert_id = $1")
            .bind(alert_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), by.as_deref()),
        ("acknowledged", Some(USER))
    );
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM system_events WHERE service = 'console' \
            AND kind = 'alert_acknowledged' AND details->>'note' = 'burner checked' \
            AND (details->>'alert_id')::bigint = $1",
    )
    .bind(alert_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(events, 1, "the system_events row");
    let topic = started.alerts_topic.clone();
    let is_ours = move |(key, value): &(String, serde_json::Value)| {
        key == "furnace-01"
            && value["transition"] == "acknowledged"
            && value["alert_id"] == alert_id
    };
    // The ingester's own records share the topic: read until ours came.
    let records = tokio::task::spawn_blocking(move || {
        read_topic_until(&topic, |records| records.iter().any(is_ours))
    })
    .await
    .unwrap();
    let acknowledged = records.iter().any(is_ours);
    assert!(acknowledged, "the Kafka alerts record: {records:?}");

    // An alert that opens while the alerts page is open appears in it without a reload:
    // the press past its critical 280 bar for more than its 1 s.
    browser
        .goto(&format!("{}/alerts", started.base))
        .await
        .unwrap();
    browser
        .execute("window.stillTheSamePage = true; return true", vec![])
        .await
        .unwrap();
    let press: Vec<(u8, f32)> = (0..4).map(|i| (0, 300.0 + i as f32)).collect();
    agent
        .publish("plant1", "line-b", "press-01", &press, 1000)
        .await;
    assert!(
        wait_for(
            &browser,
            "return Array.from(document.querySelectorAll('tr[data-alert]')).some(r => \
             r.innerText.includes('press-01') && r.innerText.includes('critical') && \
             r.dataset.state === 'open') && window.stillTheSamePage === true",
            Duration::from_secs(60),
        )
        .await,
        "the press's alert appears in the open alerts page, without a reload"
    );

    // The pipeline page: the hops' figures, a gateway's health, a dead letter decoded.
    agent.report_health("gw-test-01", 1_000, 10).await;
    agent.report_health("gw-test-01", 3_000, 20).await;
    agent
        .publish("plant1", "line-a", "ghost-01", &[(0, 1.0)], 1)
        .await;
    browser
        .goto(&format!("{}/pipeline", started.base))
        .await
        .unwrap();
    let shown = |script: &'static str| {
        let browser = browser.clone();
        async move {
            // The page does not refresh itself: look again until it shows.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let found = browser.execute(script, vec![]).await.unwrap() == json!(true);
                if found || Instant::now() > deadline {
                    return found;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                browser.refresh().await.unwrap();
            }
        }
    };
    assert!(
        shown(
            "var t = document.getElementById('dead-letters'); \
             return !!t && t.innerText.includes('ghost-01') && t.innerText.includes('unknown-device')"
        )
        .await,
        "the dead letter is listed, decoded"
    );
    assert!(
        shown(
            "var t = document.getElementById('gateways'); \
             return !!t && t.innerText.includes('gw-test-01') && t.innerText.includes('connected')"
        )
        .await,
        "the gateway's health is listed"
    );
    let hops = browser
        .execute("return document.getElementById('hops').innerText", vec![])
        .await
        .unwrap();
    let hops = hops.as_str().unwrap();
    assert!(
        hops.contains("unknown-device"),
        "dead letters by reason: {hops}"
    );
    assert!(
        hops.contains("200/s readings sampled"),
        "(3000 - 1000) readings over (20 - 10) s: {hops}"
    );
    assert!(
        !hops.contains("no answer"),
        "the bridge and the ingester answer: {hops}"
    );

    // Nothing overflows sideways on a tablet or a wall screen; a picture of each page.
    let pages = [
        ("overview", "/".to_owned()),
        ("device", "/devices/furnace-01?range=15m".to_owned()),
        ("alerts", "/alerts?state=all".to_owned()),
        ("pipeline", "/pipeline".to_owned()),
    ];
    for (width, height) in [(1024, 768), (1920, 1080)] {
        browser.set_window_size(width, height).await.unwrap();
        for (name, path) in &pages {
            browser
                .goto(&format!("{}{path}", started.base))
                .await
                .unwrap();
            let overflow = browser
                .execute(
                    "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
                    vec![],
                )
                .await
                .unwrap();
            assert_eq!(
                overflow,
                json!(0),
                "{name} at {width}×{height} overflows sideways"
            );
            let png = browser.screenshot().await.unwrap();
            std::fs::write(
                screenshots().join(format!("{name}-{width}x{height}.png")),
                png,
            )
            .unwrap();
        }
    }
    eprintln!(
        "breach published → tile critical in the open page: {:.1} s (screenshots in {})",
        to_critical.as_secs_f64(),
        screenshots().display()
    );
    browser.close().await.unwrap();
    started.console.stop().await;
    pipeline.stop().await;
}
