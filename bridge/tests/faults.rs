//! The bridge binary through the failures it promises to survive: Kafka frozen and
//! thawed (nothing lost, nothing twice, memory within budget, MQTT kept alive), the
//! bridge itself killed with SIGKILL in client mode (nothing the broker held is lost),
//! and a Kafka that lost its state, which the bridge reports, then gets past by itself.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bridge::Mode;
use bytesize::ByteSize;
use support::*;

/// Frames for `devices`, `per_device` each, in per-device order, interleaved.
fn workload(prefix: &str, devices: &[&str], first: u64, per_device: u64) -> Vec<(String, Vec<u8>)> {
    let mut messages = Vec::new();
    for i in first..first + per_device {
        for device in devices {
            messages.push((
                telemetry_topic(prefix, device),
                frame(device, 3, i * 50, 50),
            ));
        }
    }
    messages
}

/// Checks that Kafka holds every (device, first_seq) sent, in order per device, and
/// returns how many records were duplicates.
fn check_ledger(records: &[Record], devices: &[&str], per_device: u64) -> usize {
    let by_device = sequences_by_device(records);
    let mut duplicates = 0;
    for device in devices {
        let seqs = by_device.get(*device).cloned().unwrap_or_default();
        let unique: BTreeSet<u64> = seqs.iter().copied().collect();
        let expected: BTreeSet<u64> = (0..per_device).map(|i| i * 50).collect();
        let missing: Vec<_> = expected.difference(&unique).take(10).collect();
        assert!(
            missing.is_empty(),
            "{device}: {} frames lost, e.g. {missing:?}",
            expected.len() - unique.len()
        );
        duplicates += seqs.len() - unique.len();
        // Replays may repeat a stretch, but each first appearance is in order.
        let mut seen = BTreeSet::new();
        let firsts: Vec<u64> = seqs.into_iter().filter(|s| seen.insert(*s)).collect();
        assert!(
            firsts.windows(2).all(|w| w[0] < w[1]),
            "{device}: out of order"
        );
    }
    duplicates
}

