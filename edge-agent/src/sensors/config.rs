//! The per-channel sensor configuration, as it appears in the agent's TOML file.
//!
//! This module exists so that the shape of the configuration (what an operator writes) is
//! defined in one place, separate from the sources that act on it, and so that every
//! mistake is refused with a message that names the key before anything starts sampling.
//!
//! ```toml
//! source = { kind = "simulated", model = "furnace" }
//! source = { kind = "file", path = "/sys/class/thermal/thermal_zone0/temp", scale = 0.001 }
//! source = { kind = "command", program = "/usr/bin/vcgencmd", args = ["measure_temp"], timeout = "2s" }
//! anomalies = { rate_per_hour = 6.0, kinds = ["spike", "drift", "stuck", "dropout"], duration = "20s" }
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a channel's readings come from. Tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceConfig {
    /// A physical model of one of the seed machines' channels.
    Simulated(SimulatedSourceConfig),
    /// A number read from a file, typically sysfs or hwmon.
    File(FileSourceConfig),
    /// A number printed by a command.
    Command(CommandSourceConfig),
}

impl SourceConfig {
    /// The `kind` tag, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Simulated(_) => "simulated",
            SourceConfig::File(_) => "file",
            SourceConfig::Command(_) => "command",
        }
    }

    /// Checks the values serde cannot check, together with the channel's anomaly settings
    /// (which only a simulated source accepts). [`super::build_source`] calls this too.
    pub fn validate(&self, anomalies: Option<&AnomalyConfig>) -> Result<(), ConfigError> {
        match self {
            SourceConfig::Simulated(_) => {
                if let Some(anomalies) = anomalies {
                    anomalies.validate()?;
                }
                Ok(())
            }
            SourceConfig::File(file) => {
                reject_anomalies(self.kind(), anomalies)?;
                if file.path.as_os_str().is_empty() {
                    return Err(ConfigError::EmptyPath);
                }
                validate_scale_offset(file.scale, file.offset)
            }
            SourceConfig::Command(command) => {
                reject_anomalies(self.kind(), anomalies)?;
                if command.program.as_os_str().is_empty() {
                    return Err(ConfigError::EmptyProgram);
                }
                if command.timeout.is_zero() {
                    return Err(ConfigError::ZeroTimeout);
                }
                if command.timeout > super::command::MAX_TIMEOUT {
                    return Err(ConfigError::TimeoutTooLong(command.timeout));
                }
                validate_scale_offset(command.scale, command.offset)
            }
        }
    }
}

fn reject_anomalies(
    kind: &'static str,
    anomalies: Option<&AnomalyConfig>,
) -> Result<(), ConfigError> {
    match anomalies {
        Some(_) => Err(ConfigError::AnomaliesOnRealSource { kind }),
        None => Ok(()),
    }
}

fn validate_scale_offset(scale: f64, offset: f64) -> Result<(), ConfigError> {
    if !scale.is_finite() || scale == 0.0 {
        return Err(ConfigError::InvalidScale(scale));
    }
    if !offset.is_finite() {
        return Err(ConfigError::InvalidOffset(offset));
    }
    Ok(())
}

/// `source = { kind = "simulated", model = "furnace" }`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedSourceConfig {
    pub model: SimModel,
}

/// `source = { kind = "file", path = "...", scale = 0.001, offset = 0.0 }`: the value is
/// `first number in the file × scale + offset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    pub path: PathBuf,
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
}

/// `source = { kind = "command", program = "...", args = [...], timeout = "2s", scale = 1.0,
/// offset = 0.0 }`: the value is `first number on stdout × scale + offset`. The program is
/// run directly (no shell); a bare name is looked up in `PATH`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSourceConfig {
    pub program: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    /// The command is killed, and the tick reported as a fault, when it runs longer.
    #[serde(default = "default_command_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
}

fn one() -> f64 {
    1.0
}

/// The default `timeout` of a command source.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

fn default_command_timeout() -> Duration {
    DEFAULT_COMMAND_TIMEOUT
}

/// The simulated models, one per channel of the five seed devices
/// (`migrations/…_seed_devices.sql`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimModel {
    /// `furnace-01` channel 0, chamber temperature, °C.
    Furnace,
    /// `cnc-spindle-01` channel 0, vibration velocity RMS, mm/s.
    SpindleVibration,
    /// `cnc-spindle-01` channel 1, front bearing temperature, °C.
    BearingTemperature,
    /// `press-01` channel 0, main cylinder pressure, bar.
    PressPressure,
    /// `paint-booth-01` channel 0, relative humidity, %RH.
    BoothHumidity,
    /// `paint-booth-01` channel 1, air temperature, °C.
    BoothTemperature,
    /// `compressor-01` channel 0, active power, kW.
    CompressorPower,
    /// `compressor-01` channel 1, line current, A.
    CompressorCurrent,
}

