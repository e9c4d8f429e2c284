//! The ingester's configuration: a TOML file, environment variables and CLI flags,
//! checked as a whole before anything connects.
//!
//! Layers, later wins: built-in defaults, the TOML file (optional), the conventional
//! `DATABASE_URL`, `REDIS_URL` and `KAFKA_BROKERS` (the stack's scripts and the tests set
//! them), `INGESTER_*` variables (`__` separates levels:
//! `INGESTER_KAFKA__GROUP=ingest-b`), then CLI flags. Every problem is reported with the
//! key it concerns.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use service::config::{Flags, Layers};
use service::redact::url as redact_url;

pub use service::clock::ClockConfig;
pub use service::http::HttpConfig;
pub use service::logging::{LogConfig, LogFormat};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngesterConfig {
    /// Instance name: Kafka client id, key of the metrics records, `instance` of the
    /// system events.
    pub id: String,
    /// After SIGTERM or Ctrl-C, how long the batch in hand may still wait for Kafka to
    /// confirm its dead letters, and the last records to go out. A stop during a Kafka
    /// outage ends when it is over: what is unconfirmed is not stored, so it is read
    /// again after the restart.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub kafka: KafkaConfig,
    pub batch: BatchConfig,
    pub retention: RetentionConfig,
    pub alerts: AlertsConfig,
    /// A reading dated more than `clock.max_ahead` ahead of the ingester's clock is
    /// stored but drives neither Redis `latest`, `last_seen` nor the `recent` stream, nor
    /// alert evaluation (counted in `ingester_readings_future_dated_total`, a
    /// `future_dated` system event per device and episode): a device clock gone wrong
    /// must not pin them.
    pub clock: ClockConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
}

impl Default for IngesterConfig {
    fn default() -> Self {
        Self {
            id: "ingester-1".to_owned(),
            // As the bridge's forward.shutdown_grace; the compose file's stop_grace_period
            // (20 s) leaves room for the rest of the stop before a SIGKILL.
            shutdown_grace: Duration::from_secs(10),
            database: DatabaseConfig::default(),
            redis: RedisConfig::default(),
            kafka: KafkaConfig::default(),
            batch: BatchConfig::default(),
            retention: RetentionConfig::default(),
            alerts: AlertsConfig::default(),
            clock: ClockConfig::default(),
            http: HttpConfig::on_port(9102),
            log: LogConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// PostgreSQL URL. Required; no default could be right.
    pub url: String,
    pub max_connections: u32,
    /// Run the migrations before starting (as the schema's owner).
    pub migrate: bool,
    /// Start even when `url` logs in as a superuser. Refused by default: the ingester
    /// needs only a login in `telemetry_ingester` (migrations/*_roles.sql), and a
    /// superuser's password on a service is one leak from the whole cluster.
    pub allow_superuser: bool,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            max_connections: 4,
            migrate: false,
            allow_superuser: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Redis URL; empty turns Redis off.
    pub url: String,
    /// First part of every key the ingester writes.
    pub prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            prefix: crate::redis_sink::DEFAULT_PREFIX.to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Consumer group; instances with the same group share the partitions.
    pub group: String,
    pub topic: String,
    pub dlq_topic: String,
    /// Where alert transitions go. Empty turns them off.
    pub alerts_topic: String,
    /// Where the periodic metrics records go as JSON. Empty turns them off.
    pub metrics_topic: String,
    #[serde(with = "humantime_serde")]
    pub metrics_interval: Duration,
    /// Where the confirmations to the devices go (what PostgreSQL holds of their
    /// readings), for the bridge to relay. Empty turns them off.
    pub confirm_topic: String,
    /// Each device and boot gets at most one confirmation this often.
    #[serde(with = "humantime_serde")]
    pub confirm_interval: Duration,
    /// Extra librdkafka properties for the consumer and the producer, passed through as
    /// they are (for TLS, SASL, ...). Numbers and booleans are taken as their text.
    #[serde(deserialize_with = "service::kafka_config::properties_as_text")]
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_owned(),
            group: "cloud-ingester".to_owned(),
            topic: protocol::kafka::SENSORS_DATA.name.to_owned(),
            dlq_topic: protocol::kafka::SENSORS_DLQ.name.to_owned(),
            alerts_topic: protocol::kafka::ALERTS.name.to_owned(),
            metrics_topic: protocol::kafka::METRICS.name.to_owned(),
            metrics_interval: Duration::from_secs(10),
            confirm_topic: protocol::kafka::SENSORS_CONFIRM.name.to_owned(),
            confirm_interval: Duration::from_millis(200),
            properties: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// A batch closes at this many readings...
    pub rows: usize,
    /// ...or this long after its first record, whichever comes first.
    #[serde(with = "humantime_serde")]
    pub age: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            rows: 20_000,
            // Latency, not throughput: under load a batch fills by rows long before this.
            // At 10k readings/s, 200 ms made p99 publish → row 304 ms, 50 ms 141 ms
            // (docs/benchmarks.md).
            age: Duration::from_millis(50),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Drop `sensor_readings` partitions older than this many days; none keeps all.
    pub days: Option<u32>,
}

/// The alert rules that are not per channel (those are columns of `device_channels`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// `data_loss` opens when at least this many readings of a device are missing (holes
    /// below its highest committed sequence number, over its boots with holes)...
    pub data_loss_readings: u64,
    /// ...and have been for this long, by the ingester's clock. A hole is normal for a
    /// moment: the agent resends a frame lost after the broker about 3 s after a later
    /// one is confirmed, so this must be well above that.
    #[serde(with = "humantime_serde")]
    pub data_loss_window: Duration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            // Any reading lost for good is worth an alert; the window keeps resends quiet.
            data_loss_readings: 1,
            // Far above a resend's few seconds, and above the agent's 60 s last-frame
            // timeout, so only a hole nothing is going to fill opens it.
            data_loss_window: Duration::from_secs(120),
        }
    }
}

