//! The scenarios: one fault each, injected into the running pipeline on a schedule drawn
//! from a seed (which agent, when, for how long), so a failing run can be repeated
//! exactly. Short mode (`scripts/test.sh`) injects each fault a few times; long mode
//! (`scripts/faults.sh`) injects more of them and holds the outages longer.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use protocol::{BootId, DeviceId, Frame, Quality, Reading, MAX_FRAME_LEN};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::deployment::{BridgeMode, Deployment, Options, Server};
use crate::endpoints;
use crate::ledger::{Ledger, LossPolicy};
use crate::workload::{self, QueueSize};
use service::clock::now_ms;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Agents SIGKILLed and restarted; their disk queues carry the readings over.
    AgentKill,
    /// Mosquitto stopped and started while the agents queue on disk.
    BrokerOutage,
    /// Mosquitto SIGKILLed: what it acknowledged and had not passed on, and every
    /// session, is gone; the agents resend what the ingester does not confirm.
    BrokerKill,
    /// A broker outage longer than a small queue holds: drop-oldest, counted.
    QueueCap,
    /// The bridge (client mode, persistent session) SIGKILLed and restarted.
    BridgeKill,
    /// The bridge in embedded mode SIGKILLed, the first time while Kafka is frozen:
    /// what rumqttd held in memory comes again from the agents' disks.
    EmbeddedBridgeKill,
    /// The Kafka-compatible broker frozen (SIGSTOP) beyond the clients' timeouts.
    KafkaPause,
    /// Kafka restarted with its memory storage lost, once while the ingester is away and
    /// once while it runs: what the bridge had confirmed and nobody stored comes again
    /// from the agents, and every service gets past the new broker by itself.
    KafkaRestart,
    /// The ingester SIGKILLed mid-batch and restarted.
    IngesterKill,
    /// A second ingester joins the consumer group, then the first leaves.
    Rebalance,
    /// PostgreSQL stopped and started.
    PostgresOutage,
    /// Redis stopped and started.
    RedisOutage,
    /// Malformed and forged frames mixed into the good traffic.
    BadFrames,
}

impl Scenario {
    pub const ALL: [Scenario; 13] = [
        Scenario::AgentKill,
        Scenario::BrokerOutage,
        Scenario::BrokerKill,
        Scenario::QueueCap,
        Scenario::BridgeKill,
        Scenario::EmbeddedBridgeKill,
        Scenario::KafkaPause,
        Scenario::KafkaRestart,
        Scenario::IngesterKill,
        Scenario::Rebalance,
        Scenario::PostgresOutage,
        Scenario::RedisOutage,
        Scenario::BadFrames,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::AgentKill => "agent-kill",
            Scenario::BrokerOutage => "broker-outage",
            Scenario::BrokerKill => "broker-kill",
            Scenario::QueueCap => "queue-cap",
            Scenario::BridgeKill => "bridge-kill",
            Scenario::EmbeddedBridgeKill => "embedded-bridge-kill",
            Scenario::KafkaPause => "kafka-pause",
            Scenario::KafkaRestart => "kafka-restart",
            Scenario::IngesterKill => "ingester-kill",
            Scenario::Rebalance => "rebalance",
            Scenario::PostgresOutage => "postgres-outage",
            Scenario::RedisOutage => "redis-outage",
            Scenario::BadFrames => "bad-frames",
        }
    }

    /// Most frames the agents may resend. Where nothing after the broker loses what it
    /// holds and the cloud only stalls, confirmations are late, never missing: nothing
    /// is resent but a device's last frame after `confirm_timeout`, once per device.
    fn resend_bound(self) -> Option<u64> {
        match self {
            Scenario::KafkaPause
            | Scenario::IngesterKill
            | Scenario::Rebalance
            | Scenario::PostgresOutage
            | Scenario::RedisOutage => Some(workload::devices().len() as u64),
            _ => None,
        }
    }

    fn policy(self) -> LossPolicy {
        match self {
            Scenario::QueueCap => LossPolicy::QueueCap,
            _ => LossPolicy::None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Short,
    Long,
}

impl Mode {
    /// The workload's rate unless told otherwise: the seed channels in short mode (the
    /// test command's, debug binaries on a busy machine), the benchmark's in long mode.
    pub fn default_rate(self) -> u64 {
        match self {
            Mode::Short => workload::SEED_RATE,
            Mode::Long => workload::BENCH_RATE,
        }
    }

    /// How many times a repeated fault is injected.
    fn repeats(self) -> usize {
        match self {
            Mode::Short => 3,
            Mode::Long => 10,
        }
    }

    /// Outages last this long: seconds, drawn between the bounds of the mode.
    fn outage(self, rng: &mut ChaCha8Rng, short: (u64, u64), long: (u64, u64)) -> Duration {
        let (low, high) = match self {
            Mode::Short => short,
            Mode::Long => long,
        };
        Duration::from_millis(rng.random_range(low * 1000..=high * 1000))
    }
}

/// How a scenario runs: the seed of its schedule and values, the mode, the workload's
/// rate in readings per second.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub seed: u64,
    pub mode: Mode,
    pub rate: u64,
}

