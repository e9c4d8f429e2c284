//! `bench bridge`: bridge throughput and latency, measured beside what bounds them on the
//! same machine in the same run.
//!
//! The bar (design brief, "Numbers that matter"): at least 100k messages/s with QoS 1 and
//! acknowledgement after Kafka, on 2 cores, with frames of 50 readings — or the measured
//! reason why not. A throughput figure alone cannot say whether the bridge, the broker,
//! Kafka or the load generator was the limit, so every scenario also records how much CPU
//! each part used and how long it waited for one (/proc schedstat), and the publishers'
//! own rate; the client-mode verdict turns these into CPU per message.
//!
//! Scenarios (all the same workload: N frames of 50 readings from D devices, published at
//! QoS 1 over C MQTT 3.1.1 connections with rumqttc, `inflight` PUBLISHes in flight each;
//! the publishers run in this process and their rate is part of what is measured):
//!
//! 1. `ceiling`: the same N payloads produced straight into Kafka by an rdkafka
//!    FutureProducer built from `bridge::kafka::producer_config` (the bridge's own
//!    settings: idempotent, acks=all, lz4, linger), with the bridge's key, headers and
//!    in-flight window; waits for every delivery report.
//! 2. `publish-only`: the publishers against a private Mosquitto nobody subscribes to:
//!    how fast the load generator and Mosquitto alone take the messages.
//! 3. `mqtt-side`: the bridge's own MQTT client code (`mqtt_client::ClientSource`) on a
//!    private Mosquitto, acknowledging each message at once instead of after Kafka: what
//!    client mode could reach if Kafka cost nothing.
//! 4. `client`: the bridge in-process in client mode, subscribed to a private Mosquitto
//!    (shared subscription, MQTT 5, manual acks after Kafka's delivery report).
//! 5. `embedded`: the bridge in-process in embedded mode; publishers connect to its
//!    rumqttd, which acknowledges on receipt.
//! 6. `embedded-sealed`: the same with the gateway registry (a private PostgreSQL): each
//!    connection logs in as a gateway and every frame is sealed with its key and checked
//!    by the bridge. Its rate beside `embedded`'s is what authorisation costs.
//! 7. `embedded-tls`: the same over TLS, every publisher presenting a client certificate
//!    (certificates made for the run, `tls`). Its rate beside `embedded-sealed`'s is what
//!    TLS costs the device → bridge hop.
//! 8. `shell`: the everyday alternative, `mosquitto_sub -q 1 -F '%t %x' | python` with a
//!    confluent-kafka producer using the same librdkafka settings. mosquitto_sub
//!    acknowledges on receipt: no end-to-end guarantee.
//!
//! Run: `scripts/bench-bridge.sh [flags]` (builds target/release/bench, installs the
//! Python producer, exports the stack's addresses), or with the stack's addresses
//! exported yourself (`set -a; . .stack/env; set +a`):
//! `target/release/bench bridge [--frames N] [--devices D] [--connections C]
//! [--inflight I] [--rate MSGS_PER_S] [--only ceiling,client,...] [--timeout SECONDS]
//! [--rounds R] [--python PATH]`.
//! The same knobs as environment variables: BENCH_FRAMES (default 200000), BENCH_DEVICES
//! (100), BENCH_CONNECTIONS (4), BENCH_INFLIGHT (1000), BENCH_RATE (total msgs/s to pace
//! the publishers at, for latency at a given load; default unpaced), BENCH_ONLY (all),
//! BENCH_TIMEOUT_S (60, per scenario), BENCH_BRIDGE_ROUNDS (1; interleaved, median shown),
//! BENCH_PYTHON (an interpreter with confluent_kafka;
//! default target/bench-venv/bin/python), BENCH_MOSQUITTO (extra lines for the private
//! Mosquittos' config, `\n`-separated; default `max_inflight_messages 0` as in the stack).
//! Logs: RUST_LOG (default warn).
//!
//! The pieces, by concern: the workload and its publishers (`workload`, `publishers`),
//! Kafka topics and the latency probe (`kafka`), CPU accounting (`cpu`), the scenarios
//! (`scenarios`, the in-process bridge in `in_process`, the shell pipeline in `shell`)
//! and the printed report (`report`), whose row labels `bench`'s own report parses
//! (`components`).

mod cpu;
mod in_process;
mod kafka;
mod publishers;
mod registry;
mod report;
mod scenarios;
mod shell;
mod tls;
mod workload;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bridge::config::{KafkaConfig, Mode};

use crate::report::format::rate as fmt_rate;
use scenarios::Outcome;

/// Readings per frame: the size the bar is stated for.
const READINGS_PER_FRAME: usize = 50;
/// Extra settings of the private Mosquittos, by default the stack's own
/// (`scripts/stack.sh`): no cap on the messages in flight to a subscriber (Mosquitto's
/// default is 20). BENCH_MOSQUITTO replaces them (`\n` between lines).
const MOSQUITTO_SETTINGS: &str = "max_inflight_messages 0";

