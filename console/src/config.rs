//! The console's configuration, layered as every binary's is (defaults, TOML file, the
//! conventional `DATABASE_URL`, `REDIS_URL` and `KAFKA_BROKERS`, `CONSOLE_*` variables,
//! flags) and checked as a whole, each problem naming its key.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use service::config::{ConfigError, Flags, Layers};
use service::http::HttpConfig;
use service::logging::LogConfig;
use service::redact::url as redact_url;

pub use crate::auth::User;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub kafka: KafkaConfig,
    pub live: LiveConfig,
    pub pipeline: PipelineConfig,
    pub access: AccessConfig,
    /// The pages, `/events`, `/metrics`, `/livez` and `/readyz`, on one port.
    pub http: HttpConfig,
    pub log: LogConfig,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            database: DatabaseConfig::default(),
            redis: RedisConfig::default(),
            kafka: KafkaConfig::default(),
            live: LiveConfig::default(),
            pipeline: PipelineConfig::default(),
            access: AccessConfig::default(),
            http: HttpConfig::on_port(8080),
            log: LogConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// PostgreSQL URL: devices, history, alerts. Required.
    pub url: String,
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            max_connections: 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Redis URL: the live values the ingester keeps. Required.
    pub url: String,
    /// The ingester's key prefix.
    pub prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            prefix: contracts::redis::DEFAULT_PREFIX.to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Where an acknowledgement or resolution is announced, as iotctl announces it.
    pub brokers: String,
    pub alerts_topic: String,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "localhost:9092".to_owned(),
            alerts_topic: protocol::kafka::ALERTS.name.to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveConfig {
    /// How often the one shared reader looks at Redis for every viewer.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How often the plant's devices and thresholds are read again from PostgreSQL.
    #[serde(with = "humantime_serde")]
    pub plant_refresh: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(500),
            plant_refresh: Duration::from_secs(30),
        }
    }
}

/// Where the pipeline page hears from the pipeline's parts.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// How often the figures are gathered, for every viewer at once.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// The bridge's and the ingester's `/metrics`, `/readyz` (base URLs).
    pub bridge_metrics: String,
    pub ingester_metrics: String,
    /// The broker the agents publish their retained status to.
    pub mqtt_host: String,
    pub mqtt_port: u16,
    /// The console's gateway id, for a broker that authenticates (`iotctl gateways add
    /// console`); its client ids are `{mqtt_user}@console-…`.
    pub mqtt_user: String,
    /// That gateway's secret, in a file only the console's user may read.
    pub mqtt_password_file: Option<std::path::PathBuf>,
    pub topic_prefix: String,
    /// Dead letters to show the latest of; empty: none.
    pub dlq_topic: String,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            bridge_metrics: "http://127.0.0.1:9101".to_owned(),
            ingester_metrics: "http://127.0.0.1:9102".to_owned(),
            mqtt_host: "127.0.0.1".to_owned(),
            mqtt_port: 1883,
            mqtt_user: String::new(),
            mqtt_password_file: None,
            topic_prefix: "plant".to_owned(),
            dlq_topic: protocol::kafka::SENSORS_DLQ.name.to_owned(),
        }
    }
}

/// Who may see and who may act.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Viewing {
    /// Anyone on the plant network may look; acting needs a login.
    Open,
    /// Every page needs a login.
    Login,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    pub viewing: Viewing,
    /// The people who may acknowledge and resolve alerts. None: nobody can.
    pub users: Vec<User>,
    /// How long a login lasts.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            viewing: Viewing::Open,
            users: Vec::new(),
            session_ttl: Duration::from_secs(12 * 3600),
        }
    }
}

/// The flags of `console`, each overriding one key.
#[derive(Debug, Default)]
pub struct CliOverrides {
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    pub kafka_brokers: Option<String>,
    pub http_listen: Option<std::net::SocketAddr>,
}

impl CliOverrides {
    fn flags(&self) -> Flags {
        Flags::default()
            .set("database.url", self.database_url.as_ref())
            .set("redis.url", self.redis_url.as_ref())
            .set("kafka.brokers", self.kafka_brokers.as_ref())
            .set("http.listen", self.http_listen.map(|a| a.to_string()))
    }
}

