//! The operator's side of the alert lifecycle. The ingester opens, escalates and
//! resolves alerts from the readings; people acknowledge them and resolve them by hand,
//! through `iotctl alerts` or the console, both with this code.
//!
//! A transition is one `UPDATE … WHERE state … RETURNING` (so two operators, or an
//! operator and the ingester, cannot both move the same alert), committed together with
//! its line in `system_events` (the operation log: who did what, and why). Only then is
//! it announced the way the ingester announces its own: an `AlertEvent` record on Kafka
//! `alerts` keyed by device, and the open-alerts hash in Redis. The table is the record;
//! if Kafka or Redis fail, the change stands and the caller says so.

use std::time::Duration;

use contracts::alerts::{AlertEvent, AlertView, Rule};
use contracts::redis::RedisKeys;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use redis::AsyncCommands;
use sqlx::types::chrono::{DateTime, Utc};
use sqlx::PgPool;

/// An alert row with its channel's name and unit.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AlertRow {
    pub alert_id: i64,
    pub device_id: String,
    /// `None` for a device-level alert (`data_loss`).
    pub channel_id: Option<i16>,
    pub channel: Option<String>,
    pub unit: Option<String>,
    pub rule: String,
    pub severity: String,
    pub state: String,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    pub value_ts: Option<DateTime<Utc>>,
    pub message: String,
    pub opened_at: DateTime<Utc>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_value: Option<f64>,
}

/// The columns of [`AlertRow`], over `alerts a` joined with `device_channels c`.
const COLUMNS: &str = "a.alert_id, a.device_id, a.channel_id, c.name AS channel, c.unit, a.rule, \
                       a.severity::text AS severity, a.state::text AS state, a.value, \
                       a.threshold, a.value_ts, a.message, a.opened_at, a.acknowledged_at, \
                       a.acknowledged_by, a.resolved_at, a.resolved_value";

impl AlertRow {
    /// The alert as the ingester shows it in Redis and on Kafka.
    pub fn view(&self) -> AlertView {
        AlertView {
            alert_id: self.alert_id,
            device_id: self.device_id.clone(),
            channel_id: self.channel_id,
            channel: self.channel.clone().unwrap_or_default(),
            unit: self.unit().unwrap_or_default().to_owned(),
            rule: self.rule.clone(),
            severity: self.severity.clone(),
            state: self.state.clone(),
            value: self.value,
            threshold: self.threshold,
            value_ts_ms: self.value_ts.map(|t| t.timestamp_millis()),
            message: self.message.clone(),
        }
    }

    /// The channel's name, `ch3` if the channel is gone, or `device` for a device-level
    /// alert.
    pub fn channel_name(&self) -> String {
        match (&self.channel, self.channel_id) {
            (Some(name), _) => name.clone(),
            (None, Some(channel)) => format!("ch{channel}"),
            (None, None) => "device".to_owned(),
        }
    }

    /// The unit of `value` and `threshold`: the channel's, or the device-level rule's
    /// (`readings` for data_loss).
    pub fn unit(&self) -> Option<&str> {
        self.unit
            .as_deref()
            .or_else(|| Rule::from_code(&self.rule)?.unit())
    }

    /// `furnace-01 temperature high warning (905 °C, threshold 900 °C)`;
    /// `furnace-01 device data_loss warning (312 readings, threshold 1 readings)`.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "{} {} {} {}",
            self.device_id,
            self.channel_name(),
            self.rule,
            self.severity
        );
        if let Some(value) = self.value {
            text.push_str(&format!(" ({}", self.quantity(value)));
            if let Some(threshold) = self.threshold {
                text.push_str(&format!(", threshold {}", self.quantity(threshold)));
            }
            text.push(')');
        }
        text
    }

    /// A value with its unit. Readings are `f32` at the source: shown as such, they read
    /// as measured (26.717482, not 26.71748161315918).
    pub fn quantity(&self, value: f64) -> String {
        let value = value as f32;
        let value = if value.is_finite() {
            value.to_string()
        } else {
            "NaN".to_owned()
        };
        match self.unit() {
            Some(unit) if !unit.is_empty() => format!("{value} {unit}"),
            _ => value,
        }
    }
}

