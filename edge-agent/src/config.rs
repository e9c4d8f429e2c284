//! The agent's configuration: what a controls engineer writes in `agent.toml`, with
//! environment and command-line overrides, checked before anything starts.
//!
//! Layers, later wins: built-in defaults, the TOML file, `EDGE_AGENT_*` environment
//! variables (`__` separates levels: `EDGE_AGENT_MQTT__HOST=broker.lan`), then CLI flags.
//! Every problem is reported with the key it concerns, so a typo on a Pi does not become
//! a crash loop with an unhelpful message.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use service::config::{Flags, Layers};

use crate::sensors::{AnomalyConfig, SourceConfig};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub gateway: GatewayConfig,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub queue: QueueSettings,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub log: LogConfig,
    pub devices: Vec<DeviceConfig>,
}

/// The Pi itself: its MQTT client id and where it sits in the topic tree.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Gateway name: the MQTT client id, and the node whose `status` topic carries the
    /// agent's health and its last will.
    pub id: String,
    pub site: String,
    pub line: String,
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
}

fn default_prefix() -> String {
    "plant".to_owned()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// False (the default) asks the broker to keep the session across reconnects.
    pub clean_session: bool,
    /// Defaults to the gateway id when a password is given (the broker's gateway
    /// registry knows a gateway by its id).
    pub username: Option<String>,
    pub password: Option<String>,
    /// The gateway's secret (`iotctl gateways add … --secret-file`), in a file only its
    /// owner may read; read at every connection, so a rotated secret needs no restart.
    pub password_file: Option<PathBuf>,
    pub tls: Option<service::mqtt_tls::MqttTls>,
    /// Publishes awaiting PUBACK at once; larger hides more round-trip time.
    pub inflight: u16,
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
}

impl MqttConfig {
    /// The user name and password to connect with, if any: the password file is read
    /// now, so a rotated secret is picked up at the next connection.
    pub fn credentials(
        &self,
        gateway_id: &str,
    ) -> Result<Option<(String, String)>, service::secret_file::SecretFileError> {
        let password = match (&self.password, &self.password_file) {
            (Some(password), _) => password.clone(),
            (None, Some(path)) => service::secret_file::read(path)?,
            (None, None) => return Ok(None),
        };
        let username = self
            .username
            .clone()
            .unwrap_or_else(|| gateway_id.to_owned());
        Ok(Some((username, password)))
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 1883,
            keep_alive: Duration::from_secs(30),
            clean_session: false,
            username: None,
            password: None,
            password_file: None,
            tls: None,
            inflight: 100,
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSettings {
    pub dir: PathBuf,
    /// Cap on the whole on-disk queue; beyond it the oldest frames are dropped (counted).
    pub max_bytes: ByteSize,
    pub segment_bytes: ByteSize,
    /// How often written frames and acknowledgements are fsync'd. Longer spares the SD
    /// card; shorter loses less on a power cut.
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/edge-agent/queue"),
            max_bytes: ByteSize::mib(64),
            segment_bytes: ByteSize::mib(1),
            fsync_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// A device's frame is sealed when it holds this many readings...
    pub max_readings: usize,
    /// ...or when its oldest reading is this old, whichever comes first.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_readings: 50,
            max_age: Duration::from_secs(1),
        }
    }
}

/// What to send first when frames from an outage wait in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CatchUp {
    /// New frames go out as they are made; the backlog fills the remaining window.
    LiveFirst,
    /// Alternate between new frames and the backlog.
    Interleave,
}

/// When a frame may leave the disk queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfirmMode {
    /// Once the ingester confirms PostgreSQL committed its readings: nothing the broker,
    /// the bridge or Kafka loses is lost for good.
    Pipeline,
    /// On the broker's PUBACK, for a cloud side without an ingester to confirm.
    Broker,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    pub catch_up: CatchUp,
    /// Most backlog frames sent per second while catching up, so an outage's backlog
    /// does not saturate a thin uplink or the broker.
    pub catch_up_rate: u32,
    pub confirm: ConfirmMode,
    /// A frame not confirmed while a later one of its device is, is sent again after
    /// this long (it was lost after the broker).
    #[serde(with = "humantime_serde")]
    pub confirm_grace: Duration,
    /// A device's last frame, unconfirmed, is sent again after this long, doubling.
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            catch_up: CatchUp::LiveFirst,
            catch_up_rate: 200,
            confirm: ConfirmMode::Pipeline,
            confirm_grace: Duration::from_secs(3),
            confirm_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
        }
    }
}

