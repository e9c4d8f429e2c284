//! The bridge's configuration: a TOML file, `BRIDGE_*` environment variables and CLI
//! flags, checked as a whole before anything connects.
//!
//! Layers, later wins: built-in defaults, the TOML file (optional: the defaults run the
//! local stack), `BRIDGE_*` variables (`__` separates levels:
//! `BRIDGE_KAFKA__BROKERS=kafka:9092`), then CLI flags. Every problem is reported with the
//! key it concerns.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use service::config::{Flags, Layers};

/// Where the bridge gets its MQTT messages from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Run rumqttd in-process: devices connect to the bridge itself. rumqttd acknowledges
    /// publishes on receipt and keeps them in memory only.
    Embedded,
    /// Subscribe to an external broker with a persistent session, acknowledging each
    /// message only after Kafka has it.
    Client,
}

pub use service::clock::ClockConfig;
pub use service::http::HttpConfig;
pub use service::logging::{LogConfig, LogFormat};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    pub mode: Mode,
    /// Instance name: the MQTT client id in client mode (it names the persistent
    /// session, so keep it stable and unique per instance) and the key of the metrics
    /// records.
    pub id: String,
    /// First level of the topic tree (`{prefix}/{site}/{line}/{device}/{kind}`).
    pub topic_prefix: String,
    pub mqtt: MqttClientConfig,
    pub embedded: EmbeddedConfig,
    pub kafka: KafkaConfig,
    pub forward: ForwardConfig,
    pub latest: LatestConfig,
    /// A frame dated more than `clock.max_ahead` ahead of the bridge's clock is forwarded
    /// to Kafka as any other but does not drive the retained `latest` (counted in
    /// `bridge_latest_future_dated_total`): a device clock gone wrong must not pin it.
    pub clock: ClockConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Embedded,
            id: "bridge-1".to_owned(),
            topic_prefix: "plant".to_owned(),
            mqtt: MqttClientConfig::default(),
            embedded: EmbeddedConfig::default(),
            kafka: KafkaConfig::default(),
            forward: ForwardConfig::default(),
            latest: LatestConfig::default(),
            clock: ClockConfig::default(),
            http: HttpConfig::on_port(9101),
            // rumqttd logs every device connection at info and every disconnect as an
            // error; `info,rumqttd=info` brings it back.
            log: LogConfig::at("info,rumqttd=off"),
        }
    }
}

/// Client mode: the external broker and the session the bridge keeps there.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttClientConfig {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The password in a file only its owner may read, instead of `password`; read at
    /// every connection.
    pub password_file: Option<std::path::PathBuf>,
    /// TLS to the broker (its CA, and a client certificate if it asks for one).
    pub tls: Option<service::mqtt_tls::MqttTls>,
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// How long the broker keeps the session (and queues messages for it) while the
    /// bridge is away.
    #[serde(with = "humantime_serde")]
    pub session_expiry: Duration,
    /// Shared-subscription group: instances with the same group split the devices'
    /// messages between them (`$share/{group}/...`). Empty (the default) subscribes
    /// without sharing: Mosquitto 2.0 does not restore shared subscriptions when it
    /// restarts, so a shared group loses what devices publish between the broker's
    /// restart and the bridge's return (the e2e `broker-outage` scenario found it).
    pub shared_group: String,
    /// Largest message the broker may send; it discards larger ones (MQTT 5 Maximum
    /// Packet Size), so one oversized message cannot wedge the session.
    pub max_packet_size: ByteSize,
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Longest wait between reconnection attempts. Short: every reading waits for the
    /// bridge once the broker is back (the e2e `queue-cap` scenario took 10 s to recover
    /// from a 15 s broker outage with 30 s), and one client retrying is cheap.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
}

impl Default for MqttClientConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 1883,
            username: None,
            password: None,
            password_file: None,
            tls: None,
            keep_alive: Duration::from_secs(30),
            session_expiry: Duration::from_secs(7 * 24 * 3600),
            shared_group: String::new(),
            max_packet_size: ByteSize::kib(256),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(3),
        }
    }
}

