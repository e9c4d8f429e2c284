//! Anomaly injection for simulated channels (seed Phase 2), so that the cloud's alerting
//! can be exercised against known ground truth: every reading an anomaly touches carries
//! `Quality::SIMULATED_ANOMALY`.
//!
//! Anomalies start as a Poisson process of `rate_per_hour` over the time the channel is
//! not already in one (one at a time, each followed by at least one unflagged reading, so
//! a consumer can tell consecutive anomalies apart). The kind is
//! drawn uniformly from the configured kinds. Where a kind needs a direction, it goes
//! toward the high thresholds, or toward either side with equal odds when the channel has
//! low thresholds too.
//!
//! - spike: 1–3 samples at `nominal + 3 × (critical − nominal)`, pulled in to stay inside
//!   the physical range (to 90 % of the way from the critical threshold to the range
//!   end), so a spike is an alarm, not an out-of-range reading;
//! - drift: over `duration`, the value moves linearly from the live model value to half
//!   the warning-to-critical gap beyond the critical threshold, reaching it on the last
//!   sample, so it crosses the warning, then the critical threshold;
//! - stuck: for `duration`, every reading repeats the last reading before the anomaly;
//! - dropout: for `duration`, no readings (`Ok(None)`); the first reading after the gap
//!   is flagged.
//!
//! The model keeps running underneath, so the process resumes where it would have been.

use std::time::Duration;

use protocol::Quality;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{AnomalyConfig, AnomalyKind, ChannelLimits, Sample};

#[derive(Debug, Clone, Copy)]
enum Active {
    Spike { remaining: u8, value: f64 },
    Drift { start: f64, target: f64 },
    Stuck { until: f64, value: f32 },
    Dropout { until: f64 },
}

/// Which side of the band an anomaly goes to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Side {
    High,
    Low,
}

pub(crate) struct Injector {
    rate_per_sec: f64,
    kinds: Vec<AnomalyKind>,
    duration: f64,
    period: f64,
    limits: ChannelLimits,
    rng: ChaCha8Rng,
    active: Option<Active>,
    last_value: Option<f32>,
    /// Ticks (this one included) on which no anomaly may start.
    rest_ticks: u8,
}

impl Injector {
    /// `config` must have been validated (non-empty kinds); with empty kinds nothing is
    /// ever injected.
    pub(crate) fn new(
        config: &AnomalyConfig,
        limits: ChannelLimits,
        period: Duration,
        rng: ChaCha8Rng,
    ) -> Self {
        Self {
            rate_per_sec: config.rate_per_hour.max(0.0) / 3600.0,
            kinds: config.kinds.clone(),
            duration: config.duration.as_secs_f64(),
            period: period.as_secs_f64(),
            limits,
            rng,
            active: None,
            last_value: None,
            rest_ticks: 0,
        }
    }

    /// The reading at `t` (`dt` after the previous one) given the model's value.
    pub(crate) fn apply(&mut self, t: f64, dt: f64, model_value: f64) -> Option<Sample> {
        let mut quality = Quality::empty();
        // An anomaly whose time is up ends on this tick, which is normal (after a dropout:
        // flagged); every anomaly is followed by at least one unflagged reading.
        match self.active {
            Some(Active::Drift { start, .. }) if t >= start + self.duration => {
                self.active = None;
                self.rest_ticks = 1;
            }
            Some(Active::Stuck { until, .. }) if t >= until => {
                self.active = None;
                self.rest_ticks = 1;
            }
            Some(Active::Dropout { until }) if t >= until => {
                self.active = None;
                self.rest_ticks = 2;
                quality = Quality::SIMULATED_ANOMALY;
            }
            _ => {}
        }
        if self.active.is_none() {
            if self.rest_ticks > 0 {
                self.rest_ticks -= 1;
            } else if dt > 0.0 && !self.kinds.is_empty() {
                let chance = 1.0 - (-self.rate_per_sec * dt).exp();
                if self.rng.random::<f64>() < chance {
                    let kind = self.kinds[self.rng.random_range(0..self.kinds.len())];
                    self.active = Some(self.begin(kind, t, model_value));
                    tracing::debug!(?kind, at_secs = t, "simulated anomaly begins");
                }
            }
        }
        let out = match &mut self.active {
            None => Some(Sample {
                value: model_value as f32,
                quality,
            }),
            Some(Active::Spike { remaining, value }) => {
                let value = *value;
                *remaining = remaining.saturating_sub(1);
                if *remaining == 0 {
                    self.active = None;
                    self.rest_ticks = 1;
                }
                Some(flagged(value as f32))
            }
            Some(Active::Drift { start, target }) => {
                let progress = ((t - *start + self.period) / self.duration).clamp(0.0, 1.0);
                Some(flagged(
                    (model_value + (*target - model_value) * progress) as f32,
                ))
            }
            Some(Active::Stuck { value, .. }) => Some(flagged(*value)),
            Some(Active::Dropout { .. }) => None,
        };
        if let Some(sample) = out {
            self.last_value = Some(sample.value);
        }
        out
    }

