//! `edge-agent`: parses the command line and configuration, sets up logging and signal
//! handling, and runs the agent (see the library's `agent` module).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use edge_agent::config::{AgentConfig, CliOverrides, LogFormat};
use service::run::Runtime;

/// Samples or simulates machine sensors and delivers every reading to an MQTT broker as
/// compact binary frames, keeping each frame on disk until the broker acknowledges it.
///
/// Configuration comes from a TOML file (see edge-agent/config/*.toml for annotated
/// examples), overridden by EDGE_AGENT_* environment variables (`__` between levels, e.g.
/// EDGE_AGENT_MQTT__HOST=broker.lan), overridden by the flags below. Logs go to stderr;
/// RUST_LOG sets the level (default info). SIGTERM or Ctrl-C stops the agent cleanly:
/// open batches are sealed and queued, the devices are marked offline, and whatever the
/// broker has not acknowledged is sent after the next start.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Configuration file.
    #[arg(
        short,
        long,
        default_value = "/etc/edge-agent/agent.toml",
        env = "EDGE_AGENT_CONFIG"
    )]
    config: PathBuf,
    /// Broker host name or address (overrides mqtt.host).
    #[arg(long)]
    mqtt_host: Option<String>,
    /// Broker port (overrides mqtt.port).
    #[arg(long)]
    mqtt_port: Option<u16>,
    /// Directory of the on-disk frame queue (overrides queue.dir).
    #[arg(long)]
    queue_dir: Option<PathBuf>,
    /// Log format (overrides log.format).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Check the configuration, print it (the password hidden) and exit.
    #[arg(long)]
    check_config: bool,
    /// How long to keep delivering queued frames after SIGTERM before exiting.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = CliOverrides {
        mqtt_host: cli.mqtt_host.clone(),
        mqtt_port: cli.mqtt_port,
        queue_dir: cli.queue_dir.clone(),
        log_format: cli.log_format,
    };
    let shutdown_grace = cli.shutdown_grace;
    service::run::main(
        "edge-agent",
        Some(&cli.config),
        cli.check_config,
        |_| AgentConfig::load(&cli.config, &overrides),
        Runtime::CurrentThread,
        |config| edge_agent::agent::run(config, service::shutdown_signal(), shutdown_grace),
    )
}