/// Embedded mode: the in-process rumqttd broker devices connect to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    pub listen: SocketAddr,
    pub max_connections: usize,
    pub max_payload_size: ByteSize,
    /// Memory for messages not yet forwarded (rumqttd's in-memory log). When Kafka is
    /// down for longer than this lasts, the oldest messages are lost: embedded mode is
    /// for a single box and the demo, not for production.
    pub memory_budget: ByteSize,
    /// Username → password, checked before the registry (a tool's login, a box
    /// without PostgreSQL).
    pub users: BTreeMap<String, String>,
    /// PostgreSQL holding the gateway registry (`iotctl gateways`), which every
    /// connection is authenticated against. Empty: `users` alone.
    pub registry_url: String,
    /// How long an accepted gateway secret is trusted before the registry is asked again:
    /// the longest a disabled or rotated gateway can still connect.
    #[serde(with = "humantime_serde")]
    pub auth_cache: Duration,
    /// Accept clients without credentials, as any device: only on a network where every
    /// box is trusted. Logged as a warning at every start.
    pub allow_anonymous: bool,
    /// With the registry, frames sealed with a gateway's key from before its last
    /// rotation are accepted this long after it (agents still connected with the old
    /// secret).
    #[serde(with = "humantime_serde")]
    pub rotation_grace: Duration,
    /// With the registry, forward unsealed (version 1) frames of devices whose gateway
    /// does not seal yet, unchecked. Sealed frames are checked whatever this says.
    pub accept_unsealed: bool,
    /// TLS on `listen`, every client presenting a certificate of `client_ca`; absent:
    /// plain MQTT.
    pub tls: Option<EmbeddedTls>,
}

/// The embedded broker's TLS: its certificate chain and key, and the CA that signs the
/// devices' client certificates (PEM files).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedTls {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub client_ca: std::path::PathBuf,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            max_connections: 10_000,
            max_payload_size: ByteSize::kib(256),
            memory_budget: ByteSize::mib(256),
            users: BTreeMap::new(),
            registry_url: String::new(),
            auth_cache: Duration::from_secs(10),
            allow_anonymous: false,
            rotation_grace: Duration::from_secs(3600),
            accept_unsealed: false,
            tls: None,
        }
    }
}

