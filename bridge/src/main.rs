//! `bridge`: parses the command line and configuration, sets up logging and signals,
//! and runs the bridge (see the library's `app` module).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bridge::config::{BridgeConfig, CliOverrides, LogFormat, Mode};
use clap::Parser;
use service::run::Runtime;

/// Forwards device telemetry from MQTT into Kafka (`sensors-data`), checking every frame
/// and setting bad ones aside in `sensors-dlq` with the reason.
///
/// Two modes:
///
/// * embedded (default): the bridge runs an MQTT broker (rumqttd) on port 1883 and
///   devices connect to it directly. rumqttd ACKNOWLEDGES A PUBLISH ON RECEIPT AND KEEPS
///   MESSAGES IN MEMORY ONLY: a crash, or a Kafka outage longer than
///   embedded.memory_budget lasts, loses messages. For a single box and demos.
///
/// * client: the bridge subscribes to an external broker (Mosquitto, EMQX, HiveMQ) with
///   a persistent MQTT 5 session and acknowledges each message only after Kafka has
///   confirmed it, so nothing the broker held is lost. Use this in production, with a
///   broker that persists sessions. Several bridges can share the load through
///   `$share/{mqtt.shared_group}/...`, but Mosquitto 2.0 forgets shared subscriptions
///   when it restarts, losing what arrives before the bridges return (off by default).
///
/// Configuration: built-in defaults, then the TOML file (see bridge/config/*.toml),
/// then BRIDGE_* environment variables (`__` between levels, e.g.
/// BRIDGE_KAFKA__BROKERS=kafka:9092), then the flags below. Logs go to stderr; RUST_LOG
/// sets the level (default info). SIGTERM or Ctrl-C: stop taking messages, wait for Kafka
/// to confirm those in flight, acknowledge them, exit.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Configuration file (optional: the defaults suit the local stack).
    #[arg(short, long, env = "BRIDGE_CONFIG")]
    config: Option<PathBuf>,
    /// embedded or client (overrides mode).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Instance name and MQTT client id (overrides id).
    #[arg(long)]
    id: Option<String>,
    /// External broker host, client mode (overrides mqtt.host).
    #[arg(long)]
    mqtt_host: Option<String>,
    /// External broker port, client mode (overrides mqtt.port).
    #[arg(long)]
    mqtt_port: Option<u16>,
    /// Embedded broker listen address (overrides embedded.listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Kafka bootstrap servers (overrides kafka.brokers).
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// Address of /metrics, /livez and /readyz (overrides http.listen).
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Log format (overrides log.format).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Check the configuration, print it (secrets hidden) and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = CliOverrides {
        mode: cli.mode,
        id: cli.id.clone(),
        mqtt_host: cli.mqtt_host.clone(),
        mqtt_port: cli.mqtt_port,
        listen: cli.listen,
        kafka_brokers: cli.kafka_brokers.clone(),
        http_listen: cli.http_listen,
        log_format: cli.log_format,
    };
    service::run::main(
        "bridge",
        cli.config.as_deref(),
        cli.check_config,
        |file| BridgeConfig::load(file, &overrides),
        Runtime::MultiThread,
        |config| async {
            let bridge = bridge::Bridge::start(config).await?;
            bridge.run_until(service::shutdown_signal()).await
        },
    )
}
