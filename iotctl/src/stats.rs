//! `iotctl stats`: how each channel behaved hour by hour, from `device_stats_hourly`
//! (count, min, max, sum, sum of squares per device, channel and UTC hour, kept by the
//! ingester), so the answer never scans `sensor_readings`. Mean and standard deviation
//! are derived here from the sums.

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use sqlx::types::chrono::{DateTime, Utc};

use crate::global::{self, Global, Outcome};
use crate::output::{self, emit_json, emit_table};
use crate::services;

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Only this device (repeat for several).
    #[arg(long = "device", value_name = "ID", value_parser = global::device_id)]
    pub devices: Vec<String>,

    /// How many hours back, the current hour included.
    #[arg(long, default_value_t = 24, value_name = "N",
          value_parser = clap::value_parser!(i32).range(1..=24 * 366))]
    pub hours: i32,
}

type StatsRow = (
    String,
    i16,
    Option<String>,
    Option<String>,
    DateTime<Utc>,
    i64,
    f64,
    f64,
    f64,
    f64,
);

#[derive(Debug, Serialize)]
struct HourStats {
    device_id: String,
    channel_id: i16,
    channel: Option<String>,
    unit: Option<String>,
    hour: String,
    hour_ms: i64,
    count: i64,
    min: f64,
    max: f64,
    mean: Option<f64>,
    /// Sample standard deviation; `null` below two readings.
    stddev: Option<f64>,
}

pub async fn run(global: &Global, args: &StatsArgs) -> Result<Outcome> {
    let pool = services::postgres(global).await?;
    let rows: Vec<StatsRow> = sqlx::query_as(
        "SELECT s.device_id, s.channel_id, c.name, c.unit, s.hour, s.count, \
                s.min, s.max, s.sum, s.sum_sq \
           FROM device_stats_hourly s \
           LEFT JOIN device_channels c USING (device_id, channel_id) \
          WHERE s.hour > now() - make_interval(hours => $1) \
            AND (cardinality($2::text[]) = 0 OR s.device_id = ANY($2)) \
          ORDER BY s.device_id, s.channel_id, s.hour",
    )
    .bind(args.hours)
    .bind(&args.devices)
    .fetch_all(&pool)
    .await
    .context("reading device_stats_hourly")?;
    pool.close().await;

    let stats: Vec<HourStats> = rows
        .into_iter()
        .map(
            |(device_id, channel_id, channel, unit, hour, count, min, max, sum, sum_sq)| {
                HourStats {
                    device_id,
                    channel_id,
                    channel,
                    unit,
                    hour: output::hour(&hour),
                    hour_ms: hour.timestamp_millis(),
                    count,
                    min,
                    max,
                    mean: mean(count, sum),
                    stddev: stddev(count, sum, sum_sq),
                }
            },
        )
        .collect();

    if global.json {
        emit_json(&stats);
        return Ok(Outcome::Done);
    }
    let mut table = output::table(
        &[
            "device",
            "channel",
            "unit",
            "hour (UTC)",
            "count",
            "min",
            "max",
            "mean",
            "stddev",
        ],
        &[4, 5, 6, 7, 8],
    );
    for s in &stats {
        table.add_row(vec![
            s.device_id.clone(),
            s.channel
                .clone()
                .unwrap_or_else(|| format!("ch{}", s.channel_id)),
            s.unit.clone().unwrap_or_default(),
            s.hour.clone(),
            s.count.to_string(),
            output::number(Some(s.min)),
            output::number(Some(s.max)),
            output::number(s.mean),
            output::number(s.stddev),
        ]);
    }
    emit_table(
        &table,
        &format!("no statistics in the last {} hours", args.hours),
    );
    Ok(Outcome::Done)
}

fn mean(count: i64, sum: f64) -> Option<f64> {
    (count > 0).then(|| sum / count as f64)
}

/// Sample standard deviation (n - 1, as PostgreSQL's `stddev`) from the count, sum and
/// sum of squares. Rounding can make a constant signal's variance slightly negative;
/// that is zero.
fn stddev(count: i64, sum: f64, sum_sq: f64) -> Option<f64> {
    if count < 2 {
        return None;
    }
    let n = count as f64;
    let variance = (sum_sq - sum * sum / n) / (n - 1.0);
    Some(variance.max(0.0).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums(values: &[f64]) -> (i64, f64, f64) {
        (
            values.len() as i64,
            values.iter().sum(),
            values.iter().map(|v| v * v).sum(),
        )
    }

    #[test]
    fn standard_deviation_from_sums() {
        let (n, sum, sum_sq) = sums(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(mean(n, sum), Some(2.5));
        let sd = stddev(n, sum, sum_sq).unwrap();
        assert!((sd - (5.0f64 / 3.0).sqrt()).abs() < 1e-12, "{sd}");

        // 2, 4, 4, 4, 5, 5, 7, 9: population sd 2, sample sd sqrt(32 / 7).
        let (n, sum, sum_sq) = sums(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        let sd = stddev(n, sum, sum_sq).unwrap();
        assert!((sd - (32.0f64 / 7.0).sqrt()).abs() < 1e-12, "{sd}");
    }

    #[test]
    fn constant_and_tiny_samples() {
        // A furnace holding 850.1 °C: the variance must not go negative or NaN.
        let (n, sum, sum_sq) = sums(&[850.1; 3600]);
        let sd = stddev(n, sum, sum_sq).unwrap();
        assert!((0.0..1e-3).contains(&sd), "{sd}");
        assert_eq!(stddev(1, 5.0, 25.0), None);
        assert_eq!(mean(0, 0.0), None);
        assert_eq!(stddev(0, 0.0, 0.0), None);
    }
}