impl EmbeddedConfig {
    /// Anonymous access is a choice made explicitly, never the result of configuring
    /// nothing, and never mixed with credentials (rumqttd cannot take both).
    fn check_access(&self, problems: &mut Vec<String>) {
        let authenticates = !self.users.is_empty() || !self.registry_url.is_empty();
        if self.allow_anonymous && authenticates {
            problems.push(
                "embedded.allow_anonymous: true, but embedded.users or embedded.registry_url \
                 is set too; anonymous access means no authentication at all: choose one"
                    .to_owned(),
            );
        } else if !self.allow_anonymous && !authenticates {
            problems.push(
                "embedded: devices cannot be authenticated: set embedded.registry_url (the \
                 gateway registry, `iotctl gateways add`) or embedded.users, or \
                 embedded.allow_anonymous = true on a network where every box is trusted"
                    .to_owned(),
            );
        }
        let postgres = ["postgres://", "postgresql://"];
        if !self.registry_url.is_empty()
            && !postgres
                .iter()
                .any(|scheme| self.registry_url.starts_with(scheme))
        {
            problems.push(format!(
                "embedded.registry_url: {:?} is not a postgres:// URL",
                service::redact::url(&self.registry_url)
            ));
        }
        if self.auth_cache.is_zero() || self.auth_cache > Duration::from_secs(3600) {
            problems.push("embedded.auth_cache: between 1 ms and 1 h".to_owned());
        }
        if self.rotation_grace > Duration::from_secs(7 * 24 * 3600) {
            problems.push("embedded.rotation_grace: at most 7 days".to_owned());
        }
        if let Some(tls) = &self.tls {
            for (key, path) in [
                ("embedded.tls.cert", &tls.cert),
                ("embedded.tls.key", &tls.key),
                ("embedded.tls.client_ca", &tls.client_ca),
            ] {
                if let Err(e) = std::fs::File::open(path) {
                    problems.push(format!("{key}: cannot read {}: {e}", path.display()));
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
}

impl Compression {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    pub topic: String,
    pub dlq_topic: String,
    /// Where the ingester puts its confirmations, which the bridge relays to each
    /// device's `{prefix}/{site}/{line}/{device}/confirm` topic. Empty turns the relay
    /// off. The bridge does not create it: it waits for it (the ingester's topic).
    pub confirm_topic: String,
    /// Where the periodic pipeline metrics go as JSON. Empty turns them off.
    pub metrics_topic: String,
    #[serde(with = "humantime_serde")]
    pub metrics_interval: Duration,
    /// Create missing topics at start (with the pipeline's partition counts) instead of
    /// refusing to start.
    pub create_topics: bool,
    pub replication_factor: i32,
    pub compression: Compression,
    /// How long the producer waits to fill a batch.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    pub batch_size: ByteSize,
    /// Cap on bytes waiting in the producer; at the cap the bridge stops taking MQTT
    /// messages until Kafka catches up.
    pub memory_budget: ByteSize,
    /// Extra librdkafka properties, passed through as they are (for TLS, SASL, ...).
    /// Numbers and booleans are taken as their text, as librdkafka wants.
    #[serde(deserialize_with = "service::kafka_config::properties_as_text")]
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_owned(),
            topic: protocol::kafka::SENSORS_DATA.name.to_owned(),
            dlq_topic: protocol::kafka::SENSORS_DLQ.name.to_owned(),
            confirm_topic: protocol::kafka::SENSORS_CONFIRM.name.to_owned(),
            metrics_topic: protocol::kafka::METRICS.name.to_owned(),
            metrics_interval: Duration::from_secs(10),
            create_topics: true,
            replication_factor: 1,
            compression: Compression::Lz4,
            linger: Duration::from_millis(5),
            batch_size: ByteSize::mib(1),
            memory_budget: ByteSize::mib(64),
            properties: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// Messages received but not yet confirmed by Kafka, at most. In client mode it is
    /// also the MQTT Receive Maximum, so the broker never sends more than this ahead.
    pub max_in_flight: usize,
    /// After SIGTERM, how long to wait for Kafka to confirm what is in flight.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Messages waiting with none confirmed by Kafka for this long: `/readyz` says not
    /// ready. When Kafka has been connected all along for twice this, the producer is
    /// wedged (as behind a broker that lost its state) and the bridge replaces it.
    #[serde(with = "humantime_serde")]
    pub stall_after: Duration,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 20_000,
            shutdown_grace: Duration::from_secs(10),
            stall_after: Duration::from_secs(30),
        }
    }
}

/// The decoded, retained `latest` topic per device, for people browsing the broker.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LatestConfig {
    pub enabled: bool,
    /// At most one `latest` message per device per interval.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Devices tracked at once; beyond this, new devices get no `latest` (counted).
    pub max_devices: usize,
}

impl Default for LatestConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(1),
            max_devices: 100_000,
        }
    }
}

/// Values given on the command line; they override the file and the environment.
#[derive(Debug, Default, Clone)]
pub struct CliOverrides {
    pub mode: Option<Mode>,
    pub id: Option<String>,
    pub mqtt_host: Option<String>,
    pub mqtt_port: Option<u16>,
    pub listen: Option<SocketAddr>,
    pub kafka_brokers: Option<String>,
    pub http_listen: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
}

impl CliOverrides {
    fn flags(&self) -> Flags {
        Flags::default()
            .set("mode", self.mode.as_ref())
            .set("id", self.id.as_ref())
            .set("mqtt.host", self.mqtt_host.as_ref())
            .set("mqtt.port", self.mqtt_port)
            .set("embedded.listen", self.listen)
            .set("kafka.brokers", self.kafka_brokers.as_ref())
            .set("http.listen", self.http_listen)
            .set("log.format", self.log_format)
    }
}

pub use service::config::ConfigError;

