//! A channel's alert rules, read from `device_channels`: where its thresholds are, how
//! far back a value must come to clear, and how long a breach or a silence must last.

use std::collections::HashMap;

use sqlx::PgPool;

/// No stuck or dropout verdict on less than this, whatever the sampling period: a few
/// missing or repeated samples are normal jitter.
pub const MIN_SILENCE_MS: i64 = 10_000;
/// Stuck and dropout need at least this many sampling periods.
pub const SILENCE_PERIODS: i64 = 5;

/// The rules of one channel. Thresholds are in the channel's unit; `None` means the
/// channel has no such threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelRules {
    pub name: String,
    pub unit: String,
    pub warn_low: Option<f64>,
    pub warn_high: Option<f64>,
    pub crit_low: Option<f64>,
    pub crit_high: Option<f64>,
    pub nominal: Option<f64>,
    /// How far back inside the threshold a value must come before the alert clears.
    pub hysteresis: f64,
    /// How long a threshold must be exceeded, without interruption, before it fires.
    pub min_duration_ms: i64,
    /// How long a value may stay bit-identical (stuck) or a channel silent while its
    /// device sends (dropout): `max(5 × sampling period, min_duration, 10 s)`.
    pub silence_ms: i64,
}

impl ChannelRules {
    /// Builds the rules from the columns of `device_channels`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: impl Into<String>,
        unit: impl Into<String>,
        sample_period_ms: i64,
        [warn_low, warn_high, crit_low, crit_high]: [Option<f64>; 4],
        nominal: Option<f64>,
        hysteresis: f64,
        min_duration_ms: i64,
    ) -> Self {
        Self {
            name: name.into(),
            unit: unit.into(),
            warn_low,
            warn_high,
            crit_low,
            crit_high,
            nominal,
            hysteresis: hysteresis.max(0.0),
            min_duration_ms: min_duration_ms.max(0),
            silence_ms: (SILENCE_PERIODS * sample_period_ms)
                .max(min_duration_ms)
                .max(MIN_SILENCE_MS),
        }
    }

    /// A value beyond the critical threshold by at least the warning-to-critical distance
    /// (or, without a warning threshold, the nominal-to-critical distance) fires at once,
    /// whatever `min_duration_ms`: the minimum duration keeps a noisy signal near a
    /// threshold from flapping, it must not hide a gross excursion such as a spike.
    pub fn gross_margin(&self, high: bool) -> Option<f64> {
        let (crit, warn) = if high {
            (self.crit_high?, self.warn_high)
        } else {
            (self.crit_low?, self.warn_low)
        };
        let reference = warn.or(self.nominal)?;
        let margin = (crit - reference).abs();
        (margin > 0.0).then_some(margin)
    }
}

/// The rules of every channel the database knows, by device and channel.
#[derive(Debug, Clone, Default)]
pub struct RuleBook {
    devices: HashMap<String, HashMap<i16, ChannelRules>>,
}

type RuleRow = (
    String,
    i16,
    String,
    String,
    i32,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    f64,
    i32,
);

impl RuleBook {
    pub async fn load(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let rows: Vec<RuleRow> = sqlx::query_as(
            "SELECT c.device_id, c.channel_id, c.name, c.unit, c.sample_period_ms, \
                    c.warn_low, c.warn_high, c.crit_low, c.crit_high, c.nominal, \
                    c.hysteresis, c.min_duration_ms \
               FROM device_channels c JOIN devices d USING (device_id) \
              WHERE d.enabled",
        )
        .fetch_all(pool)
        .await?;
        let mut book = Self::default();
        for row in rows {
            let (device, channel, name, unit, period, wl, wh, cl, ch, nominal, hyst, min) = row;
            book.insert(
                &device,
                channel,
                ChannelRules::new(
                    name,
                    unit,
                    i64::from(period),
                    [wl, wh, cl, ch],
                    nominal,
                    hyst,
                    i64::from(min),
                ),
            );
        }
        Ok(book)
    }

    pub fn insert(&mut self, device: &str, channel: i16, rules: ChannelRules) {
        self.devices
            .entry(device.to_owned())
            .or_default()
            .insert(channel, rules);
    }

    /// How many channels of `device` have rules.
    pub fn channels_of(&self, device: &str) -> usize {
        self.devices.get(device).map_or(0, HashMap::len)
    }

    pub fn get(&self, device: &str, channel: i16) -> Option<&ChannelRules> {
        self.devices.get(device)?.get(&channel)
    }

    pub fn channels(&self) -> impl Iterator<Item = (&str, i16)> {
        self.devices
            .iter()
            .flat_map(|(device, channels)| channels.keys().map(|c| (device.as_str(), *c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_five_periods_the_minimum_duration_or_ten_seconds() {
        let rules =
            |period, min| ChannelRules::new("x", "u", period, [None; 4], None, 0.0, min).silence_ms;
        assert_eq!(rules(100, 2000), 10_000);
        assert_eq!(rules(2000, 10_000), 10_000);
        assert_eq!(rules(5000, 0), 25_000);
        assert_eq!(rules(1000, 30_000), 30_000);
    }

    #[test]
    fn the_gross_margin_is_the_warning_to_critical_distance() {
        let press = ChannelRules::new(
            "pressure",
            "bar",
            200,
            [Some(150.0), Some(250.0), Some(120.0), Some(280.0)],
            Some(210.0),
            5.0,
            1000,
        );
        assert_eq!(press.gross_margin(true), Some(30.0));
        assert_eq!(press.gross_margin(false), Some(30.0));
        let vibration = ChannelRules::new(
            "vibration_rms",
            "mm/s",
            100,
            [None, Some(7.1), None, Some(11.2)],
            Some(2.8),
            0.5,
            2000,
        );
        assert!(vibration.gross_margin(false).is_none());
        let high_only_no_warn = ChannelRules::new(
            "p",
            "kW",
            1000,
            [None, None, None, Some(90.0)],
            Some(55.0),
            3.0,
            0,
        );
        assert_eq!(high_only_no_warn.gross_margin(true), Some(35.0));
    }
}
