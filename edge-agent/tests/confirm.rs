//! With `delivery.confirm = "pipeline"` a frame leaves the disk queue only when a
//! confirmation covers it, against a real broker. A plain MQTT client plays the cloud's
//! side of the contract: it publishes confirmations on each device's `confirm` topic, as
//! the bridge relays them from the ingester, and it can lie, as a hostile client would.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protocol::topic::{Topic, TopicKind};
use protocol::{BootId, Confirmation, DeviceId, SeqRange, MAX_CONFIRM_LEN};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::Value;
use support::{spawn_agent, wait_until, Setup, Subscriber, DEVICES, PATIENCE};
use testkit::Mosquitto;

/// A client that publishes confirmations, as the bridge does.
struct Cloud {
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Cloud {
    fn start(port: u16, prefix: &str) -> Self {
        let options = MqttOptions::new(format!("{prefix}-cloud"), "127.0.0.1", port);
        let (client, mut events) = AsyncClient::new(options, 100);
        let task = tokio::spawn(async move {
            loop {
                if events.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Self { client, task }
    }

    async fn send(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish request");
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn confirm_topic(prefix: &str, device: &str) -> String {
    let line = if device == "press-01" {
        "line-b"
    } else {
        "line-a"
    };
    Topic::new(prefix, "plant1", line, device, TopicKind::Confirm)
        .unwrap()
        .to_string()
}

/// The confirmation a cloud holding `seqs` of (device, boot) would send, leaving out
/// `hole`.
fn confirmation(
    device: &str,
    boot: BootId,
    seqs: &BTreeSet<u64>,
    hole: Option<(u64, u64)>,
) -> Vec<u8> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &seq in seqs {
        if hole.is_some_and(|(start, end)| (start..end).contains(&seq)) {
            continue;
        }
        match runs.last_mut() {
            Some((_, end)) if *end == seq => *end += 1,
            _ => runs.push((seq, seq + 1)),
        }
    }
    let mut confirmation = Confirmation::new(DeviceId::new(device).unwrap(), boot);
    let mut runs = runs.into_iter().peekable();
    if let Some(&(0, end)) = runs.peek() {
        confirmation.committed_below = end;
        runs.next();
    }
    for (start, end) in runs.take(protocol::confirm::MAX_CONFIRM_RANGES) {
        confirmation
            .committed
            .push(SeqRange::new(start, end))
            .unwrap();
    }
    encode(&confirmation)
}

fn encode(confirmation: &Confirmation) -> Vec<u8> {
    let mut buf = [0u8; MAX_CONFIRM_LEN];
    confirmation.encode(&mut buf).unwrap().to_vec()
}

/// The agent's health from its retained gateway status.
fn health(subscriber: &Subscriber, prefix: &str) -> Option<Value> {
    subscriber
        .retained(&format!("{prefix}/plant1/line-a/{prefix}/status"))
        .and_then(|status| status.get("health").cloned())
}

fn field(health: &Value, name: &str) -> u64 {
    health.get(name).and_then(Value::as_u64).unwrap_or(0)
}

/// Waits until the agent's published health has `name` at `at_least` or more; that
/// health.
async fn wait_for_health(
    subscriber: &Subscriber,
    prefix: &str,
    name: &str,
    at_least: u64,
) -> Value {
    wait_until(PATIENCE, &format!("health {name} >= {at_least}"), || {
        let health = health(subscriber, prefix).ok_or("no health yet")?;
        if field(&health, name) >= at_least {
            Ok(health)
        } else {
            Err(health.to_string())
        }
    })
    .await
}

/// Confirms, every 100 ms, every reading the broker delivered, except `hole`.
fn confirm_continuously(
    cloud: Arc<Cloud>,
    subscriber: Arc<Subscriber>,
    prefix: String,
    hole: Arc<std::sync::Mutex<Option<(String, u64, u64)>>>,
    running: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while running.load(Ordering::Relaxed) {
            let ledger = support::Ledger::of(&subscriber.frames());
            for ((device, boot), seqs) in &ledger.seqs {
                let seqs: BTreeSet<u64> = seqs.keys().copied().collect();
                let skip = hole
                    .lock()
                    .unwrap()
                    .as_ref()
                    .filter(|(d, _, _)| d == device)
                    .map(|(_, s, e)| (*s, *e));
                cloud
                    .send(
                        &confirm_topic(&prefix, device),
                        confirmation(device, *boot, &seqs, skip),
                    )
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_wait_on_disk_after_their_puback_until_a_confirmation_covers_them() {
    let broker = Mosquitto::start();
    let setup = Setup::new();
    let subscriber = Arc::new(Subscriber::start(broker.port(), &setup.prefix).await);
    let (stop, agent) = spawn_agent(setup.config_confirming(broker.port()));

    // Delivered to the broker, yet nothing confirmed: every frame stays queued.
    let waiting = wait_until(PATIENCE, "frames PUBACKed and waiting", || {
        let health = health(&subscriber, &setup.prefix).ok_or("no health yet")?;
        let delivered = subscriber.frames().len() as u64;
        if field(&health, "awaiting_confirm") >= 20 && delivered >= 20 {
            Ok(health)
        } else {
            Err(health.to_string())
        }
    })
    .await;
    assert_eq!(field(&waiting, "confirmed_frames"), 0, "{waiting}");
    assert!(
        field(&waiting, "queue_records") >= field(&waiting, "awaiting_confirm"),
        "{waiting}"
    );

    // The cloud confirms what it holds: the queue empties, and a clean stop leaves
    // nothing behind.
    let cloud = Arc::new(Cloud::start(broker.port(), &setup.prefix));
    let running = Arc::new(AtomicBool::new(true));
    let confirming = confirm_continuously(
        cloud.clone(),
        subscriber.clone(),
        setup.prefix.clone(),
        Arc::default(),
        running.clone(),
    );
    let waited = field(&waiting, "awaiting_confirm");
    wait_for_health(&subscriber, &setup.prefix, "confirmed_frames", waited).await;
    stop.send(()).expect("agent running");
    let report = agent.await.expect("agent task");
    running.store(false, Ordering::Relaxed);
    confirming.await.unwrap();
    assert_eq!(report.health.queue_records, 0, "{:?}", report.health);
    assert_eq!(report.health.awaiting_confirm, 0, "{:?}", report.health);
    assert_eq!(
        report.health.ignored_confirmations, 0,
        "{:?}",
        report.health
    );
    assert!(
        report.health.confirm_wait_p99_ms.is_some(),
        "{:?}",
        report.health
    );
    let ledger = support::Ledger::of(&subscriber.frames());
    for (device, sealed) in &report.sealed {
        assert!(
            ledger.complete(device, report.boot_id, *sealed),
            "{device}: every reading delivered"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frame_lost_after_the_broker_is_sent_again_once_a_later_one_is_confirmed() {
    let broker = Mosquitto::start();
    let setup = Setup::new();
    let subscriber = Arc::new(Subscriber::start(broker.port(), &setup.prefix).await);
    let (stop, agent) = spawn_agent(setup.config_confirming(broker.port()));
    let ledger = subscriber.wait_for_every_device("a first frame").await;
    let device = DEVICES[0];
    let boot = *ledger.boots(device).first().unwrap();
    // The first frame of the device, as if the bridge had lost it: never confirmed.
    let first = subscriber
        .frames()
        .into_iter()
        .find(|r| r.frame.device.as_str() == device && r.frame.first_seq == 0)
        .unwrap();
    let hole = (0, first.frame.readings.len() as u64);
    let holes = Arc::new(std::sync::Mutex::new(Some((
        device.to_owned(),
        hole.0,
        hole.1,
    ))));
    let cloud = Arc::new(Cloud::start(broker.port(), &setup.prefix));
    let running = Arc::new(AtomicBool::new(true));
    let confirming = confirm_continuously(
        cloud.clone(),
        subscriber.clone(),
        setup.prefix.clone(),
        holes.clone(),
        running.clone(),
    );

    wait_until(PATIENCE, "the frame in the hole sent again", || {
        let copies = subscriber
            .frames()
            .iter()
            .filter(|r| r.frame.device.as_str() == device && r.frame.boot_id == boot)
            .filter(|r| r.frame.first_seq == 0)
            .count();
        if copies >= 2 {
            Ok(())
        } else {
            Err(format!("{copies} copies"))
        }
    })
    .await;
    // Frames the cloud confirmed are not resent: only the hole comes twice.
    let resent: BTreeSet<u64> = support::Ledger::of(&subscriber.frames())
        .seqs
        .get(&(device.to_owned(), boot))
        .unwrap()
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(&seq, _)| seq)
        .collect();
    assert!(
        resent.iter().all(|seq| (hole.0..hole.1).contains(seq)),
        "resent beyond the hole {hole:?}: {resent:?}"
    );

    let resent = wait_until(PATIENCE, "the resend counted", || {
        let health = health(&subscriber, &setup.prefix).ok_or("no health yet")?;
        match field(&health, "resent_frames") {
            0 => Err(health.to_string()),
            n => Ok(n),
        }
    })
    .await;
    assert!(resent >= 1);

    // The hole filled: confirmed, the queue empties.
    *holes.lock().unwrap() = None;
    stop.send(()).expect("agent running");
    let report = agent.await.expect("agent task");
    running.store(false, Ordering::Relaxed);
    confirming.await.unwrap();
    assert_eq!(report.health.queue_records, 0, "{:?}", report.health);
}

/// The fault suite's broker kill caught it: a frame the broker lost just before a clean
/// stop waited out the whole grace unsent (resends were picked only while running), and
/// the agent stopped with it still on disk. During the stop the cloud still confirms,
/// so the frame in the hole must go again and the stop leave nothing behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_frame_lost_after_the_broker_just_before_a_stop_is_sent_again_within_its_grace() {
    let broker = Mosquitto::start();
    let setup = Setup::new();
    let subscriber = Arc::new(Subscriber::start(broker.port(), &setup.prefix).await);
    let (stop, agent) = spawn_agent(setup.config_confirming(broker.port()));
    let ledger = subscriber.wait_for_every_device("a first frame").await;
    let device = DEVICES[0];
    let boot = *ledger.boots(device).first().unwrap();
    let first = subscriber
        .frames()
        .into_iter()
        .find(|r| r.frame.device.as_str() == device && r.frame.first_seq == 0)
        .unwrap();
    let holes = Arc::new(std::sync::Mutex::new(Some((
        device.to_owned(),
        0,
        first.frame.readings.len() as u64,
    ))));
    let cloud = Arc::new(Cloud::start(broker.port(), &setup.prefix));
    let running = Arc::new(AtomicBool::new(true));
    let confirming = confirm_continuously(
        cloud.clone(),
        subscriber.clone(),
        setup.prefix.clone(),
        holes.clone(),
        running.clone(),
    );
    // The hole fills once the frame comes again, as the pipeline would store it.
    let filling = {
        let (subscriber, holes, running) = (subscriber.clone(), holes.clone(), running.clone());
        tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                let copies = subscriber
                    .frames()
                    .iter()
                    .filter(|r| r.frame.device.as_str() == device && r.frame.boot_id == boot)
                    .filter(|r| r.frame.first_seq == 0)
                    .count();
                if copies >= 2 {
                    *holes.lock().unwrap() = None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    stop.send(()).expect("agent running");
    let report = agent.await.expect("agent task");
    running.store(false, Ordering::Relaxed);
    confirming.await.unwrap();
    filling.await.unwrap();
    assert!(report.health.resent_frames >= 1, "{:?}", report.health);
    assert_eq!(report.health.queue_records, 0, "{:?}", report.health);
    assert_eq!(report.health.awaiting_confirm, 0, "{:?}", report.health);
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_confirmations_delete_nothing_and_are_counted() {
    let broker = Mosquitto::start();
    let setup = Setup::new();
    let subscriber = Arc::new(Subscriber::start(broker.port(), &setup.prefix).await);
    let (stop, agent) = spawn_agent(setup.config_confirming(broker.port()));
    let ledger = subscriber.wait_for_every_device("a first frame").await;
    let (furnace, press) = (DEVICES[0], DEVICES[1]);
    let boot = *ledger.boots(furnace).first().unwrap();
    let cloud = Cloud::start(broker.port(), &setup.prefix);
    let topic = confirm_topic(&setup.prefix, furnace);

    let everything: BTreeSet<u64> = (0..100_000).collect();
    let forged = [
        // Random bytes.
        vec![0xde, 0xad, 0xbe, 0xef],
        // The press's confirmation on the furnace's topic.
        confirmation(press, boot, &everything, None),
        // Readings the furnace never sent.
        confirmation(furnace, boot, &everything, None),
        // A boot it never had.
        confirmation(furnace, BootId([9; 8]), &(0..10).collect(), None),
    ];
    for payload in forged.iter().cloned() {
        cloud.send(&topic, payload).await;
    }
    let forged_count = forged.len() as u64;
    let after = wait_for_health(
        &subscriber,
        &setup.prefix,
        "ignored_confirmations",
        forged_count,
    )
    .await;
    assert_eq!(field(&after, "confirmed_frames"), 0, "{after}");
    assert_eq!(field(&after, "refused_frames"), 0, "{after}");
    assert!(field(&after, "awaiting_confirm") > 0, "{after}");

    // A true confirmation still works afterwards.
    let delivered = support::Ledger::of(&subscriber.frames()).received(furnace, boot);
    cloud
        .send(&topic, confirmation(furnace, boot, &delivered, None))
        .await;
    wait_for_health(&subscriber, &setup.prefix, "confirmed_frames", 1).await;
    stop.send(()).expect("agent running");
    let report = agent.await.expect("agent task");
    assert_eq!(
        report.health.ignored_confirmations,
        forged.len() as u64,
        "{:?}",
        report.health
    );
    // Nobody confirmed the rest: it is still on disk for the next start.
    assert!(report.health.queue_records > 0, "{:?}", report.health);
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_dropped_at_the_cap_while_waiting_are_reported_as_acknowledged() {
    let broker = Mosquitto::start();
    let setup = Setup::new();
    let subscriber = Arc::new(Subscriber::start(broker.port(), &setup.prefix).await);
    // Nobody confirms: PUBACKed frames pile up until the cap drops the oldest.
    let (stop, agent) = spawn_agent(setup.config_confirming_capped(broker.port(), "8 KiB"));
    let dropped = wait_until(PATIENCE, "waiting frames dropped at the cap", || {
        let health = health(&subscriber, &setup.prefix).ok_or("no health yet")?;
        let dropped = health.get("dropped").cloned().unwrap_or_default();
        let any = dropped.as_array().is_some_and(|spans| {
            spans.iter().any(|s| {
                s.get("after_puback")
                    .and_then(Value::as_array)
                    .is_some_and(|r| !r.is_empty())
            })
        });
        if any {
            Ok(dropped)
        } else {
            Err(health.to_string())
        }
    })
    .await;
    stop.send(()).expect("agent running");
    let report = agent.await.expect("agent task");
    // The broker had every one of them: their readings reached the subscriber.
    let ledger = support::Ledger::of(&subscriber.frames());
    for span in dropped.as_array().unwrap() {
        let device = span["device"].as_str().unwrap();
        assert_eq!(
            span["boot"].as_str(),
            Some(report.boot_id.to_string().as_str())
        );
        let received = ledger.received(device, report.boot_id);
        for range in span["after_puback"].as_array().unwrap() {
            let (start, end) = (range[0].as_u64().unwrap(), range[1].as_u64().unwrap());
            assert!(
                (start..end).all(|seq| received.contains(&seq)),
                "{device}: {start}..{end} reported acknowledged, not all received"
            );
        }
    }
    assert!(report.health.dropped_frames > 0, "{:?}", report.health);
}