pub use service::logging::{LogConfig, LogFormat};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub id: String,
    /// Production line of this device; the gateway's line when absent.
    pub line: Option<String>,
    /// Seed of the device's simulations; derived from the id when absent.
    pub seed: Option<u64>,
    pub channels: Vec<ChannelConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    pub id: u8,
    pub name: String,
    pub unit: String,
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// Physical range of the sensor; readings outside it are flagged out of range.
    pub range: Option<[f64; 2]>,
    #[serde(default)]
    pub thresholds: Thresholds,
    pub source: SourceConfig,
    pub anomalies: Option<AnomalyConfig>,
}

/// Alarm levels, published in the device's retained `meta` message for people and
/// dashboards; the cloud's alerting uses its own copy in the `devices` table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    pub warn_low: Option<f64>,
    pub warn_high: Option<f64>,
    pub crit_low: Option<f64>,
    pub crit_high: Option<f64>,
}

/// Overrides from the command line; `None` leaves the lower layers alone.
#[derive(Debug, Default, Serialize)]
pub struct CliOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt_host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

pub use service::config::ConfigError;

impl service::run::Settings for AgentConfig {
    /// One line on what this configuration makes the agent do, for `--check-config`.
    fn summary(&self) -> String {
        let channels: usize = self.devices.iter().map(|d| d.channels.len()).sum();
        format!(
            "gateway {} publishing {} devices ({channels} channels) to {}:{}, queue in {} (cap {})",
            self.gateway.id,
            self.devices.len(),
            self.mqtt.host,
            self.mqtt.port,
            self.queue.dir.display(),
            self.queue.max_bytes,
        )
    }

    /// This configuration with the MQTT password hidden, for `--check-config`.
    fn redacted(&self) -> Self {
        let mut shown = self.clone();
        service::redact::secret(&mut shown.mqtt.password);
        shown
    }

    fn log(&self) -> &LogConfig {
        &self.log
    }
}

