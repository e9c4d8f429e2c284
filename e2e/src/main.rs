//! `faults`: runs the fault-injection scenarios against the real pipeline and prints
//! each one's ledger. Exit status 1 if any scenario breaks the design's promise.

use std::process::ExitCode;

use clap::Parser;
use e2e::scenario::{self, Mode, Scenario, Settings};

/// Runs the whole pipeline with a countable workload, injects one fault per scenario on
/// a schedule drawn from the seed, and checks that every reading the agents produced is
/// in PostgreSQL exactly once (or that a loss is the documented, counted one).
///
/// Needs PostgreSQL, Redis, Mosquitto and Tansu installed (`scripts/stack.sh up`
/// installs them); each scenario starts private servers on free ports.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Scenarios to run (default: all).
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,
    /// short: a few faults each, as in scripts/test.sh; long: more and longer faults.
    #[arg(long, value_enum, default_value = "long")]
    mode: Mode,
    /// Seed of the fault schedules and the simulated values; random when absent.
    #[arg(long)]
    seed: Option<u64>,
    /// Readings per second the agents make, from 800 (the seed channels alone) to
    /// 120 800; default: 800 in short mode, the benchmark's 120 000 in long mode.
    #[arg(long)]
    rate: Option<u64>,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.list {
        for scenario in Scenario::ALL {
            println!("{:<22} {}", scenario.name(), scenario.description());
        }
        return ExitCode::SUCCESS;
    }
    let scenarios = if cli.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        cli.scenarios
    };
    let seed = cli.seed.unwrap_or_else(rand::random);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("faults: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let settings = Settings {
        rate: cli.rate.unwrap_or(cli.mode.default_rate()),
        ..Settings::new(seed, cli.mode)
    };
    // A rate the workload cannot make is refused before any server starts.
    if let Err(e) = e2e::workload::Workload::new(settings.rate) {
        eprintln!("faults: --rate: {e:#}");
        return ExitCode::from(2);
    }
    let mut failed = Vec::new();
    for scenario in scenarios {
        println!(
            "== {} (seed {seed}, {:?} mode, {} readings/s): {}",
            scenario.name(),
            cli.mode,
            settings.rate,
            scenario.description()
        );
        match runtime.block_on(scenario::run(scenario, settings)) {
            Ok(outcome) => {
                print!("{}", outcome.ledger);
                if outcome.breaches.is_empty() {
                    println!("  verdict      ok\n");
                } else {
                    for breach in &outcome.breaches {
                        println!("  BREACH       {breach}");
                    }
                    println!();
                    failed.push(scenario.name());
                }
            }
            Err(e) => {
                println!("  ERROR        {e:#}\n");
                failed.push(scenario.name());
            }
        }
    }
    if failed.is_empty() {
        println!("all scenarios kept the promise (seed {seed})");
        ExitCode::SUCCESS
    } else {
        println!("failed: {} (rerun with --seed {seed})", failed.join(", "));
        ExitCode::FAILURE
    }
}
