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

use anyhow::{anyhow, Context, Result};
use clap::Subcommand;
use operations::alerts::{self as ops, Actor, AlertRow, ChangeError, Filter, Transition};
use rdkafka::producer::FutureProducer;
use serde::Serialize;
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
        /// Why, or what is being done (recorded in system_events).
        #[arg(long, value_name = "TEXT", value_parser = global::non_blank)]
        note: Option<String>,
    },
    /// Resolve an alert by hand (open or acknowledged).
    Resolve {
        /// The alert's id (the ID column of `alerts list`).
        id: i64,
        /// Who resolves it (recorded in system_events).
        #[arg(long, value_name = "NAME", value_parser = global::non_blank)]
        by: Option<String>,
        /// Why, or what was done (recorded in system_events).
        #[arg(long, value_name = "TEXT", value_parser = global::non_blank)]
        note: Option<String>,
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
        AlertsCommand::Ack { id, by, note } => {
            let actor = Actor {
                service: "iotctl",
                by: Some(by),
                note: note.as_deref(),
            };
            change(global, &pool, *id, Transition::Acknowledge, &actor).await
        }
        AlertsCommand::Resolve { id, by, note } => {
            let actor = Actor {
                service: "iotctl",
                by: by.as_deref(),
                note: note.as_deref(),
            };
            change(global, &pool, *id, Transition::Resolve, &actor).await
        }
    };
    pool.close().await;
    outcome
}

/// An alert as `--json` shows it.
fn json(row: &AlertRow) -> AlertJson {
    AlertJson {
        alert: row.view(),
        opened_at_ms: row.opened_at.timestamp_millis(),
        acknowledged_at_ms: row.acknowledged_at.map(|t| t.timestamp_millis()),
        acknowledged_by: row.acknowledged_by.clone(),
        resolved_at_ms: row.resolved_at.map(|t| t.timestamp_millis()),
        resolved_value: row.resolved_value,
    }
}

#[derive(Debug, Serialize)]
struct AlertJson {
    #[serde(flatten)]
    alert: contracts::alerts::AlertView,
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
    let filter = Filter {
        resolved: all,
        devices: devices.to_vec(),
        limit,
        ..Filter::default()
    };
    let rows = ops::list(pool, &filter).await.context("reading alerts")?;

    if global.json {
        emit_json(&rows.iter().map(json).collect::<Vec<_>>());
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

async fn change(
    global: &Global,
    pool: &PgPool,
    id: i64,
    transition: Transition,
    actor: &Actor<'_>,
) -> Result<Outcome> {
    let changed = match ops::change(pool, id, transition, actor).await {
        Ok(changed) => changed,
        Err(ChangeError::Refused(why)) if why.ends_with("does not exist") => {
            return Err(anyhow!("{why} (see `iotctl alerts list --all`)"))
        }
        Err(ChangeError::Refused(why)) => return Err(anyhow!("{why}")),
        Err(e) => return Err(anyhow!(e)),
    };
    let (kafka, redis) = tokio::join!(
        to_kafka(global, &changed.event),
        to_redis(global, pool, &changed.event)
    );

    if global.json {
        emit_json(&ChangeJson {
            transition: transition.code(),
            alert: json(&changed.row),
            kafka: kafka.as_ref().err().map(output::error_text),
            redis: redis.as_ref().err().map(output::error_text),
        });
    } else {
        emit(&changed.message);
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

/// The record on Kafka `alerts`, keyed by device.
async fn to_kafka(global: &Global, event: &contracts::alerts::AlertEvent) -> Result<()> {
    let producer: FutureProducer = services::kafka(global)
        .set("message.timeout.ms", "10000")
        .create()
        .context("invalid Kafka settings")?;
    ops::announce_on_kafka(
        &producer,
        &global.alerts_topic,
        event,
        Duration::from_secs(10),
    )
    .await
    .with_context(|| format!("Kafka at {}", global.kafka_brokers))
}

/// The open-alerts hash in Redis.
async fn to_redis(
    global: &Global,
    pool: &PgPool,
    event: &contracts::alerts::AlertEvent,
) -> Result<()> {
    let mut redis = services::redis(global).await?;
    ops::announce_in_redis(&mut redis, &services::redis_keys(global), event, pool)
        .await
        .context("updating Redis")
}
