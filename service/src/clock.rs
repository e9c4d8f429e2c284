//! The pipeline's one clock policy: what a reading's timestamp may decide.
//!
//! A Pi's clock jumps (NTP sync after boot, a dead RTC battery, a bad GPS fix), so no
//! device clock decides order or freshness: within a boot the sequence number orders
//! readings, and across boots the boot first seen later is the newer. A timestamp still
//! places a reading in time (rows, hourly statistics, alert durations in device time),
//! with one bound: a reading dated more than [`DEFAULT_MAX_AHEAD`] (configurable as
//! `clock.max_ahead`) ahead of the receiving service's clock is stored, never lost, but
//! drives no live view (Redis `latest` and `last_seen`, the retained MQTT `latest`) and
//! no alert evaluation; it is counted, and recorded once per device and episode.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch by this machine's clock, as frames carry time; 0 if
/// the clock is set before 1970. Every binary reads the wall clock through here.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// [`now_ms`] as the signed milliseconds of rows, Redis values and [`is_future_dated`].
pub fn now_ms_i64() -> i64 {
    i64::try_from(now_ms()).unwrap_or(i64::MAX)
}

/// How far ahead of the receiving service's clock a reading may be dated and still
/// drive the live views and alerts: beyond any honest skew between a synchronised Pi
/// and a server, far below a wrong date.
pub const DEFAULT_MAX_AHEAD: Duration = Duration::from_secs(5 * 60);

/// Whether a reading stamped `ts_ms` is dated beyond `max_ahead` of `now_ms` (both in
/// milliseconds since the Unix epoch).
pub fn is_future_dated(ts_ms: i64, now_ms: i64, max_ahead: Duration) -> bool {
    let max_ahead_ms = i64::try_from(max_ahead.as_millis()).unwrap_or(i64::MAX);
    ts_ms > now_ms.saturating_add(max_ahead_ms)
}

/// `[clock]` in each service's configuration: the policy's one setting.
#[cfg(feature = "config")]
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockConfig {
    /// A reading dated more than this ahead of the service's clock is future-dated (see
    /// the module's documentation for what that changes in each service).
    #[serde(with = "humantime_serde")]
    pub max_ahead: Duration,
}

#[cfg(feature = "config")]
impl Default for ClockConfig {
    fn default() -> Self {
        Self {
            max_ahead: DEFAULT_MAX_AHEAD,
        }
    }
}

#[cfg(feature = "config")]
impl ClockConfig {
    /// Below a second, honest skew between a synchronised Pi and a server would hide live
    /// values; beyond a day is no bound.
    pub const MAX_AHEAD_RANGE: std::ops::RangeInclusive<Duration> =
        Duration::from_secs(1)..=Duration::from_secs(24 * 3600);

    /// Adds what is wrong with the section to `problems`, naming the key.
    pub fn check(&self, problems: &mut Vec<String>) {
        if !Self::MAX_AHEAD_RANGE.contains(&self.max_ahead) {
            problems.push("clock.max_ahead: between 1 s and 24 h".to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_readings_beyond_the_bound_are_future_dated() {
        let now = 1_800_000_000_000;
        let bound = DEFAULT_MAX_AHEAD;
        assert!(!is_future_dated(now, now, bound));
        assert!(!is_future_dated(now + 300_000, now, bound));
        assert!(is_future_dated(now + 300_001, now, bound));
        assert!(is_future_dated(now + 23 * 3_600_000, now, bound));
        assert!(!is_future_dated(0, now, bound), "a 1970 clock is not ahead");
        assert!(!is_future_dated(i64::MAX, i64::MAX, Duration::MAX));
    }
}
