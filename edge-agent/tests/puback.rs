//! PUBACKs from a deliberately misbehaving broker (issue 15, item 7): out of order,
//! duplicated, or for a packet id that is not in flight. The broker is a small TCP server
//! written here, speaking just enough MQTT 3.1.1 (the agent's version) through rumqttc's
//! own packet codec, with its PUBACKs under the test's control.
//!
//! The broker keeps a frame only when it acknowledges it correctly, as a broker that
//! crashed right after would: a frame the agent deleted on any other PUBACK would then be
//! missing from what it kept. The agent runs with `delivery.confirm = "broker"`, where a
//! PUBACK deletes the frame, the sharper case; with `"pipeline"` a PUBACK deletes nothing
//! (the same packet-id bookkeeping moves a frame on to wait for its confirmation), and
//! the broker plays the cloud too, confirming each frame it keeps.

mod support;

use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use edge_agent::agent::RunReport;
use edge_agent::config::ConfirmMode;
use protocol::{Confirmation, Frame, SeqRange, MAX_CONFIRM_LEN};
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck};
use rumqttc::mqttbytes::{Error as MqttError, QoS};
use rumqttc::SubscribeReasonCode;
use support::{spawn_agent, wait_until, Ledger, Received, Setup, PATIENCE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Largest packet the broker reads.
const MAX_PACKET: usize = 1 << 20;

/// How the first connection misbehaves; every later one acknowledges each publish at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Misbehaviour {
    /// Holds one frame's PUBACK while acknowledging the `inflight - 1` publishes after it,
    /// and then until the agent's next keep-alive ping: the agent's next packet id is the
    /// held one again, so rumqttc holds its next publish back (a collision) until the
    /// held PUBACK, sent with the PINGRESP, frees it. Three times. Then holds one more,
    /// acknowledges five after it and closes the connection: the held frame was
    /// overtaken but never acknowledged.
    OutOfOrder,
    /// Holds one frame's PUBACK, then acknowledges the next frame twice, in one write.
    DuplicatePuback,
    /// Holds two frames' PUBACKs, then acknowledges a packet id the agent never used
    /// (one beyond its in-flight window).
    UnknownPuback,
}

const OUT_OF_ORDER_CYCLES: usize = 3;

/// What the broker did and kept.
#[derive(Debug, Default)]
struct Log {
    connections: usize,
    /// Frames acknowledged correctly, with the connection (1, 2, …) they came on.
    stored: Vec<(usize, Received)>,
    /// Frames whose PUBACK was never sent on the misbehaving connection.
    held: Vec<Frame>,
    /// Held PUBACKs sent after later ones (out of order).
    released: usize,
    /// Of those, how many ids the agent used again for its very next publish.
    reused: usize,
    /// The misbehaviour is complete.
    done: bool,
}

impl Log {
    fn stored_after_first(&self) -> impl Iterator<Item = &Frame> {
        self.stored
            .iter()
            .filter(|(connection, _)| *connection > 1)
            .map(|(_, r)| &r.frame)
    }

    /// Whether `frame` was kept from a connection after the misbehaving one.
    fn resent(&self, frame: &Frame) -> bool {
        self.stored_after_first().any(|f| same_frame(f, frame))
    }
}

struct Broker {
    port: u16,
    log: Arc<Mutex<Log>>,
    task: tokio::task::JoinHandle<()>,
}

impl Broker {
    /// With `confirms`, every frame kept is confirmed on its device's `confirm` topic.
    async fn start(misbehaviour: Misbehaviour, inflight: u16, confirms: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let log = Arc::new(Mutex::new(Log::default()));
        let shared = log.clone();
        let task = tokio::spawn(async move {
            // Dropped with the accept loop, which aborts every connection.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let number = {
                    let mut log = shared.lock().unwrap();
                    log.connections += 1;
                    log.connections
                };
                let script = (number == 1).then(|| Script::new(misbehaviour, inflight));
                connections.spawn(serve(stream, number, script, confirms, shared.clone()));
            }
        });
        Self { port, log, task }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The misbehaving connection's state.
struct Script {
    misbehaviour: Misbehaviour,
    inflight: usize,
    /// Publishes whose PUBACK is held back.
    held: Vec<Publish>,
    /// Publishes acknowledged since the oldest held one arrived.
    since_held: usize,
    cycles: usize,
    /// The id of the held PUBACK just sent, until the next publish.
    released: Option<u16>,
    done: bool,
}

