//! `iotctl alerts list|ack|resolve`: the operator's side of the alert lifecycle. The
//! ingester opens, escalates and resolves alerts from the readings; people acknowledge
//! them and resolve them by hand, here.
//!
//! A transition is one `UPDATE … WHERE state … RETURNING` (so two operators, or an
//! operator and the ingester, cannot both move the same alert), committed together with
//! its line in `system_events` (the operation log: who did what). Only then is it
//! announced the way the ingester announces its own: an `AlertEvent` record on Kafka
//! `alerts` keyed by device, and the open-alerts hash in Redis. The table is the record;
//! if Kafka or Redis fail, the change stands and the command says so.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use contracts::alerts::{AlertEvent, AlertView, Rule};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use redis::AsyncCommands;
use serde::Serialize;
use sqlx::types::chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::global::{self, Global, Outcome};
use crate::output::{self, emit, emit_json, emit_table};
use crate::services;

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Alerts, newest first: unresolved ones unless --all.
    List {
        /// Resolved alerts too.
        #[arg(long)]
        all: bool,
        /// Only this device (repeat for several).
        #[arg(long = "device", value_name = "ID", value_parser = global::device_id)]
        devices: Vec<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50, value_name = "N",
              value_parser = clap::value_parser!(i64).range(1..=100_000))]
        limit: i64,
    },
    /// Acknowledge an open alert: someone is on it.
    Ack {
        /// The alert's id (the ID column of `alerts list`).
        id: i64,
        /// Who acknowledges it.
        #[arg(long, value_name = "NAME", value_parser = global::non_blank)]
        by: String,
    },
    /// Resolve an alert by hand (open or acknowledged).
    Resolve {
        /// The alert's id (the ID column of `alerts list`).
        id: i64,
        /// Who resolves it (recorded in system_events).
        #[arg(long, value_name = "NAME", value_parser = global::non_blank)]
        by: Option<String>,
    },
}

pub async fn run(global: &Global, command: &AlertsCommand) -> Result<Outcome> {
    let pool = services::postgres(global).await?;
    let outcome = match command {
        AlertsCommand::List {
            all,
            devices,
            limit,
        } => list(global, &pool, *all, devices, *limit).await,
        AlertsCommand::Ack { id, by } => {
            change(global, &pool, *id, Transition::Acknowledge, Some(by)).await
        }
        AlertsCommand::Resolve { id, by } => {
            change(global, &pool, *id, Transition::Resolve, by.as_deref()).await
        }
    };
    pool.close().await;
    outcome
}

/// An alert row with its channel's name and unit.
#[derive(Debug, Clone, sqlx::FromRow)]
struct AlertRow {
    alert_id: i64,
    device_id: String,
    /// `None` for a device-level alert (`data_loss`).
    channel_id: Option<i16>,
    channel: Option<String>,
    unit: Option<String>,
    rule: String,
    severity: String,
    state: String,
    value: Option<f64>,
    threshold: Option<f64>,
    value_ts: Option<DateTime<Utc>>,
    message: String,
    opened_at: DateTime<Utc>,
    acknowledged_at: Option<DateTime<Utc>>,
    acknowledged_by: Option<String>,
    resolved_at: Option<DateTime<Utc>>,
    resolved_value: Option<f64>,
}

/// The columns of [`AlertRow`], over `alerts a` joined with `device_channels c`.
const COLUMNS: &str = "a.alert_id, a.device_id, a.channel_id, c.name AS channel, c.unit, a.rule, \
                       a.severity::text AS severity, a.state::text AS state, a.value, \
                       a.threshold, a.value_ts, a.message, a.opened_at, a.acknowledged_at, \
                       a.acknowledged_by, a.resolved_at, a.resolved_value";

