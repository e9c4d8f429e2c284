//! The sensor sources through their public API: the simulated models behave like their
//! machines and stay deterministic, anomalies are injected and flagged as configured, the
//! file and command sources read real files and run real processes, and failures become
//! fault readings.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, Instant};

use edge_agent::sensors::{
    build_source, flag_out_of_range, sample_or_fault, AnomalyConfig, AnomalyKind, ChannelLimits,
    CommandSource, CommandSourceConfig, FaultTracker, FileSourceConfig, Sample, SimModel,
    SimulatedSourceConfig, Source, SourceConfig, SourceError,
};
use protocol::Quality;

// ---------------------------------------------------------------------------------------
// Allocation counting, per thread, so parallel tests do not disturb each other.

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// ---------------------------------------------------------------------------------------
// Helpers

fn simulated(model: SimModel) -> SourceConfig {
    SourceConfig::Simulated(SimulatedSourceConfig { model })
}

fn anomalies(kinds: &[AnomalyKind], rate_per_hour: f64, duration_secs: u64) -> AnomalyConfig {
    AnomalyConfig {
        rate_per_hour,
        kinds: kinds.to_vec(),
        duration: Duration::from_secs(duration_secs),
    }
}

/// Samples `model` at its seed period for `secs` seconds.
fn run(
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

fn values(samples: &[Option<Sample>]) -> Vec<f32> {
    samples.iter().map(|s| s.unwrap().value).collect()
}

fn same(a: &[Option<Sample>], b: &[Option<Sample>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (None, None) => true,
            (Some(x), Some(y)) => x.value.to_bits() == y.value.to_bits() && x.quality == y.quality,
            _ => false,
        })
}

fn within_warn(l: &ChannelLimits, v: f32) -> bool {
    l.warn_low.is_none_or(|low| v >= low) && l.warn_high.is_none_or(|high| v <= high)
}

fn beyond_crit(l: &ChannelLimits, v: f32) -> bool {
    l.crit_low.is_some_and(|low| v < low) || l.crit_high.is_some_and(|high| v > high)
}

fn beyond_warn(l: &ChannelLimits, v: f32) -> bool {
    !within_warn(l, v)
}

fn in_range(l: &ChannelLimits, v: f32) -> bool {
    v >= l.range_min && v <= l.range_max
}

fn mean(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64
}