/// What the broker does with one publish.
#[derive(Default)]
struct Reply {
    /// Sent in one write.
    pubacks: Vec<u16>,
    /// Publishes acknowledged correctly (kept).
    stored: Vec<Publish>,
    close: bool,
}

impl Reply {
    fn ack(publish: Publish) -> Self {
        Self {
            pubacks: vec![publish.pkid],
            stored: vec![publish],
            close: false,
        }
    }
}

/// Frames are named by their first reading's identity (their values may be NaN).
fn same_frame(a: &Frame, b: &Frame) -> bool {
    (a.device.as_str(), a.boot_id, a.first_seq) == (b.device.as_str(), b.boot_id, b.first_seq)
}

fn is_frame(publish: &Publish) -> bool {
    publish.topic.ends_with("/telemetry")
}

impl Script {
    fn new(misbehaviour: Misbehaviour, inflight: u16) -> Self {
        Self {
            misbehaviour,
            inflight: usize::from(inflight),
            held: Vec::new(),
            since_held: 0,
            cycles: 0,
            released: None,
            done: false,
        }
    }

    fn on_publish(&mut self, publish: Publish, log: &mut Log) -> Reply {
        if self.released.take() == Some(publish.pkid) {
            log.reused += 1;
        }
        if self.done {
            return Reply::ack(publish);
        }
        let holds = match self.misbehaviour {
            Misbehaviour::OutOfOrder | Misbehaviour::DuplicatePuback => 1,
            Misbehaviour::UnknownPuback => 2,
        };
        if self.held.len() < holds {
            if is_frame(&publish) {
                self.held.push(publish);
                return Reply::default();
            }
            return Reply::ack(publish);
        }
        match self.misbehaviour {
            Misbehaviour::OutOfOrder => {
                let mut reply = Reply::ack(publish);
                self.since_held += 1;
                // The last hold: overtaken five times, then the connection ends.
                if self.cycles == OUT_OF_ORDER_CYCLES && self.since_held == 5 {
                    self.finish(log);
                    reply.close = true;
                }
                reply
            }
            Misbehaviour::DuplicatePuback if is_frame(&publish) => {
                self.finish(log);
                let mut reply = Reply::ack(publish);
                reply.pubacks.push(reply.pubacks[0]);
                reply
            }
            Misbehaviour::UnknownPuback if is_frame(&publish) => {
                self.finish(log);
                let never_used = u16::try_from(self.inflight + 1).expect("small window");
                Reply {
                    pubacks: vec![never_used],
                    stored: vec![],
                    close: false,
                }
            }
            Misbehaviour::DuplicatePuback | Misbehaviour::UnknownPuback => Reply::ack(publish),
        }
    }

    /// On a keep-alive ping: the held PUBACK, once the agent has used every other
    /// packet id since (out of order).
    fn on_ping(&mut self, log: &mut Log) -> Reply {
        let due = self.misbehaviour == Misbehaviour::OutOfOrder
            && !self.done
            && self.cycles < OUT_OF_ORDER_CYCLES
            && self.since_held >= self.inflight - 1;
        if !due {
            return Reply::default();
        }
        self.since_held = 0;
        self.cycles += 1;
        log.released += 1;
        let held = self.held.remove(0);
        self.released = Some(held.pkid);
        Reply::ack(held)
    }

    fn finish(&mut self, log: &mut Log) {
        self.done = true;
        log.done = true;
        log.held = self
            .held
            .iter()
            .map(|p| Frame::decode(&p.payload).expect("agent frames decode"))
            .collect();
    }
}