/// Which alerts [`list`] returns, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// Resolved alerts too.
    pub resolved: bool,
    /// Only these states (`open`, `acknowledged`, `resolved`); empty: any allowed by
    /// `resolved`.
    pub states: Vec<String>,
    /// Only these devices; empty: all.
    pub devices: Vec<String>,
    /// Only these severities (`warning`, `critical`); empty: all.
    pub severities: Vec<String>,
    /// Only alerts opened at or after this time.
    pub since: Option<DateTime<Utc>>,
    pub limit: i64,
}

impl Default for Filter {
    fn default() -> Self {
        Self {
            resolved: false,
            states: Vec::new(),
            devices: Vec::new(),
            severities: Vec::new(),
            since: None,
            limit: 50,
        }
    }
}

pub async fn list(pool: &PgPool, filter: &Filter) -> sqlx::Result<Vec<AlertRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM alerts a LEFT JOIN device_channels c USING (device_id, channel_id) \
          WHERE ($1 OR a.state <> 'resolved') \
            AND (cardinality($2::text[]) = 0 OR a.state::text = ANY($2)) \
            AND (cardinality($3::text[]) = 0 OR a.device_id = ANY($3)) \
            AND (cardinality($4::text[]) = 0 OR a.severity::text = ANY($4)) \
            AND ($5::timestamptz IS NULL OR a.opened_at >= $5) \
          ORDER BY a.opened_at DESC, a.alert_id DESC LIMIT $6"
    ))
    .bind(filter.resolved)
    .bind(&filter.states)
    .bind(&filter.devices)
    .bind(&filter.severities)
    .bind(filter.since)
    .bind(filter.limit)
    .fetch_all(pool)
    .await
}

/// One alert by id, if it exists.
pub async fn get(pool: &PgPool, id: i64) -> sqlx::Result<Option<AlertRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM alerts a LEFT JOIN device_channels c USING (device_id, channel_id) \
          WHERE a.alert_id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Acknowledge,
    Resolve,
}

impl Transition {
    /// The `transition` of its Kafka record.
    pub fn code(self) -> &'static str {
        match self {
            Transition::Acknowledge => "acknowledged",
            Transition::Resolve => "resolved",
        }
    }

    /// The `system_events` kind.
    fn event_kind(self) -> &'static str {
        match self {
            Transition::Acknowledge => "alert_acknowledged",
            Transition::Resolve => "alert_resolved",
        }
    }

    /// The UPDATE, guarded by the states it may start from.
    fn update(self) -> &'static str {
        match self {
            Transition::Acknowledge => {
                "UPDATE alerts SET state = 'acknowledged', acknowledged_at = now(), \
                        acknowledged_by = $2 \
                  WHERE alert_id = $1 AND state = 'open' RETURNING *"
            }
            Transition::Resolve => {
                "UPDATE alerts SET state = 'resolved', resolved_at = now() \
                  WHERE alert_id = $1 AND state <> 'resolved' RETURNING *"
            }
        }
    }
}

/// Who makes a change, through which face, and why: all of it goes into
/// `system_events`.
#[derive(Debug, Clone, PartialEq)]
pub struct Actor<'a> {
    /// The `service` of the `system_events` row: `iotctl`, `console`.
    pub service: &'static str,
    /// The person; required to acknowledge.
    pub by: Option<&'a str>,
    /// Their note, if any.
    pub note: Option<&'a str>,
}

/// A committed change, to be announced.
#[derive(Debug, Clone)]
pub struct Changed {
    pub row: AlertRow,
    /// The `system_events` message: `alert 7 acknowledged by ana: furnace-01 …`.
    pub message: String,
    /// The Kafka `alerts` record and Redis update that announce it.
    pub event: AlertEvent,
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The alert does not exist or its state forbids the change; the text says which,
    /// for a person.
    #[error("{0}")]
    Refused(String),
    #[error("{what}: {source}")]
    Database {
        what: String,
        #[source]
        source: sqlx::Error,
    },
}