#[test]
fn kafka_frozen_then_thawed_loses_nothing_and_holds_memory_within_budget() {
    let kafka = testkit::Tansu::start();
    let mosquitto = testkit::Mosquitto::start();
    let prefix = testkit::unique_name("plant");
    let mut config = test_config(Mode::Client, &prefix, &kafka.brokers());
    config.mqtt.port = mosquitto.port();
    config.forward.max_in_flight = 1000;
    // Smaller than the window's frames (1000 × ~420 B), so the producer's budget, not
    // only the window, holds the bridge back.
    config.kafka.batch_size = ByteSize::kib(64);
    config.kafka.memory_budget = ByteSize::kib(256);
    // Kafka stays frozen for longer than 1.5 keep-alives: the MQTT session must live on.
    config.mqtt.keep_alive = Duration::from_secs(5);
    let data_topic = config.kafka.topic.clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let bridge = Process::spawn(&config);

    let devices = ["dev-a", "dev-b", "dev-c", "dev-d"];
    let before = workload(&prefix, &devices, 0, 100);
    runtime.block_on(publish_all(mosquitto.port(), "pub-1", &before));
    wait_metric(
        &bridge,
        "bridge_messages_produced_total",
        400.0,
        Duration::from_secs(30),
    );
    let rss_before = bridge.rss_bytes();

    kafka.pause();
    // 40 000 frames (about 16 MiB): far more than the bridge may hold, so buffering them
    // would show in its memory.
    let during = workload(&prefix, &devices, 100, 10_000);
    let publisher = std::thread::spawn({
        let port = mosquitto.port();
        move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(publish_all(port, "pub-2", &during))
        }
    });
    let mut rss_peak = rss_before;
    // Kafka stays frozen for 10 s (a schedule), and then until the bridge shows it felt
    // the pressure: its producer's memory budget pushed back.
    let frozen_for = Instant::now();
    let pressure_within = Duration::from_secs(70);
    let pushed_back = |bridge: &Process| bridge.metric("bridge_producer_queue_full_total") > 0.0;
    while frozen_for.elapsed() < Duration::from_secs(10) || !pushed_back(&bridge) {
        assert!(
            frozen_for.elapsed() < pressure_within,
            "the producer's memory budget did not push back within {pressure_within:?} of \
             Kafka freezing; received {}, in flight {}, Kafka queue {} messages",
            bridge.metric("bridge_messages_received_total"),
            bridge.metric("bridge_messages_in_flight"),
            bridge.metric("bridge_kafka_queue_messages"),
        );
        rss_peak = rss_peak.max(bridge.rss_bytes());
        assert!(
            bridge.readiness().contains("mqtt connected"),
            "the bridge lost its MQTT connection while Kafka was frozen: {}",
            bridge.readiness()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Taken from MQTT while Kafka was frozen: at most the window (plus the one message
    // waiting for room in the producer). The broker kept the rest.
    let received = bridge.metric("bridge_messages_received_total");
    assert!(
        received <= 400.0 + 1000.0 + 1.0,
        "the bridge took {received} messages while Kafka was frozen"
    );
    assert!(
        bridge.metric("bridge_producer_queue_full_total") > 0.0,
        "the producer's memory budget never pushed back"
    );
    kafka.resume();
    publisher.join().expect("publisher");

    wait_metric(
        &bridge,
        "bridge_messages_produced_total",
        40_400.0,
        Duration::from_secs(120),
    );
    let records = read_topic(
        &kafka.brokers(),
        &data_topic,
        40_400,
        Duration::from_secs(30),
    );
    let duplicates = check_ledger(&records, &devices, 10_100);
    // The bridge kept its one MQTT connection, and the idempotent producer retries
    // without duplicating: any duplicate here is a bug.
    assert_eq!(bridge.metric("bridge_mqtt_connections_total"), 1.0);
    assert_eq!(duplicates, 0, "{} records for 40 400 frames", records.len());

    // Budget: the producer's memory budget plus two windows of frames (the channel may
    // hold one more while Mosquitto overshoots), twice over for allocator slack, plus
    // 4 MiB for librdkafka's own buffers: well under the 16 MiB published meanwhile.
    let window = 1000 * (records[0].value.len() as u64 + 200);
    let budget = 2 * (ByteSize::kib(256).as_u64() + 2 * window) + ByteSize::mib(4).as_u64();
    let growth = rss_peak.saturating_sub(rss_before);
    eprintln!(
        "RSS before {} peak {} growth {} (allowed {}), records {}",
        ByteSize::b(rss_before),
        ByteSize::b(rss_peak),
        ByteSize::b(growth),
        ByteSize::b(budget),
        records.len()
    );
    assert!(
        growth <= budget,
        "RSS grew {} while Kafka was frozen",
        ByteSize::b(growth)
    );
}

#[test]
fn client_mode_bridge_killed_and_restarted_loses_nothing_the_broker_held() {
    let brokers = testkit::kafka_brokers();
    let mosquitto = testkit::Mosquitto::start();
    let prefix = testkit::unique_name("plant");
    let mut config = test_config(Mode::Client, &prefix, &brokers);
    config.mqtt.port = mosquitto.port();
    config.forward.max_in_flight = 2000;
    let data_topic = config.kafka.topic.clone();
    let mut bridge = Process::spawn(&config);

    let devices = ["dev-a", "dev-b", "dev-c", "dev-d", "dev-e"];
    let messages = workload(&prefix, &devices, 0, 1000);
    let port = mosquitto.port();
    let publisher = std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(publish_all(port, "pub-1", &messages))
    });
    wait_metric(
        &bridge,
        "bridge_messages_produced_total",
        1000.0,
        Duration::from_secs(60),
    );
    bridge.kill();
    publisher.join().expect("publisher");

    let restarted = Process::spawn(&config);
    let records_needed = 5000;
    let records = read_until_unique(
        &brokers,
        &data_topic,
        records_needed,
        Duration::from_secs(120),
    );
    let duplicates = check_ledger(&records, &devices, 1000);
    let per_device: BTreeMap<_, _> = sequences_by_device(&records)
        .into_iter()
        .map(|(d, s)| (d, s.len()))
        .collect();
    eprintln!("after SIGKILL: {} records, {duplicates} duplicates (at-least-once), per device {per_device:?}", records.len());
    drop(restarted);
}