/// `anomalies = { rate_per_hour = 6.0, kinds = [...], duration = "20s" }`, simulated
/// sources only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyConfig {
    /// Mean number of anomalies per hour (a Poisson process over the time the channel is
    /// not already in an anomaly). 0 disables injection.
    pub rate_per_hour: f64,
    /// Which kinds to draw from, uniformly. Defaults to all four.
    #[serde(default = "AnomalyKind::all")]
    pub kinds: Vec<AnomalyKind>,
    /// How long a drift, stuck value or dropout lasts. A spike is always one to three
    /// samples.
    #[serde(default = "default_anomaly_duration", with = "humantime_serde")]
    pub duration: Duration,
}

/// The default `duration` of an anomaly.
pub const DEFAULT_ANOMALY_DURATION: Duration = Duration::from_secs(20);

fn default_anomaly_duration() -> Duration {
    DEFAULT_ANOMALY_DURATION
}

impl AnomalyConfig {
    /// Checks the values serde cannot check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.rate_per_hour.is_finite() || self.rate_per_hour < 0.0 {
            return Err(ConfigError::InvalidRate(self.rate_per_hour));
        }
        if self.kinds.is_empty() {
            return Err(ConfigError::NoAnomalyKinds);
        }
        if self.duration.is_zero() {
            return Err(ConfigError::ZeroAnomalyDuration);
        }
        Ok(())
    }
}

/// What an injected anomaly does to the channel's readings; every affected reading carries
/// `Quality::SIMULATED_ANOMALY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// One to three samples far beyond the critical threshold (still inside the physical
    /// range).
    Spike,
    /// A ramp from the live value to beyond the critical threshold over `duration`.
    Drift,
    /// The value freezes at the last reading for `duration`.
    Stuck,
    /// No readings for `duration`; the first reading after the gap is flagged.
    Dropout,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 4] = [
        AnomalyKind::Spike,
        AnomalyKind::Drift,
        AnomalyKind::Stuck,
        AnomalyKind::Dropout,
    ];

    /// All four kinds, the default of `anomalies.kinds`.
    pub fn all() -> Vec<AnomalyKind> {
        Self::ALL.to_vec()
    }
}