impl AlertsConfig {
    /// Shortest and longest `data_loss_window`: below a second every resend would open
    /// an alert; above a day a loss would go unreported for longer than anyone waits.
    pub const WINDOW_RANGE: std::ops::RangeInclusive<Duration> =
        Duration::from_secs(1)..=Duration::from_secs(24 * 3600);
}

/// Values given on the command line; they override the file and the environment.
#[derive(Debug, Default, Clone)]
pub struct CliOverrides {
    pub id: Option<String>,
    pub database_url: Option<String>,
    /// `true` sets `database.migrate`; absent leaves it to the other layers.
    pub migrate: bool,
    pub redis_url: Option<String>,
    pub redis_prefix: Option<String>,
    pub kafka_brokers: Option<String>,
    pub group: Option<String>,
    pub topic: Option<String>,
    pub dlq_topic: Option<String>,
    pub confirm_topic: Option<String>,
    pub batch_rows: Option<usize>,
    /// Text, parsed with the rest of the configuration so its errors name `batch.age`.
    pub batch_age: Option<String>,
    pub retention_days: Option<u32>,
    pub http_listen: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
}

impl CliOverrides {
    fn flags(&self) -> Flags {
        Flags::default()
            .set("id", self.id.as_ref())
            .set("database.url", self.database_url.as_ref())
            .set("database.migrate", self.migrate.then_some(true))
            .set("redis.url", self.redis_url.as_ref())
            .set("redis.prefix", self.redis_prefix.as_ref())
            .set("kafka.brokers", self.kafka_brokers.as_ref())
            .set("kafka.group", self.group.as_ref())
            .set("kafka.topic", self.topic.as_ref())
            .set("kafka.dlq_topic", self.dlq_topic.as_ref())
            .set("kafka.confirm_topic", self.confirm_topic.as_ref())
            .set("batch.rows", self.batch_rows)
            .set("batch.age", self.batch_age.as_ref())
            .set("retention.days", self.retention_days)
            .set("http.listen", self.http_listen)
            .set("log.format", self.log_format)
    }
}