#[test]
fn client_mode_bridge_killed_while_kafka_is_frozen_loses_nothing() {
    let kafka = testkit::Tansu::start();
    let mosquitto = testkit::Mosquitto::start();
    let prefix = testkit::unique_name("plant");
    let mut config = test_config(Mode::Client, &prefix, &kafka.brokers());
    config.mqtt.port = mosquitto.port();
    config.forward.max_in_flight = 500;
    let data_topic = config.kafka.topic.clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut bridge = Process::spawn(&config);

    let devices = ["dev-a", "dev-b"];
    runtime.block_on(publish_all(
        mosquitto.port(),
        "pub-1",
        &workload(&prefix, &devices, 0, 100),
    ));
    wait_metric(
        &bridge,
        "bridge_messages_produced_total",
        200.0,
        Duration::from_secs(30),
    );
    kafka.pause();
    runtime.block_on(publish_all(
        mosquitto.port(),
        "pub-2",
        &workload(&prefix, &devices, 100, 900),
    ));
    // The bridge has taken a window of messages Kafka cannot confirm: if it had
    // acknowledged any of them, the kill below would lose them.
    wait_metric(
        &bridge,
        "bridge_messages_received_total",
        700.0,
        Duration::from_secs(30),
    );
    bridge.kill();
    kafka.resume();

    let restarted = Process::spawn(&config);
    let records = read_until_unique(&kafka.brokers(), &data_topic, 2000, Duration::from_secs(90));
    let duplicates = check_ledger(&records, &devices, 1000);
    eprintln!(
        "killed while Kafka was frozen: {} records, {duplicates} duplicates (at-least-once)",
        records.len()
    );
    drop(restarted);
}

#[test]
fn client_mode_broker_restarted_mid_stream_loses_nothing() {
    let brokers = testkit::kafka_brokers();
    let mut mosquitto = testkit::Mosquitto::start();
    let prefix = testkit::unique_name("plant");
    let mut config = test_config(Mode::Client, &prefix, &brokers);
    config.mqtt.port = mosquitto.port();
    config.mqtt.reconnect_max = Duration::from_secs(1);
    let data_topic = config.kafka.topic.clone();
    let bridge = Process::spawn(&config);

    let devices = ["dev-a", "dev-b", "dev-c", "dev-d", "dev-e"];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(publish_all(
        mosquitto.port(),
        "pub-1",
        &workload(&prefix, &devices, 0, 1000),
    ));
    // Restart the broker (it keeps the session and its messages on disk) while the
    // bridge is still working through them.
    mosquitto.stop();
    mosquitto.restart();
    wait_metric(
        &bridge,
        "bridge_mqtt_connections_total",
        2.0,
        Duration::from_secs(30),
    );
    let records = read_until_unique(&brokers, &data_topic, 5000, Duration::from_secs(90));
    let duplicates = check_ledger(&records, &devices, 1000);
    eprintln!(
        "broker restarted: {} records, {duplicates} duplicates, {} stale acks",
        records.len(),
        bridge.metric("bridge_stale_acks_total")
    );
}

/// Reads `topic` again and again until it holds `unique` distinct frames (duplicates
/// allowed), or `within` passed; returns everything read.
fn read_until_unique(brokers: &str, topic: &str, unique: usize, within: Duration) -> Vec<Record> {
    let deadline = Instant::now() + within;
    loop {
        let records = read_topic(brokers, topic, usize::MAX, Duration::from_secs(3));
        let distinct: BTreeSet<(String, u64)> = sequences_by_device(&records)
            .into_iter()
            .flat_map(|(d, seqs)| seqs.into_iter().map(move |s| (d.clone(), s)))
            .collect();
        if distinct.len() >= unique || Instant::now() > deadline {
            return records;
        }
    }
}

