//! Logging, the same in every binary: lines on stderr (a service manager or a container
//! runtime collects them), human or JSON (`log.format`), filtered by `RUST_LOG` when it is
//! set, else by the binary's default.
//!
//! Filters are `level` or `target=level` directives separated by commas
//! (`warn,cloud_ingester=debug`; levels `trace` to `error`, and `off`), read by
//! tracing-subscriber's `Targets`: the agent on the Pi cannot afford `EnvFilter`'s regex
//! engine, and one syntax everywhere is simpler to explain than two.

use serde::{Deserialize, Serialize};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line, for a log collector.
    Json,
}

/// `[log]` in every binary's configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// Which log lines to write: filter directives (`info`, `warn,cloud_ingester=debug`).
    /// `RUST_LOG`, when set, takes its place.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self::at("info")
    }
}

impl LogConfig {
    /// Human lines filtered by `level`: a binary's default.
    pub fn at(level: &str) -> Self {
        Self {
            format: LogFormat::Human,
            level: level.to_owned(),
        }
    }

    /// Adds what is wrong with the section to `problems`, naming the key.
    pub fn check(&self, problems: &mut Vec<String>) {
        if let Err(e) = directives(&self.level) {
            problems.push(format!("log.level: {:?}: {e}", self.level));
        }
    }

    /// Installs the process's logger as configured (see [`init`]).
    pub fn init(&self) {
        init(self.format, &self.level);
    }
}

/// Reads filter directives; the error names what is wrong with them.
pub fn directives(text: &str) -> Result<Targets, String> {
    text.parse::<Targets>().map_err(|e| e.to_string())
}

/// Installs the process's logger: `RUST_LOG` if it is set and valid (an invalid one is
/// reported on stderr and ignored), else `default` (valid, or `info`).
pub fn init(format: LogFormat, default: &str) {
    let from_env = std::env::var("RUST_LOG").ok().and_then(|text| {
        directives(&text)
            .map_err(|e| eprintln!("RUST_LOG={text:?} ignored: {e}"))
            .ok()
    });
    let filter = from_env
        .or_else(|| directives(default).ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Human => registry.with(layer).init(),
        LogFormat::Json => registry.with(layer.json()).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_checked() {
        assert!(directives("info").is_ok());
        assert!(directives("warn,cloud_ingester=debug,rumqttd=off").is_ok());
        assert!(directives("info,=[").is_err());
        assert!(directives("edge_agent=loud").is_err());
    }
}