impl service::run::Settings for BridgeConfig {
    /// One line on what this configuration makes the bridge do, for `--check-config`.
    fn summary(&self) -> String {
        let mqtt = match self.mode {
            Mode::Embedded => format!("embedded broker on {}", self.embedded.listen),
            Mode::Client => format!("client of {}:{}", self.mqtt.host, self.mqtt.port),
        };
        let confirmations = if self.kafka.confirm_topic.is_empty() {
            "not relaying confirmations".to_owned()
        } else {
            format!("relaying confirmations from {}", self.kafka.confirm_topic)
        };
        format!(
            "{} ({mqtt}) forwarding {}/+/+/+/telemetry to Kafka {} topic {} (DLQ {}), \
             {confirmations}, metrics on http://{}/metrics",
            self.id,
            self.topic_prefix,
            self.kafka.brokers,
            self.kafka.topic,
            self.kafka.dlq_topic,
            self.http.listen,
        )
    }

    /// This configuration with its secrets hidden, for `--check-config`.
    fn redacted(&self) -> Self {
        let mut shown = self.clone();
        service::redact::secret(&mut shown.mqtt.password);
        for password in shown.embedded.users.values_mut() {
            *password = "***".to_owned();
        }
        shown.embedded.registry_url = service::redact::url(&shown.embedded.registry_url);
        shown.kafka.properties = service::kafka_config::redacted_properties(&self.kafka.properties);
        shown
    }

    fn log(&self) -> &LogConfig {
        &self.log
    }
}