impl AlertRow {
    /// The alert as the ingester shows it in Redis and on Kafka.
    fn view(&self) -> AlertView {
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

    fn json(&self) -> AlertJson {
        AlertJson {
            alert: self.view(),
            opened_at_ms: self.opened_at.timestamp_millis(),
            acknowledged_at_ms: self.acknowledged_at.map(|t| t.timestamp_millis()),
            acknowledged_by: self.acknowledged_by.clone(),
            resolved_at_ms: self.resolved_at.map(|t| t.timestamp_millis()),
            resolved_value: self.resolved_value,
        }
    }

    /// The channel's name, `ch3` if the channel is gone, or `device` for a device-level
    /// alert.
    fn channel_name(&self) -> String {
        match (&self.channel, self.channel_id) {
            (Some(name), _) => name.clone(),
            (None, Some(channel)) => format!("ch{channel}"),
            (None, None) => "device".to_owned(),
        }
    }

    /// The unit of `value` and `threshold`: the channel's, or the device-level rule's
    /// (`readings` for data_loss).
    fn unit(&self) -> Option<&str> {
        self.unit
            .as_deref()
            .or_else(|| Rule::from_code(&self.rule)?.unit())
    }

    /// `furnace-01 temperature high warning (905 °C, threshold 900 °C)`;
    /// `furnace-01 device data_loss warning (312 readings, threshold 1 readings)`.
    fn summary(&self) -> String {
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
    fn quantity(&self, value: f64) -> String {
        let value = output::reading(value as f32);
        match self.unit() {
            Some(unit) if !unit.is_empty() => format!("{value} {unit}"),
            _ => value,
        }
    }
}

#[derive(Debug, Serialize)]
struct AlertJson {
    #[serde(flatten)]
    alert: AlertView,
    opened_at_ms: i64,
    acknowledged_at_ms: Option<i64>,
    acknowledged_by: Option<String>,
    resolved_at_ms: Option<i64>,
    resolved_value: Option<f64>,
}

async fn list(
    global: &Global,
    pool: &PgPool,
    all: bool,
    devices: &[String],
    limit: i64,
) -> Result<Outcome> {
    let rows: Vec<AlertRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM alerts a LEFT JOIN device_channels c USING (device_id, channel_id) \
          WHERE ($1 OR a.state <> 'resolved') \
            AND (cardinality($2::text[]) = 0 OR a.device_id = ANY($2)) \
          ORDER BY a.opened_at DESC, a.alert_id DESC LIMIT $3"
    ))
    .bind(all)
    .bind(devices)
    .bind(limit)
    .fetch_all(pool)
    .await
    .context("reading alerts")?;

