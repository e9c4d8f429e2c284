//! What PostgreSQL tells the console: the plant's devices and channels with their
//! thresholds (read by the live view now and then, for every viewer at once), and one
//! channel's history for a device page, downsampled in SQL so a 24 h chart of a 10 Hz
//! channel is a thousand buckets, not 864 000 rows.

use std::time::Duration;

use serde::Serialize;
use sqlx::types::chrono::{DateTime, Utc};
use sqlx::PgPool;

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Device {
    pub device_id: String,
    pub name: String,
    pub kind: String,
    pub site: String,
    pub line: String,
    pub description: String,
    pub enabled: bool,
    #[sqlx(skip)]
    pub channels: Vec<Channel>,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Channel {
    #[serde(skip)]
    pub device_id: String,
    pub channel_id: i16,
    pub name: String,
    pub unit: String,
    pub sample_period_ms: i32,
    pub range_min: f64,
    pub range_max: f64,
    pub nominal: Option<f64>,
    pub warn_low: Option<f64>,
    pub warn_high: Option<f64>,
    pub crit_low: Option<f64>,
    pub crit_high: Option<f64>,
}

impl Device {
    /// A device PostgreSQL has not described (it does not answer): its id and channel
    /// numbers, as Redis knows them.
    pub fn known_only_by_id(id: &str, channels: &[i16]) -> Self {
        Self {
            device_id: id.to_owned(),
            name: id.to_owned(),
            kind: String::new(),
            site: "?".to_owned(),
            line: "?".to_owned(),
            description: String::new(),
            enabled: true,
            channels: channels
                .iter()
                .map(|&channel_id| Channel {
                    device_id: id.to_owned(),
                    channel_id,
                    name: format!("ch{channel_id}"),
                    unit: String::new(),
                    sample_period_ms: 1000,
                    range_min: f64::MIN,
                    range_max: f64::MAX,
                    nominal: None,
                    warn_low: None,
                    warn_high: None,
                    crit_low: None,
                    crit_high: None,
                })
                .collect(),
        }
    }
}

/// A value's standing against its channel's thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Normal,
    Warning,
    Critical,
}

impl Level {
    pub fn word(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Warning => "warning",
            Level::Critical => "critical",
        }
    }

    /// An alert's `severity`.
    pub fn of_severity(severity: &str) -> Level {
        match severity {
            "critical" => Level::Critical,
            "warning" => Level::Warning,
            _ => Level::Normal,
        }
    }
}

impl Channel {
    /// Where `value` stands: past a critical threshold, past a warning one, or inside.
    pub fn level(&self, value: f64) -> Level {
        let below = |t: Option<f64>| t.is_some_and(|t| value < t);
        let above = |t: Option<f64>| t.is_some_and(|t| value > t);
        if below(self.crit_low) || above(self.crit_high) {
            Level::Critical
        } else if below(self.warn_low) || above(self.warn_high) {
            Level::Warning
        } else {
            Level::Normal
        }
    }
}

/// One device with its channels, if it exists.
pub async fn device(pool: &PgPool, id: &str) -> sqlx::Result<Option<Device>> {
    let found: Option<Device> = sqlx::query_as(
        "SELECT device_id, name, kind, site, line, description, enabled FROM devices \
          WHERE device_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some(mut device) = found else {
        return Ok(None);
    };
    device.channels = sqlx::query_as(
        "SELECT device_id, channel_id, name, unit, sample_period_ms, range_min, range_max, \
                nominal, warn_low, warn_high, crit_low, crit_high \
           FROM device_channels WHERE device_id = $1 ORDER BY channel_id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(Some(device))
}

/// Every device with its channels, by site, line and id.
pub async fn devices(pool: &PgPool) -> sqlx::Result<Vec<Device>> {
    let mut devices: Vec<Device> = sqlx::query_as(
        "SELECT device_id, name, kind, site, line, description, enabled FROM devices \
          ORDER BY site, line, device_id",
    )
    .fetch_all(pool)
    .await?;
    let channels: Vec<Channel> = sqlx::query_as(
        "SELECT device_id, channel_id, name, unit, sample_period_ms, range_min, range_max, \
                nominal, warn_low, warn_high, crit_low, crit_high \
           FROM device_channels ORDER BY device_id, channel_id",
    )
    .fetch_all(pool)
    .await?;
    for channel in channels {
        if let Some(device) = devices
            .iter_mut()
            .find(|d| d.device_id == channel.device_id)
        {
            device.channels.push(channel);
        }
    }
    Ok(devices)
}

/// The ranges a device page offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    Minutes15,
    Hour,
    Day,
    Week,
}

impl Range {
    pub const ALL: [Range; 4] = [Range::Minutes15, Range::Hour, Range::Day, Range::Week];

    pub fn code(self) -> &'static str {
        match self {
            Range::Minutes15 => "15m",
            Range::Hour => "1h",
            Range::Day => "24h",
            Range::Week => "7d",
        }
    }

    pub fn from_code(code: &str) -> Option<Range> {
        Range::ALL.into_iter().find(|r| r.code() == code)
    }

    pub fn span(self) -> Duration {
        Duration::from_secs(match self {
            Range::Minutes15 => 15 * 60,
            Range::Hour => 3600,
            Range::Day => 86_400,
            Range::Week => 7 * 86_400,
        })
    }
}

/// The most buckets a chart asks for: each is a min and a max, so at most 2 000 points.
pub const BUCKETS: u32 = 1000;