impl BridgeConfig {
    /// Loads the layers (the file only if given) and validates the result.
    pub fn load(file: Option<&Path>, overrides: &CliOverrides) -> Result<Self, ConfigError> {
        let config: BridgeConfig = Layers::defaults(BridgeConfig::default())
            .optional_file(file)
            .prefixed_env("BRIDGE_")
            .flags(overrides.flags())
            .extract()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot; collects every problem so one edit fixes them all.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if let Err(e) = protocol::validate_id(&self.id) {
            problems.push(format!("id: {:?} {e}", self.id));
        }
        if let Err(e) = protocol::validate_id(&self.topic_prefix) {
            problems.push(format!("topic_prefix: {:?} {e}", self.topic_prefix));
        }
        let group = &self.mqtt.shared_group;
        if !group.is_empty() && protocol::validate_id(group).is_err() {
            problems.push(format!(
                "mqtt.shared_group: {group:?} must be empty or 1-24 characters of A-Z a-z 0-9 . _ -"
            ));
        }
        // rumqttc refuses (panics on) shorter keep-alives.
        if self.mqtt.keep_alive < Duration::from_secs(5) {
            problems.push("mqtt.keep_alive: at least 5 s".to_owned());
        }
        if self.mqtt.session_expiry.as_secs() > u64::from(u32::MAX) {
            problems.push("mqtt.session_expiry: at most 136 years".to_owned());
        }
        if self.mqtt.reconnect_min.is_zero() || self.mqtt.reconnect_min > self.mqtt.reconnect_max {
            problems.push("mqtt.reconnect_min: must be > 0 and <= mqtt.reconnect_max".to_owned());
        }
        problems.extend(service::secret_file::setting_problem(
            "mqtt",
            self.mqtt.password.is_some(),
            self.mqtt.password_file.as_deref(),
        ));
        if self.mqtt.password_file.is_some() && self.mqtt.username.is_none() {
            problems.push("mqtt.password_file: needs mqtt.username".to_owned());
        }
        if let Some(tls) = &self.mqtt.tls {
            problems.extend(tls.problems("mqtt"));
        }
        let min_packet = protocol::MAX_FRAME_LEN as u64 + 512;
        if self.mqtt.max_packet_size.as_u64() < min_packet
            || self.mqtt.max_packet_size.as_u64() > u64::from(u32::MAX)
        {
            problems.push(format!(
                "mqtt.max_packet_size: must be between {min_packet} B (a full frame and its topic) and 4 GiB"
            ));
        }
        if self.embedded.max_connections == 0 {
            problems.push("embedded.max_connections: at least 1".to_owned());
        }
        if self.embedded.max_payload_size.as_u64() < protocol::MAX_FRAME_LEN as u64 {
            problems.push(format!(
                "embedded.max_payload_size: at least {} B (a full frame)",
                protocol::MAX_FRAME_LEN
            ));
        }
        if self.mode == Mode::Embedded {
            self.embedded.check_access(&mut problems);
        }
        if self.embedded.memory_budget.as_u64() < 4 * self.embedded.max_payload_size.as_u64() {
            problems.push(
                "embedded.memory_budget: must hold at least 4 messages of max_payload_size"
                    .to_owned(),
            );
        }
        if self.kafka.brokers.trim().is_empty() {
            problems.push("kafka.brokers: empty".to_owned());
        }
        for (key, topic) in [
            ("kafka.topic", &self.kafka.topic),
            ("kafka.dlq_topic", &self.kafka.dlq_topic),
        ] {
            if !service::kafka_config::valid_topic(topic) {
                problems.push(format!(
                    "{key}: {topic:?} is not a Kafka topic name (1-249 characters of A-Z a-z 0-9 . _ -)"
                ));
            }
        }
        for (key, topic) in [
            ("kafka.confirm_topic", &self.kafka.confirm_topic),
            ("kafka.metrics_topic", &self.kafka.metrics_topic),
        ] {
            if !topic.is_empty() && !service::kafka_config::valid_topic(topic) {
                problems.push(format!(
                    "{key}: {topic:?} is not a Kafka topic name (empty turns it off)"
                ));
            }
        }
        if self.kafka.topic == self.kafka.dlq_topic {
            problems.push("kafka.dlq_topic: must differ from kafka.topic".to_owned());
        }
        // The relay reads what the ingester writes; reading one of the bridge's own
        // topics would refuse every record (frames are not confirmations).
        let confirm = &self.kafka.confirm_topic;
        if !confirm.is_empty()
            && [
                &self.kafka.topic,
                &self.kafka.dlq_topic,
                &self.kafka.metrics_topic,
            ]
            .contains(&confirm)
        {
            problems.push(
                "kafka.confirm_topic: must differ from kafka.topic, dlq_topic and metrics_topic"
                    .to_owned(),
            );
        }
        if self.kafka.metrics_interval < Duration::from_secs(1) {
            problems.push("kafka.metrics_interval: at least 1 s".to_owned());
        }
        if self.kafka.replication_factor < 1 {
            problems.push("kafka.replication_factor: at least 1".to_owned());
        }
        if self.kafka.linger > Duration::from_secs(5) {
            problems.push("kafka.linger: at most 5 s".to_owned());
        }
        if self.kafka.batch_size.as_u64() < 1024 || self.kafka.batch_size.as_u64() > 64 << 20 {
            problems.push("kafka.batch_size: between 1 KiB and 64 MiB".to_owned());
        }
        if self.kafka.memory_budget.as_u64() < 4 * self.kafka.batch_size.as_u64()
            || self.kafka.memory_budget.as_u64() > 2 << 30
        {
            problems.push(
                "kafka.memory_budget: at least 4 × kafka.batch_size and at most 2 GiB".to_owned(),
            );
        }
        if !(1..=65_535).contains(&self.forward.max_in_flight) {
            problems.push(
                "forward.max_in_flight: between 1 and 65535 (the MQTT Receive Maximum)".to_owned(),
            );
        }
        if self.forward.stall_after < Duration::from_secs(1) {
            problems.push("forward.stall_after: at least 1 s".to_owned());
        }
        if self.latest.interval < Duration::from_millis(100) {
            problems.push("latest.interval: at least 100 ms".to_owned());
        }
        self.clock.check(&mut problems);
        self.log.check(&mut problems);
        self.check_kafka_properties(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The passthrough properties may not undo the delivery guarantee, and every message
    /// MQTT can deliver must fit a Kafka record (with room for the headers), so that no
    /// single message can be refused by Kafka for its size.
    fn check_kafka_properties(&self, problems: &mut Vec<String>) {
        service::kafka_config::refuse_managed(
            &self.kafka.properties,
            MANAGED_KAFKA_PROPERTIES,
            "set by the bridge (its delivery guarantee depends on it)",
            problems,
        );
        let message_max = match self.kafka.properties.get("message.max.bytes") {
            None => LIBRDKAFKA_MESSAGE_MAX_BYTES,
            Some(value) => match value.parse::<u64>() {
                Ok(bytes) => bytes,
                Err(_) => {
                    problems.push(format!(
                        "kafka.properties.message.max.bytes: {value:?} is not a number of bytes"
                    ));
                    return;
                }
            },
        };
        let largest = message_max.saturating_sub(RECORD_OVERHEAD);
        let (key, size) = match self.mode {
            Mode::Client => ("mqtt.max_packet_size", self.mqtt.max_packet_size),
            Mode::Embedded => ("embedded.max_payload_size", self.embedded.max_payload_size),
        };
        if size.as_u64() > largest {
            problems.push(format!(
                "{key}: {size} does not fit a Kafka record of message.max.bytes {message_max} \
                 (at most {largest} B, leaving room for the headers)"
            ));
        }
    }
}

/// librdkafka properties the bridge sets itself and will not take from the config.
const MANAGED_KAFKA_PROPERTIES: &[&str] = &[
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "bootstrap.servers",
];

/// librdkafka's default `message.max.bytes`.
const LIBRDKAFKA_MESSAGE_MAX_BYTES: u64 = 1_000_000;

/// Room for a record's key, headers (topic, reasons) and framing.
const RECORD_OVERHEAD: u64 = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults with what they lack on purpose: a way to authenticate devices.
    fn valid() -> BridgeConfig {
        let mut config = BridgeConfig::default();
        config.embedded.registry_url = "postgres://bridge:pw@db/plant".to_owned();
        config
    }

    #[test]
    fn defaults_are_valid_once_devices_can_be_authenticated() {
        valid().validate().unwrap();
        let client = BridgeConfig {
            mode: Mode::Client,
            ..BridgeConfig::default()
        };
        client.validate().unwrap();
        let Err(ConfigError::Invalid(problems)) = BridgeConfig::default().validate() else {
            panic!("an embedded broker without authentication accepted");
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("embedded: devices cannot be authenticated"));
    }

    #[test]
    fn anonymous_access_is_explicit_and_never_mixed_with_credentials() {
        let mut anonymous = BridgeConfig::default();
        anonymous.embedded.allow_anonymous = true;
        anonymous.validate().unwrap();
        let mut users = BridgeConfig::default();
        users
            .embedded
            .users
            .insert("plc".to_owned(), "pw".to_owned());
        users.validate().unwrap();

        let mut both = valid();
        both.embedded.allow_anonymous = true;
        let mut bad_url = valid();
        bad_url.embedded.registry_url = "mysql://u:hunter2@db/x".to_owned();
        let mut no_cache = valid();
        no_cache.embedded.auth_cache = Duration::ZERO;
        for (config, expected) in [
            (both, "embedded.allow_anonymous: true, but"),
            (
                bad_url,
                "embedded.registry_url: \"mysql://u:***@db/x\" is not a postgres:// URL",
            ),
            (no_cache, "embedded.auth_cache: between"),
        ] {
            let Err(ConfigError::Invalid(problems)) = config.validate() else {
                panic!("accepted: {expected}");
            };
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].starts_with(expected), "{problems:?}");
        }
    }

    #[test]
    fn check_config_hides_the_registrys_password() {
        let shown = service::run::Settings::redacted(&valid());
        assert!(
            !shown.embedded.registry_url.contains("pw"),
            "{}",
            shown.embedded.registry_url
        );
        assert!(shown
            .embedded
            .registry_url
            .starts_with("postgres://bridge:"));
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let mut config = BridgeConfig {
            topic_prefix: "a/b".to_owned(),
            ..valid()
        };
        config.kafka.dlq_topic = config.kafka.topic.clone();
        config.forward.max_in_flight = 0;
        config.forward.stall_after = Duration::from_millis(10);
        config.mqtt.shared_group = "has space".to_owned();
        let Err(ConfigError::Invalid(problems)) = config.validate() else {
            panic!("invalid config accepted");
        };
        let keys: Vec<&str> = problems
            .iter()
            .map(|p| p.split(':').next().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "topic_prefix",
                "mqtt.shared_group",
                "kafka.dlq_topic",
                "forward.max_in_flight",
                "forward.stall_after"
            ]
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's signature
    fn file_environment_and_flags_layer_in_that_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bridge.toml");
        std::fs::write(
            &file,
            "mode = \"client\"\n[mqtt]\nhost = \"from-file\"\nport = 1\n[kafka]\nlinger = \"20ms\"\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("BRIDGE_MQTT__PORT", "2");
            let config = BridgeConfig::load(
                Some(&file),
                &CliOverrides {
                    mqtt_host: Some("from-flag".to_owned()),
                    ..CliOverrides::default()
                },
            )
            .unwrap();
            assert_eq!(config.mode, Mode::Client);
            assert_eq!(config.mqtt.host, "from-flag");
            assert_eq!(config.mqtt.port, 2);
            assert_eq!(config.kafka.linger, Duration::from_millis(20));
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's signature
    fn the_confirm_topic_has_a_default_is_checked_and_may_be_turned_off() {
        assert_eq!(
            BridgeConfig::default().kafka.confirm_topic,
            protocol::kafka::SENSORS_CONFIRM.name
        );
        figment::Jail::expect_with(|jail| {
            jail.set_env("BRIDGE_EMBEDDED__ALLOW_ANONYMOUS", "true");
            jail.set_env("BRIDGE_KAFKA__CONFIRM_TOPIC", "");
            let config = BridgeConfig::load(None, &CliOverrides::default()).unwrap();
            assert_eq!(config.kafka.confirm_topic, "");
            jail.set_env("BRIDGE_KAFKA__CONFIRM_TOPIC", "confirm-x");
            let config = BridgeConfig::load(None, &CliOverrides::default()).unwrap();
            assert_eq!(config.kafka.confirm_topic, "confirm-x");
            Ok(())
        });
        for bad in ["has space", "sensors-dlq"] {
            let mut config = valid();
            config.kafka.confirm_topic = bad.to_owned();
            let Err(ConfigError::Invalid(problems)) = config.validate() else {
                panic!("confirm_topic {bad:?} accepted");
            };
            assert!(
                problems
                    .iter()
                    .all(|p| p.starts_with("kafka.confirm_topic:")),
                "{problems:?}"
            );
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's signature
    fn clock_max_ahead_defaults_to_the_pipelines_policy_and_is_bounded() {
        assert_eq!(
            BridgeConfig::default().clock.max_ahead,
            service::clock::DEFAULT_MAX_AHEAD
        );
        figment::Jail::expect_with(|jail| {
            jail.set_env("BRIDGE_EMBEDDED__ALLOW_ANONYMOUS", "true");
            jail.set_env("BRIDGE_CLOCK__MAX_AHEAD", "90s");
            let config = BridgeConfig::load(None, &CliOverrides::default()).unwrap();
            assert_eq!(config.clock.max_ahead, Duration::from_secs(90));
            Ok(())
        });
        for bad in [Duration::ZERO, Duration::from_secs(25 * 3600)] {
            let mut config = valid();
            config.clock.max_ahead = bad;
            let Err(ConfigError::Invalid(problems)) = config.validate() else {
                panic!("clock.max_ahead {bad:?} accepted");
            };
            assert_eq!(problems, ["clock.max_ahead: between 1 s and 24 h"]);
        }
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bridge.toml");
        std::fs::write(&file, "[kafka]\nbroker = \"x\"\n").unwrap();
        let error = BridgeConfig::load(Some(&file), &CliOverrides::default()).unwrap_err();
        assert!(error.to_string().contains("broker"), "{error}");
    }
}
