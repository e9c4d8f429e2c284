//! Alert transitions, once committed, made visible: a JSON record per transition on the
//! Kafka `alerts` topic (keyed by device, for notifiers), and the set of unresolved
//! alerts in Redis (`{prefix}:alerts:open`, for dashboards).
//!
//! The database is the record; these are notifications. A crash between the commit and
//! the Kafka delivery loses that notification (the row is in `alerts`); Redis is rebuilt
//! from the database at start and after Redis comes back.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::types::chrono::{DateTime, Utc};
use sqlx::PgPool;

pub use contracts::alerts::{AlertEvent, AlertView};

use super::rules::RuleBook;
use super::sql::Applied;
use super::{Change, Rule};
use crate::redis_sink::{RedisSink, RedisSinkError};

/// The record of a committed transition.
pub fn event(applied: &Applied, rules: &RuleBook, at_ms: i64) -> AlertEvent {
    let t = &applied.transition;
    let (channel, unit) = match t.key.channel_id {
        Some(channel) => rules
            .get(&t.key.device_id, channel)
            .map(|r| (r.name.clone(), r.unit.clone()))
            .unwrap_or_default(),
        None => (String::new(), unit_of(t.key.rule).to_owned()),
    };
    AlertEvent {
        transition: t.change.code(),
        at_ms,
        alert: AlertView {
            alert_id: applied.alert_id,
            device_id: t.key.device_id.clone(),
            channel_id: t.key.channel_id,
            channel,
            unit,
            rule: t.key.rule.code().to_owned(),
            severity: applied.severity.clone(),
            state: applied.state.clone(),
            value: t.value,
            threshold: t.threshold,
            value_ts_ms: Some(t.ts_ms),
            message: t.message.clone(),
        },
    }
}

/// The unit of a device-level rule's values ("" for the channel rules, whose unit is
/// their channel's).
fn unit_of(rule: Rule) -> &'static str {
    rule.unit().unwrap_or_default()
}

/// Sends each event to `topic` (keyed by device) without waiting for the deliveries;
/// a failed delivery is logged. Waits only while the producer's queue is full.
pub async fn to_kafka(
    producer: &FutureProducer,
    topic: &str,
    events: &[AlertEvent],
) -> Result<(), KafkaError> {
    for event in events {
        let body = serde_json::to_string(event).unwrap_or_default();
        let mut record = FutureRecord::to(topic)
            .key(&event.alert.device_id)
            .payload(&body);
        let delivery = loop {
            match producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((e, back)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(e),
            }
        };
        let alert_id = event.alert.alert_id;
        tokio::spawn(async move {
            if let Ok(Err((e, _))) = delivery.await {
                tracing::warn!(alert_id, "alert record not delivered to Kafka: {e}");
            }
        });
    }
    Ok(())
}

/// Reflects each event in the open-alerts hash: set on open and escalation, removed on
/// resolution.
pub async fn to_redis(redis: &RedisSink, events: &[AlertEvent]) -> Result<(), RedisSinkError> {
    for event in events {
        if event.transition == Change::Resolved.code() {
            redis.clear_alert(event.alert.alert_id).await?;
        } else {
            let json = serde_json::to_string(&event.alert).unwrap_or_default();
            redis.set_open_alert(event.alert.alert_id, &json).await?;
        }
    }
    Ok(())
}

type OpenRow = (
    i64,
    String,
    Option<i16>,
    Option<String>,
    Option<String>,
    String,
    String,
    String,
    Option<f64>,
    Option<f64>,
    Option<DateTime<Utc>>,
    String,
);

/// Every unresolved alert as it stands in the database, to rebuild Redis from.
pub async fn open_alerts(pool: &PgPool) -> Result<Vec<AlertView>, sqlx::Error> {
    let rows: Vec<OpenRow> = sqlx::query_as(
        "SELECT a.alert_id, a.device_id, a.channel_id, c.name, c.unit, a.rule, \
                a.severity::text, a.state::text, a.value, a.threshold, a.value_ts, a.message \
           FROM alerts a LEFT JOIN device_channels c USING (device_id, channel_id) \
          WHERE a.state <> 'resolved'",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(
                alert_id,
                device_id,
                channel_id,
                name,
                unit,
                rule,
                severity,
                state,
                value,
                threshold,
                ts,
                message,
            )| {
                AlertView {
                    alert_id,
                    device_id,
                    channel_id,
                    channel: name.unwrap_or_default(),
                    unit: unit
                        .unwrap_or_else(|| Rule::from_code(&rule).map_or("", unit_of).to_owned()),
                    rule,
                    severity,
                    state,
                    value,
                    threshold,
                    value_ts_ms: ts.map(|ts| ts.timestamp_millis()),
                    message,
                }
            },
        )
        .collect())
}

#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    #[error("reading the open alerts from PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Redis(#[from] RedisSinkError),
}

/// Replaces Redis's open-alert hash with the database's unresolved alerts; returns how
/// many there are.
pub async fn resync_redis(pool: &PgPool, redis: &RedisSink) -> Result<usize, ResyncError> {
    let open = open_alerts(pool).await?;
    let fields: Vec<(i64, String)> = open
        .iter()
        .map(|alert| {
            (
                alert.alert_id,
                serde_json::to_string(alert).unwrap_or_default(),
            )
        })
        .collect();
    redis.replace_open_alerts(&fields).await?;
    Ok(fields.len())
}
