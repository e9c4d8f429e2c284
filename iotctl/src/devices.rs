//! `iotctl devices`: which machines the plant has and whether they are talking. The
//! registry and alert counts come from PostgreSQL; "last seen" from Redis, whose
//! `last_seen` key expires when a device falls silent (so its presence is the online
//! flag), and from PostgreSQL's newest reading when the key is gone or Redis is away.

use std::collections::HashMap;

use anyhow::{Context, Result};
use serde::Serialize;
use sqlx::types::chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::global::{Global, Outcome};
use crate::output::{self, emit_json, emit_table};
use crate::services;

#[derive(Debug, Serialize)]
struct Device {
    device_id: String,
    name: String,
    site: String,
    line: String,
    kind: String,
    enabled: bool,
    channels: i64,
    /// Unresolved alerts (open or acknowledged).
    open_alerts: i64,
    /// Time of the newest reading, ms since the epoch.
    last_seen_ms: Option<i64>,
    /// Where `last_seen_ms` comes from: "redis" or "postgresql".
    last_seen_from: Option<&'static str>,
    /// True while Redis holds the device's `last_seen` key; `null` if Redis was not asked.
    online: Option<bool>,
}

type DeviceRow = (String, String, String, String, String, bool, i64, i64);

pub async fn run(global: &Global) -> Result<Outcome> {
    let pool = services::postgres(global).await?;
    let rows: Vec<DeviceRow> = sqlx::query_as(
        "SELECT d.device_id, d.name, d.site, d.line, d.kind, d.enabled, \
                (SELECT count(*) FROM device_channels c WHERE c.device_id = d.device_id), \
                (SELECT count(*) FROM alerts a \
                  WHERE a.device_id = d.device_id AND a.state <> 'resolved') \
           FROM devices d ORDER BY d.device_id",
    )
    .fetch_all(&pool)
    .await
    .context("reading devices")?;
    let ids: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();

    let from_redis = match last_seen_in_redis(global, &ids).await {
        Ok(seen) => Some(seen),
        Err(e) => {
            eprintln!(
                "note: Redis unavailable, last seen from PostgreSQL ({})",
                output::error_text(&e)
            );
            None
        }
    };
    let missing: Vec<String> = ids
        .iter()
        .filter(|id| {
            from_redis
                .as_ref()
                .is_none_or(|seen| !seen.contains_key(*id))
        })
        .cloned()
        .collect();
    let from_postgres = newest_readings(&pool, &missing).await?;
    pool.close().await;

    let devices: Vec<Device> = rows
        .into_iter()
        .map(
            |(device_id, name, site, line, kind, enabled, channels, open_alerts)| {
                let in_redis = from_redis
                    .as_ref()
                    .and_then(|seen| seen.get(&device_id))
                    .copied();
                let (last_seen_ms, last_seen_from) = match in_redis {
                    Some(ms) => (Some(ms), Some("redis")),
                    None => match from_postgres.get(&device_id) {
                        Some(ms) => (Some(*ms), Some("postgresql")),
                        None => (None, None),
                    },
                };
                Device {
                    online: from_redis.as_ref().map(|_| in_redis.is_some()),
                    device_id,
                    name,
                    site,
                    line,
                    kind,
                    enabled,
                    channels,
                    open_alerts,
                    last_seen_ms,
                    last_seen_from,
                }
            },
        )
        .collect();

    if global.json {
        emit_json(&devices);
        return Ok(Outcome::Done);
    }
    let now = service::clock::now_ms_i64();
    let mut table = output::table(
        &[
            "device",
            "name",
            "site",
            "line",
            "kind",
            "enabled",
            "channels",
            "status",
            "last seen",
            "open alerts",
        ],
        &[6, 9],
    );
    for d in &devices {
        let status = match d.online {
            Some(true) => "online",
            Some(false) => "offline",
            None => "?",
        };
        let last_seen = d.last_seen_ms.map_or_else(
            || "never".to_owned(),
            |ms| format!("{} ago", output::age(now - ms)),
        );
        table.add_row(vec![
            d.device_id.clone(),
            d.name.clone(),
            d.site.clone(),
            d.line.clone(),
            d.kind.clone(),
            if d.enabled { "yes" } else { "no" }.to_owned(),
            d.channels.to_string(),
            status.to_owned(),
            last_seen,
            d.open_alerts.to_string(),
        ]);
    }
    emit_table(&table, "no devices registered");
    Ok(Outcome::Done)
}

/// `{prefix}:last_seen:{device}` of every device, in one round trip; a device whose key
/// has expired is absent.
async fn last_seen_in_redis(global: &Global, ids: &[String]) -> Result<HashMap<String, i64>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut redis = services::redis(global).await?;
    let layout = services::redis_keys(global);
    let keys: Vec<String> = ids.iter().map(|id| layout.last_seen(id)).collect();
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&keys)
        .query_async(&mut redis)
        .await
        .context("reading last_seen keys")?;
    Ok(ids
        .iter()
        .zip(values)
        .filter_map(|(id, value)| Some((id.clone(), value?.parse().ok()?)))
        .collect())
}

/// The newest reading's time per device (an index probe per partition, each).
async fn newest_readings(pool: &PgPool, ids: &[String]) -> Result<HashMap<String, i64>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT d, (SELECT max(ts) FROM sensor_readings WHERE device_id = d) \
           FROM unnest($1::text[]) AS d",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
    .context("reading the newest readings")?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, ts)| Some((id, ts?.timestamp_millis())))
        .collect())
}
