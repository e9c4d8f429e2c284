//! TLS with client certificates on both of the bridge's MQTT sides. Embedded mode: the
//! project's agent, with its CA, client certificate and gateway secret, gets every frame
//! through; plain MQTT clients (not the agent) without TLS, without a client
//! certificate, or with one from another CA get no session. Client mode: the bridge
//! reaches a Mosquitto that demands TLS, a client certificate and a password, with its
//! password in a file, and forwards what a TLS publisher sent; with the wrong password
//! it gets no session.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bridge::config::EmbeddedTls;
use bridge::Bridge;
use bridge::Mode;
use gateways::registry;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use sqlx::PgPool;
use support::{
    frame, read_topic, registry_config, run_agent, telemetry_topic, test_config, InProcess,
};

/// PEM files in a directory: a CA and a certificate (with its key) it signed.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(dir: &Path, name: &str, subject: &str) -> Pki {
    // Distinct names: OpenSSL (Mosquitto) takes a certificate whose subject is its
    // issuer's name for a self-signed one.
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} CA"));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![subject.to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, subject);
    let cert = params.signed_by(&key, &ca).unwrap();
    let write = |file: &str, pem: String| {
        let path = dir.join(format!("{name}-{file}"));
        std::fs::write(&path, pem).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", ca.pem()),
        cert: write("cert.pem", cert.pem()),
        key: write("key.pem", key.serialize_pem()),
    }
}

/// Connects a plain rumqttc client over TLS trusting `ca`, presenting `client` if
/// given, as gateway `id`; whether it got a session.
async fn tls_session(port: u16, ca: &Path, client: Option<&Pki>, id: &str, secret: &str) -> bool {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_credentials(id, secret);
    options.set_transport(tls_transport(ca, client));
    session(options).await
}

fn tls_transport(ca: &Path, client: Option<&Pki>) -> Transport {
    Transport::tls_with_config(TlsConfiguration::Simple {
        ca: std::fs::read(ca).unwrap(),
        alpn: None,
        client_auth: client.map(|c| {
            (
                std::fs::read(&c.cert).unwrap(),
                std::fs::read(&c.key).unwrap(),
            )
        }),
    })
}

async fn session(options: MqttOptions) -> bool {
    let (client, mut events) = AsyncClient::new(options, 10);
    let connected = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    return ack.code == rumqttc::ConnectReturnCode::Success
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    let _ = client.disconnect().await;
    connected
}

#[sqlx::test(migrations = "../migrations")]
async fn the_agent_delivers_over_tls_with_its_client_certificate_and_nothing_else_gets_in(
    pool: PgPool,
) {
    let dir = tempfile::tempdir().unwrap();
    let broker = pki(dir.path(), "broker", "127.0.0.1");
    let devices = pki(dir.path(), "devices", "pi-tls");
    let rogue = pki(dir.path(), "rogue", "pi-tls");
    let gateway = testkit::unique_name("pi");
    let secret = registry::add(&pool, "test", &gateway, &["furnace-01".to_owned()])
        .await
        .unwrap();
    let mut config = registry_config(&pool).await;
    config.embedded.tls = Some(EmbeddedTls {
        cert: broker.cert.clone(),
        key: broker.key.clone(),
        client_ca: devices.ca.clone(),
    });
    let bridge = InProcess::start(config.clone()).await;
    let port = bridge.mqtt.unwrap().port();

    // Plain clients: only the right CA's client certificate (and the secret) get in.
    assert!(tls_session(port, &broker.ca, Some(&devices), &gateway, secret.expose()).await);
    assert!(
        !tls_session(port, &broker.ca, None, &gateway, secret.expose()).await,
        "no client certificate"
    );
    assert!(
        !tls_session(port, &broker.ca, Some(&rogue), &gateway, secret.expose()).await,
        "another CA's client certificate"
    );
    let mut plain = MqttOptions::new(gateway.as_str(), "127.0.0.1", port);
    plain.set_credentials(gateway.as_str(), secret.expose());
    assert!(!session(plain).await, "plain MQTT on the TLS listener");

    // The agent, configured as a Pi would be.
    let health = run_agent(
        dir.path(),
        &config.topic_prefix,
        port,
        &gateway,
        secret.expose(),
        &format!(
            r#"tls = {{ ca = "{}", client_cert = "{}", client_key = "{}" }}"#,
            broker.ca.display(),
            devices.cert.display(),
            devices.key.display()
        ),
    )
    .await;
    assert_eq!(health.queue_records, 0, "{health:?}");
    let frames = health.frames;
    assert!(frames >= 10, "{health:?}");
    bridge.wait_settled(frames, Duration::from_secs(30)).await;
    let counts = bridge.stats.snapshot();
    assert_eq!(
        (counts.produced, counts.dead_lettered),
        (frames, 0),
        "{counts:?}"
    );
    bridge.stop().await;
}

