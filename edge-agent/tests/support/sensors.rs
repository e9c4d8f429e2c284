//! Helpers of the sensor tests (`tests/sensors*.rs`): simulated sources sampled over a
//! span, and checks of values against a channel's limits.

use std::time::Duration;

use edge_agent::sensors::{
    build_source, AnomalyConfig, AnomalyKind, ChannelLimits, Sample, SimModel,
    SimulatedSourceConfig, SourceConfig,
};

pub fn simulated(model: SimModel) -> SourceConfig {
    SourceConfig::Simulated(SimulatedSourceConfig { model })
}

pub fn anomalies(kinds: &[AnomalyKind], rate_per_hour: f64, duration_secs: u64) -> AnomalyConfig {
    AnomalyConfig {
        rate_per_hour,
        kinds: kinds.to_vec(),
        duration: Duration::from_secs(duration_secs),
    }
}

/// Samples `model` at its seed period for `secs` seconds.
pub fn run(
    model: SimModel,
    anomalies: Option<&AnomalyConfig>,
    seed: u64,
    secs: u64,
) -> Vec<Option<Sample>> {
    let period = model.seed_channel().period;
    let mut source = build_source(&simulated(model), anomalies, seed, period).unwrap();
    let ticks = secs * 1000 / period.as_millis() as u64;
    (0..ticks)
        .map(|i| source.sample(period * i as u32).unwrap())
        .collect()
}

pub fn values(samples: &[Option<Sample>]) -> Vec<f32> {
    samples.iter().map(|s| s.unwrap().value).collect()
}

pub fn same(a: &[Option<Sample>], b: &[Option<Sample>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (None, None) => true,
            (Some(x), Some(y)) => x.value.to_bits() == y.value.to_bits() && x.quality == y.quality,
            _ => false,
        })
}

pub fn within_warn(l: &ChannelLimits, v: f32) -> bool {
    l.warn_low.is_none_or(|low| v >= low) && l.warn_high.is_none_or(|high| v <= high)
}

pub fn beyond_crit(l: &ChannelLimits, v: f32) -> bool {
    l.crit_low.is_some_and(|low| v < low) || l.crit_high.is_some_and(|high| v > high)
}

pub fn beyond_warn(l: &ChannelLimits, v: f32) -> bool {
    !within_warn(l, v)
}

pub fn in_range(l: &ChannelLimits, v: f32) -> bool {
    v >= l.range_min && v <= l.range_max
}

pub fn mean(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64
}

pub fn std_dev(v: &[f32]) -> f64 {
    let m = mean(v);
    (v.iter().map(|&x| (f64::from(x) - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
}

pub fn fraction(v: &[f32], predicate: impl Fn(f32) -> bool) -> f64 {
    v.iter().filter(|&&x| predicate(x)).count() as f64 / v.len() as f64
}
