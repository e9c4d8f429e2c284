//! How iotctl reaches each service: PostgreSQL, Redis, Kafka and the MQTT broker, with
//! short timeouts (an operator waiting on a dead service wants to hear so in seconds) and
//! error messages that name the address and say what to set.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use contracts::redis::RedisKeys;
use rdkafka::ClientConfig;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::global::{Global, MqttAddr};

/// How long any one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The PostgreSQL URL, or a message saying where to give it.
pub fn database_url(global: &Global) -> Result<&str> {
    global.database_url.as_deref().ok_or_else(|| {
        anyhow!(
            "no database given: pass --database-url or set DATABASE_URL \
             (for the local stack: `set -a; . .stack/env; set +a`)"
        )
    })
}

/// A small pool (iotctl runs a handful of queries), connected before it is returned so
/// an unreachable database fails here, with its address.
pub async fn postgres(global: &Global) -> Result<PgPool> {
    let url = database_url(global)?;
    let options = PgConnectOptions::from_str(url)
        .with_context(|| format!("invalid database URL {}", service::redact::url(url)))?;
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    );
    // One direct attempt first: a pool retries until its timeout and then reports only
    // "timed out", where this says "connection refused" or "password authentication
    // failed".
    let first = tokio::time::timeout(CONNECT_TIMEOUT, options.connect())
        .await
        .map_err(|_| anyhow!("no answer within {}s", CONNECT_TIMEOUT.as_secs()))
        .and_then(|connected| connected.map_err(anyhow::Error::from))
        .with_context(|| format!("cannot connect to PostgreSQL at {target}"))?;
    first.close().await.ok();
    Ok(PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_lazy_with(options))
}

/// The Redis URL, or a message saying where to give it.
pub fn redis_url(global: &Global) -> Result<&str> {
    global.redis_url.as_deref().ok_or_else(|| {
        anyhow!(
            "no Redis given: pass --redis-url or set REDIS_URL \
             (for the local stack: `set -a; . .stack/env; set +a`)"
        )
    })
}

/// One multiplexed Redis connection, bounded in time for connecting and per command.
pub async fn redis(global: &Global) -> Result<MultiplexedConnection> {
    let url = redis_url(global)?;
    let client = redis::Client::open(url)
        .with_context(|| format!("invalid Redis URL {}", service::redact::url(url)))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(CONNECT_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .with_context(|| format!("cannot connect to Redis at {}", service::redact::url(url)))
}

/// The ingester's Redis key layout under `--redis-prefix`.
pub fn redis_keys(global: &Global) -> RedisKeys {
    RedisKeys::new(global.redis_prefix.clone())
}

/// Kafka client settings shared by every client iotctl makes.
pub fn kafka(global: &Global) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &global.kafka_brokers)
        .set("client.id", "iotctl")
        // librdkafka would otherwise keep trying for a minute before a request fails.
        .set("socket.timeout.ms", "5000");
    config
}

/// Options for a connection of `purpose` to the global options' broker: a fresh client
/// id (brokers disconnect an older session that reuses one), under the gateway id given
/// with `--mqtt-user`, and its secret from `--mqtt-password-file`.
pub fn mqtt_options(global: &Global, purpose: &str) -> Result<MqttOptions> {
    let mut options = MqttOptions::new(
        mqtt_client_id(global, purpose),
        global.mqtt.host.clone(),
        global.mqtt.port,
    );
    if let Some((user, secret)) = mqtt_credentials(global)? {
        options.set_credentials(user, secret);
    }
    Ok(options)
}

/// `--mqtt-user` and the secret in `--mqtt-password-file`, if given.
pub fn mqtt_credentials(global: &Global) -> Result<Option<(String, String)>> {
    match (&global.mqtt_user, &global.mqtt_password_file) {
        (Some(user), Some(path)) => {
            let secret = service::secret_file::read(path).context("--mqtt-password-file")?;
            Ok(Some((user.clone(), secret)))
        }
        (Some(_), None) => {
            bail!("--mqtt-user needs --mqtt-password-file (IOTCTL_MQTT_PASSWORD_FILE)")
        }
        _ => Ok(None),
    }
}

pub fn mqtt_client_id(global: &Global, purpose: &str) -> String {
    let client = format!("iotctl-{purpose}-{:08x}", rand::random::<u32>());
    match &global.mqtt_user {
        Some(user) => format!("{user}@{client}"),
        None => client,
    }
}

/// Connects to the broker and returns once it has accepted the connection (CONNACK), so
/// a refused or silent broker is an error naming its address. The caller must keep
/// polling the event loop.
pub async fn mqtt_connect(mut options: MqttOptions) -> Result<(AsyncClient, EventLoop)> {
    let (host, port) = options.broker_address();
    let addr = MqttAddr { host, port };
    options.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let connack = tokio::time::timeout(CONNECT_TIMEOUT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    match connack {
        Ok(Ok(())) => Ok((client, eventloop)),
        Ok(Err(e)) => bail!("cannot connect to the MQTT broker at {addr}: {e}"),
        Err(_) => bail!(
            "the MQTT broker at {addr} did not accept a connection within {}s",
            CONNECT_TIMEOUT.as_secs()
        ),
    }
}

/// A channel's display name and unit, from `device_channels`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    pub name: String,
    pub unit: String,
}

/// Names and units of every channel, by (device, channel number).
pub type Channels = HashMap<(String, i16), ChannelInfo>;

pub async fn channels(pool: &PgPool) -> Result<Channels> {
    let rows: Vec<(String, i16, String, String)> =
        sqlx::query_as("SELECT device_id, channel_id, name, unit FROM device_channels")
            .fetch_all(pool)
            .await
            .context("reading device_channels")?;
    Ok(rows
        .into_iter()
        .map(|(device, channel, name, unit)| ((device, channel), ChannelInfo { name, unit }))
        .collect())
}

/// The channel names when the database answers, for commands that can do without them;
/// says on stderr why numbers are shown instead.
pub async fn channels_if_available(global: &Global) -> Channels {
    if global.database_url.is_none() {
        return Channels::new();
    }
    let loaded = match postgres(global).await {
        Ok(pool) => {
            let loaded = channels(&pool).await;
            pool.close().await;
            loaded
        }
        Err(e) => Err(e),
    };
    loaded.unwrap_or_else(|e| {
        eprintln!(
            "note: channel names unavailable, showing numbers ({})",
            crate::output::error_text(&e)
        );
        Channels::new()
    })
}
