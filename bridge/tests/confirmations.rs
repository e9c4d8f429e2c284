//! The confirmation relay against real brokers (a private Tansu, a private Mosquitto):
//! a confirmation the ingester would produce reaches a plain MQTT client on the device's
//! confirm topic, byte for byte, in both modes; records that are not confirmations for
//! this bridge's devices are counted and go nowhere, and do not stop the ones after them.
//!
//! The relay starts reading at the end of the topic once it finds it, so each test first
//! produces one confirmation again and again until it arrives: from then on, everything
//! produced is read.

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

    let stats = bridge.stop().await;
    assert!(stats.confirmations_relayed >= 1, "{stats:?}");
    assert_eq!(stats.confirmations_refused, 0, "{stats:?}");
}

/// The bridge binary (its own /metrics) in embedded mode, and a client subscribed to
/// every topic of its broker: five bad records, then a good one.
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
        for publish in &arrived {
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
