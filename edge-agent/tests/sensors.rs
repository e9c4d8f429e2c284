//! The simulated sensor models through the public API: they know the seed channels,
//! stay deterministic, do not allocate while sampling, and behave like their machines
//! over an hour. Anomalies are in `sensors_anomalies.rs`; the file and command sources,
//! faults and ranges in `sensors_sources.rs`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use edge_agent::sensors::{build_source, AnomalyKind, SimModel, Source};
use support::sensors::*;

mod support;

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
