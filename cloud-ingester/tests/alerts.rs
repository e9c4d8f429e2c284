//! The alert rules end to end. The edge agent's own simulator injects each kind of
//! anomaly (spike, drift, stuck, dropout) into seed channels in device time; the frames go
//! through the stack's Kafka-compatible broker into the pipeline; the alerts that result
//! in PostgreSQL, on the Kafka alerts topic and in Redis are checked against the
//! injected ground truth: every anomaly caught once, nothing raised outside them, the
//! state kept across a restart, and a replay raising nothing again. Then the device-level
//! rule, `data_loss`: a hole in a device's sequence numbers that outlasts the window
//! opens it, the resend that fills the hole resolves it.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cloud_ingester::alerts::rules::RuleBook;
use cloud_ingester::alerts::AlertEngine;
use cloud_ingester::config::AlertsConfig;
use cloud_ingester::redis_sink::RedisSink;
use cloud_ingester::rows::Row;
use edge_agent::sensors::{
    build_source, AnomalyConfig, AnomalyKind, SimModel, SimulatedSourceConfig, SourceConfig,
};
use protocol::{BootId, DeviceId, Frame, Quality, Reading};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use service::clock::now_ms;
use sqlx::PgPool;
use support::ingester::{self, Running};
use support::{create_topics, frame, kafka, produce};

/// One sampling tick of a simulated channel: its device time and reading, if any.
#[derive(Debug, Clone, Copy)]
struct Tick {
    ts_ms: i64,
    value: Option<(f32, Quality)>,
}

impl Tick {
    fn anomalous(&self) -> bool {
        self.value
            .is_none_or(|(_, q)| q.contains(Quality::SIMULATED_ANOMALY))
    }
}

/// Simulates `model` from `start_ms` for at least `span` of device time, as the agent
/// would sample it, with anomalies of `kind` only (none if `None`). Stops at a calm
/// moment (two normal readings in a row) so every anomaly is complete.
fn simulate(
    model: SimModel,
    kind: Option<AnomalyKind>,
    seed: u64,
    start_ms: i64,
    span: Duration,
) -> Vec<Tick> {
    let period = model.seed_channel().period;
    let anomalies = kind.map(|kind| AnomalyConfig {
        rate_per_hour: 60.0,
        kinds: vec![kind],
        duration: Duration::from_secs(20),
    });
    let config = SourceConfig::Simulated(SimulatedSourceConfig { model });
    let mut source = build_source(&config, anomalies.as_ref(), seed, period).unwrap();
    let mut ticks: Vec<Tick> = Vec::new();
    for i in 0.. {
        let elapsed = period * i;
        let sample = source.sample(elapsed).unwrap();
        ticks.push(Tick {
            ts_ms: start_ms + elapsed.as_millis() as i64,
            value: sample.map(|s| (s.value, s.quality)),
        });
        let calm = ticks.len() >= 2 && ticks[ticks.len() - 2..].iter().all(|t| !t.anomalous());
        if elapsed >= span && calm {
            break;
        }
    }
    ticks
}

/// An injected anomaly: its first and last anomalous tick (a dropout's last is the
/// flagged reading after the gap).
#[derive(Debug, Clone, Copy)]
struct Episode {
    first_ms: i64,
    last_ms: i64,
}

fn episodes(ticks: &[Tick]) -> Vec<Episode> {
    let mut out: Vec<Episode> = Vec::new();
    let mut open: Option<Episode> = None;
    for tick in ticks {
        match (tick.anomalous(), &mut open) {
            (true, Some(episode)) => episode.last_ms = tick.ts_ms,
            (true, None) => {
                open = Some(Episode {
                    first_ms: tick.ts_ms,
                    last_ms: tick.ts_ms,
                })
            }
            (false, _) => out.extend(open.take()),
        }
    }
    out.extend(open);
    out
}

