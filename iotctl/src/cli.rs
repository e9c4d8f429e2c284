//! The command line: the global options (defined in `global`) and the commands. Each
//! command's own options live beside its code, in its module; this module depends on the
//! commands, never the other way round.

use clap::{Parser, Subcommand};

use crate::global::Global;
use crate::{alerts, completeness, gateways, health, latest, stats, tail, watch};

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
    /// The gateway registry: who may connect to the broker, and for which devices.
    #[command(subcommand)]
    Gateways(gateways::GatewaysCommand),
    /// Hourly statistics per device and channel.
    Stats(stats::StatsArgs),
    /// Per device and boot: readings made, stored, and the sequence numbers missing.
    Completeness(completeness::CompletenessArgs),
    /// A live one-screen summary: readings per second at each hop, Kafka lag, open
    /// alerts, the last value of every channel (Ctrl-C stops).
    Watch(watch::WatchArgs),
    /// Apply this build's migrations, as the schema's owner (the services' logins
    /// cannot change the schema).
    Migrate,
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
