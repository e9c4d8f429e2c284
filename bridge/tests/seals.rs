//! A gateway speaks only for its own devices: with the gateway registry, the bridge
//! forwards a frame only when it is sealed by the gateway its device is assigned to,
//! whoever published it. Plain MQTT clients (not the project's agent) try the ways
//! around it; each refused frame goes to `sensors-dlq` as `unauthorized`, naming the
//! device's gateway.

mod support;

use std::time::Duration;

use bridge::config::BridgeConfig;
use gateways::{registry, Secret};
use protocol::seal;
use protocol::FrameKey;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sqlx::PgPool;
use support::{frame, read_topic, registry_config, run_agent, telemetry_topic, InProcess, Record};

/// A gateway's connection to the embedded broker.
struct Gateway {
    id: String,
    client: AsyncClient,
    events: rumqttc::EventLoop,
}

impl Gateway {
    fn connect(port: u16, id: &str, secret: &Secret) -> Self {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_credentials(id, secret.expose());
        let (client, events) = AsyncClient::new(options, 64);
        Self {
            id: id.to_owned(),
            client,
            events,
        }
    }

    /// Publishes each (topic, payload) at QoS 1 and returns once all are acknowledged.
    async fn send(&mut self, messages: &[(String, Vec<u8>)]) {
        for (topic, payload) in messages {
            self.client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone())
                .await
                .unwrap();
        }
        let mut acked = 0;
        let id = self.id.clone();
        tokio::time::timeout(Duration::from_secs(20), async {
            while acked < messages.len() {
                match self.events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => panic!("{id}: {e}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{}: {acked} of {} acknowledged", self.id, messages.len()));
    }
}

async fn publish_as(port: u16, id: &str, secret: &Secret, messages: &[(String, Vec<u8>)]) {
    Gateway::connect(port, id, secret).send(messages).await;
}

fn sealed_with(key: &FrameKey, frame: Vec<u8>) -> Vec<u8> {
    let mut out = [0u8; protocol::MAX_SEALED_LEN];
    seal::seal(&frame, key, &mut out).unwrap().to_vec()
}

async fn bridge(pool: &PgPool, tune: impl FnOnce(&mut BridgeConfig)) -> (InProcess, BridgeConfig) {
    let mut config = registry_config(pool).await;
    tune(&mut config);
    (InProcess::start(config.clone()).await, config)
}

fn by_first_value(records: &[Record]) -> Vec<(u64, String)> {
    let mut seen: Vec<(u64, String)> = records
        .iter()
        .map(|r| {
            let frame = protocol::Frame::decode(&r.value).expect("a frame");
            (
                frame.first_seq,
                r.headers.get("dlq-detail").cloned().unwrap_or_default(),
            )
        })
        .collect();
    seen.sort();
    seen
}

#[sqlx::test(migrations = "../migrations")]
async fn only_frames_sealed_by_the_devices_own_gateway_are_forwarded(pool: PgPool) {
    let a = registry::add(&pool, "test", "pi-a", &["furnace-01".to_owned()])
        .await
        .unwrap();
    let b = registry::add(&pool, "test", "pi-b", &["press-01".to_owned()])
        .await
        .unwrap();
    let (bridge, config) = bridge(&pool, |_| {}).await;
    let port = bridge.mqtt.unwrap().port();
    let prefix = &config.topic_prefix;
    let furnace = telemetry_topic(prefix, "furnace-01");
    let press = telemetry_topic(prefix, "press-01");
    let booth = telemetry_topic(prefix, "paint-booth-01");

    publish_as(
        port,
        "pi-a",
        &a,
        &[
            (
                furnace.clone(),
                sealed_with(&a.frame_key(), frame("furnace-01", 1, 0, 5)),
            ),
            // Its own key, someone else's device.
            (
                press.clone(),
                sealed_with(&a.frame_key(), frame("press-01", 1, 100, 5)),
            ),
            // A device no gateway speaks for.
            (
                booth.clone(),
                sealed_with(&a.frame_key(), frame("paint-booth-01", 1, 200, 5)),
            ),
        ],
    )
    .await;
    publish_as(
        port,
        "pi-b",
        &b,
        &[
            (
                press.clone(),
                sealed_with(&b.frame_key(), frame("press-01", 1, 0, 5)),
            ),
            // pi-b forging the furnace: sealed with its own key, and not sealed at all.
            (
                furnace.clone(),
                sealed_with(&b.frame_key(), frame("furnace-01", 1, 300, 5)),
            ),
            (furnace.clone(), frame("furnace-01", 1, 400, 5)),
            // A tag cut short.
            (furnace.clone(), {
                let mut cut = sealed_with(&a.frame_key(), frame("furnace-01", 1, 500, 5));
                cut.truncate(cut.len() - 1);
                cut
            }),
        ],
    )
    .await;
    bridge.wait_settled(7, Duration::from_secs(30)).await;

    let data = read_topic(
        &config.kafka.brokers,
        &config.kafka.topic,
        2,
        Duration::from_secs(10),
    );
    let forwarded: Vec<(Option<String>, u64)> = {
        let mut seen: Vec<_> = data
            .iter()
            .map(|r| {
                (
                    r.key.clone(),
                    protocol::Frame::decode(&r.value).unwrap().first_seq,
                )
            })
            .collect();
        seen.sort();
        seen
    };
    assert_eq!(
        forwarded,
        [
            (Some("furnace-01".to_owned()), 0),
            (Some("press-01".to_owned()), 0)
        ]
    );
    assert!(
        data.iter().all(|r| seal::is_sealed(&r.value)),
        "frames travel sealed, so any later hop can check them again"
    );

    let letters = read_topic(
        &config.kafka.brokers,
        &config.kafka.dlq_topic,
        5,
        Duration::from_secs(10),
    );
    let mut refused: Vec<(String, String)> = letters
        .iter()
        .map(|r| {
            (
                r.headers.get("dlq-reason").cloned().unwrap_or_default(),
                r.headers.get("dlq-detail").cloned().unwrap_or_default(),
            )
        })
        .collect();
    refused.sort();
    let expect = [
        // A cut tag leaves no frame: refused before any key is looked at.
        ("decode", "truncated"),
        (
            "unauthorized",
            "device paint-booth-01 is not assigned to a gateway",
        ),
        (
            "unauthorized",
            "frame for furnace-01 is not sealed by its gateway pi-a",
        ),
        (
            "unauthorized",
            "frame for furnace-01 is not sealed; gateway pi-a",
        ),
        (
            "unauthorized",
            "frame for press-01 is not sealed by its gateway pi-b",
        ),
    ];
    assert_eq!(refused.len(), expect.len(), "{refused:?}");
    for ((reason, detail), (want_reason, want)) in refused.iter().zip(expect) {
        assert_eq!(reason, want_reason, "{detail}");
        assert!(detail.starts_with(want), "{detail}");
    }
    let counts = bridge.stats.snapshot();
    assert_eq!(counts.unauthorized_frames, 4);
    assert_eq!(counts.dead_lettered, 5);
    bridge.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn rotation_disabling_and_unsealed_frames_follow_the_settings(pool: PgPool) {
    let old = registry::add(&pool, "test", "pi-a", &["furnace-01".to_owned()])
        .await
        .unwrap();
    let (bridge, config) = bridge(&pool, |config| {
        config.embedded.auth_cache = Duration::from_millis(200);
        config.embedded.rotation_grace = Duration::ZERO;
        config.embedded.accept_unsealed = true;
    })
    .await;
    let port = bridge.mqtt.unwrap().port();
    let furnace = telemetry_topic(&config.topic_prefix, "furnace-01");
    let new = registry::rotate(&pool, "test", "pi-a").await.unwrap();

    let mut gateway = Gateway::connect(port, "pi-a", &new);
    gateway
        .send(&[
            (
                furnace.clone(),
                sealed_with(&new.frame_key(), frame("furnace-01", 2, 0, 5)),
            ),
            // The key before the rotation, with no grace configured.
            (
                furnace.clone(),
                sealed_with(&old.frame_key(), frame("furnace-01", 2, 100, 5)),
            ),
            // Unsealed frames are accepted by configuration; a wrong seal never is.
            (furnace.clone(), frame("furnace-01", 2, 200, 5)),
        ])
        .await;
    bridge.wait_settled(3, Duration::from_secs(30)).await;

    registry::set_enabled(&pool, "test", "pi-a", false)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Connected before it was disabled: its frames are refused all the same.
    gateway
        .send(&[(
            furnace.clone(),
            sealed_with(&new.frame_key(), frame("furnace-01", 2, 300, 5)),
        )])
        .await;
    bridge.wait_settled(4, Duration::from_secs(30)).await;

    let letters = read_topic(
        &config.kafka.brokers,
        &config.kafka.dlq_topic,
        2,
        Duration::from_secs(10),
    );
    let refused = by_first_value(&letters);
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!(refused[0].0, 100);
    assert_eq!(refused[1].0, 300);
    assert!(
        refused[1]
            .1
            .starts_with("gateway pi-a of device furnace-01 is disabled"),
        "{refused:?}"
    );
    bridge.stop().await;
}

/// The project's own agent, given its gateway's secret file, seals every frame so that
/// the registry-checking bridge forwards all of them and refuses none.
#[sqlx::test(migrations = "../migrations")]
async fn the_agents_frames_are_sealed_with_its_secret_and_all_forwarded(pool: PgPool) {
    let gateway = testkit::unique_name("pi");
    let secret = registry::add(&pool, "test", &gateway, &["furnace-01".to_owned()])
        .await
        .unwrap();
    let (bridge, config) = bridge(&pool, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let health = run_agent(
        dir.path(),
        &config.topic_prefix,
        bridge.mqtt.unwrap().port(),
        &gateway,
        secret.expose(),
        "",
    )
    .await;
    assert_eq!(health.queue_records, 0, "every frame was acknowledged");
    let frames = health.frames;
    assert!(frames >= 10, "{health:?}");
    bridge.wait_settled(frames, Duration::from_secs(30)).await;
    let counts = bridge.stats.snapshot();
    assert_eq!(counts.unauthorized_frames, 0, "{counts:?}");
    assert_eq!(counts.dead_lettered, 0, "{counts:?}");
    assert_eq!(counts.produced, frames, "{counts:?}");
    bridge.stop().await;
}