/// A channel configuration that cannot work. The message names the key; the caller adds
/// which device and channel it belongs to.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error(
        "anomalies can only be injected into simulated sources, not into a `{kind}` source; \
         remove the channel's `anomalies` table"
    )]
    AnomaliesOnRealSource { kind: &'static str },
    #[error("anomalies.rate_per_hour must be a finite number ≥ 0, got {0}")]
    InvalidRate(f64),
    #[error(
        "anomalies.kinds is empty; list at least one of \"spike\", \"drift\", \"stuck\", \
         \"dropout\" (or remove the `anomalies` table)"
    )]
    NoAnomalyKinds,
    #[error("anomalies.duration must be longer than zero")]
    ZeroAnomalyDuration,
    #[error("the sampling period must be longer than zero")]
    ZeroPeriod,
    #[error("source.path is empty")]
    EmptyPath,
    #[error("source.program is empty")]
    EmptyProgram,
    #[error("source.timeout must be longer than zero")]
    ZeroTimeout,
    #[error("source.timeout is {0:?}; at most one hour is allowed")]
    TimeoutTooLong(Duration),
    #[error("source.scale must be a finite, non-zero number, got {0}")]
    InvalidScale(f64),
    #[error("source.offset must be a finite number, got {0}")]
    InvalidOffset(f64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::{Format, Toml};
    use figment::Figment;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Channel {
        source: SourceConfig,
        anomalies: Option<AnomalyConfig>,
    }

    fn parse(toml: &str) -> Result<Channel, String> {
        Figment::from(Toml::string(toml))
            .extract()
            .map_err(|e: figment::Error| e.to_string())
    }

    #[test]
    fn parses_every_documented_shape() {
        let sim = parse(
            r#"source = { kind = "simulated", model = "spindle_vibration" }
               anomalies = { rate_per_hour = 6.0, kinds = ["spike", "drift", "stuck", "dropout"], duration = "20s" }"#,
        )
        .unwrap();
        assert_eq!(
            sim.source,
            SourceConfig::Simulated(SimulatedSourceConfig {
                model: SimModel::SpindleVibration
            })
        );
        let anomalies = sim.anomalies.unwrap();
        assert_eq!(anomalies.kinds, AnomalyKind::all());
        assert_eq!(anomalies.duration, Duration::from_secs(20));
        assert_eq!(anomalies.rate_per_hour, 6.0);

        let file = parse(
            r#"source = { kind = "file", path = "/sys/class/thermal/thermal_zone0/temp", scale = 0.001 }"#,
        )
        .unwrap();
        assert_eq!(
            file.source,
            SourceConfig::File(FileSourceConfig {
                path: "/sys/class/thermal/thermal_zone0/temp".into(),
                scale: 0.001,
                offset: 0.0,
            })
        );

        let command = parse(
            r#"source = { kind = "command", program = "/usr/bin/vcgencmd", args = ["measure_temp"], timeout = "1500ms" }"#,
        )
        .unwrap();
        assert_eq!(
            command.source,
            SourceConfig::Command(CommandSourceConfig {
                program: "/usr/bin/vcgencmd".into(),
                args: vec!["measure_temp".into()],
                timeout: Duration::from_millis(1500),
                scale: 1.0,
                offset: 0.0,
            })
        );
    }

    #[test]
    fn defaults_apply() {
        let c = parse(
            r#"source = { kind = "command", program = "vcgencmd" }
               anomalies = { rate_per_hour = 1 }"#,
        )
        .unwrap();
        let SourceConfig::Command(command) = c.source else {
            panic!("not a command source")
        };
        assert_eq!(command.timeout, DEFAULT_COMMAND_TIMEOUT);
        assert!(command.args.is_empty());
        let anomalies = c.anomalies.unwrap();
        assert_eq!(anomalies.kinds, AnomalyKind::all());
        assert_eq!(anomalies.duration, DEFAULT_ANOMALY_DURATION);
    }

    #[test]
    fn unknown_keys_and_values_are_refused_by_name() {
        let typo = parse(r#"source = { kind = "file", path = "/x", scael = 2.0 }"#).unwrap_err();
        assert!(typo.to_string().contains("scael"), "{typo}");
        let model = parse(r#"source = { kind = "simulated", model = "reactor" }"#).unwrap_err();
        assert!(model.to_string().contains("reactor"), "{model}");
        let kind = parse(r#"source = { kind = "modbus" }"#).unwrap_err();
        assert!(kind.to_string().contains("modbus"), "{kind}");
        let anomaly = parse(
            r#"source = { kind = "simulated", model = "furnace" }
                     anomalies = { rate_per_hour = 1, kinds = ["flatline"] }"#,
        )
        .unwrap_err();
        assert!(anomaly.to_string().contains("flatline"), "{anomaly}");
        let extra = parse(r#"source = { kind = "simulated", model = "furnace", setpoint = 900 }"#)
            .unwrap_err();
        assert!(extra.to_string().contains("setpoint"), "{extra}");
    }

    #[test]
    fn validation_names_the_problem() {
        let sim = SourceConfig::Simulated(SimulatedSourceConfig {
            model: SimModel::Furnace,
        });
        let file = SourceConfig::File(FileSourceConfig {
            path: "/x".into(),
            scale: 1.0,
            offset: 0.0,
        });
        let ok = AnomalyConfig {
            rate_per_hour: 1.0,
            kinds: AnomalyKind::all(),
            duration: Duration::from_secs(5),
        };
        assert_eq!(sim.validate(Some(&ok)), Ok(()));
        assert_eq!(
            file.validate(Some(&ok)),
            Err(ConfigError::AnomaliesOnRealSource { kind: "file" })
        );
        let negative = AnomalyConfig {
            rate_per_hour: -1.0,
            ..ok.clone()
        };
        assert_eq!(
            sim.validate(Some(&negative)),
            Err(ConfigError::InvalidRate(-1.0))
        );
        let empty = AnomalyConfig {
            kinds: vec![],
            ..ok.clone()
        };
        assert_eq!(sim.validate(Some(&empty)), Err(ConfigError::NoAnomalyKinds));
        let zero = AnomalyConfig {
            duration: Duration::ZERO,
            ..ok.clone()
        };
        assert_eq!(
            sim.validate(Some(&zero)),
            Err(ConfigError::ZeroAnomalyDuration)
        );
        let scale = SourceConfig::File(FileSourceConfig {
            path: "/x".into(),
            scale: 0.0,
            offset: 0.0,
        });
        assert_eq!(scale.validate(None), Err(ConfigError::InvalidScale(0.0)));
        let command = SourceConfig::Command(CommandSourceConfig {
            program: "".into(),
            args: vec![],
            timeout: Duration::from_secs(1),
            scale: 1.0,
            offset: 0.0,
        });
        assert_eq!(command.validate(None), Err(ConfigError::EmptyProgram));
        assert!(ConfigError::NoAnomalyKinds
            .to_string()
            .contains("anomalies.kinds"));
    }
}
