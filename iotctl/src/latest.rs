//! `iotctl latest`: what every channel reads right now. The values come from Redis
//! (`{prefix}:latest:{device}`, kept by the ingester, never moving backwards), not from
//! PostgreSQL, because that is what the live views read; PostgreSQL adds channel names
//! and units and says which devices exist.

use anyhow::{Context, Result};
use clap::Args;
use contracts::redis::LatestValue;
use redis::AsyncCommands;
use serde::Serialize;

use crate::global::{self, Global, Outcome};
use crate::output::{self, emit_json, emit_table};
use crate::services::{self, Channels};

#[derive(Debug, Args)]
pub struct LatestArgs {
    /// Only this device (repeat for several).
    #[arg(long = "device", value_name = "ID", value_parser = global::device_id)]
    pub devices: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Latest {
    device_id: String,
    channel_id: String,
    channel: Option<String>,
    unit: Option<String>,
    value: Option<f64>,
    quality: Vec<&'static str>,
    ts_ms: Option<i64>,
    age_ms: Option<i64>,
    boot: Option<String>,
    seq: Option<i64>,
    clock_synced: Option<bool>,
    /// Set when the stored value could not be read.
    error: Option<String>,
}

pub async fn run(global: &Global, args: &LatestArgs) -> Result<Outcome> {
    let (devices, channels) = devices_and_channels(global, &args.devices).await?;
    let mut redis = services::redis(global).await?;
    let now = service::clock::now_ms_i64();
    let mut values = Vec::new();
    for device in &devices {
        let key = services::redis_keys(global).latest(device);
        let mut fields: Vec<(String, String)> = redis
            .hgetall(&key)
            .await
            .with_context(|| format!("reading {key}"))?;
        fields.sort_by_key(|(field, _)| (field.parse::<i64>().unwrap_or(i64::MAX), field.clone()));
        for (field, json) in fields {
            values.push(latest(device, &field, &json, &channels, now));
        }
    }

    if global.json {
        emit_json(&values);
        return Ok(Outcome::Done);
    }
    let mut table = output::table(
        &[
            "device", "channel", "value", "unit", "quality", "time", "age",
        ],
        &[2],
    );
    for l in &values {
        let channel = l
            .channel
            .clone()
            .unwrap_or_else(|| format!("ch{}", l.channel_id));
        let value = match (&l.error, l.value) {
            (Some(e), _) => format!("unreadable: {e}"),
            (None, Some(v)) => output::reading(v as f32),
            (None, None) => "NaN".to_owned(),
        };
        table.add_row(vec![
            l.device_id.clone(),
            channel,
            value,
            l.unit.clone().unwrap_or_default(),
            if l.error.is_some() {
                String::new()
            } else if l.quality.is_empty() {
                "ok".to_owned()
            } else {
                l.quality.join(",")
            },
            l.ts_ms.map(output::time_ms).unwrap_or_default(),
            l.age_ms.map(output::age).unwrap_or_default(),
        ]);
    }
    emit_table(
        &table,
        "no latest values in Redis (is the ingester running?)",
    );
    Ok(Outcome::Done)
}

fn latest(device: &str, field: &str, json: &str, channels: &Channels, now: i64) -> Latest {
    let info = field
        .parse::<i16>()
        .ok()
        .and_then(|c| channels.get(&(device.to_owned(), c)));
    let mut latest = Latest {
        device_id: device.to_owned(),
        channel_id: field.to_owned(),
        channel: info.map(|i| i.name.clone()),
        unit: info.map(|i| i.unit.clone()),
        value: None,
        quality: Vec::new(),
        ts_ms: None,
        age_ms: None,
        boot: None,
        seq: None,
        clock_synced: None,
        error: None,
    };
    match serde_json::from_str::<LatestValue>(json) {
        Ok(stored) => {
            latest.value = stored.v.map(output::as_measured);
            latest.quality = output::quality_flags(output::quality_from_bits(stored.q.into()));
            latest.ts_ms = Some(stored.ts);
            latest.age_ms = Some(now - stored.ts);
            latest.boot = Some(stored.boot);
            latest.seq = Some(stored.seq);
            latest.clock_synced = Some(stored.synced);
        }
        Err(e) => latest.error = Some(e.to_string()),
    }
    latest
}

/// The devices to show (those asked for, else every registered one) and the channel
/// names. Without PostgreSQL, the devices that have a `latest` key in Redis, by number.
async fn devices_and_channels(
    global: &Global,
    asked: &[String],
) -> Result<(Vec<String>, Channels)> {
    let from_postgres = async {
        let pool = services::postgres(global).await?;
        let devices: Vec<String> = sqlx::query_scalar("SELECT device_id FROM devices ORDER BY 1")
            .fetch_all(&pool)
            .await
            .context("reading devices")?;
        let channels = services::channels(&pool).await?;
        pool.close().await;
        anyhow::Ok((devices, channels))
    };
    let (registered, channels) = match from_postgres.await {
        Ok(found) => found,
        Err(e) => {
            eprintln!(
                "note: PostgreSQL unavailable, showing channel numbers ({})",
                output::error_text(&e)
            );
            (scan_devices(global).await?, Channels::new())
        }
    };
    let devices = if asked.is_empty() {
        registered
    } else {
        asked.to_vec()
    };
    Ok((devices, channels))
}

/// The devices that have a `latest` hash in Redis.
async fn scan_devices(global: &Global) -> Result<Vec<String>> {
    let mut redis = services::redis(global).await?;
    let prefix = services::redis_keys(global).latest_prefix();
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut redis)
            .await
            .context("listing latest keys")?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut devices: Vec<String> = keys
        .iter()
        .filter_map(|k| k.strip_prefix(&prefix))
        .map(str::to_owned)
        .collect();
    devices.sort();
    devices.dedup();
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::ChannelInfo;

    #[test]
    fn stored_values_are_read_or_reported() {
        let channels = Channels::from([(
            ("furnace-01".to_owned(), 0),
            ChannelInfo {
                name: "temperature".into(),
                unit: "°C".into(),
            },
        )]);
        let json = r#"{"ts":1700000000010,"v":851.25,"q":1,"boot":"ff00000000000001","seq":42,"synced":true}"#;
        let l = latest("furnace-01", "0", json, &channels, 1_700_000_001_010);
        assert_eq!(l.channel.as_deref(), Some("temperature"));
        assert_eq!(l.value, Some(851.25));
        assert_eq!(l.quality, ["anomaly"]);
        assert_eq!(l.age_ms, Some(1000));
        assert_eq!(l.error, None);

        let fault = latest(
            "furnace-01",
            "0",
            &json.replace("851.25", "null"),
            &channels,
            0,
        );
        assert_eq!((fault.value, fault.error), (None, None));

        let broken = latest("furnace-01", "7", "{not json", &channels, 0);
        assert!(broken.error.is_some());
        assert_eq!(broken.channel, None);
    }
}