pub use service::config::ConfigError;

/// The conventional variables and the keys they set.
impl service::run::Settings for IngesterConfig {
    /// One line on what this configuration makes the ingester do, for `--check-config`.
    fn summary(&self) -> String {
        format!(
            "{} in group {} storing Kafka {} topic {} (DLQ {}) into PostgreSQL {}, {}, metrics on http://{}/metrics",
            self.id,
            self.kafka.group,
            self.kafka.brokers,
            self.kafka.topic,
            self.kafka.dlq_topic,
            redact_url(&self.database.url),
            if self.redis.url.is_empty() {
                "no Redis".to_owned()
            } else {
                format!("Redis {}", redact_url(&self.redis.url))
            },
            self.http.listen,
        )
    }

    /// This configuration with its secrets hidden, for `--check-config`.
    fn redacted(&self) -> Self {
        let mut shown = self.clone();
        shown.database.url = redact_url(&shown.database.url);
        shown.redis.url = redact_url(&shown.redis.url);
        shown.kafka.properties = service::kafka_config::redacted_properties(&self.kafka.properties);
        shown
    }

    fn log(&self) -> &LogConfig {
        &self.log
    }
}

impl IngesterConfig {
    /// Loads the layers (the file only if given) and validates the result.
    pub fn load(file: Option<&Path>, overrides: &CliOverrides) -> Result<Self, ConfigError> {
        let config: IngesterConfig = Layers::defaults(IngesterConfig::default())
            .optional_file(file)
            .conventional_env()
            .prefixed_env("INGESTER_")
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
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&self.shutdown_grace) {
            problems.push("shutdown_grace: between 1 s and 10 min".to_owned());
        }
        service::config::check_database_url(&self.database.url, "INGESTER_", &mut problems);
        // PostgreSQL's own default max_connections is 100, shared by every client.
        if !(1..=100).contains(&self.database.max_connections) {
            problems.push("database.max_connections: between 1 and 100".to_owned());
        }
        let url = &self.redis.url;
        let redis_off = url.is_empty();
        if !(redis_off || url.starts_with("redis://") || url.starts_with("rediss://")) {
            problems.push(format!(
                "redis.url: {:?} is not a redis:// or rediss:// URL (or empty, for no Redis)",
                redact_url(url)
            ));
        }
        if self.redis.prefix.is_empty() || self.redis.prefix.contains(char::is_whitespace) {
            problems.push("redis.prefix: must be non-empty, without spaces".to_owned());
        }
        if self.kafka.brokers.trim().is_empty() {
            problems.push("kafka.brokers: empty".to_owned());
        }
        if self.kafka.group.trim().is_empty() {
            problems.push("kafka.group: empty".to_owned());
        }
        for (key, topic, optional) in [
            ("kafka.topic", &self.kafka.topic, false),
            ("kafka.dlq_topic", &self.kafka.dlq_topic, false),
            ("kafka.alerts_topic", &self.kafka.alerts_topic, true),
            ("kafka.metrics_topic", &self.kafka.metrics_topic, true),
            ("kafka.confirm_topic", &self.kafka.confirm_topic, true),
        ] {
            let turned_off = optional && topic.is_empty();
            if !(turned_off || service::kafka_config::valid_topic(topic)) {
                problems.push(format!(
                    "{key}: {topic:?} is not a Kafka topic name (1-249 characters of A-Z a-z 0-9 . _ -)"
                ));
            }
        }
        for (key, topic) in [
            ("kafka.dlq_topic", &self.kafka.dlq_topic),
            ("kafka.alerts_topic", &self.kafka.alerts_topic),
            ("kafka.metrics_topic", &self.kafka.metrics_topic),
            ("kafka.confirm_topic", &self.kafka.confirm_topic),
        ] {
            if *topic == self.kafka.topic {
                problems.push(format!("{key}: must differ from kafka.topic"));
            }
        }
        if self.kafka.metrics_interval < Duration::from_secs(1) {
            problems.push("kafka.metrics_interval: at least 1 s".to_owned());
        }
        // Below 10 ms it would no longer coalesce; above a minute agents hold frames long.
        if !(Duration::from_millis(10)..=Duration::from_secs(60))
            .contains(&self.kafka.confirm_interval)
        {
            problems.push("kafka.confirm_interval: between 10 ms and 60 s".to_owned());
        }
        service::kafka_config::refuse_managed(
            &self.kafka.properties,
            MANAGED_KAFKA_PROPERTIES,
            "set by the ingester (its delivery guarantee or readiness depends on it)",
            &mut problems,
        );
        if !(1..=1_000_000).contains(&self.batch.rows) {
            problems.push("batch.rows: between 1 and 1000000".to_owned());
        }
        if self.batch.age < Duration::from_millis(1) || self.batch.age > Duration::from_secs(60) {
            problems.push("batch.age: between 1 ms and 60 s".to_owned());
        }
        if self.retention.days == Some(0) {
            problems
                .push("retention.days: at least 1 (leave it out to keep everything)".to_owned());
        }
        if self.alerts.data_loss_readings == 0 {
            problems.push(
                "alerts.data_loss_readings: at least 1 (0 would call every device lossy)"
                    .to_owned(),
            );
        }
        if !AlertsConfig::WINDOW_RANGE.contains(&self.alerts.data_loss_window) {
            problems.push("alerts.data_loss_window: between 1 s and 24 h".to_owned());
        }
        self.clock.check(&mut problems);
        self.log.check(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

/// librdkafka properties the ingester sets itself and will not take from the config:
/// offsets stored only after the PostgreSQL commit, no records skipped by a new group,
/// dead letters never given up on, and the statistics that feed lag and readiness.
const MANAGED_KAFKA_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "statistics.interval.ms",
];

#[cfg(test)]
mod tests {
    use figment::providers::{Format, Toml};
    use figment::Figment;

