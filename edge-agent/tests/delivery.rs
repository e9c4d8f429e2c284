//! Store and forward against a real broker (a private Mosquitto per test, so it can be
//! stopped and started): outages, the queue's byte cap, a corrupted queue tail, and the
//! retained status messages.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use edge_agent::agent::RunReport;
use edge_agent::config::AgentConfig;
use protocol::BootId;
use rumqttc::{TlsConfiguration, Transport};
use support::{
    frames_on_disk, segments, spawn_agent, wait_until, Ledger, Setup, Subscriber, DEVICES, PATIENCE,
};
use testkit::Mosquitto;
use tokio::sync::oneshot;

/// Waits (up to [`PATIENCE`]) until the subscriber holds every reading the run sealed.
async fn wait_for_every_reading(subscriber: &Subscriber, report: &RunReport) -> Ledger {
    subscriber
        .wait_for(PATIENCE, |l| {
            report
                .sealed
                .iter()
                .all(|(d, n)| l.complete(d, report.boot_id, *n))
        })
        .await
}

/// Stops an agent from [`spawn_agent`] cleanly and returns its report.
async fn stop_agent(
    stop: oneshot::Sender<()>,
    agent: tokio::task::JoinHandle<RunReport>,
) -> RunReport {
    stop.send(()).expect("agent still running");
    agent.await.expect("agent task")
}

/// Waits until the backlog of an outage is delivered and live frames flow again: every
/// device has a frame sealed after `live_after` (ms since the epoch) and no reading of
/// the run is missing before its newest one.
async fn wait_caught_up(subscriber: &Subscriber, live_after: u64) {
    wait_until(
        PATIENCE,
        "the backlog delivered and live frames arriving after the outage",
        || {
            let frames = subscriber.frames();
            let ledger = Ledger::of(&frames);
            let lagging: Vec<String> = DEVICES
                .iter()
                .filter_map(|device| {
                    let live = frames.iter().any(|r| {
                        r.frame.device.as_str() == *device && r.frame.base_ts_ms > live_after
                    });
                    let boots = ledger.boots(device);
                    let received = boots
                        .first()
                        .map(|boot| ledger.received(device, *boot))
                        .unwrap_or_default();
                    let gapless = boots.len() == 1
                        && received
                            .last()
                            .is_some_and(|last| received.len() as u64 == last + 1);
                    (!(live && gapless)).then(|| {
                        format!(
                            "{device}: live frame {live}, {} readings up to {:?}",
                            received.len(),
                            received.last()
                        )
                    })
                })
                .collect();
            if lagging.is_empty() {
                Ok(())
            } else {
                Err(lagging.join("; "))
            }
        },
    )
    .await
}

