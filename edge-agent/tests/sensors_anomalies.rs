//! Anomalies injected into the simulated models: each kind looks as it should and is
//! flagged, at the configured rate.

use edge_agent::sensors::{AnomalyKind, Sample, SimModel};
use protocol::Quality;
use support::sensors::*;

mod support;

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