    use super::*;

    const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/cloud-ingester.toml");

    fn with_url() -> IngesterConfig {
        let mut config = IngesterConfig::default();
        config.database.url = "postgres://u:p@localhost/db".to_owned();
        config
    }

    #[test]
    fn defaults_with_a_database_url_are_valid() {
        with_url().validate().unwrap();
        let Err(ConfigError::Invalid(problems)) = IngesterConfig::default().validate() else {
            panic!("no database URL accepted");
        };
        assert!(problems[0].starts_with("database.url:"), "{problems:?}");
        assert!(problems[0].contains("DATABASE_URL"), "{problems:?}");
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        let text = std::fs::read_to_string(EXAMPLE).unwrap();
        // Read without the defaults underneath, so a key missing from the example (or
        // set to something else) shows up; only the keys without a value by default
        // (database.url, retention.days) may be absent.
        let example: IngesterConfig = Figment::from(Toml::string(&text)).extract().unwrap();
        assert_eq!(example, IngesterConfig::default());
        let written: toml::Table = toml::from_str(&text).unwrap();
        let defaults: toml::Table = toml::from_str(&toml::to_string(&example).unwrap()).unwrap();
        let keys = |table: &toml::Table| -> Vec<String> {
            table
                .iter()
                .flat_map(|(section, value)| match value.as_table() {
                    Some(inner) => inner.keys().map(|k| format!("{section}.{k}")).collect(),
                    None => vec![section.clone()],
                })
                .filter(|key| key != "database.url")
                .collect()
        };
        assert_eq!(keys(&written), keys(&defaults));
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let mut config = with_url();
        config.id = "has space".to_owned();
        config.shutdown_grace = Duration::ZERO;
        config.kafka.dlq_topic = config.kafka.topic.clone();
        config.kafka.confirm_interval = Duration::ZERO;
        config.batch.rows = 0;
        config.batch.age = Duration::from_secs(61);
        config.retention.days = Some(0);
        config.alerts.data_loss_readings = 0;
        config.alerts.data_loss_window = Duration::from_millis(500);
        config.clock.max_ahead = Duration::from_secs(2 * 24 * 3600);
        config
            .kafka
            .properties
            .insert("enable.auto.commit".to_owned(), "true".to_owned());
        config.log.level = "info,=[".to_owned();
        let Err(ConfigError::Invalid(problems)) = config.validate() else {
            panic!("invalid config accepted");
        };
        let keys: Vec<&str> = problems
            .iter()
            .map(|p| p.split(": ").next().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "id",
                "shutdown_grace",
                "kafka.dlq_topic",
                "kafka.confirm_interval",
                "kafka.properties.enable.auto.commit",
                "batch.rows",
                "batch.age",
                "retention.days",
                "alerts.data_loss_readings",
                "alerts.data_loss_window",
                "clock.max_ahead",
                "log.level"
            ]
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's signature
    fn file_conventional_variables_ingester_variables_and_flags_layer_in_that_order() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "ingester.toml",
                "[database]\nurl = \"postgres://file/db\"\n[kafka]\nbrokers = \"file:9092\"\ngroup = \"from-file\"\n[batch]\nage = \"1s\"\n",
            )?;
            jail.set_env("DATABASE_URL", "postgres://conventional/db");
            jail.set_env("KAFKA_BROKERS", "conventional:9092");
            jail.set_env("INGESTER_KAFKA__BROKERS", "prefixed:9092");
            jail.set_env("INGESTER_BATCH__ROWS", "10");
            jail.set_env("INGESTER_ALERTS__DATA_LOSS_WINDOW", "30s");
            jail.set_env("REDIS_URL", "");
            let config = IngesterConfig::load(
                Some(Path::new("ingester.toml")),
                &CliOverrides {
                    group: Some("from-flag".to_owned()),
                    batch_age: Some("5ms".to_owned()),
                    migrate: true,
                    ..CliOverrides::default()
                },
            )
            .unwrap();
            assert_eq!(config.database.url, "postgres://conventional/db");
            assert_eq!(config.kafka.brokers, "prefixed:9092");
            assert_eq!(config.kafka.group, "from-flag");
            assert_eq!(config.batch.rows, 10);
            assert_eq!(config.alerts.data_loss_window, Duration::from_secs(30));
            assert_eq!(config.batch.age, Duration::from_millis(5));
            assert!(config.database.migrate);
            assert_eq!(config.redis.url, "");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_refused_by_name() {
        for (text, named) in [
            ("[kafka]\nbroker = \"x\"\n", "broker"),
            ("[batch]\nage = \"soon\"\n", "batch.age"),
            (
                "[alerts]\ndata_loss_window = \"a while\"\n",
                "alerts.data_loss_window",
            ),
            ("[clock]\nmax_ahead = \"soon\"\n", "clock.max_ahead"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("ingester.toml");
            std::fs::write(&file, text).unwrap();
            let error = IngesterConfig::load(Some(&file), &CliOverrides::default()).unwrap_err();
            assert!(error.to_string().contains(named), "{named}: {error}");
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://telemetry:secret@127.0.0.1:5432/telemetry"),
            "postgres://telemetry:***@127.0.0.1:5432/telemetry"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        let mut config = with_url();
        config.redis.url = "rediss://:hunter2@cache:6380/0".to_owned();
        let shown = toml::to_string(&service::run::Settings::redacted(&config)).unwrap();
        assert!(
            !shown.contains("hunter2") && !shown.contains(":p@"),
            "{shown}"
        );
    }
}