    if global.json {
        emit_json(&rows.iter().map(AlertRow::json).collect::<Vec<_>>());
        return Ok(Outcome::Done);
    }
    let mut table = output::table(
        &[
            "id",
            "opened",
            "device",
            "channel",
            "rule",
            "severity",
            "state",
            "value",
            "threshold",
            "ack by",
            "message",
        ],
        &[0, 7, 8],
    );
    for row in &rows {
        table.add_row(vec![
            row.alert_id.to_string(),
            output::time(&row.opened_at),
            row.device_id.clone(),
            row.channel_name(),
            row.rule.clone(),
            row.severity.clone(),
            row.state.clone(),
            row.value.map(|v| row.quantity(v)).unwrap_or_default(),
            row.threshold.map(|v| row.quantity(v)).unwrap_or_default(),
            row.acknowledged_by.clone().unwrap_or_default(),
            row.message.clone(),
        ]);
    }
    let empty = if all {
        "no alerts"
    } else {
        "no unresolved alerts (--all shows resolved ones)"
    };
    emit_table(&table, empty);
    Ok(Outcome::Done)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transition {
    Acknowledge,
    Resolve,
}

impl Transition {
    /// The `transition` of its Kafka record.
    fn code(self) -> &'static str {
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

async fn change(
    global: &Global,
    pool: &PgPool,
    id: i64,
    transition: Transition,
    by: Option<&str>,
) -> Result<Outcome> {
    let mut tx = pool.begin().await.context("starting a transaction")?;
    let sql = format!(
        "WITH a AS ({}) SELECT {COLUMNS} FROM a LEFT JOIN device_channels c \
         USING (device_id, channel_id)",
        transition.update()
    );
    let mut update = sqlx::query_as::<_, AlertRow>(&sql).bind(id);
    if transition == Transition::Acknowledge {
        update = update.bind(by);
    }
    let changed = update
        .fetch_optional(&mut *tx)
        .await
        .with_context(|| format!("updating alert {id}"))?;
    let Some(row) = changed else {
        tx.rollback().await.ok();
        return Err(refusal(pool, id, transition).await);
    };
    let who = by.map(|by| format!(" by {by}")).unwrap_or_default();
    let message = format!("alert {id} {}{who}: {}", transition.code(), row.summary());
    let details = serde_json::json!({
        "alert_id": id,
        "device_id": row.device_id,
        "by": by,
    });
    sqlx::query(
        "INSERT INTO system_events (service, level, kind, message, details) \
         VALUES ('iotctl', 'info', $1, $2, $3::jsonb)",
    )
    .bind(transition.event_kind())
    .bind(&message)
    .bind(details.to_string())
    .execute(&mut *tx)
    .await
    .context("recording the change in system_events")?;
    tx.commit()
        .await
        .with_context(|| format!("committing the change of alert {id}"))?;

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
    let (kafka, redis) = tokio::join!(to_kafka(global, &event), to_redis(global, &event));

    if global.json {
        emit_json(&ChangeJson {
            transition: transition.code(),
            alert: row.json(),
            kafka: kafka.as_ref().err().map(output::error_text),
            redis: redis.as_ref().err().map(output::error_text),
        });
    } else {
        emit(&message);
    }
    let mut problems = Vec::new();
    if let Err(e) = kafka {
        problems.push(format!(
            "its record was not sent to Kafka topic {} ({}); notifiers will not hear of it",
            global.alerts_topic,
            output::error_text(&e)
        ));
    }
    if let Err(e) = redis {
        problems.push(format!(
            "Redis was not updated ({}); the ingester rebuilds {} from the table at its \
             next start or after a Redis gap",
            output::error_text(&e),
            services::redis_keys(global).open_alerts()
        ));
    }
    if problems.is_empty() {
        return Ok(Outcome::Done);
    }
    eprintln!(
        "error: alert {id} is {} in PostgreSQL, but {}",
        transition.code(),
        problems.join("; and ")
    );
    Ok(Outcome::Failed)
}

#[derive(Serialize)]
struct ChangeJson {
    transition: &'static str,
    alert: AlertJson,
    /// Why the Kafka record was not sent, if it was not.
    kafka: Option<String>,
    /// Why Redis was not updated, if it was not.
    redis: Option<String>,
}

/// Why an alert could not make `transition`: it does not exist, or its state forbids it.
async fn refusal(pool: &PgPool, id: i64, transition: Transition) -> anyhow::Error {
    let found: Result<Option<AlertRow>, _> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM alerts a LEFT JOIN device_channels c USING (device_id, channel_id) \
          WHERE a.alert_id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await;
    let row = match found {
        Ok(Some(row)) => row,
        Ok(None) => return anyhow!("alert {id} does not exist (see `iotctl alerts list --all`)"),
        Err(e) => return anyhow!(e).context(format!("reading alert {id}")),
    };
    let when = |t: Option<DateTime<Utc>>| {
        t.map(|t| format!(" at {}", output::time(&t)))
            .unwrap_or_default()
    };
    match (transition, row.state.as_str()) {
        (Transition::Acknowledge, "acknowledged") => anyhow!(
            "alert {id} is already acknowledged (by {}{}); nothing changed",
            row.acknowledged_by.as_deref().unwrap_or("?"),
            when(row.acknowledged_at)
        ),
        (Transition::Acknowledge, "resolved") => anyhow!(
            "alert {id} is resolved{}; only open alerts can be acknowledged",
            when(row.resolved_at)
        ),
        (Transition::Resolve, "resolved") => anyhow!(
            "alert {id} is already resolved{}; nothing changed",
            when(row.resolved_at)
        ),
        (_, state) => anyhow!(
            "alert {id} is {state} and changed meanwhile; look again with `iotctl alerts list`"
        ),
    }
}

/// The record on Kafka `alerts`, keyed by device, waiting for the broker's confirmation
/// so a failure can be reported.
async fn to_kafka(global: &Global, event: &AlertEvent) -> Result<()> {
    let producer: FutureProducer = services::kafka(global)
        .set("message.timeout.ms", "10000")
        .create()
        .context("invalid Kafka settings")?;
    // A missing topic would only show as a delivery timeout; ask first, to say so.
    let topic = global.alerts_topic.clone();
    let client = producer.clone();
    let exists = tokio::task::spawn_blocking(move || {
        client
            .client()
            .fetch_metadata(Some(&topic), services::CONNECT_TIMEOUT)
            .map(|m| {
                m.topics()
                    .iter()
                    .any(|t| t.error().is_none() && !t.partitions().is_empty())
            })
    })
    .await
    .context("the metadata request did not finish")?
    .with_context(|| format!("Kafka at {}", global.kafka_brokers))?;
    if !exists {
        bail!(
            "topic {} does not exist at {}",
            global.alerts_topic,
            global.kafka_brokers
        );
    }
    let body = serde_json::to_string(event).context("encoding the alert record")?;
    let record = FutureRecord::to(&global.alerts_topic)
        .key(&event.alert.device_id)
        .payload(&body);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| anyhow!(e))
        .with_context(|| format!("Kafka at {}", global.kafka_brokers))?;
    Ok(())
}

/// The open-alerts hash: the alert's new view on acknowledgement, removed on resolution.
async fn to_redis(global: &Global, event: &AlertEvent) -> Result<()> {
    let mut redis = services::redis(global).await?;
    let key = services::redis_keys(global).open_alerts();
    let field = event.alert.alert_id;
    if event.transition == Transition::Resolve.code() {
        let _: i64 = redis.hdel(&key, field).await.context("HDEL")?;
    } else {
        let json = serde_json::to_string(&event.alert).context("encoding the alert")?;
        let _: i64 = redis.hset(&key, field, json).await.context("HSET")?;
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
