//! What every command shares, apart from the command line that lists them: the global
//! options (where the services are, how to print) with the broker address they hold, how
//! a command ends, and the value parsers of ids and names. Commands import this module,
//! never `cli`, which depends on them.

use std::fmt;

use clap::Args;

use crate::http::HttpUrl;

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

    /// Gateway id to connect to the broker as, when it authenticates (client ids become
    /// `{user}@iotctl-…`).
    #[arg(long, env = "IOTCTL_MQTT_USER", global = true, value_name = "ID", value_parser = gateway_id)]
    pub mqtt_user: Option<String>,

    /// File holding that gateway's secret (mode 0600): never on the command line.
    #[arg(
        long,
        env = "IOTCTL_MQTT_PASSWORD_FILE",
        global = true,
        value_name = "PATH",
        requires = "mqtt_user"
    )]
    pub mqtt_password_file: Option<std::path::PathBuf>,

    /// First level of the MQTT topic tree ({prefix}/{site}/{line}/{device}/{kind}).
    #[arg(long, default_value = "plant", global = true, value_name = "PREFIX", value_parser = topic_prefix)]
    pub mqtt_prefix: String,

    /// The bridge's metrics and health endpoint.
    #[arg(long, default_value = "http://127.0.0.1:9101", global = true, value_name = "URL", value_parser = HttpUrl::parse)]
    pub bridge_metrics: HttpUrl,

    /// The ingester's metrics and health endpoint.
    #[arg(long, default_value = "http://127.0.0.1:9102", global = true, value_name = "URL", value_parser = HttpUrl::parse)]
    pub ingester_metrics: HttpUrl,

    /// The plant console (its pages and /readyz).
    #[arg(long, default_value = "http://127.0.0.1:8080", global = true, value_name = "URL", value_parser = HttpUrl::parse)]
    pub console_url: HttpUrl,

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

/// `host:port` of an MQTT broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttAddr {
    pub host: String,
    pub port: u16,
}

impl MqttAddr {
    pub fn parse(value: &str) -> Result<Self, String> {
        let (host, port) = value
            .rsplit_once(':')
            .ok_or_else(|| format!("{value:?} is not host:port"))?;
        // [::1]:1883 names an IPv6 host; the brackets are not part of the address.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{value:?} has no host"));
        }
        let port = port
            .parse()
            .map_err(|_| format!("{port:?} is not a port number"))?;
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for MqttAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
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

/// Gateway ids follow the device naming rule: each is an MQTT user name and client id.
pub fn gateway_id(value: &str) -> Result<String, String> {
    protocol::validate_id(value)
        .map(|()| value.to_owned())
        .map_err(|e| format!("not a gateway id: {e}"))
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
    use super::*;

    #[test]
    fn mqtt_addresses() {
        assert_eq!(
            MqttAddr::parse("127.0.0.1:1883"),
            Ok(MqttAddr {
                host: "127.0.0.1".into(),
                port: 1883
            })
        );
        let v6 = MqttAddr::parse("[::1]:1884").unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "[::1]:1884");
        assert!(MqttAddr::parse("localhost").is_err());
        assert!(MqttAddr::parse(":1883").is_err());
        assert!(MqttAddr::parse("host:99999").is_err());
    }
}