impl AgentConfig {
    /// Loads and checks the configuration from `file`, the environment and `cli`.
    pub fn load(file: &Path, cli: &CliOverrides) -> Result<Self, ConfigError> {
        if !file.exists() {
            return Err(ConfigError::Missing(file.to_owned()));
        }
        let flags = Flags::default()
            .set("mqtt.host", cli.mqtt_host.as_ref())
            .set("mqtt.port", cli.mqtt_port)
            .set(
                "queue.dir",
                cli.queue_dir.as_ref().map(|d| d.display().to_string()),
            )
            .set("log.format", cli.log_format);
        let config: AgentConfig = Layers::empty()
            .file(file)
            .prefixed_env("EDGE_AGENT_")
            .flags(flags)
            .extract()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: names, ranges and consistency. Collects every problem
    /// instead of stopping at the first, so one edit fixes them all.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        self.log.check(&mut problems);
        check_id(&mut problems, "gateway.id", &self.gateway.id);
        check_id(&mut problems, "gateway.site", &self.gateway.site);
        check_id(&mut problems, "gateway.line", &self.gateway.line);
        check_id(
            &mut problems,
            "gateway.topic_prefix",
            &self.gateway.topic_prefix,
        );
        let mut device_ids = BTreeSet::new();
        for (d, device) in self.devices.iter().enumerate() {
            check_id(&mut problems, &format!("devices[{d}].id"), &device.id);
            if let Some(line) = &device.line {
                check_id(&mut problems, &format!("devices[{d}].line"), line);
            }
            if !device_ids.insert(device.id.as_str()) {
                problems.push(format!("devices[{d}].id: {:?} appears twice", device.id));
            }
            if device.channels.is_empty() {
                problems.push(format!(
                    "devices[{d}].channels: a device needs at least one channel"
                ));
            }
            let mut channel_ids = BTreeSet::new();
            for (c, channel) in device.channels.iter().enumerate() {
                let key = format!("devices[{d}].channels[{c}]");
                if !channel_ids.insert(channel.id) {
                    problems.push(format!("{key}.id: channel {} appears twice", channel.id));
                }
                if channel.period < Duration::from_millis(10) {
                    problems.push(format!(
                        "{key}.period: {:?} is below the 10 ms minimum",
                        channel.period
                    ));
                }
                if let Some([low, high]) = channel.range {
                    // Also refuses NaN bounds, which compare as neither.
                    if low.partial_cmp(&high) != Some(std::cmp::Ordering::Less) {
                        problems.push(format!("{key}.range: [{low}, {high}] is empty"));
                    }
                }
                let t = channel.thresholds;
                let ordered = [t.crit_low, t.warn_low, t.warn_high, t.crit_high];
                let present: Vec<f64> = ordered.into_iter().flatten().collect();
                if present.windows(2).any(|w| w[0] > w[1]) {
                    problems.push(format!(
                        "{key}.thresholds: must satisfy crit_low <= warn_low <= warn_high <= crit_high"
                    ));
                }
            }
        }
        if self.devices.is_empty() {
            problems.push("devices: at least one device is needed".to_owned());
        }
        if !(1..=protocol::MAX_READINGS).contains(&self.batch.max_readings) {
            problems.push(format!(
                "batch.max_readings: {} is outside 1..={}",
                self.batch.max_readings,
                protocol::MAX_READINGS
            ));
        }
        if self.batch.max_age.is_zero() || self.batch.max_age > Duration::from_secs(3600) {
            problems.push("batch.max_age: must be between 1 ms and 1 h".to_owned());
        }
        if self.queue.segment_bytes.as_u64() < 4096 {
            problems.push("queue.segment_bytes: at least 4 KiB".to_owned());
        }
        if self.queue.max_bytes.as_u64() < 2 * self.queue.segment_bytes.as_u64() {
            problems.push("queue.max_bytes: must hold at least two segments".to_owned());
        }
        if self.queue.fsync_interval < Duration::from_millis(10) {
            problems.push("queue.fsync_interval: at least 10 ms".to_owned());
        }
        if self.mqtt.inflight == 0 {
            problems.push("mqtt.inflight: at least 1".to_owned());
        }
        if self.mqtt.reconnect_min.is_zero() || self.mqtt.reconnect_min > self.mqtt.reconnect_max {
            problems.push("mqtt.reconnect_min: must be > 0 and <= mqtt.reconnect_max".to_owned());
        }
        if self.mqtt.keep_alive < Duration::from_secs(1) {
            problems.push("mqtt.keep_alive: at least 1 s".to_owned());
        }
        problems.extend(service::secret_file::setting_problem(
            "mqtt",
            self.mqtt.password.is_some(),
            self.mqtt.password_file.as_deref(),
        ));
        if let Some(tls) = &self.mqtt.tls {
            problems.extend(tls.problems("mqtt"));
        }
        if self.delivery.catch_up_rate == 0 {
            problems.push("delivery.catch_up_rate: at least 1 frame per second".to_owned());
        }
        if self.delivery.confirm_grace < Duration::from_millis(100) {
            problems.push("delivery.confirm_grace: at least 100 ms".to_owned());
        }
        if self.delivery.confirm_timeout < self.delivery.confirm_grace {
            problems.push("delivery.confirm_timeout: at least delivery.confirm_grace".to_owned());
        }
        if self.health.interval < Duration::from_secs(1) {
            problems.push("health.interval: at least 1 s".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

fn check_id(problems: &mut Vec<String>, key: &str, value: &str) {
    if let Err(e) = protocol::validate_id(value) {
        problems.push(format!("{key}: {value:?} {e}"));
    }
}

impl DeviceConfig {
    pub fn line<'a>(&'a self, gateway: &'a GatewayConfig) -> &'a str {
        self.line.as_deref().unwrap_or(&gateway.line)
    }

    /// The configured seed, or one derived from the id (stable across restarts, so a
    /// simulated plant behaves the same every time).
    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or_else(|| {
            // FNV-1a: stable across Rust versions, unlike the std hasher.
            self.id.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            })
        })
    }
}