    fn begin(&mut self, kind: AnomalyKind, t: f64, model_value: f64) -> Active {
        match kind {
            AnomalyKind::Spike => {
                let side = self.side();
                Active::Spike {
                    remaining: self.rng.random_range(1..=3),
                    value: spike_value(&self.limits, side),
                }
            }
            AnomalyKind::Drift => {
                let side = self.side();
                Active::Drift {
                    start: t,
                    target: drift_target(&self.limits, side),
                }
            }
            AnomalyKind::Stuck => Active::Stuck {
                until: t + self.duration,
                value: self.last_value.unwrap_or(model_value as f32),
            },
            AnomalyKind::Dropout => Active::Dropout {
                until: t + self.duration,
            },
        }
    }

    fn side(&mut self) -> Side {
        let l = &self.limits;
        match (l.crit_low.is_some(), l.crit_high.is_some()) {
            (true, true) => {
                if self.rng.random::<bool>() {
                    Side::High
                } else {
                    Side::Low
                }
            }
            (true, false) => Side::Low,
            _ => Side::High,
        }
    }
}

fn flagged(value: f32) -> Sample {
    Sample {
        value,
        quality: Quality::SIMULATED_ANOMALY,
    }
}

/// The critical and warning thresholds on one side, defaulting to the range (critical)
/// and the nominal value (warning) where the channel has none.
fn thresholds(l: &ChannelLimits, side: Side) -> (f64, f64, f64) {
    match side {
        Side::High => (
            f64::from(l.crit_high.unwrap_or(l.range_max)),
            f64::from(l.warn_high.unwrap_or(l.nominal)),
            f64::from(l.range_max),
        ),
        Side::Low => (
            f64::from(l.crit_low.unwrap_or(l.range_min)),
            f64::from(l.warn_low.unwrap_or(l.nominal)),
            f64::from(l.range_min),
        ),
    }
}

/// `nominal + 3 × (critical − nominal)`, kept within 90 % of the way from the critical
/// threshold to the end of the physical range.
pub(crate) fn spike_value(l: &ChannelLimits, side: Side) -> f64 {
    let (crit, _, end) = thresholds(l, side);
    let nominal = f64::from(l.nominal);
    let wanted = nominal + 3.0 * (crit - nominal);
    let limit = crit + 0.9 * (end - crit);
    match side {
        Side::High => wanted.min(limit),
        Side::Low => wanted.max(limit),
    }
}

