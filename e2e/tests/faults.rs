//! Every fault scenario in short mode against the real pipeline, one test each, with a
//! fixed seed (so a failure repeats: `cargo run -p e2e --bin faults -- SCENARIO --mode
//! short --seed N`). Scenarios run one at a time: each runs a dozen processes, and two
//! at once on a 2-core machine would measure the machine rather than the pipeline.

use std::sync::Mutex;

use e2e::scenario::{self, Mode, Scenario, Settings};

/// The seed of the short suite; `E2E_SEED` overrides it.
const SEED: u64 = 20261130;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn check(scenario: Scenario) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let seed = std::env::var("E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let outcome = runtime
        .block_on(scenario::run(scenario, Settings::new(seed, Mode::Short)))
        .unwrap_or_else(|e| panic!("{} (seed {seed}): {e:#}", scenario.name()));
    println!("{}", outcome.ledger);
    assert!(
        outcome.breaches.is_empty(),
        "{} (seed {seed}) broke the promise: {:#?}\n{}",
        scenario.name(),
        outcome.breaches,
        outcome.ledger
    );
}

#[test]
fn agent_kill() {
    check(Scenario::AgentKill);
}

#[test]
fn broker_outage() {
    check(Scenario::BrokerOutage);
}

#[test]
fn broker_kill() {
    check(Scenario::BrokerKill);
}

#[test]
fn queue_cap() {
    check(Scenario::QueueCap);
}

#[test]
fn bridge_kill() {
    check(Scenario::BridgeKill);
}

#[test]
fn embedded_bridge_kill() {
    check(Scenario::EmbeddedBridgeKill);
}

#[test]
fn kafka_pause() {
    check(Scenario::KafkaPause);
}

#[test]
fn kafka_restart() {
    check(Scenario::KafkaRestart);
}

#[test]
fn ingester_kill() {
    check(Scenario::IngesterKill);
}

#[test]
fn rebalance() {
    check(Scenario::Rebalance);
}

#[test]
fn postgres_outage() {
    check(Scenario::PostgresOutage);
}

#[test]
fn redis_outage() {
    check(Scenario::RedisOutage);
}

#[test]
fn bad_frames() {
    check(Scenario::BadFrames);
}