impl ConsoleConfig {
    pub fn load(file: Option<&Path>, overrides: &CliOverrides) -> Result<Self, ConfigError> {
        let config: ConsoleConfig = Layers::defaults(ConsoleConfig::default())
            .optional_file(file)
            .conventional_env()
            .prefixed_env("CONSOLE_")
            .flags(overrides.flags())
            .extract()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot; collects every problem so one edit fixes them all.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        service::config::check_database_url(&self.database.url, "CONSOLE_", &mut problems);
        if !(1..=20).contains(&self.database.max_connections) {
            problems.push("database.max_connections: between 1 and 20".to_owned());
        }
        let url = &self.redis.url;
        if url.is_empty() {
            problems.push(
                "redis.url: required (set REDIS_URL, CONSOLE_REDIS__URL or --redis-url)".to_owned(),
            );
        } else if redis::Client::open(url.as_str()).is_err() {
            problems.push(format!(
                "redis.url: {:?} is not a redis:// URL",
                redact_url(url)
            ));
        }
        if self.redis.prefix.is_empty() {
            problems.push("redis.prefix: must not be empty".to_owned());
        }
        if self.kafka.brokers.trim().is_empty() {
            problems.push("kafka.brokers: required".to_owned());
        }
        if !service::kafka_config::valid_topic(&self.kafka.alerts_topic) {
            problems.push(format!(
                "kafka.alerts_topic: {:?} is not a Kafka topic name",
                self.kafka.alerts_topic
            ));
        }
        if !(Duration::from_millis(50)..=Duration::from_secs(10)).contains(&self.live.interval) {
            problems.push("live.interval: between 50 ms and 10 s".to_owned());
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.live.plant_refresh)
        {
            problems.push("live.plant_refresh: between 1 s and 1 h".to_owned());
        }
        let pipeline = &self.pipeline;
        if !(Duration::from_millis(500)..=Duration::from_secs(600)).contains(&pipeline.interval) {
            problems.push("pipeline.interval: between 500 ms and 10 min".to_owned());
        }
        for (key, url) in [
            ("pipeline.bridge_metrics", &pipeline.bridge_metrics),
            ("pipeline.ingester_metrics", &pipeline.ingester_metrics),
        ] {
            if !url.starts_with("http://") || url.len() <= "http://".len() {
                problems.push(format!("{key}: {url:?} is not an http:// URL"));
            }
        }
        if pipeline.mqtt_host.trim().is_empty() || pipeline.mqtt_port == 0 {
            problems.push("pipeline.mqtt_host, pipeline.mqtt_port: a host and a port".to_owned());
        }
        match (pipeline.mqtt_user.is_empty(), &pipeline.mqtt_password_file) {
            (true, Some(_)) => problems
                .push("pipeline.mqtt_user: required with pipeline.mqtt_password_file".to_owned()),
            (false, None) => problems
                .push("pipeline.mqtt_password_file: required with pipeline.mqtt_user".to_owned()),
            (false, Some(path)) => {
                if let Err(e) = protocol::validate_id(&pipeline.mqtt_user) {
                    problems.push(format!("pipeline.mqtt_user: {:?} {e}", pipeline.mqtt_user));
                }
                if let Err(e) = service::secret_file::read(path) {
                    problems.push(format!("pipeline.mqtt_password_file: {e}"));
                }
            }
            (true, None) => {}
        }
        if let Err(e) = protocol::validate_id(&pipeline.topic_prefix) {
            problems.push(format!(
                "pipeline.topic_prefix: {:?} {e}",
                pipeline.topic_prefix
            ));
        }
        if !pipeline.dlq_topic.is_empty()
            && !service::kafka_config::valid_topic(&pipeline.dlq_topic)
        {
            problems.push(format!(
                "pipeline.dlq_topic: {:?} is not a Kafka topic name",
                pipeline.dlq_topic
            ));
        }
        if !(Duration::from_secs(60)..=Duration::from_secs(30 * 86400))
            .contains(&self.access.session_ttl)
        {
            problems.push("access.session_ttl: between 1 min and 30 days".to_owned());
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, user) in self.access.users.iter().enumerate() {
            if user.name.trim().is_empty() || user.name.chars().any(char::is_control) {
                problems.push(format!("access.users[{i}].name: must be a printable name"));
            } else if !names.insert(user.name.as_str()) {
                problems.push(format!(
                    "access.users[{i}].name: {:?} appears twice",
                    user.name
                ));
            }
            if let Err(e) = crate::auth::parse_hash(&user.password_hash) {
                problems.push(format!(
                    "access.users[{i}].password_hash: {e} (make one with `console hash-password`)"
                ));
            }
        }
        if self.access.viewing == Viewing::Login && self.access.users.is_empty() {
            problems.push(
                "access.viewing: \"login\" needs at least one entry in access.users".to_owned(),
            );
        }
        let mut log = Vec::new();
        self.log.check(&mut log);
        problems.extend(log);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

impl service::run::Settings for ConsoleConfig {
    fn summary(&self) -> String {
        format!(
            "plant console on http://{} from PostgreSQL {} and Redis {} (prefix {}), {} user(s), viewing {}",
            self.http.listen,
            redact_url(&self.database.url),
            redact_url(&self.redis.url),
            self.redis.prefix,
            self.access.users.len(),
            match self.access.viewing {
                Viewing::Open => "open",
                Viewing::Login => "after login",
            }
        )
    }

    fn redacted(&self) -> Self {
        let mut shown = self.clone();
        shown.database.url = redact_url(&shown.database.url);
        // Password hashes stay: the file holds them as they are, and they are no
        // password.
        shown.redis.url = redact_url(&shown.redis.url);
        shown
    }

    fn log(&self) -> &LogConfig {
        &self.log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/console.toml");
        let example: ConsoleConfig = Layers::defaults(ConsoleConfig::default())
            .file(&path)
            .extract()
            .unwrap();
        assert_eq!(example, ConsoleConfig::default());
    }

    #[test]
    fn every_problem_names_its_key() {
        let mut config = ConsoleConfig::default();
        config.database.url = "mysql://x".into();
        config.redis.url = "redis://127.0.0.1".into();
        config.kafka.alerts_topic = "bad topic".into();
        config.access.users = vec![
            User {
                name: "ana".into(),
                password_hash: "plain".into(),
            },
            User {
                name: "ana".into(),
                password_hash: crate::auth::hash_password("long enough").unwrap(),
            },
        ];
        let Err(ConfigError::Invalid(problems)) = config.validate() else {
            panic!("an invalid configuration passed");
        };
        let keys: Vec<&str> = problems
            .iter()
            .map(|p| p.split(':').next().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "database.url",
                "kafka.alerts_topic",
                "access.users[0].password_hash",
                "access.users[1].name"
            ],
            "{problems:?}"
        );
    }
}