/// Frames of up to 50 readings of one device, in time order, as the agent sends them,
/// keyed by the device as the bridge keys them.
fn frames(
    device: &str,
    readings: &mut [(i64, u8, f32, Quality)],
    first_seq: u64,
) -> Vec<(String, Vec<u8>)> {
    readings.sort_by_key(|r| (r.0, r.1));
    let mut out = Vec::new();
    let mut seq = first_seq;
    for chunk in readings.chunks(50) {
        let base = chunk[0].0;
        let mut frame = Frame::new(
            DeviceId::new(device).unwrap(),
            BootId([7; 8]),
            seq,
            base as u64,
        );
        for &(ts, channel, value, quality) in chunk {
            frame
                .readings
                .push(Reading {
                    channel,
                    offset_ms: (ts - base) as u32,
                    value,
                    quality,
                })
                .unwrap();
        }
        seq += chunk.len() as u64;
        let mut buf = [0u8; protocol::MAX_FRAME_LEN];
        out.push((device.to_owned(), frame.encode(&mut buf).unwrap().to_vec()));
    }
    out
}

fn channel_readings(channel: u8, ticks: &[Tick]) -> Vec<(i64, u8, f32, Quality)> {
    ticks
        .iter()
        .filter_map(|t| t.value.map(|(v, q)| (t.ts_ms, channel, v, q)))
        .collect()
}

struct Topics {
    data: String,
    dlq: String,
    alerts: String,
}

/// How long the alert tests wait for the pipeline to ingest what they sent.
const INGESTED_WITHIN: Duration = Duration::from_secs(120);

/// The pipeline with a `data_loss` window no run of the channel-rule test reaches: its
/// frames leave holes on purpose (a breach sent at seq 2^40), which are not its subject.
async fn start(pool: &PgPool, topics: &Topics, group: &str, redis: &RedisSink) -> Running {
    let quiet = AlertsConfig {
        data_loss_readings: 1,
        data_loss_window: Duration::from_secs(3600),
    };
    start_with(pool, topics, group, redis, quiet).await
}

