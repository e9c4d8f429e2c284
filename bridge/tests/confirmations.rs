//! The confirmation relay against real brokers (a private Tansu, a private Mosquitto):
//! a confirmation the ingester would produce reaches a plain MQTT client on the device's
//! confirm topic, byte for byte, in both modes; records that are not confirmations for
//! this bridge's devices are counted and go nowhere, and do not stop the ones after them.
//!
//! The relay starts reading at the end of the topic once it finds it, so each test first
//! produces one confirmation again and again until it arrives: from then on, everything
//! produced is read.
//!
//! The relay also keeps a retained JSON summary per device on its `completeness` topic:
//! it follows the newest boot, is updated as holes fill, and is not replaced by an older
//! boot's confirmation or by anything the relay refuses.

mod support;

use std::time::{Duration, Instant};

use bridge::Mode;
use protocol::kafka::headers;
use protocol::{BootId, Confirmation, DeviceId, SeqRange};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use serde_json::{json, Value};
use support::*;
use tokio::sync::mpsc;

/// An encoded confirmation of `device`: every sequence number below `below` committed,
/// and one range above it, so the bytes are not trivial.
fn confirmation(device: &str, boot: u8, below: u64) -> Vec<u8> {
    let mut confirmation = Confirmation::new(
        DeviceId::new(device).expect("test device id"),
        BootId([boot; 8]),
    );
    confirmation.committed_below = below;
    confirmation
        .committed
        .push(SeqRange::new(below + 10, below + 20))
        .expect("room for one range");
    let mut buf = [0u8; protocol::MAX_CONFIRM_LEN];
    confirmation
        .encode(&mut buf)
        .expect("valid test confirmation")
        .to_vec()
}

/// An encoded confirmation of `device`'s boot `boot`: `committed` and `refused` as
/// (start, end) ranges, the one starting at 0 being the committed prefix.
fn confirmation_of(
    device: &str,
    boot: u8,
    committed: &[(u64, u64)],
    refused: &[(u64, u64)],
) -> Vec<u8> {
    let mut confirmation = Confirmation::new(
        DeviceId::new(device).expect("test device id"),
        BootId([boot; 8]),
    );
    for &(start, end) in committed {
        if start == 0 {
            confirmation.committed_below = end;
        } else {
            confirmation
                .committed
                .push(SeqRange::new(start, end))
                .expect("at most 16 ranges");
        }
    }
    for &(start, end) in refused {
        confirmation
            .refused
            .push(SeqRange::new(start, end))
            .expect("at most 16 ranges");
    }
    let mut buf = [0u8; protocol::MAX_CONFIRM_LEN];
    confirmation
        .encode(&mut buf)
        .expect("valid test confirmation")
        .to_vec()
}

fn completeness_topic(prefix: &str, device: &str) -> String {
    format!("{prefix}/{SITE}/{LINE}/{device}/completeness")
}

/// The next message `received` gets within `within`, as JSON on its topic.
async fn next_summary(
    received: &mut mpsc::UnboundedReceiver<Publish>,
    within: Duration,
) -> Option<(String, Value, bool)> {
    let publish = tokio::time::timeout(within, received.recv()).await.ok()??;
    let json = serde_json::from_slice(&publish.payload).unwrap_or_else(|e| {
        panic!(
            "the summary on {} is not JSON ({e}): {:?}",
            publish.topic,
            String::from_utf8_lossy(&publish.payload)
        )
    });
    Some((publish.topic, json, publish.retain))
}

/// Reads summaries until one equals `expected` (the summaries before it must be
/// earlier states of the same boot: the throttle may merge or skip some) and returns
/// every one read.
async fn wait_for_summary(
    received: &mut mpsc::UnboundedReceiver<Publish>,
    topic: &str,
    expected: &Value,
    within: Duration,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some((on, json, _)) = next_summary(received, left).await else {
            panic!("no summary {expected} on {topic} within {within:?}; got {seen:?}");
        };
        assert_eq!(on, topic, "a summary on another device's topic: {json}");
        seen.push(json.clone());
        if &json == expected {
            return seen;
        }
    }
}

