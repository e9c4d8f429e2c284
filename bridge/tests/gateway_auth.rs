//! Who may connect to the embedded broker: a plain MQTT client (not the project's
//! agent) tries every way in against a bridge authenticating with the gateway registry
//! in a real PostgreSQL, and only a registered, enabled gateway with its current secret
//! and its own client id gets a session.

mod support;

use std::time::Duration;

use bridge::stats::AuthRefusal;
use bridge::Mode;
use gateways::registry;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sqlx::PgPool;
use support::{frame, registry_config, telemetry_topic, test_config, InProcess};

const WAIT: Duration = Duration::from_secs(10);

/// Connects and reports whether the broker accepted the session; on acceptance, also
/// publishes `publish` and waits for its PUBACK.
async fn connect(
    port: u16,
    client_id: &str,
    credentials: Option<(&str, &str)>,
    publish: Option<(String, Vec<u8>)>,
) -> Result<(), String> {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(10));
    if let Some((user, secret)) = credentials {
        options.set_credentials(user, secret);
    }
    let (client, mut events) = AsyncClient::new(options, 10);
    let outcome = tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if ack.code != rumqttc::ConnectReturnCode::Success {
                        return Err(format!("refused: {:?}", ack.code));
                    }
                    match &publish {
                        Some((topic, payload)) => client
                            .publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone())
                            .await
                            .map_err(|e| e.to_string())?,
                        None => return Ok(()),
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(format!("no session: {e}")),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("no answer within 10 s".to_owned()));
    let _ = client.disconnect().await;
    outcome
}

async fn bridge_on_registry(pool: &PgPool, auth_cache: Duration) -> (InProcess, String) {
    let mut config = registry_config(pool).await;
    let prefix = config.topic_prefix.clone();
    config.embedded.auth_cache = auth_cache;
    config
        .embedded
        .users
        .insert("explorer".to_owned(), "tool-password".to_owned());
    (InProcess::start(config).await, prefix)
}

/// GET over a plain TCP connection: the bridge's endpoint answers HTTP/1.1.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