/// Half the warning-to-critical gap beyond the critical threshold, kept inside the range.
pub(crate) fn drift_target(l: &ChannelLimits, side: Side) -> f64 {
    let (crit, warn, end) = thresholds(l, side);
    let wanted = crit + 0.5 * (crit - warn);
    let limit = crit + 0.9 * (end - crit);
    match side {
        Side::High => wanted.min(limit),
        Side::Low => wanted.max(limit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensors::SimModel;
    use rand::SeedableRng;

    #[test]
    fn targets_cross_critical_but_stay_in_range() {
        for model in SimModel::ALL {
            let l = model.limits();
            let mut sides = vec![Side::High];
            if l.crit_low.is_some() {
                sides.push(Side::Low);
            }
            for side in sides {
                for v in [spike_value(&l, side), drift_target(&l, side)] {
                    let v = v as f32;
                    assert!(v >= l.range_min && v <= l.range_max, "{model:?} {v}");
                    match side {
                        Side::High => assert!(v > l.crit_high.unwrap(), "{model:?} {v}"),
                        Side::Low => assert!(v < l.crit_low.unwrap(), "{model:?} {v}"),
                    }
                }
            }
        }
        let furnace = SimModel::Furnace.limits();
        assert_eq!(spike_value(&furnace, Side::High), 1150.0);
        assert_eq!(spike_value(&furnace, Side::Low), 550.0);
    }

    fn injector(kinds: &[AnomalyKind], rate_per_hour: f64) -> Injector {
        Injector::new(
            &AnomalyConfig {
                rate_per_hour,
                kinds: kinds.to_vec(),
                duration: Duration::from_secs(5),
            },
            SimModel::CompressorPower.limits(),
            Duration::from_secs(1),
            ChaCha8Rng::seed_from_u64(3),
        )
    }

    #[test]
    fn stuck_repeats_the_reading_before_it() {
        // A rate so high that an anomaly starts on the second tick.
        let mut inj = injector(&[AnomalyKind::Stuck], 1e9);
        let first = inj.apply(0.0, 0.0, 50.0).unwrap();
        assert_eq!(first.quality, Quality::empty());
        for i in 1..=5 {
            let s = inj.apply(f64::from(i), 1.0, 50.0 + f64::from(i)).unwrap();
            assert_eq!(s, flagged(50.0), "tick {i}");
        }
        let after = inj.apply(6.0, 1.0, 56.0).unwrap();
        assert_eq!(after, Sample::new(56.0), "no anomaly starts as one ends");
    }

    #[test]
    fn dropout_then_flagged_reading() {
        let mut inj = injector(&[AnomalyKind::Dropout], 1e9);
        assert!(inj.apply(0.0, 0.0, 1.0).is_some());
        for i in 1..=5 {
            assert_eq!(inj.apply(f64::from(i), 1.0, 1.0), None, "tick {i}");
        }
        assert_eq!(inj.apply(6.0, 1.0, 1.0), Some(flagged(1.0)));
        assert_eq!(
            inj.apply(7.0, 1.0, 1.0),
            Some(Sample::new(1.0)),
            "a clean reading"
        );
        assert_eq!(inj.apply(8.0, 1.0, 1.0), None, "the next dropout");
    }

    #[test]
    fn drift_reaches_its_target_on_the_last_sample() {
        let mut inj = injector(&[AnomalyKind::Drift], 1e9);
        inj.apply(0.0, 0.0, 55.0);
        let values: Vec<f32> = (1..=5)
            .map(|i| inj.apply(f64::from(i), 1.0, 55.0).unwrap().value)
            .collect();
        assert!(values.windows(2).all(|w| w[0] < w[1]), "{values:?}");
        assert_eq!(values[4], 97.5);
        assert_eq!(inj.apply(6.0, 1.0, 55.0), Some(Sample::new(55.0)));
    }

    #[test]
    fn spikes_are_short_and_followed_by_a_clean_reading() {
        let mut inj = injector(&[AnomalyKind::Spike], 1e9);
        inj.apply(0.0, 0.0, 55.0);
        let mut run = 0;
        let mut runs = Vec::new();
        for i in 1..1000 {
            let s = inj.apply(f64::from(i), 1.0, 55.0).unwrap();
            if s.quality.contains(Quality::SIMULATED_ANOMALY) {
                assert_eq!(s.value, 144.0);
                run += 1;
            } else {
                assert_eq!(s.value, 55.0);
                runs.push(std::mem::take(&mut run));
            }
        }
        assert!(runs.iter().all(|r| (1..=3).contains(r)), "{runs:?}");
        for len in 1..=3 {
            assert!(runs.contains(&len), "no spike of {len} samples in {runs:?}");
        }
    }

    #[test]
    fn rate_zero_never_fires() {
        let mut inj = injector(&AnomalyKind::ALL, 0.0);
        for i in 0..100_000 {
            let s = inj.apply(f64::from(i), 1.0, 55.0).unwrap();
            assert_eq!(s.quality, Quality::empty());
        }
    }
}