/// A record the relay must refuse: its `mqtt-topic` header, its value, and the reason
/// label it is counted under.
type BadRecord<'a> = (Option<&'a [u8]>, Vec<u8>, &'static str);

fn confirm_topic(prefix: &str, device: &str) -> String {
    format!("{prefix}/{SITE}/{LINE}/{device}/confirm")
}

async fn create_topic(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics request");
    for result in results {
        result.expect("topic created");
    }
}

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer")
}

/// Produces one record as the ingester does (key = device, content type, MQTT topic),
/// with the `mqtt-topic` header left out when `mqtt_topic` is `None`.
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    device: &str,
    mqtt_topic: Option<&[u8]>,
    value: &[u8],
) {
    let mut record_headers = OwnedHeaders::new().insert(Header {
        key: headers::CONTENT_TYPE,
        value: Some(protocol::kafka::CONFIRM_CONTENT_TYPE),
    });
    if let Some(mqtt_topic) = mqtt_topic {
        record_headers = record_headers.insert(Header {
            key: headers::MQTT_TOPIC,
            value: Some(mqtt_topic),
        });
    }
    producer
        .send(
            FutureRecord::to(topic)
                .key(device)
                .payload(value)
                .headers(record_headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("Kafka took the record");
}

/// A plain MQTT client subscribed to `filter`; returns once the broker confirmed the
/// subscription, with the messages it receives from then on.
async fn subscriber(port: u16, filter: &str) -> (AsyncClient, mpsc::UnboundedReceiver<Publish>) {
    let mut options = MqttOptions::new(testkit::unique_name("device"), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("queue subscribe");
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(subscribed) = subscribed_tx.take() {
                        let _ = subscribed.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if tx.send(publish).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                // The test has ended (or the broker went): nothing to report to.
                Err(_) => return,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(20), subscribed)
        .await
        .expect("subscribed within 20 s")
        .expect("subscriber task alive");
    (client, rx)
}

/// Produces `value` for `device` again and again until the subscriber receives it (the
/// relay may not have found the topic, or its end, yet) and returns what arrived.
async fn relay_until_received(
    brokers: &str,
    topic: &str,
    prefix: &str,
    device: &str,
    value: &[u8],
    received: &mut mpsc::UnboundedReceiver<Publish>,
) -> Publish {
    let producer = producer(brokers);
    let within = Duration::from_secs(60);
    let deadline = Instant::now() + within;
    let mqtt_topic = confirm_topic(prefix, device);
    loop {
        produce(&producer, topic, device, Some(mqtt_topic.as_bytes()), value).await;
        if let Ok(Some(publish)) =
            tokio::time::timeout(Duration::from_millis(500), received.recv()).await
        {
            return publish;
        }
        assert!(
            Instant::now() < deadline,
            "no confirmation on {mqtt_topic} within {within:?}"
        );
    }
}

/// Checks the message the device got: the record's value unchanged, on its topic, not
/// retained. (The QoS is checked in client mode only: rumqttd delivers at the
/// subscription's QoS whatever the publish's, Mosquitto at the lower of the two.)
fn assert_relayed(publish: &Publish, topic: &str, value: &[u8]) {
    assert_eq!(publish.topic, topic);
    assert_eq!(
        publish.payload.as_ref(),
        value,
        "the bytes changed on the way"
    );
    assert!(!publish.retain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mode_relays_a_confirmation_to_the_devices_confirm_topic_byte_for_byte() {
    let kafka = testkit::Tansu::start();
    let mosquitto = testkit::Mosquitto::start();
    let prefix = testkit::unique_name("plant");
    let mut config = test_config(Mode::Client, &prefix, &kafka.brokers());
    config.mqtt.port = mosquitto.port();
    let confirm = config.kafka.confirm_topic.clone();
    create_topic(&kafka.brokers(), &confirm).await;
    let bridge = InProcess::start(config).await;

    let (_device, mut received) =
        subscriber(mosquitto.port(), &confirm_topic(&prefix, "dev-a")).await;
    let value = confirmation("dev-a", 3, 1_000);
    let publish = relay_until_received(
        &kafka.brokers(),
        &confirm,
        &prefix,
        "dev-a",
        &value,
        &mut received,
    )
    .await;
    assert_relayed(&publish, &confirm_topic(&prefix, "dev-a"), &value);
    // Subscribed at QoS 1: Mosquitto delivers at the publish's QoS 0.
    assert_eq!(publish.qos, QoS::AtMostOnce);

    let stats = bridge.stop().await;
    assert!(stats.confirmations_relayed >= 1, "{stats:?}");
    assert_eq!(stats.confirmations_refused, 0, "{stats:?}");
}

/// Client mode (Mosquitto): the retained summary follows a device's confirmations — a
/// hole, then the hole filled and a refused range, then a new boot — and neither an
/// older boot's confirmation nor records the relay refuses change it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retained_completeness_summary_follows_the_newest_boot_of_each_device() {
    let kafka = testkit::Tansu::start();
    let mosquitto = testkit::Mosquitto::start();
    let prefix = testkit::unique_name("plant");
    let mut config = test_config(Mode::Client, &prefix, &kafka.brokers());
    config.mqtt.port = mosquitto.port();
    let confirm = config.kafka.confirm_topic.clone();
    create_topic(&kafka.brokers(), &confirm).await;
    let bridge = InProcess::start(config).await;
    let within = Duration::from_secs(20);
    let summaries_filter = format!("{prefix}/+/+/+/completeness");
    let (_viewer, mut summaries) = subscriber(mosquitto.port(), &summaries_filter).await;
    let (_device, mut confirmations) =
        subscriber(mosquitto.port(), &confirm_topic(&prefix, "dev-c")).await;
    let dev_c = completeness_topic(&prefix, "dev-c");

    // Boot 5: 0..11000 and 11050..12000 stored, 50 readings missing between.
    let holed = confirmation_of("dev-c", 5, &[(0, 11_000), (11_050, 12_000)], &[]);
    relay_until_received(
        &kafka.brokers(),
        &confirm,
        &prefix,
        "dev-c",
        &holed,
        &mut confirmations,
    )
    .await;
    let boot5 = "0505050505050505";
    let first = json!({
        "boot_id": boot5, "stored_below": 12_000, "stored": 11_950, "missing": 50,
        "missing_ranges": [[11_000, 11_050]], "refused": 0, "refused_ranges": [],
        "partial": false,
    });
    wait_for_summary(&mut summaries, &dev_c, &first, within).await;

    // The hole filled by a resend; 10 readings above refused for good.
    let producer = producer(&kafka.brokers());
    let confirm_c = confirm_topic(&prefix, "dev-c");
    let filled = confirmation_of("dev-c", 5, &[(0, 12_000)], &[(12_000, 12_010)]);
    produce(
        &producer,
        &confirm,
        "dev-c",
        Some(confirm_c.as_bytes()),
        &filled,
    )
    .await;
    let complete = json!({
        "boot_id": boot5, "stored_below": 12_010, "stored": 12_000, "missing": 0,
        "missing_ranges": [], "refused": 10, "refused_ranges": [[12_000, 12_010]],
        "partial": false,
    });
    for earlier in wait_for_summary(&mut summaries, &dev_c, &complete, within).await {
        assert!(earlier == first || earlier == complete, "{earlier}");
    }

    // The agent restarted: boot 6 replaces boot 5.
    let rebooted = confirmation_of("dev-c", 6, &[(0, 300)], &[]);
    produce(
        &producer,
        &confirm,
        "dev-c",
        Some(confirm_c.as_bytes()),
        &rebooted,
    )
    .await;
    let boot6 = json!({
        "boot_id": "0606060606060606", "stored_below": 300, "stored": 300, "missing": 0,
        "missing_ranges": [], "refused": 0, "refused_ranges": [], "partial": false,
    });
    wait_for_summary(&mut summaries, &dev_c, &boot6, within).await;
    // Past the throttle's interval (1 s) since that publish, so an older boot's summary,
    // if it were taken, would go out at once instead of waiting to be overtaken.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    // The ingester still confirming boot 5's backlog, then records the relay refuses
    // (garbage for dev-c, another device's confirmation on dev-c's topic, garbage for
    // dev-e), then boot 6 again, further on. One partition, read in order: once boot 6's
    // newer summary is here, everything before it was read.
    let backlog = confirmation_of("dev-c", 5, &[(0, 13_000)], &[]);
    let mismatch = confirmation_of("dev-d", 6, &[(0, 10)], &[]);
    let confirm_e = confirm_topic(&prefix, "dev-e");
    let records: [(&str, &[u8]); 4] = [
        (&confirm_c, &backlog),
        (&confirm_c, b"\x01not a confirmation"),
        (&confirm_c, &mismatch),
        (&confirm_e, b"\x01not a confirmation"),
    ];
    for (mqtt_topic, value) in records {
        produce(
            &producer,
            &confirm,
            "dev-c",
            Some(mqtt_topic.as_bytes()),
            value,
        )
        .await;
    }
    let later = confirmation_of("dev-c", 6, &[(0, 400)], &[]);
    produce(
        &producer,
        &confirm,
        "dev-c",
        Some(confirm_c.as_bytes()),
        &later,
    )
    .await;
    let boot6_later = json!({
        "boot_id": "0606060606060606", "stored_below": 400, "stored": 400, "missing": 0,
        "missing_ranges": [], "refused": 0, "refused_ranges": [], "partial": false,
    });
    // Only boot 6 on dev-c's topic in between, and nothing on any other device's.
    for seen in wait_for_summary(&mut summaries, &dev_c, &boot6_later, within).await {
        assert_eq!(seen["boot_id"], "0606060606060606", "{seen}");
    }

    // Retained: a client that subscribes now gets the newest summary at once.
    let (_late, mut late) = subscriber(mosquitto.port(), &summaries_filter).await;
    let (on, json, retained) = next_summary(&mut late, within)
        .await
        .unwrap_or_else(|| panic!("no retained summary within {within:?}"));
    assert_eq!(
        (on.as_str(), &json, retained),
        (dev_c.as_str(), &boot6_later, true)
    );

    let stats = bridge.stop().await;
    assert_eq!(stats.confirmations_refused, 3, "{stats:?}");
    assert!(
        (4..=stats.confirmations_relayed).contains(&stats.completeness_published),
        "one summary per state at most, each after a relayed confirmation: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_relays_a_confirmation_once_its_topic_appears() {
    let kafka = testkit::Tansu::start();
    let prefix = testkit::unique_name("plant");
    let config = test_config(Mode::Embedded, &prefix, &kafka.brokers());
    let confirm = config.kafka.confirm_topic.clone();
    // The bridge starts before the topic exists (the ingester creates it): the relay
    // waits for it instead of failing.
    let bridge = InProcess::start(config).await;
    let port = bridge.mqtt.expect("embedded mode listens").port();
    let (_device, mut received) = subscriber(port, &confirm_topic(&prefix, "dev-b")).await;
    create_topic(&kafka.brokers(), &confirm).await;

    let value = confirmation("dev-b", 4, 77);
    let publish = relay_until_received(
        &kafka.brokers(),
        &confirm,
        &prefix,
        "dev-b",
        &value,
        &mut received,
    )
    .await;
    assert_relayed(&publish, &confirm_topic(&prefix, "dev-b"), &value);

    // rumqttd keeps the summary retained too: a client subscribing now gets it.
    let dev_b = completeness_topic(&prefix, "dev-b");
    let within = Duration::from_secs(20);
    let (_viewer, mut summaries) = subscriber(port, &dev_b).await;
    let (on, json, retained) = next_summary(&mut summaries, within)
        .await
        .unwrap_or_else(|| panic!("no retained summary on {dev_b} within {within:?}"));
    let expected = json!({
        "boot_id": "0404040404040404", "stored_below": 97, "stored": 87, "missing": 10,
        "missing_ranges": [[77, 87]], "refused": 0, "refused_ranges": [], "partial": false,
    });
    assert_eq!(
        (on.as_str(), &json, retained),
        (dev_b.as_str(), &expected, true)
    );

    let stats = bridge.stop().await;
    assert!(stats.confirmations_relayed >= 1, "{stats:?}");
    assert_eq!(stats.confirmations_refused, 0, "{stats:?}");
}

/// The bridge binary (its own /metrics) in embedded mode, and a client subscribed to
/// every topic of its broker: five bad records, then a good one. Only the good ones
/// reach the device's confirm topic and its completeness summary.
#[test]
fn records_that_are_not_confirmations_for_this_bridge_are_counted_and_not_relayed() {
    let kafka = testkit::Tansu::start();
    let prefix = testkit::unique_name("plant");
    let config = test_config(Mode::Embedded, &prefix, &kafka.brokers());
    let confirm = config.kafka.confirm_topic.clone();
    let port = config.embedded.listen.port();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(create_topic(&kafka.brokers(), &confirm));
    let mut bridge = Process::spawn(&config);

    runtime.block_on(async {
        let (_device, mut received) = subscriber(port, "#").await;
        let probe = confirmation("dev-a", 1, 10);
        relay_until_received(
            &kafka.brokers(),
            &confirm,
            &prefix,
            "dev-a",
            &probe,
            &mut received,
        )
        .await;

        let producer = producer(&kafka.brokers());
        let good = confirmation("dev-a", 2, 500);
        let dev_a = confirm_topic(&prefix, "dev-a");
        let telemetry = telemetry_topic(&prefix, "dev-a");
        let other_prefix = confirm_topic("elsewhere", "dev-a");
        let bad: [BadRecord; 5] = [
            (None, good.clone(), "header"),
            (Some(telemetry.as_bytes()), good.clone(), "kind"),
            (Some(other_prefix.as_bytes()), good.clone(), "prefix"),
            (
                Some(dev_a.as_bytes()),
                b"\x01not a confirmation".to_vec(),
                "decode",
            ),
            (
                Some(dev_a.as_bytes()),
                confirmation("dev-z", 2, 500),
                "device-mismatch",
            ),
        ];
        for (mqtt_topic, value, _) in &bad {
            produce(&producer, &confirm, "dev-a", *mqtt_topic, value).await;
        }
        let last = confirmation("dev-a", 9, 900);
        produce(&producer, &confirm, "dev-a", Some(dev_a.as_bytes()), &last).await;

        // One partition, read in order: once the last one is here, the bad ones were read.
        let within = Duration::from_secs(30);
        let arrived = tokio::time::timeout(within, async {
            let mut seen = Vec::new();
            while let Some(publish) = received.recv().await {
                let is_last = publish.payload.as_ref() == last.as_slice();
                seen.push(publish);
                if is_last {
                    return seen;
                }
            }
            seen
        })
        .await
        .unwrap_or_else(|_| panic!("the valid confirmation after the bad ones within {within:?}"));
        let dev_a_summary = completeness_topic(&prefix, "dev-a");
        for publish in &arrived {
            if publish.topic == dev_a_summary {
                // The retained summaries of the valid ones (probe: boot 1, last: boot 9);
                // nothing of the refused records' confirmations (boot 2).
                let json: Value = serde_json::from_slice(&publish.payload).expect("JSON");
                assert!(
                    ["0101010101010101", "0909090909090909"]
                        .contains(&json["boot_id"].as_str().unwrap_or_default()),
                    "{json}"
                );
                continue;
            }
            // Repeats of the probe may still be arriving; nothing else may.
            let expected = if publish.payload.as_ref() == probe.as_slice() {
                &probe
            } else {
                &last
            };
            assert_relayed(publish, &dev_a, expected);
        }

        for (_, _, reason) in &bad {
            let name = format!("bridge_confirmations_refused_total{{reason=\"{reason}\"}}");
            assert_eq!(bridge.metric(&name), 1.0, "{name}");
        }
        assert_eq!(bridge.metric("bridge_confirmations_refused_total"), 5.0);
        assert!(bridge.metric("bridge_confirmations_relayed_total") >= 2.0);
        assert_eq!(bridge.metric("bridge_confirmations_unsent_total"), 0.0);
        assert!(bridge.metric("bridge_completeness_published_total") >= 1.0);
        assert_eq!(bridge.metric("bridge_completeness_skipped_total"), 0.0);
    });
    // The relay, idle on its consumer, does not hold up a clean stop.
    let stopped = Instant::now();
    assert!(bridge.terminate().success());
    assert!(
        stopped.elapsed() < Duration::from_secs(15),
        "stopping took {:?}",
        stopped.elapsed()
    );
}