/// Serves one connection until the agent closes it or the script does.
async fn serve(
    mut stream: TcpStream,
    number: usize,
    mut script: Option<Script>,
    confirms: bool,
    log: Arc<Mutex<Log>>,
) {
    let mut input = BytesMut::new();
    loop {
        let packet = match Packet::read(&mut input, MAX_PACKET) {
            Ok(packet) => packet,
            Err(MqttError::InsufficientBytes(_)) => match stream.read_buf(&mut input).await {
                Ok(n) if n > 0 => continue,
                _ => return,
            },
            Err(e) => panic!("the agent sent a malformed packet: {e}"),
        };
        let (replies, close) = match packet {
            Packet::Connect(_) => (
                vec![Packet::ConnAck(ConnAck::new(
                    ConnectReturnCode::Success,
                    false,
                ))],
                false,
            ),
            Packet::Subscribe(subscribe) => {
                let granted =
                    vec![SubscribeReasonCode::Success(QoS::AtMostOnce); subscribe.filters.len()];
                (
                    vec![Packet::SubAck(SubAck::new(subscribe.pkid, granted))],
                    false,
                )
            }
            Packet::Disconnect => return,
            Packet::Publish(publish) if publish.qos == QoS::AtMostOnce => continue,
            packet @ (Packet::Publish(_) | Packet::PingReq) => {
                let mut log = log.lock().unwrap();
                let (reply, pong) = match (packet, &mut script) {
                    (Packet::Publish(publish), Some(script)) => {
                        (script.on_publish(publish, &mut log), None)
                    }
                    (Packet::Publish(publish), None) => (Reply::ack(publish), None),
                    (_, Some(script)) => (script.on_ping(&mut log), Some(Packet::PingResp)),
                    (_, None) => (Reply::default(), Some(Packet::PingResp)),
                };
                let mut confirmations = Vec::new();
                for publish in reply.stored.iter().filter(|p| is_frame(p)) {
                    let frame = Frame::decode(&publish.payload).expect("agent frames decode");
                    if confirms {
                        confirmations.push(Packet::Publish(confirmation(&publish.topic, &frame)));
                    }
                    log.stored.push((
                        number,
                        Received {
                            topic: publish.topic.clone(),
                            frame,
                        },
                    ));
                }
                let pubacks = reply
                    .pubacks
                    .into_iter()
                    .map(|pkid| Packet::PubAck(PubAck::new(pkid)))
                    .chain(confirmations)
                    .chain(pong)
                    .collect();
                (pubacks, reply.close)
            }
            other => panic!("unexpected packet from the agent: {other:?}"),
        };
        let mut output = BytesMut::new();
        for reply in replies {
            reply.write(&mut output, MAX_PACKET).expect("encode");
        }
        if stream.write_all(&output).await.is_err() || close {
            return;
        }
    }
}

/// The cloud's confirmation of one frame, on its device's `confirm` topic.
fn confirmation(telemetry_topic: &str, frame: &Frame) -> Publish {
    let (device_topic, _) = telemetry_topic.rsplit_once('/').expect("a telemetry topic");
    let mut confirmation = Confirmation::new(frame.device.clone(), frame.boot_id);
    let end = frame.first_seq + frame.readings.len() as u64;
    if frame.first_seq == 0 {
        // A range must lie above `committed_below`.
        confirmation.committed_below = end;
    } else {
        confirmation
            .committed
            .push(SeqRange::new(frame.first_seq, end))
            .expect("room for one range");
    }
    let mut buf = [0u8; MAX_CONFIRM_LEN];
    let payload = confirmation.encode(&mut buf).expect("encode").to_vec();
    Publish::new(format!("{device_topic}/confirm"), QoS::AtMostOnce, payload)
}

/// Runs the agent against a broker misbehaving as told, until the misbehaviour is over,
/// the agent has resent what was held and frames of every device flow on a later
/// connection; then stops it cleanly.
async fn run_against(
    misbehaviour: Misbehaviour,
    confirm: ConfirmMode,
) -> (Broker, RunReport, Setup) {
    let setup = Setup::new();
    let (config, pipeline) = match confirm {
        ConfirmMode::Broker => (setup.config(0, "16 MiB"), false),
        ConfirmMode::Pipeline => (setup.config_confirming(0), true),
    };
    let broker = Broker::start(misbehaviour, config.mqtt.inflight, pipeline).await;
    let mut config = config;
    config.mqtt.port = broker.port;
    let (stop, agent) = spawn_agent(config);
    wait_until(
        PATIENCE,
        "the misbehaviour over and what was held kept from a later connection",
        || {
            let log = broker.log();
            let resent = log.held.iter().all(|h| log.resent(h));
            let flowing = support::DEVICES
                .iter()
                .all(|d| log.stored_after_first().any(|f| f.device.as_str() == *d));
            if log.done && resent && flowing {
                Ok(())
            } else {
                Err(format!(
                    "done {}, connections {}, held {}, resent {resent}, devices flowing {flowing}",
                    log.done,
                    log.connections,
                    log.held.len()
                ))
            }
        },
    )
    .await;
    stop.send(()).expect("agent still running");
    let report = agent.await.expect("agent task");
    (broker, report, setup)
}

