//! The command line: global options (where the services are) and the commands. Each
//! command's own options live beside its code, in its module.

use clap::{Args, Parser, Subcommand};

use crate::http::HttpUrl;
use crate::services::MqttAddr;
use crate::{alerts, completeness, health, latest, stats, tail, watch};

/// Operator's tool for the plant telemetry pipeline: health checks, live frames, devices,
/// latest values, alerts and hourly statistics.
///
/// Service addresses come from flags or the environment; for the local stack,
/// `set -a; . .stack/env; set +a` exports them. `--json` gives machine-readable output
/// for every command. Exit code 1 means something is wrong (a failed check, a refused
/// change, an unreachable service).
#[derive(Debug, Parser)]
#[command(name = "iotctl", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the services are, and how to print. Global: they may come before or after the
/// command.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// PostgreSQL URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        global = true,
        hide_env_values = true,
        value_name = "URL"
    )]
    pub database_url: Option<String>,

    /// Redis URL.
    #[arg(
        long,
        env = "REDIS_URL",
        global = true,
        hide_env_values = true,
        value_name = "URL"
    )]
    pub redis_url: Option<String>,

    /// First segment of the Redis keys the ingester writes ({prefix}:latest:{device}, ...).
    #[arg(long, default_value = contracts::redis::DEFAULT_PREFIX, global = true, value_name = "PREFIX", value_parser = non_blank)]
    pub redis_prefix: String,

    /// Kafka bootstrap servers, host:port[,host:port...].
    #[arg(
        long,
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092",
        global = true,
        value_name = "LIST"
    )]
    pub kafka_brokers: String,

    /// MQTT broker the devices publish to (the bridge's embedded broker by default).
    #[arg(
        long,
        env = "IOTCTL_MQTT",
        default_value = "127.0.0.1:1883",
        global = true,
        value_name = "HOST:PORT",
        value_parser = MqttAddr::parse
    )]
    pub mqtt: MqttAddr,

    /// First level of the MQTT topic tree ({prefix}/{site}/{line}/{device}/{kind}).
    #[arg(long, default_value = "plant", global = true, value_name = "PREFIX", value_parser = topic_prefix)]
    pub mqtt_prefix: String,

    /// The bridge's metrics and health endpoint.
    #[arg(long, default_value = "http://127.0.0.1:9101", global = true, value_name = "URL", value_parser = HttpUrl::parse)]
    pub bridge_metrics: HttpUrl,

    /// The ingester's metrics and health endpoint.
    #[arg(long, default_value = "http://127.0.0.1:9102", global = true, value_name = "URL", value_parser = HttpUrl::parse)]
    pub ingester_metrics: HttpUrl,

    /// Machine-readable output: JSON (one object per frame for `tail`).
    #[arg(long, global = true)]
    pub json: bool,

    /// Kafka topic of alert records (tests isolate themselves with it).
    #[arg(long, default_value = "alerts", global = true, hide = true)]
    pub alerts_topic: String,

    /// Kafka topic of device frames (tests isolate themselves with it).
    #[arg(long, default_value = "sensors-data", global = true, hide = true)]
    pub data_topic: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check every service, the schema, the seed devices, Kafka topics, Redis settings,
    /// then time readings end to end (exit code 1 if anything fails).
    Health(health::HealthArgs),
    /// Print live frames from MQTT or Kafka, decoded (Ctrl-C stops).
    Tail(tail::TailArgs),
    /// The devices: site, line, kind, channels, last seen, open alerts.
    Devices,
    /// The latest value of every channel, from Redis.
    Latest(latest::LatestArgs),
    /// List, acknowledge and resolve alerts.
    #[command(subcommand)]
    Alerts(alerts::AlertsCommand),
    /// Hourly statistics per device and channel.
    Stats(stats::StatsArgs),
    /// Per device and boot: readings made, stored, and the sequence numbers missing.
    Completeness(completeness::CompletenessArgs),
    /// A live one-screen summary: readings per second at each hop, Kafka lag, open
    /// alerts, the last value of every channel (Ctrl-C stops).
    Watch(watch::WatchArgs),
}

/// How a command ended, when it did not end in an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit code 0.
    Done,
    /// Exit code 1, the reason already printed (a failed check, a refused change).
    Failed,
}

/// Device ids given on the command line, checked against the naming rule so a typo is
/// reported as such rather than as "no data".
pub fn device_id(value: &str) -> Result<String, String> {
    protocol::validate_id(value)
        .map(|()| value.to_owned())
        .map_err(|e| format!("not a device id: {e}"))
}

fn topic_prefix(value: &str) -> Result<String, String> {
    protocol::validate_id(value)
        .map(|()| value.to_owned())
        .map_err(|e| format!("not a topic prefix: {e}"))
}

pub fn non_blank(value: &str) -> Result<String, String> {
    if value.trim().is_empty() {
        Err("must not be blank".to_owned())
    } else {
        Ok(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