impl Settings {
    /// `mode` at its default rate.
    pub fn new(seed: u64, mode: Mode) -> Self {
        Self {
            seed,
            mode,
            rate: mode.default_rate(),
        }
    }
}

/// A finished scenario: its ledger and the breaches of the design's promise.
pub struct Outcome {
    pub ledger: Ledger,
    pub breaches: Vec<String>,
}

/// Runs `scenario` from start to ledger.
pub async fn run(scenario: Scenario, settings: Settings) -> Result<Outcome> {
    let Settings { seed, mode, rate } = settings;
    let options = Options {
        seed,
        rate,
        bridge: match scenario {
            Scenario::EmbeddedBridgeKill => BridgeMode::Embedded,
            _ => BridgeMode::Client,
        },
        queue: (scenario == Scenario::QueueCap).then_some(QueueSize {
            segment_bytes: 4096,
            max_bytes: 16384,
        }),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut deployment = Deployment::start(options)
        .await
        .with_context(|| format!("starting the pipeline for {}", scenario.name()))?;
    let mut faults = Faults {
        deployment: &mut deployment,
        rng: &mut rng,
        mode,
        recoveries: Vec::new(),
        injected: Vec::new(),
        breaches: Vec::new(),
        dead_letters: 0,
    };
    let outcome = faults.inject(scenario).await;
    let (recoveries, injected, fault_breaches, dead_letters) = (
        faults.recoveries,
        faults.injected,
        faults.breaches,
        faults.dead_letters,
    );
    if let Err(e) = outcome {
        let logs = deployment.keep_logs();
        return Err(e.context(format!(
            "injecting {} (logs kept in {})",
            scenario.name(),
            logs.display()
        )));
    }
    // A stretch of normal running after the last fault, then the clean stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    if dead_letters > 0 {
        deployment.wait_for_dead_letters(dead_letters).await?;
    }
    let finished = deployment.finish().await?;
    let mut ledger = Ledger::take(scenario.name(), seed, &finished).await?;
    ledger.recoveries = recoveries;
    ledger.injected = injected;
    let mut breaches = ledger.breaches(scenario.policy(), dead_letters);
    breaches.extend(fault_breaches);
    if let Some(bound) = scenario.resend_bound() {
        if ledger.resent_frames > bound {
            breaches.push(format!(
                "{} frames resent while the cloud only stalled (at most {bound}): a resend storm",
                ledger.resent_frames
            ));
        }
    }
    if !breaches.is_empty() {
        let logs = finished.keep_logs();
        breaches.push(format!("logs and queues kept in {}", logs.display()));
    }
    Ok(Outcome { ledger, breaches })
}

/// How long a running pipeline may take to say it is ready (the ingester judges Kafka
/// from statistics every 5 s).
const READY_WITHIN: Duration = Duration::from_secs(15);