/// The health report's field `name`, as the agent publishes it.
fn health_field(report: &RunReport, name: &str) -> u64 {
    let health = serde_json::to_value(&report.health).expect("health serialises");
    health[name]
        .as_u64()
        .unwrap_or_else(|| panic!("the health report has no {name}: {health}"))
}

fn show(what: &str, log: &Log, report: &RunReport) {
    println!(
        "{what}: sealed {:?}, reconnects {}, connections {}, stored {}",
        report.sealed,
        report.health.reconnects,
        log.connections,
        log.stored.len()
    );
}

/// The agent counted one protocol error and dropped the connection over it.
fn assert_dropped_for_one_protocol_error(report: &RunReport) {
    assert_eq!(health_field(report, "protocol_errors"), 1);
    assert!(
        report.health.reconnects >= 1,
        "the agent dropped the connection"
    );
}

/// Every reading sealed was kept by the broker (acknowledged correctly) at least once,
/// none twice on one connection, and the agent holds nothing more.
fn assert_nothing_lost(log: &Log, report: &RunReport) {
    let all: Vec<Received> = log.stored.iter().map(|(_, r)| r.clone()).collect();
    Ledger::of(&all).assert_holds_every_sealed_reading(report, "correctly acknowledged");
    for connection in 1..=log.connections {
        let on_it: Vec<Received> = log
            .stored
            .iter()
            .filter(|(c, _)| *c == connection)
            .map(|(_, r)| r.clone())
            .collect();
        assert_eq!(
            Ledger::of(&on_it).duplicates(),
            0,
            "a reading sent twice on connection {connection}"
        );
    }
    for held in &log.held {
        assert!(
            log.resent(held),
            "the frame from seq {} of {} was not acknowledged on the first connection and never sent again",
            held.first_seq,
            held.device
        );
    }
    assert_eq!(report.health.dropped_frames, 0);
    assert_eq!(
        report.health.queue_records, 0,
        "everything was acknowledged in the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_pubacks_are_matched_by_packet_id() {
    let (broker, report, _setup) = run_against(Misbehaviour::OutOfOrder, ConfirmMode::Broker).await;
    let log = broker.log();
    println!(
        "out of order: {} held PUBACKs released late, sealed {:?}, reconnects {}, stored {}",
        log.released,
        report.sealed,
        report.health.reconnects,
        log.stored.len()
    );
    assert_eq!(log.released, OUT_OF_ORDER_CYCLES);
    assert_eq!(
        log.reused, OUT_OF_ORDER_CYCLES,
        "each late PUBACK's id was the next one the agent used (its publish held back until then)"
    );
    assert_eq!(log.held.len(), 1, "one frame held when the broker closed");
    assert_nothing_lost(&log, &report);
    assert_eq!(
        health_field(&report, "protocol_errors"),
        0,
        "out-of-order PUBACKs are legal MQTT"
    );
    assert_eq!(report.health.reconnects, 1, "only the broker's close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_puback_is_a_protocol_error_and_deletes_nothing() {
    let (broker, report, _setup) =
        run_against(Misbehaviour::DuplicatePuback, ConfirmMode::Broker).await;
    let log = broker.log();
    show("duplicate", &log, &report);
    assert_nothing_lost(&log, &report);
    assert_dropped_for_one_protocol_error(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puback_for_an_unknown_packet_id_is_a_protocol_error_and_deletes_nothing() {
    let (broker, report, _setup) =
        run_against(Misbehaviour::UnknownPuback, ConfirmMode::Broker).await;
    let log = broker.log();
    show("unknown id", &log, &report);
    assert_eq!(log.held.len(), 2);
    assert_nothing_lost(&log, &report);
    assert_dropped_for_one_protocol_error(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirming_a_puback_for_an_unknown_packet_id_is_a_protocol_error_too() {
    let (broker, report, _setup) =
        run_against(Misbehaviour::UnknownPuback, ConfirmMode::Pipeline).await;
    let log = broker.log();
    println!(
        "unknown id, pipeline: sealed {:?}, reconnects {}, confirmed {}, resent {}",
        report.sealed,
        report.health.reconnects,
        report.health.confirmed_frames,
        report.health.resent_frames
    );
    assert_eq!(log.held.len(), 2);
    assert_nothing_lost(&log, &report);
    assert_eq!(health_field(&report, "protocol_errors"), 1);
    assert_eq!(report.health.ignored_confirmations, 0);
}