const SCENARIOS: [&str; 8] = [
    "ceiling",
    "publish-only",
    "mqtt-side",
    "client",
    "embedded",
    "embedded-sealed",
    "embedded-tls",
    "shell",
];

/// The bridge throughput benchmark's knobs: each a flag or its BENCH_* environment
/// variable (the flag wins; an empty variable counts as unset). Kept as text here and
/// parsed in `Settings::from_knobs`, so `1_000_000` is a number as it always was.
#[derive(clap::Args, Debug)]
pub struct Knobs {
    /// Frames to publish, 50 readings each [default: 200000].
    #[arg(long, env = "BENCH_FRAMES")]
    frames: Option<String>,
    /// Simulated devices, 1 to 10000 [default: 100].
    #[arg(long, env = "BENCH_DEVICES")]
    devices: Option<String>,
    /// MQTT connections the devices publish over, 1 to the devices [default: 4].
    #[arg(long, env = "BENCH_CONNECTIONS")]
    connections: Option<String>,
    /// PUBLISHes in flight per connection [default: 1000].
    #[arg(long, env = "BENCH_INFLIGHT")]
    inflight: Option<String>,
    /// Total msgs/s to pace the publishers at, for latency at a given load [default:
    /// unpaced].
    #[arg(long, env = "BENCH_RATE")]
    rate: Option<String>,
    /// Scenarios to run, comma-separated: ceiling, publish-only, mqtt-side, client,
    /// embedded, embedded-sealed, embedded-tls, shell [default: all].
    #[arg(long, env = "BENCH_ONLY")]
    only: Option<String>,
    /// Seconds each scenario may take [default: 60].
    #[arg(long, env = "BENCH_TIMEOUT_S")]
    timeout: Option<String>,
    /// Times to run the scenarios, interleaved (A B C A B C ...); the table shows each
    /// scenario's median round, so a noisy machine slows every scenario alike
    /// [default: 1].
    #[arg(long, env = "BENCH_BRIDGE_ROUNDS")]
    rounds: Option<String>,
    /// A Python interpreter with confluent_kafka, for the shell pipeline [default:
    /// target/bench-venv/bin/python].
    #[arg(long, env = "BENCH_PYTHON")]
    python: Option<String>,
}

#[derive(Debug, Clone)]
struct Settings {
    frames: usize,
    devices: usize,
    connections: usize,
    inflight: u16,
    /// Total publish rate in messages/s; `None` publishes as fast as PUBACKs come back.
    rate: Option<f64>,
    timeout: Duration,
    rounds: usize,
    only: Vec<String>,
    python: PathBuf,
    kafka_brokers: String,
    /// Extra lines for the private Mosquittos' configuration.
    mosquitto: String,
    /// The bridge's in-flight window (its default), also the ceiling producer's.
    max_in_flight: usize,
}

impl Settings {
    fn from_knobs(knobs: Knobs) -> anyhow::Result<Self> {
        let set = |v: Option<String>| v.filter(|v| !v.is_empty());
        let number = |key: &str, value: Option<String>, default: usize| match set(value) {
            None => Ok(default),
            Some(v) => v
                .replace('_', "")
                .parse::<usize>()
                .with_context(|| format!("{key} = {v:?} is not a whole number")),
        };
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let settings = Settings {
            frames: number("frames", knobs.frames, 200_000)?,
            devices: number("devices", knobs.devices, 100)?,
            connections: number("connections", knobs.connections, 4)?,
            inflight: u16::try_from(number("inflight", knobs.inflight, 1000)?)
                .context("inflight: at most 65535")?,
            rate: set(knobs.rate)
                .map(|v| {
                    v.parse()
                        .with_context(|| format!("rate = {v:?} is not a number"))
                })
                .transpose()?,
            timeout: Duration::from_secs(number("timeout", knobs.timeout, 60)? as u64),
            rounds: number("rounds", knobs.rounds, 1)?,
            only: set(knobs.only).map_or_else(
                || SCENARIOS.iter().map(|s| s.to_string()).collect(),
                |v| v.split(',').map(|s| s.trim().to_owned()).collect(),
            ),
            python: set(knobs.python).map_or_else(
                || workspace.join("target/bench-venv/bin/python"),
                PathBuf::from,
            ),
            kafka_brokers: testkit::kafka_brokers(),
            mosquitto: set(std::env::var("BENCH_MOSQUITTO").ok())
                .map_or_else(|| MOSQUITTO_SETTINGS.to_owned(), |v| v.replace("\\n", "\n")),
            max_in_flight: bridge::config::ForwardConfig::default().max_in_flight,
        };
        ensure!(settings.frames > 0, "frames: at least 1");
        ensure!(
            (1..=10_000).contains(&settings.devices),
            "devices: between 1 and 10000"
        );
        ensure!(
            (1..=settings.devices).contains(&settings.connections),
            "connections: between 1 and the number of devices"
        );
        ensure!(settings.inflight > 0, "inflight: at least 1");
        ensure!(
            (1..=20).contains(&settings.rounds),
            "rounds: between 1 and 20"
        );
        for name in &settings.only {
            if !SCENARIOS.contains(&name.as_str()) {
                bail!("unknown scenario {name:?}; known: {SCENARIOS:?}");
            }
        }
        Ok(settings)
    }

