//! The bridge against real brokers, in this process: what reaches Kafka, with which key,
//! headers and order; what is dead-lettered and why; the readable `latest` topic; and
//! that a clean stop leaves nothing unacknowledged.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bridge::Mode;
use contracts::dead_letter::Reason;
use protocol::kafka::headers;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_forwards_frames_unchanged_keyed_by_device_in_order() {
    let brokers = testkit::kafka_brokers();
    let prefix = testkit::unique_name("plant");
    let config = test_config(Mode::Embedded, &prefix, &brokers);
    let data_topic = config.kafka.topic.clone();
    let bridge = InProcess::start(config).await;
    let port = bridge.mqtt.expect("embedded mode listens").port();

    let devices = ["dev-a", "dev-b", "dev-c"];
    let mut sent: HashMap<(String, u64), Vec<u8>> = HashMap::new();
    let mut publishers = Vec::new();
    let started_ms = service::clock::now_ms();
    for device in devices {
        let messages: Vec<(String, Vec<u8>)> = (0..50)
            .map(|i| {
                let payload = frame(device, 1, i * 10, 10);
                sent.insert((device.to_owned(), i * 10), payload.clone());
                (telemetry_topic(&prefix, device), payload)
            })
            .collect();
        publishers.push(tokio::spawn(async move {
            publish_all(port, &testkit::unique_name("pub"), &messages).await
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    bridge.wait_settled(150, Duration::from_secs(60)).await;

    let records = read_topic(&brokers, &data_topic, 150, Duration::from_secs(60));
    assert_eq!(records.len(), 150);
    let mut partitions: HashMap<String, HashSet<i32>> = HashMap::new();
    for record in &records {
        let decoded = protocol::Frame::decode(&record.value).unwrap();
        let device = decoded.device.as_str().to_owned();
        assert_eq!(
            record.key.as_deref(),
            Some(device.as_str()),
            "key is the device id"
        );
        assert_eq!(
            sent.get(&(device.clone(), decoded.first_seq)),
            Some(&record.value),
            "value is the frame bytes unchanged"
        );
        assert_eq!(
            record
                .headers
                .get(headers::CONTENT_TYPE)
                .map(String::as_str),
            Some(protocol::kafka::FRAME_CONTENT_TYPE)
        );
        assert_eq!(
            record.headers.get(headers::MQTT_TOPIC),
            Some(&telemetry_topic(&prefix, &device))
        );
        let received: u64 = record.headers[headers::RECEIVED_AT_MS].parse().unwrap();
        assert!(received >= started_ms && received <= service::clock::now_ms());
        partitions
            .entry(device)
            .or_default()
            .insert(record.partition);
    }
    for (device, parts) in &partitions {
        assert_eq!(parts.len(), 1, "{device} spread over partitions {parts:?}");
    }
    let expected: Vec<u64> = (0..50).map(|i| i * 10).collect();
    for (device, seqs) in sequences_by_device(&records) {
        assert_eq!(seqs, expected, "{device}'s frames out of order or missing");
    }

    // The readable `latest` value, retained: the newest reading of each device. It is
    // throttled to one message per device per interval, so the newest goes out later.
    let latest = wait_for_latest(port, &format!("{prefix}/+/+/+/latest"), &devices, 499).await;
    for device in devices {
        let json = &latest[device];
        assert_eq!(json["device"], device);
        assert_eq!(json["seq"], 499, "{device}: {json}");
        assert_eq!(json["channels"]["1"]["value"], 499.0);
    }

    let stats = bridge.stop().await;
    assert_eq!(
        (stats.received, stats.produced, stats.dead_lettered),
        (150, 150, 0)
    );
    assert!(stats.latest_published >= 3);
}

/// Reads the retained messages under `filter` with a fresh subscription each time until
/// every one of `devices` has one with sequence number `seq`, and returns them; panics,
/// quoting the last ones read, if that takes over 60 s.
async fn wait_for_latest(
    port: u16,
    filter: &str,
    devices: &[&str],
    seq: u64,
) -> HashMap<String, serde_json::Value> {
    let within = Duration::from_secs(60);
    let deadline = std::time::Instant::now() + within;
    loop {
        let latest = read_retained(port, filter, devices.len(), Duration::from_secs(5)).await;
        if devices
            .iter()
            .all(|d| latest.get(*d).is_some_and(|json| json["seq"] == seq))
        {
            return latest;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retained latest messages with seq {seq} for every one of {devices:?} within \
             {within:?}; last read: {latest:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Subscribes and collects up to `count` retained messages within `within`, as JSON
/// keyed by device. Messages published after the subscription (not retained ones) are
/// left out: they do not show what a newcomer would see.
async fn read_retained(
    port: u16,
    filter: &str,
    count: usize,
    within: Duration,
) -> HashMap<String, serde_json::Value> {
    let mut options = MqttOptions::new(testkit::unique_name("viewer"), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client.subscribe(filter, QoS::AtMostOnce).await.unwrap();
    let mut seen = HashMap::new();
    let _ = tokio::time::timeout(within, async {
        while seen.len() < count {
            if let Event::Incoming(Packet::Publish(p)) = eventloop.poll().await.unwrap() {
                if !p.retain {
                    continue;
                }
                let json: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                seen.insert(json["device"].as_str().unwrap().to_owned(), json);
            }
        }
    })
    .await;
    seen
}

/// Subscribes to `filter` and, once the broker has confirmed the subscription, hands
/// every message published there from then on to the receiver, in the broker's order.
async fn watch_live(
    port: u16,
    filter: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<serde_json::Value> {
    let mut options = MqttOptions::new(testkit::unique_name("viewer"), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client.subscribe(filter, QoS::AtMostOnce).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        while !matches!(
            eventloop.poll().await,
            Ok(Event::Incoming(Packet::SubAck(_)))
        ) {}
    })
    .await
    .expect("subscribed within 30 s");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _client = client;
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                let json = serde_json::from_slice(&p.payload).unwrap();
                if tx.send(json).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// What `viewer` receives until a message for which `last` holds (included); panics
/// after 60 s.
async fn watch_until(
    viewer: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    last: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let mut seen = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(json) = viewer.recv().await {
            let done = last(&json);
            seen.push(json);
            if done {
                return;
            }
        }
    })
    .await;
    assert!(
        outcome.is_ok(),
        "the awaited message within 60 s; saw {seen:?}"
    );
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_boots_backlog_never_replaces_the_newer_boots_latest() {
    let brokers = testkit::kafka_brokers();
    let prefix = testkit::unique_name("plant");
    let mut config = test_config(Mode::Embedded, &prefix, &brokers);
    config.latest.interval = Duration::from_millis(100);
    let interval = config.latest.interval;
    let bridge = InProcess::start(config).await;
    let port = bridge.mqtt.expect("embedded mode listens").port();
    let filter = format!("{prefix}/+/+/+/latest");
    let mut viewer = watch_live(port, &filter).await;
    let topic = telemetry_topic(&prefix, "dev-a");
    let publisher = testkit::unique_name("pub");

    // The device ran as boot 1, restarted as boot 2 and sends its live frames first...
    let first = [
        (topic.clone(), frame("dev-a", 1, 4_990, 10)),
        (topic.clone(), frame("dev-a", 2, 0, 10)),
    ];
    publish_all(port, &publisher, &first).await;
    let seen = watch_until(&mut viewer, |json| json["boot_id"] == "0202020202020202").await;
    assert_eq!(seen.last().unwrap()["seq"], 9);
    // ...then boot 1's backlog, with higher sequence numbers. Coming more than an
    // interval after the last publish, a frame taken for newer would go out at once.
    tokio::time::sleep(3 * interval).await;
    let backlog: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| (topic.clone(), frame("dev-a", 1, 5_000 + i * 10, 10)))
        .collect();
    publish_all(port, &publisher, &backlog).await;
    bridge.wait_settled(7, Duration::from_secs(60)).await;
    // Another device's first frame marks the end: `latest` publishes in arrival order.
    let marker = (telemetry_topic(&prefix, "dev-b"), frame("dev-b", 1, 0, 10));
    publish_all(port, &publisher, &[marker]).await;
    let seen = watch_until(&mut viewer, |json| json["device"] == "dev-b").await;
    let replaced: Vec<_> = seen
        .iter()
        .filter(|json| json["device"] == "dev-a")
        .collect();
    assert!(
        replaced.is_empty(),
        "the old boot's backlog replaced the new boot's latest: {replaced:?}"
    );

    let retained = read_retained(port, &filter, 2, Duration::from_secs(10)).await;
    let a = &retained["dev-a"];
    assert_eq!(
        (&a["boot_id"], &a["seq"]),
        (
            &serde_json::json!("0202020202020202"),
            &serde_json::json!(9)
        )
    );
    let stats = bridge.stop().await;
    assert_eq!((stats.produced, stats.latest_future_dated), (8, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_dated_frame_never_drives_the_latest_and_the_normal_frames_after_it_do() {
    let brokers = testkit::kafka_brokers();
    let prefix = testkit::unique_name("plant");
    let mut config = test_config(Mode::Embedded, &prefix, &brokers);
    config.latest.interval = Duration::from_millis(100);
    let bridge = InProcess::start(config).await;
    let port = bridge.mqtt.expect("embedded mode listens").port();
    let filter = format!("{prefix}/+/+/+/latest");
    let mut viewer = watch_live(port, &filter).await;
    let topic = telemetry_topic(&prefix, "dev-a");

    // A Pi whose clock is 23 h ahead, then set right (NTP).
    let now = service::clock::now_ms();
    let hour = 3_600_000;
    let messages = [
        (topic.clone(), frame_at("dev-a", 3, 0, 10, now + 23 * hour)),
        (topic.clone(), frame_at("dev-a", 3, 10, 10, now)),
        (topic.clone(), frame_at("dev-a", 3, 20, 10, now + 1_000)),
    ];
    publish_all(port, &testkit::unique_name("pub"), &messages).await;
    let latest = wait_for_latest(port, &filter, &["dev-a"], 29).await;
    assert!(latest["dev-a"]["channels"]["1"]["ts_ms"].as_u64() < Some(now + hour));

    let seen = watch_until(&mut viewer, |json| json["seq"] == 29).await;
    let future: Vec<_> = seen
        .iter()
        .filter(|json| json["channels"]["0"]["ts_ms"].as_u64() > Some(now + hour))
        .collect();
    assert!(
        future.is_empty(),
        "a future-dated frame was shown: {future:?}"
    );
    let (_, metrics) = http_get(bridge.http, "/metrics").await;
    assert!(metrics.contains("bridge_latest_future_dated_total"));
    let stats = bridge.stop().await;
    assert_eq!(stats.produced, 3, "every frame reaches Kafka: {stats:?}");
    assert_eq!(stats.latest_future_dated, 1);
}

/// The meta JSON as the edge agent publishes it, naming channel 0 only.
fn meta_json(device: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "device": device, "site": SITE, "line": LINE, "gateway": "gw-1",
        "encoding": "postcard frame v1 (protocol crate)",
        "channels": [{"id": 0, "name": "temperature", "unit": "°C", "period_ms": 1000,
                      "range": [0.0, 1200.0], "thresholds": null, "source": "sim"}],
    }))
    .unwrap()
}

/// Publishes frames of `device` (boot 4) on `port`, one at a time, until its retained
/// `latest` names channel 0, and returns that JSON; panics after 60 s.
async fn latest_with_names(port: u16, prefix: &str, device: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let topic = telemetry_topic(prefix, device);
    let filter = format!("{prefix}/+/+/{device}/latest");
    for i in 0.. {
        publish_all(
            port,
            &testkit::unique_name("pub"),
            &[(topic.clone(), frame(device, 4, i * 10, 10))],
        )
        .await;
        let retained = read_retained(port, &filter, 1, Duration::from_secs(2)).await;
        if let Some(json) = retained
            .get(device)
            .filter(|json| json["channels"]["0"].get("name").is_some())
        {
            return json.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no retained latest naming the channels within 60 s; last: {retained:?}"
        );
    }
    unreachable!()
}

fn assert_named(json: &serde_json::Value) {
    let zero = &json["channels"]["0"];
    assert_eq!(
        (&zero["name"], &zero["unit"]),
        (&serde_json::json!("temperature"), &serde_json::json!("°C")),
        "{json}"
    );
    assert!(
        zero["value"].is_number() && zero["seq"].is_number(),
        "{json}"
    );
    let one = &json["channels"]["1"];
    assert!(
        one.get("name").is_none() && one.get("unit").is_none(),
        "channel 1 has no meta: {json}"
    );
    assert!(one["value"].is_number(), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_latest_names_channels_from_the_devices_meta() {
    let brokers = testkit::kafka_brokers();
    let prefix = testkit::unique_name("plant");
    let bridge = InProcess::start(test_config(Mode::Embedded, &prefix, &brokers)).await;
    let port = bridge.mqtt.expect("embedded mode listens").port();
    let meta_topic = format!("{prefix}/{SITE}/{LINE}/dev-a/meta");
    publish_retained(port, &meta_topic, &meta_json("dev-a")).await;
    assert_named(&latest_with_names(port, &prefix, "dev-a").await);
    let stats = bridge.stop().await;
    assert_eq!(
        (stats.dead_lettered, stats.meta_ignored),
        (0, 0),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mode_latest_names_channels_from_the_meta_retained_before_it_started() {
    let brokers = testkit::kafka_brokers();
    let (_, mqtt_port) = testkit::mqtt_host_port();
    let prefix = testkit::unique_name("plant");
    let meta_topic = format!("{prefix}/{SITE}/{LINE}/dev-a/meta");
    publish_retained(mqtt_port, &meta_topic, &meta_json("dev-a")).await;
    let mut config = test_config(Mode::Client, &prefix, &brokers);
    config.mqtt.port = mqtt_port;
    let bridge = InProcess::start(config).await;
    let named = latest_with_names(mqtt_port, &prefix, "dev-a").await;
    assert_named(&named);
    // Meta messages are not telemetry: none reaches Kafka or the dead letters.
    let stats = bridge.stop().await;
    assert_eq!(
        (stats.dead_lettered, stats.meta_ignored),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(stats.received, stats.produced, "{stats:?}");
    // Leave the shared broker without this test's retained messages.
    publish_retained(mqtt_port, &meta_topic, b"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mode_dead_letters_bad_messages_with_their_reason_and_keeps_the_rest() {
    let brokers = testkit::kafka_brokers();
    let (_, mqtt_port) = testkit::mqtt_host_port();
    let prefix = testkit::unique_name("plant");
    let mut config = test_config(Mode::Client, &prefix, &brokers);
    config.mqtt.port = mqtt_port;
    let (data_topic, dlq_topic) = (config.kafka.topic.clone(), config.kafka.dlq_topic.clone());
    let bridge = InProcess::start(config.clone()).await;

    let good_topic = telemetry_topic(&prefix, "dev-a");
    let good = |seq: u64| frame("dev-a", 2, seq, 50);
    let truncated = {
        let mut bytes = good(9_000);
        bytes.truncate(bytes.len() / 2);
        bytes
    };
    let bad: Vec<(String, Vec<u8>, Reason)> = vec![
        (good_topic.clone(), truncated, Reason::Decode),
        (
            good_topic.clone(),
            b"\x01random garbage".to_vec(),
            Reason::Decode,
        ),
        (good_topic.clone(), Vec::new(), Reason::Decode),
        (
            good_topic.clone(),
            frame("dev-b", 2, 0, 5),
            Reason::DeviceMismatch,
        ),
        (
            format!("{prefix}/{SITE}/li ne/dev-a/telemetry"),
            good(9_100),
            Reason::Topic,
        ),
    ];
    let mut messages = Vec::new();
    let mut bad_iter = bad.iter();
    for i in 0..40u64 {
        messages.push((good_topic.clone(), good(i * 50)));
        if i % 8 == 3 {
            if let Some((topic, payload, _)) = bad_iter.next() {
                messages.push((topic.clone(), payload.clone()));
            }
        }
    }
    assert!(bad_iter.next().is_none(), "every bad message is sent");
    publish_all(mqtt_port, &testkit::unique_name("pub"), &messages).await;
    bridge.wait_settled(45, Duration::from_secs(60)).await;

    let data = read_topic(&brokers, &data_topic, 40, Duration::from_secs(60));
    let expected: Vec<u64> = (0..40).map(|i| i * 50).collect();
    assert_eq!(sequences_by_device(&data)["dev-a"], expected);
    assert_eq!(data.len(), 40);

    let dlq = read_topic(&brokers, &dlq_topic, 5, Duration::from_secs(60));
    assert_eq!(dlq.len(), 5);
    for (topic, payload, reason) in &bad {
        let record = dlq
            .iter()
            .find(|r| &r.value == payload && &r.headers[headers::MQTT_TOPIC] == topic)
            .unwrap_or_else(|| panic!("{reason:?} message not in the DLQ"));
        assert_eq!(record.headers[headers::DLQ_REASON], reason.code());
        assert!(!record.headers[headers::DLQ_DETAIL].is_empty());
        assert_eq!(record.headers[headers::DLQ_SOURCE], "bridge");
        // Keyed by the topic's device, when the topic is well-formed enough to name one.
        let key = (*reason != Reason::Topic).then_some("dev-a");
        assert_eq!(record.key.as_deref(), key, "{reason:?}");
    }

    let stats = bridge.stop().await;
    assert_eq!(stats.produced, 40);
    assert_eq!(stats.dead_lettered_for(Reason::Decode), 3);
    assert_eq!(stats.dead_lettered_for(Reason::DeviceMismatch), 1);
    assert_eq!(stats.dead_lettered_for(Reason::Topic), 1);

    // A clean stop acknowledged everything it forwarded: the same session, resumed,
    // gets nothing redelivered. `start` waits until the bridge is ready, i.e. subscribed
    // on the resumed session, so anything redelivered would come within this window.
    let again = InProcess::start(config).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = again.stop().await;
    assert_eq!(
        stats.received, 0,
        "redelivered after a clean stop: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topics_are_refused_by_name_when_creation_is_not_allowed() {
    let brokers = testkit::kafka_brokers();
    let mut config = test_config(Mode::Embedded, &testkit::unique_name("plant"), &brokers);
    config.kafka.create_topics = false;
    let topic = config.kafka.topic.clone();
    let bridge = bridge::Bridge::start(config).await.unwrap();
    let error = tokio::time::timeout(
        Duration::from_secs(30),
        bridge.run_until(std::future::pending()),
    )
    .await
    .expect("the bridge gives up on missing topics")
    .unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains(&topic) && message.contains("create_topics"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_bridge_stopped_right_after_devices_publish_forwards_what_it_acknowledged() {
    let brokers = testkit::kafka_brokers();
    let prefix = testkit::unique_name("plant");
    let config = test_config(Mode::Embedded, &prefix, &brokers);
    let data_topic = config.kafka.topic.clone();
    let bridge = InProcess::start(config).await;
    let port = bridge.mqtt.expect("embedded mode listens").port();

    let mut publishers = Vec::new();
    for device in ["dev-a", "dev-b", "dev-c", "dev-d"] {
        let messages: Vec<(String, Vec<u8>)> = (0..250)
            .map(|i| {
                (
                    telemetry_topic(&prefix, device),
                    frame(device, 5, i * 50, 50),
                )
            })
            .collect();
        publishers.push(tokio::spawn(async move {
            publish_all(port, &testkit::unique_name("pub"), &messages).await
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    // rumqttd has acknowledged all 1000 to the devices; stop at once.
    let stats = bridge.stop().await;
    assert_eq!(stats.dropped_at_shutdown, 0);
    assert_eq!(stats.produced, 1000, "{stats:?}");
    let records = read_topic(&brokers, &data_topic, 1000, Duration::from_secs(60));
    assert_eq!(records.len(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_client_mode_bridges_share_the_load_and_lose_nothing() {
    let brokers = testkit::kafka_brokers();
    let (_, mqtt_port) = testkit::mqtt_host_port();
    let prefix = testkit::unique_name("plant");
    let mut first = test_config(Mode::Client, &prefix, &brokers);
    first.mqtt.port = mqtt_port;
    first.mqtt.shared_group = testkit::unique_name("group");
    let mut second = first.clone();
    second.id = testkit::unique_name("bridge");
    let data_topic = first.kafka.topic.clone();
    let (one, two) = (
        InProcess::start(first).await,
        InProcess::start(second).await,
    );

    let devices = ["dev-a", "dev-b", "dev-c", "dev-d"];
    let mut messages = Vec::new();
    for i in 0..500 {
        for device in devices {
            messages.push((
                telemetry_topic(&prefix, device),
                frame(device, 6, i * 50, 50),
            ));
        }
    }
    publish_all(mqtt_port, &testkit::unique_name("pub"), &messages).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while one.stats.snapshot().produced + two.stats.snapshot().produced < 2000 {
        assert!(std::time::Instant::now() < deadline, "not all forwarded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (a, b) = (one.stop().await, two.stop().await);
    assert!(
        a.produced > 0 && b.produced > 0,
        "one bridge did all the work: {a:?} {b:?}"
    );
    assert_eq!(a.produced + b.produced, 2000);

    let records = read_topic(&brokers, &data_topic, 2000, Duration::from_secs(60));
    let sent: HashSet<(String, u64)> = devices
        .iter()
        .flat_map(|d| (0..500).map(move |i| (d.to_string(), i * 50)))
        .collect();
    let stored: HashSet<(String, u64)> = sequences_by_device(&records)
        .into_iter()
        .flat_map(|(d, seqs)| seqs.into_iter().map(move |s| (d.clone(), s)))
        .collect();
    let missing: Vec<_> = sent.difference(&stored).collect();
    let unexpected: Vec<_> = stored.difference(&sent).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "read {} records back; {} frames missing (first: {:?}), {} never sent (first: {:?})",
        records.len(),
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        unexpected.len(),
        unexpected.iter().take(5).collect::<Vec<_>>(),
    );
    // Shared subscriptions spread one device's messages over both bridges, so Kafka
    // holds each device's frames in one partition but not necessarily in order (see
    // README: the ingester relies on identity, not order).
    assert_eq!(records.len(), 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_reach_prometheus_and_the_kafka_metrics_topic() {
    let brokers = testkit::kafka_brokers();
    let prefix = testkit::unique_name("plant");
    let mut config = test_config(Mode::Embedded, &prefix, &brokers);
    config.kafka.metrics_topic = testkit::unique_name("metrics");
    config.kafka.metrics_interval = Duration::from_secs(1);
    let (metrics_topic, id) = (config.kafka.metrics_topic.clone(), config.id.clone());
    let bridge = InProcess::start(config).await;
    let port = bridge.mqtt.expect("embedded mode listens").port();
    publish_all(
        port,
        &testkit::unique_name("pub"),
        &[
            (telemetry_topic(&prefix, "dev-a"), frame("dev-a", 7, 0, 10)),
            (telemetry_topic(&prefix, "dev-a"), b"not a frame".to_vec()),
        ],
    )
    .await;
    bridge.wait_settled(2, Duration::from_secs(60)).await;

    let (ready, body) = http_get(bridge.http, "/readyz").await;
    assert_eq!(ready, 200, "{body}");
    assert_eq!(body, "mqtt connected\nkafka connected\n");
    assert_eq!(http_get(bridge.http, "/livez").await.0, 200);
    let (_, metrics) = http_get(bridge.http, "/metrics").await;
    for name in [
        "bridge_messages_received_total",
        "bridge_messages_produced_total",
        "bridge_messages_dead_lettered_total{reason=\"decode\"}",
        "bridge_produce_latency_seconds_bucket",
        "bridge_kafka_queue_bytes",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }

    // Records come every second; the newest one counts both messages.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut seen = 0;
    let record = loop {
        // One more record than last time (they keep coming, so "until quiet" never ends).
        let records = read_topic(&brokers, &metrics_topic, seen + 1, Duration::from_secs(3));
        seen = records.len();
        let newest = records.last().map(|r| {
            let json: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            (r.key.clone(), json)
        });
        if let Some((key, json)) = newest {
            if json["counters"]["received"] == 2 {
                assert_eq!(key.as_deref(), Some(id.as_str()));
                break json;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no metrics record counted both"
        );
    };
    assert_eq!(record["service"], "bridge");
    assert_eq!(record["instance"], id.as_str());
    assert_eq!(record["counters"]["produced"], 1);
    assert_eq!(record["counters"]["dead_lettered"], 1);
    assert_eq!(record["connected"]["kafka"], true);
    assert_eq!(record["labels"]["mode"], "embedded");
    assert!(record["per_s"]["received"].as_f64().is_some(), "{record}");
    bridge.stop().await;
}

/// Status and body of a plain HTTP GET.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}