async fn start_with(
    pool: &PgPool,
    topics: &Topics,
    group: &str,
    redis: &RedisSink,
    data_loss: AlertsConfig,
) -> Running {
    let mut config = ingester::config(&topics.data, &topics.dlq, group);
    config.id = "alerts-test".to_owned();
    config.kafka.alerts_topic = topics.alerts.clone();
    config.batch.rows = 2000;
    config.alerts = data_loss;
    ingester::start_config(
        &config,
        pool,
        Some(redis.clone()),
        ingester::idempotent_producer(),
    )
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct AlertRow {
    alert_id: i64,
    device_id: String,
    channel_id: i16,
    rule: String,
    severity: String,
    state: String,
    value_ts_ms: i64,
    message: String,
}

async fn alerts(pool: &PgPool) -> Vec<AlertRow> {
    sqlx::query_as(
        "SELECT alert_id, device_id, channel_id, rule, severity::text AS severity, \
                state::text AS state, \
                (extract(epoch FROM value_ts) * 1000)::bigint AS value_ts_ms, message \
           FROM alerts ORDER BY value_ts, alert_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Every record on `topic`, as JSON: at least `expected` (or what came within 15 s),
/// then until none comes for a second.
fn alert_records(topic: &str, expected: usize) -> Vec<serde_json::Value> {
    let consumer: BaseConsumer = kafka()
        .set("group.id", testkit::unique_name("alread"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut out = Vec::new();
    while out.len() < expected && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.unwrap();
            out.push(serde_json::from_slice(message.payload().unwrap()).unwrap());
        }
    }
    // Then whatever else comes within a second.
    while let Some(message) = consumer.poll(Duration::from_secs(1)) {
        out.push(serde_json::from_slice(message.unwrap().payload().unwrap()).unwrap());
    }
    out
}

/// Normal operation of every seed channel, three simulated hours each after an hour to
/// warm up (a cold furnace is rightly below its low thresholds), raises no alert under
/// the seed rules: the thresholds, hysteresis and minimum durations keep noise quiet.
#[sqlx::test(migrations = "../migrations")]
async fn normal_operation_of_every_seed_channel_raises_no_alert(pool: PgPool) {
    let rules = RuleBook::load(&pool).await.unwrap();
    for (seed, model) in SimModel::ALL.into_iter().enumerate() {
        let channel = model.seed_channel();
        let ticks = simulate(
            model,
            None,
            seed as u64,
            1_750_000_000_000,
            Duration::from_secs(4 * 3600),
        );
        let warm = ticks[0].ts_ms + 3600 * 1000;
        let rows: Vec<Row> = channel_readings(channel.channel, &ticks)
            .into_iter()
            .filter(|reading| reading.0 >= warm)
            .enumerate()
            .map(|(i, (ts_ms, channel, value, quality))| Row {
                device_id: model.seed_channel().device.to_owned(),
                boot_id: 1,
                seq: i as i64,
                ts_ms,
                value,
                channel_id: i16::from(channel),
                quality: i16::from(quality.bits()),
                clock_synced: true,
            })
            .collect();
        let engine = AlertEngine::new(rules.clone());
        let transitions = engine.evaluate(&rows, &Default::default()).transitions;
        assert!(
            transitions.is_empty(),
            "{model:?} raised {} transitions, first {:?}",
            transitions.len(),
            transitions.first()
        );
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn each_simulated_anomaly_raises_its_alert_once_and_a_restart_or_replay_keeps_them(
    pool: PgPool,
) {
    let topics = Topics {
        data: testkit::unique_name("aldata"),
        dlq: testkit::unique_name("aldlq"),
        alerts: testkit::unique_name("alout"),
    };
    create_topics(&[&topics.data, &topics.dlq, &topics.alerts]).await;
    let redis = RedisSink::new(&testkit::redis_url(), &testkit::unique_name("alerts")).unwrap();
    let now = now_ms() as i64;
    let start_ms = now - 4 * 3600 * 1000;
    let half_hour = Duration::from_secs(1800);

    // press-01 (5 Hz, both sides, 1 s minimum): half an hour of each kind, back to back.
    let press_period = 200;
    let mut press: Vec<(AnomalyKind, Vec<Tick>)> = Vec::new();
    let mut next_ms = start_ms;
    for (i, kind) in AnomalyKind::ALL.into_iter().enumerate() {
        let ticks = simulate(
            SimModel::PressPressure,
            Some(kind),
            100 + i as u64,
            next_ms,
            half_hour,
        );
        next_ms = ticks.last().unwrap().ts_ms + press_period;
        press.push((kind, ticks));
    }
    // compressor-01: channel 1 drops out while channel 0 goes on (1 Hz).
    let power = simulate(
        SimModel::CompressorPower,
        None,
        200,
        start_ms,
        half_hour * 2,
    );
    let current = simulate(
        SimModel::CompressorCurrent,
        Some(AnomalyKind::Dropout),
        201,
        start_ms,
        half_hour,
    );
    let current_end = current.last().unwrap().ts_ms;
    let power: Vec<Tick> = power
        .into_iter()
        .filter(|t| t.ts_ms <= current_end)
        .collect();

    let mut press_readings: Vec<_> = press
        .iter()
        .flat_map(|(_, ticks)| channel_readings(0, ticks))
        .collect();
    let press_frames = frames("press-01", &mut press_readings, 0);
    let mut compressor_readings = channel_readings(0, &power);
    compressor_readings.extend(channel_readings(1, &current));
    let compressor_frames = frames("compressor-01", &mut compressor_readings, 0);
    produce(&topics.data, &press_frames).await;
    produce(&topics.data, &compressor_frames).await;
    let sent = (press_frames.len() + compressor_frames.len()) as u64;

    let group = testkit::unique_name("algroup");
    let running = start(&pool, &topics, &group, &redis).await;
    running.wait_records(sent, INGESTED_WITHIN).await;
    running.stop().await;

    let all = alerts(&pool).await;
    let mut expected_records = BTreeMap::from([("opened", 0), ("escalated", 0), ("resolved", 0)]);
    for (kind, ticks) in &press {
        let (from, to) = (ticks[0].ts_ms, ticks.last().unwrap().ts_ms);
        let injected = episodes(ticks);
        assert!(
            injected.len() >= 10,
            "{kind:?}: only {} anomalies injected",
            injected.len()
        );
        let raised: Vec<&AlertRow> = all
            .iter()
            .filter(|a| a.device_id == "press-01" && (from..=to).contains(&a.value_ts_ms))
            .collect();
        // Each alert inside one anomaly, each anomaly caught.
        let mut caught: Vec<Vec<&AlertRow>> = vec![Vec::new(); injected.len()];
        for alert in &raised {
            let Some(k) = injected.iter().position(|episode| {
                (episode.first_ms - press_period..=episode.last_ms).contains(&alert.value_ts_ms)
            }) else {
                panic!("{kind:?}: {alert:?} is outside every anomaly: {injected:?}");
            };
            caught[k].push(alert);
        }
        for (episode, alerts) in injected.iter().zip(&caught) {
            assert!(!alerts.is_empty(), "{kind:?}: {episode:?} raised nothing");
            assert!(alerts.iter().all(|a| a.state == "resolved"), "{alerts:?}");
            let rules_ok = alerts.iter().all(|a| match kind {
                AnomalyKind::Spike | AnomalyKind::Drift => a.rule == "high" || a.rule == "low",
                AnomalyKind::Stuck => a.rule == "stuck",
                AnomalyKind::Dropout => a.rule == "dropout",
            });
            assert!(rules_ok, "{kind:?} raised {alerts:?}");
            match kind {
                // Far beyond critical at once.
                AnomalyKind::Spike => {
                    assert_eq!(alerts.len(), 1, "{alerts:?}");
                    assert_eq!(alerts[0].severity, "critical");
                }
                // Past warning, then critical, for longer than the minimum duration. The
                // press's own stroke cycle rides on the ramp, and may take it back
                // under the warning's clear level once before it goes critical.
                AnomalyKind::Drift => {
                    assert!(alerts.len() <= 2, "{alerts:?}");
                    assert_eq!(alerts.last().unwrap().severity, "critical", "{alerts:?}");
                }
                AnomalyKind::Stuck | AnomalyKind::Dropout => {
                    assert_eq!(alerts.len(), 1, "{alerts:?}");
                }
            }
        }
        *expected_records.get_mut("opened").unwrap() += raised.len();
        *expected_records.get_mut("resolved").unwrap() += raised.len();
    }
    let injected = episodes(&current);
    let raised: Vec<&AlertRow> = all
        .iter()
        .filter(|a| a.device_id == "compressor-01")
        .collect();
    assert!(injected.len() >= 10);
    assert_eq!(raised.len(), injected.len(), "{raised:#?}");
    for (alert, episode) in raised.iter().zip(&injected) {
        assert_eq!((alert.channel_id, alert.rule.as_str()), (1, "dropout"));
        assert_eq!(alert.value_ts_ms, episode.first_ms - 1000, "{alert:?}");
        assert!(
            alert.message.contains("while the device sends"),
            "opened while the channel was silent: {alert:?}"
        );
        assert_eq!(alert.state, "resolved");
    }
    *expected_records.get_mut("opened").unwrap() += raised.len();
    *expected_records.get_mut("resolved").unwrap() += raised.len();
    assert_eq!(
        all.len(),
        expected_records["opened"],
        "no alert outside an anomaly"
    );

    let records = alert_records(&topics.alerts, 2 * all.len());
    // A warning that became critical is one alert, and one escalation record.
    let opened_as_warning: Vec<i64> = records
        .iter()
        .filter(|r| r["transition"] == "opened" && r["severity"] == "warning")
        .map(|r| r["alert_id"].as_i64().unwrap())
        .collect();
    let escalated = all
        .iter()
        .filter(|a| a.severity == "critical" && opened_as_warning.contains(&a.alert_id))
        .count();
    *expected_records.get_mut("escalated").unwrap() = escalated;
    let mut seen: BTreeMap<&str, usize> =
        BTreeMap::from([("opened", 0), ("escalated", 0), ("resolved", 0)]);
    for record in &records {
        *seen
            .get_mut(record["transition"].as_str().unwrap())
            .unwrap() += 1;
        assert!(record["alert_id"].as_i64().is_some() && record["channel"].is_string());
    }
    assert_eq!(seen, expected_records, "one Kafka record per transition");
    assert!(open_in_redis(&redis).await.is_empty());

    // A breach left open: in the table and in Redis, and still open after a restart.
    let last_ms = next_ms;
    let mut breach: Vec<_> = (0..25)
        .map(|i| (last_ms + i * 200, 0, 262.0_f32, Quality::empty()))
        .collect();
    produce(&topics.data, &frames("press-01", &mut breach, 1 << 40)).await;
    let running = start(&pool, &topics, &group, &redis).await;
    running.wait_records(1, INGESTED_WITHIN).await;
    running.stop().await;
    let open: Vec<AlertRow> = alerts(&pool)
        .await
        .into_iter()
        .filter(|a| a.state == "open")
        .collect();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(
        (open[0].rule.as_str(), open[0].severity.as_str()),
        ("high", "warning")
    );
    let in_redis = open_in_redis(&redis).await;
    assert_eq!(
        in_redis.keys().copied().collect::<Vec<_>>(),
        vec![open[0].alert_id]
    );
    assert_eq!(in_redis[&open[0].alert_id]["rule"], "high");

    // Restarted, the ingester knows the alert is open: a value back inside clears it.
    let mut back: Vec<_> = (25..30)
        .map(|i| (last_ms + i * 200, 0, 240.0_f32, Quality::empty()))
        .collect();
    produce(&topics.data, &frames("press-01", &mut back, 1 << 41)).await;
    let running = start(&pool, &topics, &group, &redis).await;
    running.wait_records(1, INGESTED_WITHIN).await;
    running.stop().await;
    let after = alerts(&pool).await;
    assert_eq!(after.len(), all.len() + 1, "no new alert");
    assert!(after.iter().all(|a| a.state == "resolved"), "{after:?}");
    assert!(open_in_redis(&redis).await.is_empty());

    // A new consumer group replays the whole topic: already evaluated, nothing new.
    let replay = start(&pool, &topics, &testkit::unique_name("alrepl"), &redis).await;
    replay.wait_records(sent + 2, INGESTED_WITHIN).await;
    replay.stop().await;
    assert_eq!(
        alerts(&pool).await.len(),
        after.len(),
        "a replay raises nothing"
    );
}

async fn open_in_redis(redis: &RedisSink) -> BTreeMap<i64, serde_json::Value> {
    let client = redis::Client::open(testkit::redis_url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let fields: BTreeMap<i64, String> = redis::cmd("HGETALL")
        .arg(redis.keys().open_alerts())
        .query_async(&mut con)
        .await
        .unwrap();
    fields
        .into_iter()
        .map(|(id, json)| (id, serde_json::from_str(&json).unwrap()))
        .collect()
}

/// The `data_loss` alert of `device` as the table has it: (id, channel, state, value,
/// message, ms from the loss to the opening).
type LossRow = (i64, Option<i16>, String, Option<f64>, String, f64);

async fn data_loss_alerts(pool: &PgPool, device: &str) -> Vec<LossRow> {
    sqlx::query_as(
        "SELECT alert_id, channel_id, state::text, value, message, \
                extract(epoch FROM opened_at - value_ts)::float8 * 1000 \
           FROM alerts WHERE device_id = $1 AND rule = 'data_loss' ORDER BY alert_id",
    )
    .bind(device)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Polls `data_loss_alerts` until `done`, at most a minute.
async fn wait_data_loss(
    pool: &PgPool,
    device: &str,
    what: &str,
    done: impl Fn(&[LossRow]) -> bool,
) -> Vec<LossRow> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = data_loss_alerts(pool, device).await;
        if done(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "no data_loss alert {what}: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Frames of 50 readings of `device`'s channel 0 covering `seqs` (boot 0909…, as
/// `support::frame` makes them), keyed by device.
fn run_of(device: &str, seqs: std::ops::Range<u64>, base_ms: u64) -> Vec<(String, Vec<u8>)> {
    seqs.step_by(50)
        .map(|seq| {
            let payload = frame(device, &[0], seq, 50, base_ms + seq * 10);
            (device.to_owned(), payload)
        })
        .collect()
}

#[sqlx::test(migrations = "../migrations")]
async fn a_hole_that_outlasts_the_window_raises_data_loss_until_a_resend_fills_it(pool: PgPool) {
    let topics = Topics {
        data: testkit::unique_name("dldata"),
        dlq: testkit::unique_name("dldlq"),
        alerts: testkit::unique_name("dlout"),
    };
    create_topics(&[&topics.data, &topics.dlq, &topics.alerts]).await;
    let redis = RedisSink::new(&testkit::redis_url(), &testkit::unique_name("dloss")).unwrap();
    let window = AlertsConfig {
        data_loss_readings: 1,
        data_loss_window: Duration::from_secs(2),
    };
    let base = now_ms() - 60_000;
    // 0..100 and 200..300 reach PostgreSQL; 100..200 were lost on the way.
    let mut sent = run_of("furnace-01", 0..100, base);
    sent.extend(run_of("furnace-01", 200..300, base));
    produce(&topics.data, &sent).await;
    let group = testkit::unique_name("dlgroup");
    let running = start_with(&pool, &topics, &group, &redis, window.clone()).await;

    let open = wait_data_loss(&pool, "furnace-01", "opened", |rows| !rows.is_empty()).await;
    let (id, channel, state, value, message, waited_ms) = &open[0];
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!((*channel, state.as_str()), (None, "open"));
    assert_eq!(*value, Some(100.0));
    assert_eq!(
        message, "100 readings missing in boot 0909090909090909: 100-199",
        "{open:?}"
    );
    assert!(
        *waited_ms >= window.data_loss_window.as_millis() as f64,
        "opened {waited_ms} ms after the loss, before the window"
    );
    // (The frames' values, their sequence numbers, are far below a furnace's thresholds:
    // channel alerts open beside it, which are not this test's subject.)
    let in_redis = open_in_redis(&redis).await;
    let view = in_redis.get(id).expect("the open data_loss alert in Redis");
    assert_eq!(view["rule"], "data_loss");
    assert_eq!(view["channel_id"], serde_json::Value::Null);
    assert_eq!(
        (view["value"].as_f64(), &view["unit"]),
        (Some(100.0), &"readings".into())
    );

    // The agent resends the frames in the hole: the alert resolves.
    produce(&topics.data, &run_of("furnace-01", 100..200, base)).await;
    let resolved = wait_data_loss(&pool, "furnace-01", "resolved", |rows| {
        rows.iter().all(|row| row.2 == "resolved")
    })
    .await;
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    running.stop().await;
    assert!(!open_in_redis(&redis).await.contains_key(id));
    let (resolved_value,): (Option<f64>,) =
        sqlx::query_as("SELECT resolved_value FROM alerts WHERE alert_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        resolved_value,
        Some(0.0),
        "resolved by the engine, nothing missing"
    );

    let records: Vec<serde_json::Value> = alert_records(&topics.alerts, 2)
        .into_iter()
        .filter(|r| r["rule"] == "data_loss")
        .collect();
    let transitions: Vec<(&str, i64)> = records
        .iter()
        .map(|r| {
            (
                r["transition"].as_str().unwrap(),
                r["alert_id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        transitions,
        [("opened", *id), ("resolved", *id)],
        "{records:?}"
    );
    for record in &records {
        assert_eq!(record["rule"], "data_loss");
        assert_eq!(record["device_id"], "furnace-01");
        assert_eq!(record["channel_id"], serde_json::Value::Null);
    }
}