#[test]
fn unreadable_tls_files_are_refused_by_key() {
    let mut config = test_config(Mode::Embedded, "plant", "127.0.0.1:9092");
    config.embedded.tls = Some(EmbeddedTls {
        cert: "/nonexistent/broker.pem".into(),
        key: "/nonexistent/broker.key".into(),
        client_ca: "/nonexistent/ca.pem".into(),
    });
    let problems = config.validate().unwrap_err().to_string();
    for key in [
        "embedded.tls.cert",
        "embedded.tls.key",
        "embedded.tls.client_ca",
    ] {
        assert!(problems.contains(key), "{problems}");
    }
}

fn owner_only(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mode_reaches_a_broker_that_demands_tls_a_certificate_and_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let broker = pki(dir.path(), "broker", "127.0.0.1");
    let clients = pki(dir.path(), "clients", "bridge");
    let passwords = dir.path().join("mosquitto.passwd");
    let made = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["bridge", "s3cret-of-the-bridge"])
        .status()
        .expect("mosquitto_passwd (scripts/stack.sh installs mosquitto)");
    assert!(made.success());
    let mosquitto = testkit::Mosquitto::start_with(&format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\npassword_file {}",
        clients.ca.display(),
        broker.cert.display(),
        broker.key.display(),
        passwords.display()
    ));
    let prefix = testkit::unique_name("plant");
    let mut config = test_config(Mode::Client, &prefix, &testkit::kafka_brokers());
    config.mqtt.port = mosquitto.port();
    config.mqtt.username = Some("bridge".to_owned());
    let password_file = dir.path().join("bridge.secret");
    owner_only(&password_file, "s3cret-of-the-bridge\n");
    config.mqtt.password_file = Some(password_file);
    config.mqtt.tls = Some(service::mqtt_tls::MqttTls {
        ca: broker.ca.clone(),
        client_cert: Some(clients.cert.clone()),
        client_key: Some(clients.key.clone()),
    });
    let data_topic = config.kafka.topic.clone();

    // The wrong password: no session, so never ready.
    let wrong_file = dir.path().join("wrong.secret");
    owner_only(&wrong_file, "not-the-secret\n");
    let mut wrong = config.clone();
    wrong.mqtt.password_file = Some(wrong_file);
    let refused = Bridge::start(wrong).await.unwrap();
    let readiness = refused.readiness();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(refused.run_until(async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!readiness.ready(), "connected with the wrong password");
    let _ = stop.send(());
    task.await.unwrap().unwrap();

    let bridge = InProcess::start(config).await;
    let mut publisher = MqttOptions::new("tls-publisher", "127.0.0.1", mosquitto.port());
    publisher.set_credentials("bridge", "s3cret-of-the-bridge");
    publisher.set_transport(tls_transport(&broker.ca, Some(&clients)));
    let (client, mut events) = AsyncClient::new(publisher, 10);
    client
        .publish(
            telemetry_topic(&prefix, "dev-a"),
            QoS::AtLeastOnce,
            false,
            frame("dev-a", 2, 7, 5),
        )
        .await
        .unwrap();
    let acked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::PubAck(_)) = events.poll().await.unwrap() {
                return;
            }
        }
    })
    .await;
    assert!(acked.is_ok(), "the TLS publisher got no PUBACK");
    bridge.wait_settled(1, Duration::from_secs(30)).await;
    let records = read_topic(
        &testkit::kafka_brokers(),
        &data_topic,
        1,
        Duration::from_secs(30),
    );
    assert_eq!(records.len(), 1);
    let counts = bridge.stop().await;
    assert_eq!(
        (counts.produced, counts.dead_lettered),
        (1, 0),
        "{counts:?}"
    );
    // No certificate: Mosquitto refuses the handshake.
    let mut bare = MqttOptions::new("bare", "127.0.0.1", mosquitto.port());
    bare.set_credentials("bridge", "s3cret-of-the-bridge");
    assert!(!session(bare).await, "plain MQTT on the TLS listener");
}