fn std_dev(v: &[f32]) -> f64 {
    let m = mean(v);
    (v.iter().map(|&x| (f64::from(x) - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
}

fn fraction(v: &[f32], predicate: impl Fn(f32) -> bool) -> f64 {
    v.iter().filter(|&&x| predicate(x)).count() as f64 / v.len() as f64
}

// ---------------------------------------------------------------------------------------
// The seed channels

#[test]
fn models_know_the_seed_channels_of_the_migration() {
    let sql = include_str!("../../migrations/20261130000002_seed_devices.sql");
    let rows: Vec<Vec<String>> = sql
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("('"))
        .map(|l| {
            l.trim_start_matches('(')
                .trim_end_matches([',', ';'])
                .trim_end_matches(')')
                .split(',')
                .map(|f| f.trim().trim_matches('\'').to_string())
                .collect::<Vec<_>>()
        })
        .filter(|fields| fields.len() == 14)
        .collect();
    assert_eq!(
        rows.len(),
        SimModel::ALL.len(),
        "channel rows in the migration"
    );
    let num = |s: &str| -> Option<f32> {
        if s == "NULL" {
            None
        } else {
            Some(s.parse().unwrap())
        }
    };
    for model in SimModel::ALL {
        let c = model.seed_channel();
        let row = rows
            .iter()
            .find(|r| r[0] == c.device && r[1] == c.channel.to_string())
            .unwrap_or_else(|| {
                panic!("{model:?}: {}/{} not in the migration", c.device, c.channel)
            });
        assert_eq!(row[2], c.name, "{model:?}");
        assert_eq!(row[3], c.unit, "{model:?}");
        assert_eq!(
            row[4].parse::<u128>().unwrap(),
            c.period.as_millis(),
            "{model:?}"
        );
        let l = c.limits;
        assert_eq!(num(&row[5]), Some(l.range_min), "{model:?}");
        assert_eq!(num(&row[6]), Some(l.range_max), "{model:?}");
        assert_eq!(num(&row[7]), Some(l.nominal), "{model:?}");
        assert_eq!(num(&row[8]), l.warn_low, "{model:?}");
        assert_eq!(num(&row[9]), l.warn_high, "{model:?}");
        assert_eq!(num(&row[10]), l.crit_low, "{model:?}");
        assert_eq!(num(&row[11]), l.crit_high, "{model:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Determinism

#[test]
fn same_seed_same_samples_different_seed_different_samples() {
    let all = anomalies(&AnomalyKind::ALL, 120.0, 10);
    for model in SimModel::ALL {
        let a = run(model, Some(&all), 7, 900);
        let b = run(model, Some(&all), 7, 900);
        let c = run(model, Some(&all), 8, 900);
        assert!(same(&a, &b), "{model:?}: same seed, different samples");
        assert!(!same(&a, &c), "{model:?}: different seeds, same samples");
        assert!(
            a.iter().any(Option::is_none),
            "{model:?}: anomalies were injected"
        );
    }
}

#[test]
fn determinism_holds_for_an_irregular_schedule() {
    // The agent's ticks jitter; the same jittered schedule must replay exactly.
    let schedule: Vec<Duration> = (0..5000u64)
        .map(|i| Duration::from_millis(i * 1000 + (i * 7919) % 37))
        .collect();
    let all = anomalies(&AnomalyKind::ALL, 60.0, 20);
    for model in SimModel::ALL {
        let sample_all = || {
            let mut s =
                build_source(&simulated(model), Some(&all), 99, Duration::from_secs(1)).unwrap();
            schedule
                .iter()
                .map(|&t| s.sample(t).unwrap())
                .collect::<Vec<_>>()
        };
        assert!(same(&sample_all(), &sample_all()), "{model:?}");
    }
}

#[test]
fn anomalies_do_not_change_the_underlying_process() {
    let spikes = anomalies(&[AnomalyKind::Spike], 60.0, 10);
    for model in SimModel::ALL {
        let plain = run(model, None, 5, 1800);
        let injected = run(model, Some(&spikes), 5, 1800);
        let mut compared = 0;
        for (p, i) in plain.iter().zip(&injected) {
            let (p, i) = (p.unwrap(), i.unwrap());
            if i.quality.is_empty() {
                assert_eq!(p.value.to_bits(), i.value.to_bits(), "{model:?}");
                compared += 1;
            }
        }
        assert!(compared > plain.len() / 2, "{model:?}");
    }
}

#[test]
fn sampling_a_simulation_does_not_allocate() {
    let all = anomalies(&AnomalyKind::ALL, 600.0, 5);
    for model in SimModel::ALL {
        let mut s = build_source(&simulated(model), Some(&all), 3, Duration::from_secs(1)).unwrap();
        s.sample(Duration::ZERO).unwrap();
        for i in 1..1000u32 {
            let _ = s.sample(Duration::from_millis(u64::from(i) * 250)).unwrap();
        }
        let before = allocations();
        for i in 1000..20_000u32 {
            let _ = s.sample(Duration::from_millis(u64::from(i) * 250)).unwrap();
        }
        assert_eq!(
            allocations() - before,
            0,
            "{model:?} allocated while sampling"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Normal operation of each model over an hour

/// Checks the common properties and returns the samples after `warm_up_secs`.
fn normal_hour(model: SimModel, seed: u64, warm_up_secs: u64) -> Vec<f32> {
    let c = model.seed_channel();
    let l = c.limits;
    let all = values(&run(model, None, seed, warm_up_secs + 3600));
    for &v in &all {
        assert!(
            in_range(&l, v),
            "{model:?} seed {seed}: {v} outside the physical range"
        );
    }
    let skip = (warm_up_secs * 1000 / c.period.as_millis() as u64) as usize;
    let hour = all[skip..].to_vec();
    let inside = fraction(&hour, |v| within_warn(&l, v));
    assert!(
        inside >= 0.99,
        "{model:?} seed {seed}: only {inside} inside the warning band"
    );
    let band = l.warn_high.unwrap_or(l.range_max) - l.warn_low.unwrap_or(l.range_min);
    let spread = std_dev(&hour);
    assert!(
        spread > 0.01 * f64::from(band),
        "{model:?} seed {seed}: nearly constant (σ {spread})"
    );
    hour
}

#[test]
fn every_model_stays_in_range_and_inside_its_warning_band() {
    for seed in [1, 2, 3, 0xDEAD_BEEF] {
        for model in SimModel::ALL {
            let warm_up = if model == SimModel::Furnace { 1200 } else { 0 };
            normal_hour(model, seed, warm_up);
        }
    }
}

#[test]
fn furnace_heats_from_ambient_to_its_setpoint() {
    for seed in [1, 2, 3] {
        let v = values(&run(SimModel::Furnace, None, seed, 1800));
        assert!(v[0] < 60.0, "starts cold: {}", v[0]);
        let reached = v.iter().position(|&t| t >= 780.0).unwrap();
        assert!(
            (300..=900).contains(&reached),
            "reaches 780 °C after {reached} s"
        );
        // Heating is monotone apart from noise: each minute is warmer than the last.
        let minutes: Vec<f64> = v[..reached].chunks(60).map(mean).collect();
        assert!(minutes.windows(2).all(|w| w[1] > w[0]), "{minutes:?}");
        let settled = mean(&v[1200..1800]);
        assert!(
            (825.0..=875.0).contains(&settled),
            "settles near a setpoint: {settled}"
        );
        assert!(v.iter().all(|&t| t < 900.0), "overshoot stays below 900 °C");
    }
}

#[test]
fn furnace_recipes_change_the_setpoint_now_and_then() {
    let recipes = [830.0, 840.0, 850.0, 860.0, 870.0];
    let nearest = |m: f64| -> f64 {
        recipes
            .iter()
            .copied()
            .min_by(|a: &f64, b: &f64| (a - m).abs().total_cmp(&(b - m).abs()))
            .unwrap()
    };
    for seed in [1, 2, 3] {
        let v = values(&run(SimModel::Furnace, None, seed, 8 * 3600));
        // 10-minute means from the end of the warm-up, each matched to the nearest recipe.
        let means: Vec<f64> = v[1800..].chunks(600).map(mean).collect();
        let levels: Vec<f64> = means.iter().map(|&m| nearest(m)).collect();
        let held = means
            .iter()
            .filter(|&&m| (m - nearest(m)).abs() < 5.0)
            .count();
        assert!(
            held as f64 >= 0.8 * means.len() as f64,
            "seed {seed}: the furnace does not hold its setpoints: {means:?}"
        );
        // A plateau: the same recipe for two windows in a row (recipes last 20+ minutes).
        let mut plateaus: Vec<f64> = levels
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0])
            .collect();
        plateaus.sort_by(f64::total_cmp);
        plateaus.dedup();
        assert!(
            plateaus.len() >= 2,
            "seed {seed}: only the setpoints {plateaus:?} in 7.5 h: {means:?}"
        );
    }
}

#[test]
fn spindle_vibration_follows_the_load_cycle() {
    let v = normal_hour(SimModel::SpindleVibration, 4, 0);
    let cutting = fraction(&v, |x| x > 2.0);
    let idle = fraction(&v, |x| x < 1.0);
    assert!((0.4..0.9).contains(&cutting), "cutting {cutting}");
    assert!(idle > 0.1, "idle {idle}");
    // Phases last tens of seconds: count transitions between idle and cutting.
    let mut state = v[0] > 1.5;
    let mut transitions = 0;
    for &x in &v {
        if (x > 2.0 && !state) || (x < 1.0 && state) {
            state = !state;
            transitions += 1;
        }
    }
    // 3600 s / 135 s per part, 3 cutting phases per part: about 160 transitions.
    assert!(
        (100..250).contains(&transitions),
        "{transitions} transitions"
    );
}

#[test]
fn bearing_temperature_warms_up_with_the_spindle() {
    let v = normal_hour(SimModel::BearingTemperature, 4, 0);
    let first = mean(&v[..60]);
    let last = mean(&v[v.len() - 600..]);
    assert!(last > first + 10.0, "from {first} to {last}");
    assert!(
        (35.0..55.0).contains(&last),
        "settles around nominal: {last}"
    );
}

#[test]
fn press_cycles_once_per_stroke() {
    for seed in [1, 2, 3] {
        let v = normal_hour(SimModel::PressPressure, seed, 0);
        assert!(
            v.iter().all(|&p| p > 160.0),
            "no stroke falls below 160 bar"
        );
        let rises: Vec<usize> = (1..v.len())
            .filter(|&i| v[i - 1] < 220.0 && v[i] >= 220.0)
            .collect();
        let intervals: Vec<f64> = rises
            .windows(2)
            .map(|w| (w[1] - w[0]) as f64 * 0.2)
            .collect();
        let mut sorted = intervals.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let regular = intervals
            .iter()
            .filter(|&&i| (i - median).abs() <= 1.0)
            .count() as f64
            / intervals.len() as f64;
        assert!((9.0..=11.0).contains(&median), "stroke period {median} s");
        assert!(regular >= 0.8, "only {regular} of strokes near the period");
        assert!(
            (250..=400).contains(&rises.len()),
            "{} strokes in an hour",
            rises.len()
        );
    }
}

#[test]
fn booth_drifts_slowly_around_its_setpoints() {
    let humidity = normal_hour(SimModel::BoothHumidity, 6, 0);
    let temperature = normal_hour(SimModel::BoothTemperature, 6, 0);
    assert!((50.0..60.0).contains(&mean(&humidity)));
    assert!((21.0..23.0).contains(&mean(&temperature)));
    // Slow: consecutive readings (2 s apart) differ far less than the hour's spread.
    let step = |v: &[f32]| {
        mean(
            &v.windows(2)
                .map(|w| (w[1] - w[0]).abs())
                .collect::<Vec<_>>(),
        )
    };
    assert!(step(&humidity) < std_dev(&humidity));
}

#[test]
fn compressor_power_has_two_states_and_current_follows() {
    let power = normal_hour(SimModel::CompressorPower, 8, 0);
    let current = normal_hour(SimModel::CompressorCurrent, 9, 0);
    let loaded = fraction(&power, |p| (50.0..70.0).contains(&p));
    let unloaded = fraction(&power, |p| (12.0..25.0).contains(&p));
    let between = fraction(&power, |p| (25.0..50.0).contains(&p));
    assert!(
        loaded > 0.2 && unloaded > 0.2,
        "loaded {loaded}, unloaded {unloaded}"
    );
    assert!(between < 0.1, "{between} between the states");
    // Each channel has its own seed, yet both see the same load cycle.
    let agree = power
        .iter()
        .zip(&current)
        .filter(|(&p, &i)| (p > 36.0) == (i > 73.0))
        .count() as f64
        / power.len() as f64;
    assert!(agree > 0.98, "power and current agree on {agree} of ticks");
    let loaded_current = mean(
        &power
            .iter()
            .zip(&current)
            .filter(|(&p, _)| (54.0..56.0).contains(&p))
            .map(|(_, &i)| i)
            .collect::<Vec<_>>(),
    );
    assert!(
        (88.0..98.0).contains(&loaded_current),
        "{loaded_current} A at 55 kW"
    );
}

// ---------------------------------------------------------------------------------------
// Anomalies

/// A run of consecutive flagged readings, or of missing ones.
#[derive(Debug)]
enum Run {
    Flagged {
        values: Vec<f32>,
        before: Option<f32>,
    },
    Missing {
        len: usize,
        next: Option<Sample>,
    },
}

/// The runs of anomalies with the tick each starts at.
fn runs(samples: &[Option<Sample>]) -> Vec<(usize, Run)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < samples.len() {
        match samples[i] {
            None => {
                let start = i;
                while i < samples.len() && samples[i].is_none() {
                    i += 1;
                }
                out.push((
                    start,
                    Run::Missing {
                        len: i - start,
                        next: samples.get(i).copied().flatten(),
                    },
                ));
                // The flagged reading after a gap belongs to the dropout.
                i += 1;
            }
            Some(s) if s.quality.contains(Quality::SIMULATED_ANOMALY) => {
                let start = i;
                let before = i.checked_sub(1).and_then(|j| samples[j]).map(|s| s.value);
                let mut values = Vec::new();
                while let Some(Some(s)) = samples.get(i) {
                    if !s.quality.contains(Quality::SIMULATED_ANOMALY) {
                        break;
                    }
                    values.push(s.value);
                    i += 1;
                }
                out.push((start, Run::Flagged { values, before }));
            }
            Some(_) => i += 1,
        }
    }
    // A run cut by the end of the simulation is incomplete.
    out.pop();
    out
}

const DURATION_SECS: u64 = 20;

fn ticks_per_anomaly(model: SimModel) -> usize {
    (DURATION_SECS * 1000 / model.seed_channel().period.as_millis() as u64) as usize
}

fn injected(model: SimModel, kind: AnomalyKind, seed: u64) -> Vec<Run> {
    let config = anomalies(&[kind], 90.0, DURATION_SECS);
    let samples = run(model, Some(&config), seed, 3 * 3600);
    let l = model.limits();
    for s in samples.iter().flatten() {
        assert!(
            in_range(&l, s.value),
            "{model:?} {kind:?}: {} out of range",
            s.value
        );
        assert!(s.quality.difference(Quality::SIMULATED_ANOMALY).is_empty());
    }
    // The furnace starts cold, outside its warning band: judge anomalies once it is hot.
    let warm = if model == SimModel::Furnace { 1200 } else { 0 };
    let found: Vec<Run> = runs(&samples)
        .into_iter()
        .filter(|(start, _)| *start >= warm)
        .map(|(_, run)| run)
        .collect();
    assert!(
        found.len() >= 50,
        "{model:?} {kind:?}: only {} anomalies in 3 h",
        found.len()
    );
    found
}

#[test]
fn spikes_go_far_beyond_the_critical_threshold() {
    for model in SimModel::ALL {
        let l = model.limits();
        for run in injected(model, AnomalyKind::Spike, 11) {
            let Run::Flagged { values, .. } = run else {
                panic!("{model:?}: a spike made a gap")
            };
            assert!((1..=3).contains(&values.len()), "{model:?}: {values:?}");
            for v in values {
                assert!(beyond_crit(&l, v), "{model:?}: spike {v} within critical");
                let nominal = l.nominal;
                let crit = if v > nominal { l.crit_high } else { l.crit_low }.unwrap();
                assert!(
                    (v - nominal).abs() >= 1.5 * (crit - nominal).abs(),
                    "{model:?}: spike {v} not far beyond {crit}"
                );
            }
        }
    }
}

#[test]
fn drifts_cross_warning_then_critical() {
    for model in SimModel::ALL {
        let l = model.limits();
        let mut high = 0;
        let mut low = 0;
        for run in injected(model, AnomalyKind::Drift, 12) {
            let Run::Flagged { values, .. } = run else {
                panic!("{model:?}: a drift made a gap")
            };
            assert_eq!(values.len(), ticks_per_anomaly(model), "{model:?}");
            assert!(
                within_warn(&l, values[0]),
                "{model:?}: starts inside: {values:?}"
            );
            let first_warn = values.iter().position(|&v| beyond_warn(&l, v)).unwrap();
            let first_crit = values.iter().position(|&v| beyond_crit(&l, v)).unwrap();
            assert!(first_warn < first_crit, "{model:?}: {values:?}");
            let last = *values.last().unwrap();
            assert!(beyond_crit(&l, last), "{model:?}: ends at {last}");
            if last > l.nominal {
                high += 1;
            } else {
                low += 1;
            }
        }
        assert!(high > 0, "{model:?}: no drift upward");
        assert_eq!(low > 0, l.crit_low.is_some(), "{model:?}: drifts downward");
    }
}

#[test]
fn stuck_values_repeat_the_last_reading() {
    for model in SimModel::ALL {
        for run in injected(model, AnomalyKind::Stuck, 13) {
            let Run::Flagged { values, before } = run else {
                panic!("{model:?}: a stuck value made a gap")
            };
            assert_eq!(values.len(), ticks_per_anomaly(model), "{model:?}");
            let frozen = before.unwrap();
            assert!(
                values.iter().all(|v| v.to_bits() == frozen.to_bits()),
                "{model:?}: {values:?} after {frozen}"
            );
        }
    }
}

#[test]
fn dropouts_leave_a_gap_and_flag_the_next_reading() {
    for model in SimModel::ALL {
        for run in injected(model, AnomalyKind::Dropout, 14) {
            let Run::Missing { len, next } = run else {
                panic!("{model:?}: a dropout made flagged readings")
            };
            assert_eq!(len, ticks_per_anomaly(model), "{model:?}");
            let next = next.unwrap();
            assert_eq!(next.quality, Quality::SIMULATED_ANOMALY, "{model:?}");
            assert!(within_warn(&model.limits(), next.value), "{model:?}");
        }
    }
}

#[test]
fn with_all_kinds_each_kind_appears() {
    let config = anomalies(&AnomalyKind::ALL, 120.0, DURATION_SECS);
    for model in SimModel::ALL {
        let l = model.limits();
        let samples = run(model, Some(&config), 15, 3 * 3600);
        let (mut spikes, mut drifts, mut stuck, mut dropouts) = (0, 0, 0, 0);
        for (_, run) in runs(&samples) {
            match run {
                Run::Missing { .. } => dropouts += 1,
                Run::Flagged { values, before } => {
                    let flat = values.iter().all(|v| Some(*v) == before);
                    if values.len() <= 3 && values.iter().all(|&v| beyond_crit(&l, v)) {
                        spikes += 1;
                    } else if flat {
                        stuck += 1;
                    } else if beyond_crit(&l, *values.last().unwrap()) {
                        drifts += 1;
                    } else {
                        panic!("{model:?}: unexplained flagged run {values:?}");
                    }
                }
            }
        }
        for (kind, n) in [
            ("spike", spikes),
            ("drift", drifts),
            ("stuck", stuck),
            ("dropout", dropouts),
        ] {
            assert!(n >= 10, "{model:?}: {n} {kind}s in 3 h");
        }
        // Poisson at 120/h over the time not spent in anomalies: check the order of magnitude.
        let total = spikes + drifts + stuck + dropouts;
        assert!(
            (150..=400).contains(&total),
            "{model:?}: {total} anomalies in 3 h"
        );
    }
}

#[test]
fn rate_zero_injects_nothing() {
    let config = anomalies(&AnomalyKind::ALL, 0.0, DURATION_SECS);
    for model in SimModel::ALL {
        let samples = run(model, Some(&config), 16, 3600);
        assert!(
            samples
                .iter()
                .all(|s| s.is_some_and(|s| s.quality.is_empty())),
            "{model:?}"
        );
        assert!(same(&samples, &run(model, None, 16, 3600)), "{model:?}");
    }
}

// ---------------------------------------------------------------------------------------
// File source

fn file_source(path: &Path, scale: f64, offset: f64) -> Box<dyn Source> {
    let config = SourceConfig::File(FileSourceConfig {
        path: path.to_path_buf(),
        scale,
        offset,
    });
    build_source(&config, None, 0, Duration::from_secs(1)).unwrap()
}

#[test]
fn file_source_applies_scale_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("temp");
    std::fs::write(&path, "48312\n").unwrap();
    let value = file_source(&path, 0.001, 0.0)
        .sample(Duration::ZERO)
        .unwrap()
        .unwrap();
    assert!((value.value - 48.312).abs() < 1e-4, "{value:?}");
    assert_eq!(value.quality, Quality::empty());
    std::fs::write(&path, "in0: 1.25 V").unwrap();
    let value = file_source(&path, 2.0, -0.5)
        .sample(Duration::ZERO)
        .unwrap()
        .unwrap();
    assert_eq!(value.value, 2.0);
}

#[test]
fn file_source_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, "N/A\n").unwrap();
    let err = file_source(&garbage, 1.0, 0.0)
        .sample(Duration::ZERO)
        .unwrap_err();
    assert!(matches!(err, SourceError::FileHasNoNumber { .. }), "{err}");
    assert!(
        err.to_string().contains(&*garbage.to_string_lossy()),
        "{err}"
    );
    assert!(err.to_string().contains("N/A"), "{err}");

    let missing = dir.path().join("missing");
    let err = file_source(&missing, 1.0, 0.0)
        .sample(Duration::ZERO)
        .unwrap_err();
    assert!(matches!(err, SourceError::ReadFile { .. }), "{err}");
    assert!(
        err.to_string().contains(&*missing.to_string_lossy()),
        "{err}"
    );
}

#[test]
fn the_cpu_thermal_zone_reads_as_a_temperature() {
    let path = Path::new("/sys/class/thermal/thermal_zone0/temp");
    // Every Pi has this file, and most Linux machines; a container or VM may not. Only
    // then is this case skipped, silently, because there is nothing to read.
    if !path.exists() {
        return;
    }
    let celsius = file_source(path, 0.001, 0.0)
        .sample(Duration::ZERO)
        .unwrap()
        .unwrap();
    assert!((-40.0..=125.0).contains(&celsius.value), "{celsius:?}");
}

// ---------------------------------------------------------------------------------------
// Command source

fn command_source(script: &str, timeout: Duration) -> Box<dyn Source> {
    let config = SourceConfig::Command(CommandSourceConfig {
        program: "sh".into(),
        args: vec!["-c".into(), script.into()],
        timeout,
        scale: 1.0,
        offset: 0.0,
    });
    build_source(&config, None, 0, Duration::from_secs(1)).unwrap()
}

/// Samples until the source reports something other than "no reading yet", and how long
/// that took.
fn first_result(source: &mut dyn Source) -> (Result<Sample, SourceError>, Duration) {
    let start = Instant::now();
    loop {
        match source.sample(start.elapsed()) {
            Ok(None) => {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "no result in 30 s"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(Some(sample)) => return (Ok(sample), start.elapsed()),
            Err(err) => return (Err(err), start.elapsed()),
        }
    }
}

#[test]
fn command_source_parses_the_first_number() {
    let mut source = command_source("echo temp=48.3\\'C", Duration::from_secs(5));
    assert_eq!(
        source.sample(Duration::ZERO).unwrap(),
        None,
        "the first sample only starts the command"
    );
    let (result, _) = first_result(source.as_mut());
    assert_eq!(result.unwrap(), Sample::new(48.3));
    // It keeps working, one run per sample.
    let (again, _) = first_result(source.as_mut());
    assert_eq!(again.unwrap(), Sample::new(48.3));
}

#[test]
fn command_source_scales_and_runs_on_the_calling_thread_on_request() {
    let source = CommandSource::new(&CommandSourceConfig {
        program: "sh".into(),
        args: vec!["-c".into(), "echo 'temp=48.3'".into()],
        timeout: Duration::from_secs(5),
        scale: 10.0,
        offset: 1.0,
    });
    assert_eq!(source.measure_blocking().unwrap(), 484.0);
}

#[test]
fn command_source_failures_are_errors_naming_the_program() {
    let cases = [
        ("echo 12; exit 1", "non-zero exit"),
        ("echo no reading here", "no number"),
    ];
    for (script, what) in cases {
        let mut source = command_source(script, Duration::from_secs(5));
        let (result, _) = first_result(source.as_mut());
        let err = result.expect_err(what);
        assert!(err.to_string().contains("sh"), "{what}: {err}");
        match what {
            "non-zero exit" => assert!(matches!(err, SourceError::CommandFailed { .. }), "{err}"),
            _ => {
                assert!(
                    matches!(err, SourceError::CommandHasNoNumber { .. }),
                    "{err}"
                );
                assert!(err.to_string().contains("no reading here"), "{err}");
            }
        }
    }
    let config = SourceConfig::Command(CommandSourceConfig {
        program: "/nonexistent/vcgencmd".into(),
        args: vec![],
        timeout: Duration::from_secs(1),
        scale: 1.0,
        offset: 0.0,
    });
    let mut source = build_source(&config, None, 0, Duration::from_secs(1)).unwrap();
    let (result, _) = first_result(source.as_mut());
    let err = result.unwrap_err();
    assert!(matches!(err, SourceError::Spawn { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/vcgencmd"), "{err}");
}

#[test]
fn a_command_past_its_timeout_is_killed_and_reported() {
    let timeout = Duration::from_millis(300);
    // `sh` forks `sleep`, so this also covers a grandchild keeping the output pipe open.
    // The command would run for 30 s: reported well before that means the timeout
    // ended it (no tighter bound: the machine may be busy).
    let runs_for = Duration::from_secs(30);
    let mut source = command_source("sleep 30; echo 1", timeout);
    let (result, took) = first_result(source.as_mut());
    let err = result.unwrap_err();
    assert!(matches!(err, SourceError::CommandTimedOut { .. }), "{err}");
    assert!(err.to_string().contains("sh"), "{err}");
    assert!(took >= timeout, "reported after {took:?}");
    assert!(took < runs_for / 2, "reported after {took:?}");
    // Sampling never blocks while the straggler lives on.
    let start = Instant::now();
    for _ in 0..5 {
        let _ = source.sample(Duration::ZERO);
    }
    assert!(
        start.elapsed() < runs_for / 2,
        "sampling waited for the straggler"
    );
}

#[test]
fn the_timed_out_process_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    // `exec` makes the shell itself the sleeper, so its pid is the process to be killed.
    let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
    // Long enough for the shell to write its pid even on a loaded machine.
    let mut source = command_source(&script, Duration::from_secs(2));
    let (result, _) = first_result(source.as_mut());
    assert!(
        matches!(result, Err(SourceError::CommandTimedOut { .. })),
        "{result:?}"
    );
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    assert!(!pid.trim().is_empty(), "the shell wrote no pid");
    let proc_dir = format!("/proc/{}", pid.trim());
    assert!(
        !Path::new(&proc_dir).exists(),
        "{proc_dir} still exists: not killed or not reaped"
    );
}

// ---------------------------------------------------------------------------------------
// Faults and ranges

#[test]
fn a_failing_source_yields_fault_readings_until_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hwmon_temp1_input");
    let mut source = file_source(&path, 0.001, 0.0);
    let mut tracker = FaultTracker::new("test/0");
    for tick in 1..=3 {
        let s = sample_or_fault(&mut source, Duration::from_secs(tick), &mut tracker).unwrap();
        assert!(s.value.is_nan());
        assert_eq!(s.quality, Quality::SENSOR_FAULT);
        assert_eq!(tracker.failed_ticks(), tick);
    }
    std::fs::write(&path, "41000").unwrap();
    let s = sample_or_fault(&mut source, Duration::from_secs(4), &mut tracker).unwrap();
    assert_eq!(s, Sample::new(41.0));
    assert_eq!(tracker.failed_ticks(), 0);
}

#[test]
fn readings_outside_the_physical_range_are_flagged() {
    let l = SimModel::BearingTemperature.limits();
    let hot = flag_out_of_range(Sample::new(151.0), l.range_min, l.range_max);
    assert_eq!(hot.quality, Quality::OUT_OF_RANGE);
    let fine = flag_out_of_range(Sample::new(45.0), l.range_min, l.range_max);
    assert_eq!(fine.quality, Quality::empty());
    let fault = flag_out_of_range(Sample::fault(), l.range_min, l.range_max);
    assert_eq!(fault.quality, Quality::SENSOR_FAULT);
}
