//! Configuration, layered the same way by every binary, lowest first: the binary's
//! defaults, its TOML file, environment variables `{PREFIX}SECTION__KEY` (the variable
//! `{PREFIX}CONFIG` names the file and is no setting), and command-line flags. Each
//! layer names settings by the same dotted keys (`mqtt.port`), so an error from any
//! layer names the key to fix, and `--check-config` reports the same in every binary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::Value;
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a configuration was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read, or a value has the wrong type (figment names the key
    /// and the layer it came from).
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    /// Every problem serde cannot see, so one edit fixes them all.
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// The command-line flags a user gave, each as the dotted key it overrides.
#[derive(Debug, Default)]
pub struct Flags(Vec<(&'static str, Value)>);

impl Flags {
    /// Adds `key` when the flag was given (`Some`); `None` leaves the lower layers alone.
    pub fn set<T: Serialize>(mut self, key: &'static str, value: Option<T>) -> Self {
        if let Some(value) = value.and_then(|v| Value::serialize(v).ok()) {
            self.0.push((key, value));
        }
        self
    }
}

/// The layers, merged in the order they are added.
pub struct Layers(Figment);

impl Layers {
    /// Starts from a binary's built-in defaults.
    pub fn defaults<T: Serialize>(defaults: T) -> Self {
        Self(Figment::from(Serialized::defaults(defaults)))
    }

    /// Starts from nothing: what the file leaves out takes its serde default, and what
    /// has none must be in the file.
    pub fn empty() -> Self {
        Self(Figment::new())
    }

    /// The TOML file, which must exist.
    pub fn file(self, path: &Path) -> Self {
        Self(self.0.merge(Toml::file_exact(path)))
    }

    /// The TOML file if one is given (a service runs on its defaults without one).
    pub fn optional_file(self, path: Option<&Path>) -> Self {
        match path {
            Some(path) => self.file(path),
            None => self,
        }
    }

    /// The conventional variables the stack's scripts, the compose file and the tests
    /// set, each for the key it names in a cloud service: `DATABASE_URL` (`database.url`),
    /// `REDIS_URL` (`redis.url`), `KAFKA_BROKERS` (`kafka.brokers`).
    pub fn conventional_env(self) -> Self {
        const CONVENTIONAL: [(&str, &str); 3] = [
            ("DATABASE_URL", "database.url"),
            ("REDIS_URL", "redis.url"),
            ("KAFKA_BROKERS", "kafka.brokers"),
        ];
        let provider = Env::raw().filter_map(|name| {
            CONVENTIONAL
                .iter()
                .find(|(variable, _)| name == *variable)
                .map(|(_, key)| (*key).into())
        });
        Self(self.0.merge(provider))
    }

    /// `{prefix}SECTION__KEY` variables, except `{prefix}CONFIG`.
    pub fn prefixed_env(self, prefix: &str) -> Self {
        Self(
            self.0
                .merge(Env::prefixed(prefix).ignore(&["config"]).split("__")),
        )
    }

    pub fn flags(mut self, flags: Flags) -> Self {
        for (key, value) in flags.0 {
            self.0 = self.0.merge(Serialized::default(key, value));
        }
        self
    }

    pub fn extract<T: DeserializeOwned>(self) -> Result<T, ConfigError> {
        self.0.extract().map_err(|e| ConfigError::Load(Box::new(e)))
    }
}

/// `database.url`: given, and a postgres:// URL (named with its password hidden); the
/// service's variables start with `prefix` (`INGESTER_`).
pub fn check_database_url(url: &str, prefix: &str, problems: &mut Vec<String>) {
    if url.is_empty() {
        problems.push(format!(
            "database.url: required (set DATABASE_URL, {prefix}DATABASE__URL or --database-url)"
        ));
    } else if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        problems.push(format!(
            "database.url: {:?} is not a postgres:// URL",
            crate::redact::url(url)
        ));
    }
}

/// What `--check-config` prints, the same in every binary: a comment line naming where
/// the configuration came from, `ok` and what the binary will do, then the effective
/// configuration (every layer applied, secrets hidden by the caller with
/// [`crate::redact`]) as TOML, so the output is itself a valid configuration file.
pub fn check_report<T: Serialize>(
    source: &str,
    summary: &str,
    effective: &T,
) -> Result<String, toml::ser::Error> {
    Ok(format!(
        "# {source}: ok: {summary}\n{}",
        toml::to_string(effective)?
    ))
}

/// Prints the [`check_report`] of a configuration that loaded: `--check-config`'s whole
/// job once the layers are merged and checked (a bad one has already exited 2).
pub fn print_check<T: Serialize>(
    binary: &str,
    source: &str,
    summary: &str,
    effective: &T,
) -> ExitCode {
    match check_report(source, summary, effective) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{binary}: cannot print the configuration: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        mqtt: Mqtt,
    }

    #[derive(Debug, PartialEq, serde::Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Mqtt {
        host: String,
        port: u16,
    }

    fn defaults() -> Settings {
        Settings {
            mqtt: Mqtt {
                host: "localhost".into(),
                port: 1883,
            },
        }
    }

    #[test]
    fn flags_override_and_absent_flags_leave_the_rest() -> Result<(), ConfigError> {
        let port: Option<u16> = None;
        let settings: Settings = Layers::defaults(defaults())
            .flags(
                Flags::default()
                    .set("mqtt.host", Some("broker"))
                    .set("mqtt.port", port),
            )
            .extract()?;
        assert_eq!(settings.mqtt.host, "broker");
        assert_eq!(settings.mqtt.port, 1883);
        Ok(())
    }

    #[test]
    fn a_wrong_value_names_its_key() {
        let err = Layers::defaults(defaults())
            .flags(Flags::default().set("mqtt.port", Some("many")))
            .extract::<Settings>()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("mqtt.port"), "{err}");
    }

    #[test]
    fn the_check_report_is_a_configuration_that_loads_back(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let report = check_report("defaults", "talking to broker:1883", &defaults())?;
        assert!(
            report.starts_with("# defaults: ok: talking to broker:1883\n"),
            "{report}"
        );
        let dir = std::env::temp_dir().join(format!("check-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("settings.toml");
        std::fs::write(&file, &report)?;
        let loaded: Result<Settings, _> = Layers::empty().file(&file).extract();
        std::fs::remove_dir_all(&dir)?;
        assert_eq!(loaded?, defaults());
        Ok(())
    }
}
