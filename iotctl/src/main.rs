//! `iotctl`, the plant operator's command line: is the pipeline healthy, what are the
//! machines saying right now, which alarms are open, and how did the last hours look.
//!
//! This file only parses the command line and turns each command's outcome into an exit
//! code; every command lives in its own module. Exit codes: 0 success, 1 something is
//! wrong (a failed check, a refused change, an unreachable service), 2 bad usage (clap).

mod alerts;
mod cli;
mod completeness;
mod devices;
mod gateways;
mod global;
mod health;
mod http;
mod latest;
mod migrate;
mod output;
mod services;
mod stats;
mod tail;
mod watch;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use global::Outcome;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Health(args) => health::run(&cli.global, &args).await,
        Command::Tail(args) => tail::run(&cli.global, &args).await,
        Command::Devices => devices::run(&cli.global).await,
        Command::Latest(args) => latest::run(&cli.global, &args).await,
        Command::Alerts(command) => alerts::run(&cli.global, &command).await,
        Command::Stats(args) => stats::run(&cli.global, &args).await,
        Command::Gateways(command) => gateways::run(&cli.global, &command).await,
        Command::Completeness(args) => completeness::run(&cli.global, &args).await,
        Command::Watch(args) => watch::run(&cli.global, &args).await,
        Command::Migrate => migrate::run(&cli.global).await,
    };
    match result {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {}", output::error_text(&e));
            ExitCode::FAILURE
        }
    }
}