fn database(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> ChangeError {
    let what = what.into();
    move |source| ChangeError::Database { what, source }
}

/// Makes `transition` on alert `id` and records it in `system_events`, in one
/// transaction. Announcing it is the caller's next step ([`announce_on_kafka`],
/// [`announce_in_redis`]).
pub async fn change(
    pool: &PgPool,
    id: i64,
    transition: Transition,
    actor: &Actor<'_>,
) -> Result<Changed, ChangeError> {
    if transition == Transition::Acknowledge && actor.by.is_none() {
        return Err(ChangeError::Refused(format!(
            "alert {id}: acknowledging needs the name of who acknowledges it"
        )));
    }
    let mut tx = pool
        .begin()
        .await
        .map_err(database("starting a transaction"))?;
    let sql = format!(
        "WITH a AS ({}) SELECT {COLUMNS} FROM a LEFT JOIN device_channels c \
         USING (device_id, channel_id)",
        transition.update()
    );
    let mut update = sqlx::query_as::<_, AlertRow>(&sql).bind(id);
    if transition == Transition::Acknowledge {
        update = update.bind(actor.by);
    }
    let changed = update
        .fetch_optional(&mut *tx)
        .await
        .map_err(database(format!("updating alert {id}")))?;
    let Some(row) = changed else {
        tx.rollback().await.ok();
        return Err(refusal(pool, id, transition).await);
    };
    let who = actor.by.map(|by| format!(" by {by}")).unwrap_or_default();
    let why = actor
        .note
        .map(|note| format!(" ({note})"))
        .unwrap_or_default();
    let message = format!(
        "alert {id} {}{who}{why}: {}",
        transition.code(),
        row.summary()
    );
    let details = serde_json::json!({
        "alert_id": id,
        "device_id": row.device_id,
        "by": actor.by,
        "note": actor.note,
    });
    sqlx::query(
        "INSERT INTO system_events (service, level, kind, message, details) \
         VALUES ($1, 'info', $2, $3, $4::jsonb)",
    )
    .bind(actor.service)
    .bind(transition.event_kind())
    .bind(&message)
    .bind(details.to_string())
    .execute(&mut *tx)
    .await
    .map_err(database("recording the change in system_events"))?;
    tx.commit()
        .await
        .map_err(database(format!("committing the change of alert {id}")))?;

    let at = match transition {
        Transition::Acknowledge => row.acknowledged_at,
        Transition::Resolve => row.resolved_at,
    };
    let mut view = row.view();
    if transition == Transition::Resolve {
        // A record's value is the reading concerned: for a resolution, the one that
        // cleared it, and a resolution by hand has none.
        view.value = row.resolved_value;
        view.value_ts_ms = None;
    }
    let event = AlertEvent {
        transition: transition.code(),
        at_ms: at.map_or_else(service::clock::now_ms_i64, |t| t.timestamp_millis()),
        alert: view,
    };
    Ok(Changed {
        row,
        message,
        event,
    })
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| format!(" at {}", t.format("%Y-%m-%dT%H:%M:%S%.3fZ")))
        .unwrap_or_default()
}

/// Why an alert could not make `transition`: it does not exist, or its state forbids it.
async fn refusal(pool: &PgPool, id: i64, transition: Transition) -> ChangeError {
    let row = match get(pool, id).await {
        Ok(Some(row)) => row,
        Ok(None) => return ChangeError::Refused(format!("alert {id} does not exist")),
        Err(e) => return database(format!("reading alert {id}"))(e),
    };
    ChangeError::Refused(match (transition, row.state.as_str()) {
        (Transition::Acknowledge, "acknowledged") => format!(
            "alert {id} is already acknowledged (by {}{}); nothing changed",
            row.acknowledged_by.as_deref().unwrap_or("?"),
            time(row.acknowledged_at)
        ),
        (Transition::Acknowledge, "resolved") => format!(
            "alert {id} is resolved{}; only open alerts can be acknowledged",
            time(row.resolved_at)
        ),
        (Transition::Resolve, "resolved") => format!(
            "alert {id} is already resolved{}; nothing changed",
            time(row.resolved_at)
        ),
        (_, state) => format!("alert {id} is {state} and changed meanwhile; look again"),
    })
}