/// Waits until frames of a run other than `earlier` are on disk in `setup`'s queue: the
/// agent is sampling and queueing.
async fn wait_for_queued_frames(setup: &Setup, earlier: BootId) {
    wait_until(PATIENCE, "frames of the new run queued on disk", || {
        let frames = frames_on_disk(&setup.queue_dir());
        let new = frames.iter().filter(|f| f.boot_id != earlier).count();
        if new > 0 {
            Ok(())
        } else {
            Err(format!(
                "{} frames on disk, none of a new run",
                frames.len()
            ))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_arrives_through_a_broker_outage() {
    let setup = Setup::new();
    let mut broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port(), &setup.prefix).await;
    let (stop, agent) = spawn_agent(setup.config(broker.port(), "16 MiB"));

    // The outage begins once frames of every device flow, and lasts 2 s.
    subscriber
        .wait_for_every_device("frames flowed before the outage")
        .await;
    broker.stop();
    let before_outage = subscriber.frames().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let queued_during_outage = segments(&setup.queue_dir()).len();
    let back_at = service::clock::now_ms();
    broker.restart();
    // Frames sealed after the outage arriving means the agent noticed it and reconnected.
    wait_caught_up(&subscriber, back_at).await;
    let report = stop_agent(stop, agent).await;

    let ledger = wait_for_every_reading(&subscriber, &report).await;
    println!(
        "outage: frames before {before_outage}, segments queued {queued_during_outage}, \
         sealed {:?}, duplicates {}, reconnects {}",
        report.sealed,
        ledger.duplicates(),
        report.health.reconnects
    );
    assert!(before_outage > 0, "frames flowed before the outage");
    assert!(
        report.health.reconnects >= 1,
        "the agent noticed the outage"
    );
    ledger.assert_holds_every_sealed_reading(&report, "arrived");
    assert_eq!(report.health.dropped_frames, 0);
    assert_eq!(
        report.health.queue_records, 0,
        "everything was acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_the_oldest_frames_and_counts_them() {
    let setup = Setup::new();
    // Nobody listens on this port: every frame stays queued, and the cap must bite.
    let dead_port = testkit::free_port();
    let (stop, agent) = spawn_agent(setup.config_small_segments(dead_port, "8 KiB"));
    // Nothing is acknowledged, so a segment leaves only when the cap drops it: wait until
    // the first one is gone.
    let oldest = wait_until(PATIENCE, "a first queue segment written", || {
        segments(&setup.queue_dir())
            .first()
            .cloned()
            .ok_or_else(|| "no segment yet".to_owned())
    })
    .await;
    wait_until(
        PATIENCE,
        "the queue reached its cap and dropped its oldest segment",
        || {
            let files = segments(&setup.queue_dir());
            if files.contains(&oldest) {
                Err(format!("segments {files:?}"))
            } else {
                Ok(())
            }
        },
    )
    .await;
    let first = stop_agent(stop, agent).await;
    let disk: u64 = segments(&setup.queue_dir())
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    println!(
        "cap: sealed {:?}, health {:?}, disk {disk}",
        first.sealed, first.health
    );
    assert!(first.health.dropped_frames > 0, "the cap was reached");
    assert!(
        disk <= 8 * 1024,
        "queue files {disk} B exceed the 8 KiB cap"
    );

    // Now deliver what is left: it must be the newest frames, contiguous to the end.
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port(), &setup.prefix).await;
    let (stop, agent) = spawn_agent(setup.config_small_segments(broker.port(), "8 KiB"));
    let ledger = subscriber
        .wait_for(PATIENCE, |l| {
            first
                .sealed
                .iter()
                .all(|(d, n)| l.received(d, first.boot_id).last() == Some(&(n - 1)))
        })
        .await;
    stop.send(()).expect("agent still running");
    agent.await.expect("agent task");
    let mut dropped_readings = 0;
    for (device, sealed) in &first.sealed {
        let received = ledger.received(device, first.boot_id);
        let oldest = *received.first().expect("the newest frames survived");
        assert!(oldest > 0, "{device}: the oldest frames were dropped");
        assert_eq!(
            received,
            (oldest..*sealed).collect(),
            "{device}: what survived is one contiguous run up to the newest reading"
        );
        dropped_readings += oldest;
        // The agent says exactly which readings it gave up: here, all never sent.
        let boot = first.boot_id.to_string();
        let reported: Vec<_> = first
            .health
            .dropped
            .iter()
            .filter(|d| d.device == *device && d.boot == boot)
            .collect();
        assert_eq!(reported.len(), 1, "{device}: {:?}", first.health.dropped);
        assert_eq!(reported[0].unsent, vec![[0, oldest]], "{device}");
        assert!(reported[0].after_puback.is_empty(), "{device}");
    }
    assert!(dropped_readings > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_queue_tail_is_cut_off_and_the_rest_delivered() {
    let setup = Setup::new();
    let (stop, agent) = spawn_agent(setup.config(testkit::free_port(), "16 MiB"));
    wait_until(PATIENCE, "frames of every device queued on disk", || {
        let frames = frames_on_disk(&setup.queue_dir());
        let missing: Vec<&str> = DEVICES
            .iter()
            .copied()
            .filter(|d| frames.iter().all(|f| f.device.as_str() != *d))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("{} frames, none of {missing:?}", frames.len()))
        }
    })
    .await;
    let first = stop_agent(stop, agent).await;
    // The frame the tear destroys: the last one queued. Every other one must arrive.
    let torn_frame = frames_on_disk(&setup.queue_dir())
        .pop()
        .expect("queued frames");
    let torn_device = torn_frame.device.to_string();
    let torn_seqs: BTreeSet<u64> = torn_frame.iter().map(|(seq, _, _)| seq).collect();
    let intact = |device: &str, sealed: u64| -> BTreeSet<u64> {
        (0..sealed)
            .filter(|seq| device != torn_device || !torn_seqs.contains(seq))
            .collect()
    };

    // A power cut mid-write: the last record is half there, followed by garbage.
    let last = segments(&setup.queue_dir()).pop().expect("a queue segment");
    let bytes = std::fs::read(&last).expect("read segment");
    assert!(bytes.len() > 64, "segment holds records");
    let mut torn = bytes[..bytes.len() - 7].to_vec();
    torn.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    std::fs::write(&last, torn).expect("tear segment");

    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port(), &setup.prefix).await;
    let (stop, agent) = spawn_agent(setup.config(broker.port(), "16 MiB"));
    let delivered = subscriber
        .wait_for(PATIENCE, |l| {
            first
                .sealed
                .iter()
                .all(|(d, n)| l.received(d, first.boot_id) == intact(d, *n))
        })
        .await;
    for (device, sealed) in &first.sealed {
        assert_eq!(
            delivered.received(device, first.boot_id),
            intact(device, *sealed),
            "{device}: every frame but the torn one ({torn_device} {torn_seqs:?}) arrives \
             within {PATIENCE:?}"
        );
    }
    stop.send(()).expect("agent started despite the torn tail");
    agent.await.expect("agent task");
    let ledger = Ledger::of(&subscriber.frames());
    let mut lost = 0;
    for (device, sealed) in &first.sealed {
        let received = ledger.received(device, first.boot_id);
        assert_eq!(
            received,
            (0..received.len() as u64).collect(),
            "{device}: everything before the tear arrived, in one run from 0"
        );
        lost += sealed - received.len() as u64;
    }
    assert!(
        lost > 0 && lost <= 10,
        "only the torn frame is lost (lost {lost} readings)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn birth_meta_health_and_goodbye_are_retained_json() {
    let setup = Setup::new();
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port(), &setup.prefix).await;
    let (stop, agent) = spawn_agent(setup.config(broker.port(), "16 MiB"));

    let p = &setup.prefix;
    let gateway_status = format!("{p}/plant1/line-a/{p}/status");
    let press_status = format!("{p}/plant1/line-b/press-01/status");
    let furnace_meta = format!("{p}/plant1/line-a/furnace-01/meta");
    let gateway = subscriber
        .wait_retained(
            &gateway_status,
            "online, with readings in its health",
            |g| g["state"] == "online" && g["health"]["readings"].as_u64().unwrap_or(0) > 0,
        )
        .await;
    assert_eq!(gateway["state"], "online");
    assert!(
        gateway["health"]["readings"].as_u64().unwrap_or(0) > 0,
        "{gateway}"
    );
    assert!(
        gateway["health"]["rss_bytes"].as_u64().unwrap_or(0) > 0,
        "{gateway}"
    );
    let press = subscriber
        .wait_retained(
            &press_status,
            "device status on the device's own line",
            |_| true,
        )
        .await;
    assert_eq!(press["state"], "online");
    assert_eq!(press["gateway"], p.as_str());
    assert_eq!(press["channels"][0]["name"], "pressure");
    let meta = subscriber
        .wait_retained(&furnace_meta, "device meta", |_| true)
        .await;
    assert_eq!(meta["channels"][0]["unit"], "°C");
    assert_eq!(meta["channels"][0]["range"][1], 1400.0);

    let report = stop_agent(stop, agent).await;
    let gateway = subscriber
        .wait_retained(&gateway_status, "offline after the shutdown", |g| {
            g["state"] == "offline"
        })
        .await;
    assert_eq!(gateway["state"], "offline");
    assert_eq!(gateway["reason"], "shutdown");
    assert_eq!(gateway["boot_id"], report.boot_id.to_string());
    // The final figures stay readable after the stop: what the queue dropped, above all.
    assert!(
        gateway["health"]["readings"].as_u64() > Some(0),
        "{gateway}"
    );
    assert!(gateway["health"]["dropped"].is_array(), "{gateway}");
    let press = subscriber
        .wait_retained(&press_status, "offline after the shutdown", |s| {
            s["state"] == "offline"
        })
        .await;
    assert_eq!(press["state"], "offline");
}

/// A CA, and a broker certificate for 127.0.0.1 signed by it, as PEM files in `dir`.
fn tls_files(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let ca_file = write("ca.pem", ca.pem());
    let cert = write("server.pem", server.pem());
    let key = write("server.key", server_key.serialize_pem());
    let listener = format!(
        "cafile {}\ncertfile {}\nkeyfile {}\n",
        ca_file.display(),
        cert.display(),
        key.display()
    );
    (ca_file, listener)
}

fn with_tls(mut config: AgentConfig, ca: std::path::PathBuf) -> AgentConfig {
    config.mqtt.tls = Some(service::mqtt_tls::MqttTls {
        ca,
        client_cert: None,
        client_key: None,
    });
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_over_tls_and_refuses_a_broker_it_cannot_verify() {
    let setup = Setup::new();
    let (ca, listener) = tls_files(setup.dir.path());
    let broker = Mosquitto::start_with(&listener);
    let trusted = std::fs::read(&ca).expect("read CA");
    let subscriber = Subscriber::start_with(broker.port(), &setup.prefix, |options| {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca: trusted,
            alpn: None,
            client_auth: None,
        }));
    })
    .await;

    let (stop, agent) = spawn_agent(with_tls(setup.config(broker.port(), "16 MiB"), ca));
    wait_for_puback_in_health(&subscriber, &setup.prefix).await;
    let report = stop_agent(stop, agent).await;
    assert!(report.health.frames > 0);
    assert!(
        report.health.last_puback_age_ms.is_some(),
        "the broker acknowledged over TLS"
    );
    assert_eq!(report.health.queue_records, 0, "{:?}", report.health);

    // A CA that did not sign the broker's certificate: no connection, frames stay queued.
    let other = tempfile::tempdir().unwrap();
    let (wrong_ca, _) = tls_files(other.path());
    let trusted_run = report.boot_id;
    let (stop, agent) = spawn_agent(with_tls(setup.config(broker.port(), "16 MiB"), wrong_ca));
    wait_for_queued_frames(&setup, trusted_run).await;
    // A negative check: 1.5 s more to (fail to) connect, from when it is surely running.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let report = stop_agent(stop, agent).await;
    assert!(
        report.health.last_puback_age_ms.is_none(),
        "{:?}",
        report.health
    );
    assert!(
        report.health.queue_records > 0,
        "frames wait on disk for a broker it trusts"
    );
}