fn wait_metric(bridge: &Process, name: &str, at_least: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let value = bridge.metric(name);
        if value >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} = {value}, expected {at_least} within {within:?}; received {}, in flight {}, \
             Kafka queue {} messages; {}",
            bridge.metric("bridge_messages_received_total"),
            bridge.metric("bridge_messages_in_flight"),
            bridge.metric("bridge_kafka_queue_messages"),
            bridge.readiness().replace('\n', ", ")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_started_before_its_brokers_waits_for_them_then_forwards() {
    let kafka_port = testkit::free_port();
    let mut mosquitto = testkit::Mosquitto::start();
    mosquitto.stop();
    let prefix = testkit::unique_name("plant");
    let mut config = test_config(Mode::Client, &prefix, &format!("127.0.0.1:{kafka_port}"));
    config.mqtt.port = mosquitto.port();
    let data_topic = config.kafka.topic.clone();
    let bridge = bridge::Bridge::start(config)
        .await
        .expect("starts without its brokers");
    let readiness = bridge.readiness();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(bridge.run_until(async {
        let _ = stopped.await;
    }));
    // A negative check over a fixed window: with neither broker there, nothing can show
    // the bridge trying; it must neither claim a connection nor give up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!readiness.mqtt() && !readiness.kafka() && !running.is_finished());

    mosquitto.restart();
    let kafka = tokio::task::spawn_blocking(move || testkit::Tansu::start_on(kafka_port))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !readiness.ready() {
        assert!(
            Instant::now() < deadline,
            "not ready after the brokers came up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let frame_bytes = frame("dev-a", 4, 0, 50);
    publish_all(
        mosquitto.port(),
        "pub-late",
        &[(telemetry_topic(&prefix, "dev-a"), frame_bytes.clone())],
    )
    .await;
    let records = tokio::task::spawn_blocking(move || {
        read_topic(&kafka.brokers(), &data_topic, 1, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value, frame_bytes);
    let _ = stop.send(());
    let stats = running.await.unwrap().unwrap();
    assert_eq!(stats.produced, 1);
}

/// Kafka restarted with its storage lost (the local stack's Tansu): the idempotent
/// producer's id is gone with it and Tansu does not say so, so the producer confirms
/// nothing more, though the broker is connected. The bridge says so on `/readyz`, then
/// replaces its producer and sends what it held again: nothing waits for a supervisor.
#[test]
fn a_kafka_that_lost_its_state_is_reported_then_the_bridge_replaces_its_producer() {
    let mut kafka = testkit::Tansu::start();
    let mosquitto = testkit::Mosquitto::start();
    let prefix = testkit::unique_name("plant");
    let mut config = test_config(Mode::Client, &prefix, &kafka.brokers());
    config.mqtt.port = mosquitto.port();
    config.forward.stall_after = Duration::from_secs(5);
    let data_topic = config.kafka.topic.clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let bridge = Process::spawn(&config);
    let devices = ["dev-a", "dev-b"];
    runtime.block_on(publish_all(
        mosquitto.port(),
        "pub-1",
        &workload(&prefix, &devices, 0, 10),
    ));
    wait_metric(
        &bridge,
        "bridge_messages_produced_total",
        20.0,
        Duration::from_secs(30),
    );

    kafka.restart();
    runtime.block_on(async {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", kafka.brokers())
                .create()
                .unwrap();
        let topics = [&config.kafka.topic, &config.kafka.dlq_topic]
            .map(|name| NewTopic::new(name, 3, TopicReplication::Fixed(1)));
        for created in admin
            .create_topics(&topics, &AdminOptions::new())
            .await
            .unwrap()
        {
            created.unwrap();
        }
    });
    runtime.block_on(publish_all(
        mosquitto.port(),
        "pub-2",
        &workload(&prefix, &devices, 10, 10),
    ));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut stall_reported = false;
    loop {
        // One look at /readyz: its status and the reason in its body, together.
        let (status, readiness) = bridge.get("/readyz").unwrap_or_default();
        if readiness.contains("messages wait for Kafka") {
            assert_eq!(status, 503, "{readiness}");
            stall_reported = true;
        }
        if bridge.metric("bridge_producer_replacements_total") >= 1.0
            && bridge.metric("bridge_messages_produced_total") >= 40.0
            && bridge.ready()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery within 2 min of Kafka's restart; produced {}, in flight {}, \
             producers replaced {}; {}",
            bridge.metric("bridge_messages_produced_total"),
            bridge.metric("bridge_messages_in_flight"),
            bridge.metric("bridge_producer_replacements_total"),
            readiness.replace('\n', ", ")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(stall_reported, "the stall never showed on /readyz");
    // What the lost storage held is gone (the agents resend it); what came after is in
    // the new storage, every frame, in order per device.
    let records = read_until_unique(&kafka.brokers(), &data_topic, 20, Duration::from_secs(30));
    let by_device = sequences_by_device(&records);
    for device in devices {
        let unique: BTreeSet<u64> = by_device
            .get(device)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let expected: BTreeSet<u64> = (10..20).map(|i| i * 50).collect();
        assert_eq!(unique, expected, "{device}");
    }
}