    fn wants(&self, scenario: &str) -> bool {
        self.only.iter().any(|s| s == scenario)
    }

    fn kafka(&self, topic: &str, dlq_topic: &str) -> KafkaConfig {
        KafkaConfig {
            brokers: self.kafka_brokers.clone(),
            topic: topic.to_owned(),
            dlq_topic: dlq_topic.to_owned(),
            metrics_topic: String::new(),
            ..KafkaConfig::default()
        }
    }
}

/// Runs the scenarios `knobs` asks for and prints the report. Not under `bench`'s own
/// runtime: the publishers get theirs (threads `bench-publish`) and the bridge its own
/// (`bench-bridge`), so the CPU table can tell them apart by thread name.
pub fn run(knobs: Knobs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let settings = Settings::from_knobs(knobs)?;
    let machine = crate::machine::Machine::detect()?;
    let frame_len = workload::Workload::new(&settings)
        .payload(0, service::clock::now_ms())
        .len();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-publish")
        .enable_all()
        .build()
        .context("tokio runtime for the publishers")?;
    // Spawned, not run by block_on on the main thread: the ceiling's producing loop then
    // runs on the `bench-publish` threads, where the CPU table expects the load generator.
    let scenarios = runtime.spawn({
        let settings = settings.clone();
        async move { run_scenarios(&settings).await }
    });
    let results = runtime
        .block_on(scenarios)
        .context("the scenarios panicked")?;
    report::print(&settings, &machine, frame_len, &results);
    runtime.shutdown_background();
    Ok(())
}

async fn run_scenarios(settings: &Settings) -> Vec<(&'static str, anyhow::Result<Outcome>)> {
    let wanted: Vec<&'static str> = SCENARIOS
        .into_iter()
        .filter(|scenario| settings.wants(scenario))
        .collect();
    let mut rounds: Vec<Vec<anyhow::Result<Outcome>>> = wanted.iter().map(|_| Vec::new()).collect();
    for round in 1..=settings.rounds {
        for (index, scenario) in wanted.iter().enumerate() {
            if settings.rounds > 1 {
                eprintln!(
                    "running {scenario} (round {round} of {}) ...",
                    settings.rounds
                );
            } else {
                eprintln!("running {scenario} ...");
            }
            let started = Instant::now();
            let outcome = run_scenario(settings, scenario).await;
            match &outcome {
                Ok(o) => eprintln!(
                    "  {} msgs/s ({:.1} s in all)",
                    fmt_rate(o.rate()),
                    started.elapsed().as_secs_f64()
                ),
                Err(e) => eprintln!("  failed: {e:#}"),
            }
            rounds[index].push(outcome);
        }
    }
    wanted
        .into_iter()
        .zip(rounds)
        .map(|(scenario, outcomes)| (scenario, median_round(outcomes)))
        .collect()
}

async fn run_scenario(settings: &Settings, scenario: &str) -> anyhow::Result<Outcome> {
    match scenario {
        "ceiling" => scenarios::ceiling(settings).await,
        "publish-only" => scenarios::publish_only(settings).await,
        "mqtt-side" => scenarios::mqtt_side(settings).await,
        "client" => in_process::bridge_scenario(settings, Mode::Client).await,
        "embedded" => in_process::bridge_scenario(settings, Mode::Embedded).await,
        "embedded-sealed" => in_process::sealed_scenario(settings, false).await,
        "embedded-tls" => in_process::sealed_scenario(settings, true).await,
        "shell" => shell::shell(settings).await,
        _ => unreachable!("scenario names are checked in Settings::from_knobs"),
    }
}

/// The round of median rate, every round's rate in its notes; the first failure if any
/// round failed.
fn median_round(outcomes: Vec<anyhow::Result<Outcome>>) -> anyhow::Result<Outcome> {
    let rounds = outcomes.len();
    let mut done = outcomes
        .into_iter()
        .collect::<anyhow::Result<Vec<Outcome>>>()?;
    done.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let rates: Vec<String> = done.iter().map(|o| fmt_rate(o.rate())).collect();
    let mut median = done.swap_remove(done.len() / 2);
    if rounds > 1 {
        median.notes.push(format!(
            "median of {rounds} rounds, msgs/s sorted: {}",
            rates.join(", ")
        ));
    }
    Ok(median)
}