/// Waits until the agent's retained health report on `prefix`'s gateway status says a
/// PUBACK arrived: the broker acknowledged its frames.
async fn wait_for_puback_in_health(subscriber: &Subscriber, prefix: &str) {
    subscriber
        .wait_retained(
            &format!("{prefix}/plant1/line-a/{prefix}/status"),
            "a health report with a PUBACK",
            |g| g["health"]["last_puback_age_ms"].is_u64(),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_frames_overtake_a_rate_limited_backlog() {
    let setup = Setup::new();
    let mut broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port(), &setup.prefix).await;
    let mut config = setup.config(broker.port(), "16 MiB");
    config.delivery.catch_up = edge_agent::config::CatchUp::LiveFirst;
    config.delivery.catch_up_rate = 10;
    let (stop, agent) = spawn_agent(config);

    // The outage begins once frames of every device flow, and lasts 2 s.
    subscriber
        .wait_for_every_device("frames flowed before the outage")
        .await;
    broker.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let back_at = service::clock::now_ms();
    broker.restart();
    wait_caught_up(&subscriber, back_at + 500).await;
    let report = stop_agent(stop, agent).await;

    let ledger = wait_for_every_reading(&subscriber, &report).await;
    ledger.assert_holds_every_sealed_reading(&report, "arrived");
    // Arrival order: backlog = frames sealed during the outage, live = after it ended.
    let frames = subscriber.frames();
    let last_backlog = frames
        .iter()
        .rposition(|r| r.frame.base_ts_ms + 1000 < back_at)
        .expect("backlog frames arrived");
    let first_live = frames
        .iter()
        .position(|r| r.frame.base_ts_ms > back_at + 500)
        .expect("live frames arrived");
    println!(
        "catch-up: {} frames, first live at {first_live}, last backlog at {last_backlog}",
        frames.len()
    );
    assert!(
        first_live < last_backlog,
        "live-first: new frames went out while the backlog was still draining"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_many_channels_still_gets_its_meta_and_telemetry_through() {
    let setup = Setup::new();
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port(), &setup.prefix).await;
    let value = setup.dir.path().join("value");
    std::fs::write(&value, "21.5\n").unwrap();
    // 120 channels: a `meta` message of about 25 KiB, beyond MQTT clients' usual 10 KiB.
    let mut toml = setup.config_toml(broker.port(), "16 MiB");
    for channel in 1..=120 {
        toml.push_str(&format!(
            "[[devices.channels]]\nid = {channel}\nname = \"probe_{channel}\"\n\
             unit = \"degree Celsius\"\nperiod = \"100ms\"\nrange = [-40.0, 125.0]\n\
             thresholds = {{ warn_low = 0.0, warn_high = 60.0, crit_low = -10.0, crit_high = 80.0 }}\n\
             source = {{ kind = \"file\", path = \"{}\" }}\n",
            value.display()
        ));
    }
    let path = setup.dir.path().join("many.toml");
    std::fs::write(&path, toml).unwrap();
    let config = AgentConfig::load(&path, &Default::default()).expect("valid config");
    let (stop, agent) = spawn_agent(config);
    let p = &setup.prefix;
    subscriber
        .wait_retained(
            &format!("{p}/plant1/line-b/press-01/meta"),
            "the large meta message arrived",
            |_| true,
        )
        .await;
    subscriber
        .wait_for_every_device("telemetry flowed beside the large meta")
        .await;
    let report = stop_agent(stop, agent).await;

    let meta = subscriber
        .retained(&format!("{p}/plant1/line-b/press-01/meta"))
        .expect("the large meta message arrived");
    assert_eq!(meta["channels"].as_array().map(Vec::len), Some(121));
    let ledger = wait_for_every_reading(&subscriber, &report).await;
    ledger.assert_holds_every_sealed_reading(&report, "arrived");
    assert_eq!(report.health.reconnects, 0, "the connection held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_presented_and_a_wrong_password_is_refused() {
    let setup = Setup::new();
    let passwords = setup.dir.path().join("passwords");
    let status = std::process::Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwords)
        .args(["pi-line-a-01", "s3cret"])
        .status()
        .expect("mosquitto_passwd (from the mosquitto package)");
    assert!(status.success());
    let broker = Mosquitto::start_with(&format!("password_file {}\n", passwords.display()));
    let with_password = |password: &str| {
        let mut config = setup.config(broker.port(), "16 MiB");
        config.mqtt.username = Some("pi-line-a-01".to_owned());
        config.mqtt.password = Some(password.to_owned());
        config
    };

    let subscriber = Subscriber::start_with(broker.port(), &setup.prefix, |options| {
        options.set_credentials("pi-line-a-01", "s3cret");
    })
    .await;
    let (stop, agent) = spawn_agent(with_password("s3cret"));
    wait_for_puback_in_health(&subscriber, &setup.prefix).await;
    let report = stop_agent(stop, agent).await;
    assert!(
        report.health.last_puback_age_ms.is_some(),
        "{:?}",
        report.health
    );
    assert_eq!(report.health.queue_records, 0);

    let accepted_run = report.boot_id;
    let (stop, agent) = spawn_agent(with_password("wrong"));
    wait_for_queued_frames(&setup, accepted_run).await;
    // A negative check: 1.5 s more to (fail to) connect, from when it is surely running.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let report = stop_agent(stop, agent).await;
    assert!(
        report.health.last_puback_age_ms.is_none(),
        "{:?}",
        report.health
    );
    assert!(report.health.queue_records > 0, "frames wait on disk");
}

/// The gateway's secret comes from a file only its owner can read, and the user name
/// defaults to the gateway id: what `iotctl gateways add … --secret-file` prepares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_is_read_from_an_owner_only_file_under_the_gateway_id() {
    use std::os::unix::fs::PermissionsExt;
    let setup = Setup::new();
    let mut config = setup.config(1, "16 MiB");
    let gateway = config.gateway.id.clone();
    let passwords = setup.dir.path().join("passwords");
    let status = std::process::Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwords)
        .args([gateway.as_str(), "f1le-s3cret"])
        .status()
        .expect("mosquitto_passwd (from the mosquitto package)");
    assert!(status.success());
    let broker = Mosquitto::start_with(&format!("password_file {}\n", passwords.display()));
    config.mqtt.port = broker.port();
    let secret = setup.dir.path().join("gateway.secret");
    std::fs::write(&secret, "f1le-s3cret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    config.mqtt.password_file = Some(secret.clone());
    let refused = config.validate().expect_err("a secret others can read");
    assert!(
        refused.to_string().contains("mqtt.password_file"),
        "{refused}"
    );
    assert!(refused.to_string().contains("chmod 600"), "{refused}");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    config.validate().expect("an owner-only secret file");

    let subscriber = Subscriber::start_with(broker.port(), &setup.prefix, |options| {
        options.set_credentials(gateway.as_str(), "f1le-s3cret");
    })
    .await;
    let (stop, agent) = spawn_agent(config);
    wait_for_puback_in_health(&subscriber, &setup.prefix).await;
    let report = stop_agent(stop, agent).await;
    assert!(
        report.health.last_puback_age_ms.is_some(),
        "{:?}",
        report.health
    );
}