#[sqlx::test(migrations = "../migrations")]
async fn only_a_registered_enabled_gateway_with_its_secret_and_client_id_connects(pool: PgPool) {
    let furnace = vec!["furnace-01".to_owned()];
    let secret = registry::add(&pool, "test", "pi-a", &furnace)
        .await
        .unwrap();
    let other = registry::add(&pool, "test", "pi-b", &[]).await.unwrap();
    let (bridge, prefix) = bridge_on_registry(&pool, Duration::from_millis(300)).await;
    let port = bridge.mqtt.unwrap().port();
    let reading = (
        telemetry_topic(&prefix, "furnace-01"),
        frame("furnace-01", 1, 0, 5),
    );

    connect(
        port,
        "pi-a",
        Some(("pi-a", secret.expose())),
        Some(reading.clone()),
    )
    .await
    .expect("the gateway with its secret publishes");
    connect(port, "pi-a@iotctl-1", Some(("pi-a", secret.expose())), None)
        .await
        .expect("a client id under the gateway's");
    connect(port, "explorer", Some(("explorer", "tool-password")), None)
        .await
        .expect("a user of embedded.users");

    let refusals = [
        ("pi-a", Some(("pi-a", other.expose()))),
        ("pi-a", Some(("pi-a", ""))),
        ("explorer", Some(("explorer", "guess"))),
        ("ghost", Some(("ghost", secret.expose()))),
        // Would knock pi-b off the broker if it were let in.
        ("pi-b", Some(("pi-a", secret.expose()))),
        ("pi-ab", Some(("pi-a", secret.expose()))),
    ];
    for (client_id, credentials) in refusals {
        let outcome = connect(port, client_id, credentials, Some(reading.clone())).await;
        assert!(
            outcome.is_err(),
            "{client_id} as {credentials:?} was let in"
        );
    }
    connect(port, "anonymous", None, Some(reading.clone()))
        .await
        .expect_err("a client without credentials");
    let counts = bridge.stats.snapshot();
    assert_eq!(counts.auth_refused_for(AuthRefusal::WrongSecret), 3);
    assert_eq!(counts.auth_refused_for(AuthRefusal::Unknown), 1);
    assert_eq!(counts.auth_refused_for(AuthRefusal::ClientId), 2);
    assert_eq!(counts.auth_accepted, 3);
    assert_eq!(
        counts.received, 1,
        "only the accepted gateway's publish reached the bridge"
    );
    let exported = http_get(bridge.http, "/metrics").await;
    assert!(
        exported.contains("bridge_mqtt_auth_refused_total{reason=\"client-id\"}"),
        "refusals are exported by reason:\n{exported}"
    );

    // Disabled: refused once the accepted secret's trust (300 ms here) has passed.
    registry::set_enabled(&pool, "test", "pi-a", false)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    connect(port, "pi-a", Some(("pi-a", secret.expose())), None)
        .await
        .expect_err("a disabled gateway");
    assert_eq!(
        bridge
            .stats
            .snapshot()
            .auth_refused_for(AuthRefusal::Disabled),
        1
    );
    registry::set_enabled(&pool, "test", "pi-a", true)
        .await
        .unwrap();
    connect(port, "pi-a", Some(("pi-a", secret.expose())), None)
        .await
        .expect("enabled again");

    // Rotated: the new secret works at once, and from then on the old one does not.
    let rotated = registry::rotate(&pool, "test", "pi-a").await.unwrap();
    connect(port, "pi-a", Some(("pi-a", rotated.expose())), None)
        .await
        .expect("the new secret");
    connect(port, "pi-a", Some(("pi-a", secret.expose())), None)
        .await
        .expect_err("the old secret");

    // Added while the bridge runs: accepted without waiting for anything.
    let late = registry::add(&pool, "test", "pi-late", &[]).await.unwrap();
    connect(port, "pi-late", Some(("pi-late", late.expose())), None)
        .await
        .expect("a gateway added a moment ago");
    bridge.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_flood_of_bad_connections_lets_nothing_through_and_leaves_the_broker_serving(
    pool: PgPool,
) {
    let secret = registry::add(&pool, "test", "pi-a", &[]).await.unwrap();
    let (bridge, prefix) = bridge_on_registry(&pool, Duration::from_secs(10)).await;
    let port = bridge.mqtt.unwrap().port();
    let reading = (
        telemetry_topic(&prefix, "furnace-01"),
        frame("furnace-01", 1, 0, 5),
    );
    let attempts: Vec<_> = (0..200)
        .map(|i| {
            let reading = reading.clone();
            tokio::spawn(async move {
                let id = format!("intruder-{i}");
                let guess = format!("{i:064}");
                connect(port, &id, Some((&id, &guess)), Some(reading)).await
            })
        })
        .collect();
    for attempt in attempts {
        assert!(attempt.await.unwrap().is_err(), "an intruder was let in");
    }
    let counts = bridge.stats.snapshot();
    assert_eq!(
        counts.auth_refused_for(AuthRefusal::Unknown),
        200,
        "{counts:?}"
    );
    assert_eq!(counts.received, 0);
    connect(port, "pi-a", Some(("pi-a", secret.expose())), Some(reading))
        .await
        .expect("the real gateway, right after the flood");
    bridge.stop().await;
}

#[tokio::test]
async fn without_the_registry_only_gateways_found_before_connect() {
    let mut postgres = testkit::Postgres::start();
    let pool = PgPool::connect(&postgres.url("postgres")).await.unwrap();
    sqlx::migrate!("../migrations").run(&pool).await.unwrap();
    let secret = registry::add(&pool, "test", "pi-a", &[]).await.unwrap();
    let known_late = registry::add(&pool, "test", "pi-b", &[]).await.unwrap();
    pool.close().await;

    let prefix = testkit::unique_name("plant");
    let mut config = test_config(Mode::Embedded, &prefix, &testkit::kafka_brokers());
    config.embedded.allow_anonymous = false;
    config.embedded.registry_url = postgres.url("postgres");
    config.embedded.auth_cache = Duration::from_millis(200);
    let bridge = InProcess::start(config).await;
    let port = bridge.mqtt.unwrap().port();
    connect(port, "pi-a", Some(("pi-a", secret.expose())), None)
        .await
        .expect("pi-a while the registry answers");

    postgres.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    connect(port, "pi-a", Some(("pi-a", secret.expose())), None)
        .await
        .expect("pi-a on what was cached, its trust expired and the registry away");
    connect(port, "pi-a", Some(("pi-a", known_late.expose())), None)
        .await
        .expect_err("a wrong secret for pi-a, registry away or not");
    connect(port, "pi-b", Some(("pi-b", known_late.expose())), None)
        .await
        .expect_err("pi-b, never looked up before the registry went away");
    // The lookup gives up after its pool's acquire timeout, after the client did.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let counts = bridge.stats.snapshot();
        if counts.auth_refused_for(AuthRefusal::RegistryUnavailable) == 1 {
            assert_eq!(
                counts.auth_refused_for(AuthRefusal::WrongSecret),
                1,
                "{counts:?}"
            );
            assert_eq!(counts.auth_accepted, 2, "{counts:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bridge.stop().await;
}