struct Faults<'a> {
    deployment: &'a mut Deployment,
    rng: &'a mut ChaCha8Rng,
    mode: Mode,
    recoveries: Vec<(String, Duration)>,
    /// Faults that have no recovery to time, described.
    injected: Vec<String>,
    /// Promises checked while the faults run (readiness), each breach named.
    breaches: Vec<String>,
    dead_letters: u64,
}

impl Faults<'_> {
    async fn inject(&mut self, scenario: Scenario) -> Result<()> {
        let repeats = self.mode.repeats();
        match scenario {
            Scenario::AgentKill => {
                for n in 1..=repeats {
                    self.run_for(1, 4).await?;
                    let agent = self.rng.random_range(0..self.deployment.agents.len());
                    self.deployment.agents[agent].kill()?;
                    self.down_for(0.1, 2.0).await;
                    self.deployment.agents[agent].start()?;
                    let name = self.deployment.agents[agent].name().to_owned();
                    self.recovered(
                        format!("SIGKILL {n} of {name}"),
                        &self.deployment.agent_devices(agent),
                    )
                    .await?;
                }
            }
            Scenario::BrokerOutage => {
                self.outages(Server::Broker).await?;
            }
            Scenario::BrokerKill => {
                for n in 1..=repeats {
                    self.run_for(1, 4).await?;
                    self.deployment.kill_broker()?;
                    self.down_for(0.2, 2.0).await;
                    self.deployment.start_server(Server::Broker)?;
                    self.recovered(format!("Mosquitto SIGKILL {n}"), &workload::devices())
                        .await?;
                }
            }
            Scenario::QueueCap => {
                self.run_for(1, 2).await?;
                self.deployment.stop_server(Server::Broker)?;
                // The seed workload queues about 2.5 KB/s per agent, and each queue is
                // scaled with its agent's rate: every queue overflows several times.
                let outage = self.mode.outage(self.rng, (15, 18), (40, 60));
                tokio::time::sleep(outage).await;
                self.deployment.start_server(Server::Broker)?;
                self.recovered(
                    format!(
                        "broker outage of {:.1}s past the queue cap",
                        outage.as_secs_f64()
                    ),
                    &workload::devices(),
                )
                .await?;
            }
            Scenario::BridgeKill | Scenario::EmbeddedBridgeKill => {
                let kills = if scenario == Scenario::BridgeKill {
                    repeats
                } else {
                    repeats.div_ceil(3)
                };
                for n in 1..=kills {
                    self.run_for(1, 4).await?;
                    if scenario == Scenario::EmbeddedBridgeKill && n == 1 {
                        // The bridge buffers what rumqttd acknowledged while Kafka is
                        // away, and dies holding it: only the agents still have it.
                        self.deployment.kafka.pause();
                        let freeze = self.mode.outage(self.rng, (8, 12), (30, 35));
                        tokio::time::sleep(freeze).await;
                        self.deployment.bridge.kill()?;
                        self.down_for(0.2, 2.0).await;
                        self.deployment.bridge.start()?;
                        self.deployment.kafka.resume();
                        self.recovered(
                            format!(
                                "bridge SIGKILL inside a Kafka freeze of {:.1}s",
                                freeze.as_secs_f64()
                            ),
                            &workload::devices(),
                        )
                        .await?;
                        continue;
                    }
                    self.deployment.bridge.kill()?;
                    self.down_for(0.2, 2.0).await;
                    self.deployment.bridge.start()?;
                    self.recovered(format!("bridge SIGKILL {n}"), &workload::devices())
                        .await?;
                }
            }
            Scenario::KafkaPause => {
                self.run_for(1, 3).await?;
                self.deployment.kafka.pause();
                // Beyond librdkafka's request.timeout.ms (30 s) and the bridge's stall
                // bound (30 s) in short mode, with seconds to see the stall on /readyz;
                // beyond its socket.timeout.ms (60 s) in long mode.
                let pause = self.mode.outage(self.rng, (36, 40), (62, 75));
                self.require_ready("before the freeze").await;
                let unready = self.first_unready(pause).await;
                self.deployment.kafka.resume();
                let said = |at: &Option<(Duration, String)>| {
                    at.as_ref().map_or("never".to_owned(), |(at, why)| {
                        format!("after {:.1}s ({why})", at.as_secs_f64())
                    })
                };
                self.injected.push(format!(
                    "/readyz 503 during the freeze: bridge {}, ingester {}",
                    said(&unready[0]),
                    said(&unready[1])
                ));
                // Records wait for the bridge beyond its stall bound: it must say so. The
                // ingester sees nothing waiting (the frozen broker tells it of no new
                // records) until librdkafka gives the connection up: reported, not required.
                if unready[0].is_none() {
                    self.breaches
                        .push("the bridge's /readyz stayed 200 through the freeze".to_owned());
                }
                self.recovered(
                    format!("Kafka frozen for {:.1}s", pause.as_secs_f64()),
                    &workload::devices(),
                )
                .await?;
                self.require_ready("after the freeze").await;
            }
            Scenario::KafkaRestart => {
                // Nobody restarts the bridge or a running ingester. Their consumers lose
                // Kafka and are made again (`service::kafka_connection`); the bridge's
                // producer, which the broker forgot, is refused or wedged, and the bridge
                // replaces it (at once, or after twice `forward.stall_after`: 60 s by
                // default); the ingester finds its stored offsets beyond the new logs and
                // reads them from the start.
                for ingester_away in [true, false] {
                    self.run_for(1, 3).await?;
                    if ingester_away {
                        // Kafka then holds records nobody has stored yet.
                        self.deployment.ingesters[0].kill()?;
                        self.run_for(2, 4).await?;
                    }
                    self.deployment.restart_kafka().await?;
                    if ingester_away {
                        self.deployment.ingesters[0].start()?;
                    }
                    let ingester = if ingester_away { "behind" } else { "running" };
                    self.recovered(
                        format!("Kafka restarted, its records lost, the ingester {ingester}"),
                        &workload::devices(),
                    )
                    .await?;
                    self.require_ready("after Kafka's restart").await;
                }
            }
            Scenario::IngesterKill => {
                for n in 1..=repeats {
                    self.run_for(1, 3).await?;
                    self.deployment.ingesters[0].kill()?;
                    // Restarted at once: the new instance takes the dead one's partition
                    // leases when they expire (10 s after its last renewal), from the
                    // offsets stored with the rows.
                    self.down_for(0.5, 2.0).await;
                    self.deployment.ingesters[0].start()?;
                    self.recovered(format!("ingester SIGKILL {n}"), &workload::devices())
                        .await?;
                }
            }
            Scenario::Rebalance => {
                for n in 1..=repeats.div_ceil(3) {
                    self.run_for(1, 2).await?;
                    // The newest instance joins, the oldest running one leaves.
                    self.deployment.add_ingester()?;
                    self.run_for(3, 6).await?;
                    let leaving = self
                        .deployment
                        .ingesters
                        .iter()
                        .position(|i| i.is_running())
                        .context("no ingester running")?;
                    self.deployment.ingesters[leaving].terminate(Duration::from_secs(60))?;
                    self.recovered(
                        format!("rebalance {n}: join, then a leave"),
                        &workload::devices(),
                    )
                    .await?;
                }
            }
            Scenario::PostgresOutage => {
                self.outages(Server::Postgres).await?;
            }
            Scenario::RedisOutage => {
                self.outages(Server::Redis).await?;
            }
            Scenario::BadFrames => {
                let count = match self.mode {
                    Mode::Short => 300,
                    Mode::Long => 3000,
                };
                self.dead_letters = self.publish_bad_frames(count).await?;
            }
        }
        Ok(())
    }

    /// A server stopped and started again, a few times, each outage as long as the
    /// mode says; recovery is timed from each start.
    async fn outages(&mut self, server: Server) -> Result<()> {
        for n in 1..=self.mode.repeats().div_ceil(2) {
            self.run_for(1, 3).await?;
            self.deployment.stop_server(server)?;
            let outage = self.mode.outage(self.rng, (3, 6), (10, 30));
            tokio::time::sleep(outage).await;
            self.deployment.start_server(server)?;
            self.recovered(
                format!(
                    "{} outage {n} of {:.1}s",
                    server.name(),
                    outage.as_secs_f64()
                ),
                &workload::devices(),
            )
            .await?;
        }
        Ok(())
    }

    /// Normal running for a random time between the bounds (seconds).
    async fn run_for(&mut self, low: u64, high: u64) -> Result<()> {
        let pause = Duration::from_millis(self.rng.random_range(low * 1000..=high * 1000));
        tokio::time::sleep(pause).await;
        self.deployment.check_alive()
    }

    async fn down_for(&mut self, low: f64, high: f64) {
        let down = Duration::from_secs_f64(self.rng.random_range(low..=high));
        tokio::time::sleep(down).await;
    }

    async fn recovered(&mut self, fault: String, devices: &[&str]) -> Result<()> {
        let took = self
            .deployment
            .wait_for_fresh_rows(devices, now_ms())
            .await
            .with_context(|| format!("recovering from {fault}"))?;
        self.recoveries.push((fault, took));
        Ok(())
    }

    /// Waits until the bridge and the first ingester say they are ready; a breach if
    /// either still does not after [`READY_WITHIN`].
    async fn require_ready(&mut self, when: &str) {
        let addresses: Vec<String> = self
            .deployment
            .http_addresses()
            .iter()
            .take(2)
            .cloned()
            .collect();
        let deadline = Instant::now() + READY_WITHIN;
        for address in addresses {
            loop {
                let probe = address.clone();
                let why = tokio::task::spawn_blocking(move || endpoints::not_ready(&probe))
                    .await
                    .unwrap_or_else(|e| Some(e.to_string()));
                match why {
                    None => break,
                    Some(why) if Instant::now() >= deadline => {
                        self.breaches
                            .push(format!("{address} not ready {when}: {why}"));
                        break;
                    }
                    Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        }
    }

    /// Watches the bridge's and the first ingester's `/readyz` for `length`; returns for
    /// each how long it took to turn 503, and why (`None`: it never did).
    async fn first_unready(&self, length: Duration) -> [Option<(Duration, String)>; 2] {
        let addresses: Vec<String> = self
            .deployment
            .http_addresses()
            .iter()
            .take(2)
            .cloned()
            .collect();
        let start = Instant::now();
        let mut unready = [None, None];
        while start.elapsed() < length {
            for (address, seen) in addresses.iter().zip(unready.iter_mut()) {
                if seen.is_none() {
                    let address = address.clone();
                    let why = tokio::task::spawn_blocking(move || endpoints::not_ready(&address))
                        .await
                        .unwrap_or_default();
                    *seen = why.map(|why| (start.elapsed(), why));
                }
            }
            tokio::time::sleep(
                Duration::from_millis(500).min(length.saturating_sub(start.elapsed())),
            )
            .await;
        }
        unready
    }

    /// Publishes `count` bad messages on telemetry topics at random moments while the
    /// agents run: frames of another device than the topic's, truncated frames, random
    /// bytes, and well-formed frames of a device the catalog does not know. Each must
    /// become one dead letter; returns how many were published.
    async fn publish_bad_frames(&mut self, count: u64) -> Result<u64> {
        let port = self
            .deployment
            .mosquitto
            .as_ref()
            .map(testkit::Mosquitto::port)
            .context("bad frames go through the client-mode broker")?;
        let mut options = MqttOptions::new("e2e-forger", "127.0.0.1", port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(options, 100);
        let acks = tokio::spawn(async move {
            let mut acked = 0u64;
            while acked < count {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => return Err(anyhow::anyhow!("forger's connection: {e}")),
                }
            }
            Ok(acked)
        });
        let topic = |device: &str| format!("plant/plant1/line-a/{device}/telemetry");
        let mut kinds = [0u64; 4];
        for _ in 0..count {
            let kind = self.rng.random_range(0..4);
            kinds[kind] += 1;
            let (topic, payload) = match kind {
                0 => (topic("furnace-01"), self.frame("press-01")?),
                1 => {
                    let frame = self.frame("furnace-01")?;
                    let cut = self.rng.random_range(1..frame.len());
                    (topic("furnace-01"), frame[..cut].to_vec())
                }
                2 => {
                    let mut bytes = vec![0u8; self.rng.random_range(1..300)];
                    self.rng.fill_bytes(&mut bytes);
                    (topic("press-01"), bytes)
                }
                _ => (topic("ghost-01"), self.frame("ghost-01")?),
            };
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .context("publishing a bad frame")?;
            tokio::time::sleep(Duration::from_millis(self.rng.random_range(0..40))).await;
        }
        let acked = tokio::time::timeout(Duration::from_secs(30), acks)
            .await
            .context("the broker did not acknowledge every bad frame in 30 s")?
            .context("the forger's event loop")??;
        let _ = client.disconnect().await;
        self.injected.push(format!(
            "{acked} bad messages: {} of another device than the topic's, {} truncated, \
             {} random bytes, {} of an unknown device",
            kinds[0], kinds[1], kinds[2], kinds[3]
        ));
        Ok(acked)
    }

    /// A well-formed frame of `device` under a boot id no agent uses.
    fn frame(&mut self, device: &str) -> Result<Vec<u8>> {
        let mut frame = Frame::new(
            DeviceId::new(device).map_err(|e| anyhow::anyhow!("device id {device:?}: {e:?}"))?,
            BootId(self.rng.random()),
            0,
            now_ms(),
        );
        for i in 0..self.rng.random_range(1..50u32) {
            let reading = Reading {
                channel: 0,
                offset_ms: i * 10,
                value: self.rng.random(),
                quality: Quality::empty(),
            };
            if frame.readings.push(reading).is_err() {
                break;
            }
        }
        let mut buf = [0u8; MAX_FRAME_LEN];
        let bytes = frame
            .encode(&mut buf)
            .map_err(|e| anyhow::anyhow!("encoding a frame of {device}: {e:?}"))?;
        Ok(bytes.to_vec())
    }
}

impl Scenario {
    /// One line for `faults --list` and the test names.
    pub fn description(self) -> &'static str {
        match self {
            Scenario::AgentKill => {
                "agents SIGKILLed and restarted; the disk queue carries readings over"
            }
            Scenario::BrokerOutage => {
                "Mosquitto stopped and started; the agents' queues fill and drain"
            }
            Scenario::BrokerKill => {
                "Mosquitto SIGKILLed with its sessions; the agents resend what it lost"
            }
            Scenario::QueueCap => "a broker outage beyond a 16 KiB queue: drop-oldest, counted",
            Scenario::BridgeKill => "the client-mode bridge SIGKILLed and restarted",
            Scenario::EmbeddedBridgeKill => {
                "the embedded-broker bridge SIGKILLed, once inside a Kafka freeze"
            }
            Scenario::KafkaPause => "Kafka frozen with SIGSTOP beyond the clients' timeouts",
            Scenario::KafkaRestart => {
                "Kafka restarted, its records lost, the ingester behind, then running"
            }
            Scenario::IngesterKill => "the ingester SIGKILLed mid-batch and restarted",
            Scenario::Rebalance => "a second ingester joins, then one leaves",
            Scenario::PostgresOutage => "PostgreSQL stopped and started",
            Scenario::RedisOutage => "Redis stopped and started",
            Scenario::BadFrames => "malformed and forged frames mixed into good traffic",
        }
    }
}