/// Why an announcement did not go out.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("topic {0} does not exist")]
    NoTopic(String),
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("reading the alert again: {0}")]
    Database(#[from] sqlx::Error),
    #[error("encoding the record: {0}")]
    Encoding(#[from] serde_json::Error),
    #[error("the Kafka metadata request did not finish: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// The record on Kafka `topic`, keyed by device, waiting up to `timeout` for the
/// broker's confirmation so that a failure can be reported.
pub async fn announce_on_kafka(
    producer: &FutureProducer,
    topic: &str,
    event: &AlertEvent,
    timeout: Duration,
) -> Result<(), AnnounceError> {
    // A missing topic would only show as a delivery timeout; ask first, to say so.
    let client = producer.clone();
    let name = topic.to_owned();
    let exists = tokio::task::spawn_blocking(move || {
        client
            .client()
            .fetch_metadata(Some(&name), timeout)
            .map(|m| {
                m.topics()
                    .iter()
                    .any(|t| t.error().is_none() && !t.partitions().is_empty())
            })
    })
    .await??;
    if !exists {
        return Err(AnnounceError::NoTopic(topic.to_owned()));
    }
    let body = serde_json::to_string(event)?;
    let record = FutureRecord::to(topic)
        .key(&event.alert.device_id)
        .payload(&body);
    producer
        .send(record, timeout)
        .await
        .map_err(|(e, _)| AnnounceError::Kafka(e))?;
    Ok(())
}

/// The open-alerts hash: the alert's new view on acknowledgement, removed on resolution.
/// After writing an acknowledgement it reads the row again: had the ingester resolved
/// the alert meanwhile, its removal from the hash may have come first, and the alert
/// must not stay there as open. (The ingester removes it only after its commit, so a
/// read that does not see the resolution is followed by its removal.)
pub async fn announce_in_redis<C>(
    redis: &mut C,
    keys: &RedisKeys,
    event: &AlertEvent,
    pool: &PgPool,
) -> Result<(), AnnounceError>
where
    C: redis::aio::ConnectionLike + Send + Sync,
{
    let key = keys.open_alerts();
    let field = event.alert.alert_id;
    if event.transition == Transition::Resolve.code() {
        let _: i64 = redis.hdel(&key, field).await?;
    } else {
        let json = serde_json::to_string(&event.alert)?;
        let _: i64 = redis.hset(&key, field, json).await?;
        let resolved = get(pool, field)
            .await?
            .is_none_or(|row| row.state == "resolved");
        if resolved {
            let _: i64 = redis.hdel(&key, field).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_name_the_reading() {
        let t = DateTime::from_timestamp_millis(1_764_000_000_000).unwrap();
        let row = AlertRow {
            alert_id: 7,
            device_id: "furnace-01".into(),
            channel_id: Some(0),
            channel: Some("temperature".into()),
            unit: Some("°C".into()),
            rule: "high".into(),
            severity: "warning".into(),
            state: "open".into(),
            value: Some(905.5),
            threshold: Some(900.0),
            value_ts: Some(t),
            message: String::new(),
            opened_at: t,
            acknowledged_at: None,
            acknowledged_by: None,
            resolved_at: None,
            resolved_value: None,
        };
        assert_eq!(
            row.summary(),
            "furnace-01 temperature high warning (905.5 °C, threshold 900 °C)"
        );
        let dropout = AlertRow {
            channel: None,
            rule: "dropout".into(),
            value: None,
            threshold: None,
            ..row
        };
        assert_eq!(dropout.summary(), "furnace-01 ch0 dropout warning");
        assert_eq!(dropout.view().value_ts_ms, Some(1_764_000_000_000));
        let data_loss = AlertRow {
            channel_id: None,
            unit: None,
            rule: "data_loss".into(),
            value: Some(312.0),
            threshold: Some(1.0),
            ..dropout
        };
        assert_eq!(
            data_loss.summary(),
            "furnace-01 device data_loss warning (312 readings, threshold 1 readings)"
        );
        let view = data_loss.view();
        assert_eq!((view.channel_id, view.unit.as_str()), (None, "readings"));
    }
}