/// One bucket of a chart: the time it starts, and the readings' min, mean and max in it.
#[derive(Debug, Clone, Copy, PartialEq, sqlx::FromRow)]
pub struct Bucket {
    pub t: DateTime<Utc>,
    pub min: f64,
    pub mean: f64,
    pub max: f64,
}

/// Where a chart's buckets come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The readings themselves, bucketed in SQL.
    Readings,
    /// `device_stats_hourly`: too many readings to scan for a chart.
    Hourly,
}

/// The most readings a chart buckets itself: beyond, it takes the hourly statistics.
/// A day of a 1 Hz channel (86 400) is bucketed, a day of a 10 Hz one (864 000) would
/// cost a scan of several hundred milliseconds and is not.
pub const RAW_READINGS: u64 = 250_000;

/// Where `channel`'s chart over `range` comes from: its readings, as many as its sample
/// period makes, bucketed, up to [`RAW_READINGS`]; the hourly statistics beyond.
pub fn source(channel: &Channel, range: Range) -> Source {
    let period_ms = u64::try_from(channel.sample_period_ms).unwrap_or(1).max(1);
    let readings = range.span().as_millis() as u64 / period_ms;
    if readings <= RAW_READINGS {
        Source::Readings
    } else {
        Source::Hourly
    }
}

/// A channel's history over `range` ending at `end`, from [`source`]: readings bucketed
/// in SQL into at most [`BUCKETS`] buckets, or the hourly statistics. Faulted readings
/// (NaN) are left out, as the statistics leave them out.
pub async fn history(
    pool: &PgPool,
    device: &str,
    channel: &Channel,
    range: Range,
    end: DateTime<Utc>,
) -> sqlx::Result<(Source, Vec<Bucket>)> {
    let span = range.span();
    let start = end - span;
    let source = source(channel, range);
    let channel = channel.channel_id;
    if source == Source::Hourly {
        let rows = sqlx::query_as(
            "SELECT hour AS t, min, sum / count AS mean, max FROM device_stats_hourly \
              WHERE device_id = $1 AND channel_id = $2 AND hour >= $3 AND hour < $4 \
                AND count > 0 ORDER BY hour",
        )
        .bind(device)
        .bind(channel)
        .bind(start)
        .bind(end)
        .fetch_all(pool)
        .await?;
        return Ok((Source::Hourly, rows));
    }
    let bucket_ms = (span.as_millis() / u128::from(BUCKETS)).max(1) as i64;
    let rows = sqlx::query_as(
        "SELECT date_bin(make_interval(secs => $5::double precision / 1000), ts, $3) AS t, \
                min(value)::float8 AS min, avg(value)::float8 AS mean, max(value)::float8 AS max \
           FROM sensor_readings \
          WHERE device_id = $1 AND channel_id = $2 AND ts >= $3 AND ts < $4 \
            AND value <> 'NaN'::real \
          GROUP BY 1 ORDER BY 1",
    )
    .bind(device)
    .bind(channel)
    .bind(start)
    .bind(end)
    .bind(bucket_ms as f64)
    .fetch_all(pool)
    .await?;
    Ok((Source::Readings, rows))
}

/// An alert's span on a chart.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AlertSpan {
    pub channel_id: Option<i16>,
    pub severity: String,
    pub opened_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// The alerts of `device` that overlap [start, end).
pub async fn alert_spans(
    pool: &PgPool,
    device: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> sqlx::Result<Vec<AlertSpan>> {
    sqlx::query_as(
        "SELECT channel_id, severity::text AS severity, opened_at, resolved_at FROM alerts \
          WHERE device_id = $1 AND opened_at < $3 AND coalesce(resolved_at, now()) >= $2 \
          ORDER BY opened_at",
    )
    .bind(device)
    .bind(start)
    .bind(end)
    .fetch_all(pool)
    .await
}

/// A line of the operation log.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SystemEvent {
    pub at: DateTime<Utc>,
    pub service: String,
    pub level: String,
    pub kind: String,
    pub message: String,
}

/// The newest `limit` lines of `system_events`.
pub async fn system_events(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<SystemEvent>> {
    sqlx::query_as(
        "SELECT at, service, level, kind, message FROM system_events \
          ORDER BY at DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_placed_against_whichever_thresholds_exist() {
        let channel = Channel {
            device_id: "furnace-01".into(),
            channel_id: 0,
            name: "temperature".into(),
            unit: "°C".into(),
            sample_period_ms: 1000,
            range_min: 0.0,
            range_max: 1400.0,
            nominal: Some(850.0),
            warn_low: None,
            warn_high: Some(900.0),
            crit_low: None,
            crit_high: Some(950.0),
        };
        assert_eq!(channel.level(-40.0), Level::Normal);
        assert_eq!(channel.level(900.0), Level::Normal);
        assert_eq!(channel.level(900.5), Level::Warning);
        assert_eq!(channel.level(951.0), Level::Critical);
        assert_eq!(Range::from_code("24h"), Some(Range::Day));
        assert_eq!(Range::from_code("2h"), None);
        let fast = Channel {
            sample_period_ms: 100,
            ..channel.clone()
        };
        assert_eq!(source(&fast, Range::Hour), Source::Readings);
        assert_eq!(source(&fast, Range::Day), Source::Hourly);
        assert_eq!(source(&channel, Range::Day), Source::Readings);
        assert_eq!(source(&channel, Range::Week), Source::Hourly);
        let slow = Channel {
            sample_period_ms: 60_000,
            ..channel
        };
        assert_eq!(source(&slow, Range::Week), Source::Readings);
    }
}
