//! The process-wide Prometheus recorder, and counters and gauges that can also be read
//! back in the process (the `metrics` facade is write-only, but the periodic metrics
//! record, the shutdown report and the tests need the values).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Buckets of every histogram whose name ends in `_seconds`: latencies from a
/// millisecond to half a minute.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

/// Buckets of every histogram whose name ends in `_rows`: batch sizes, from a single row
/// to far beyond the largest batch a service is configured for.
const ROWS_BUCKETS: &[f64] = &[
    1.0, 10.0, 100.0, 1000.0, 5000.0, 10000.0, 20000.0, 50000.0, 100000.0,
];

/// The process-wide Prometheus recorder, installed on first use. There is one per
/// process, so tests that run several service instances in one process share it.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
            .and_then(|builder| {
                builder.set_buckets_for_metric(Matcher::Suffix("_rows".to_owned()), ROWS_BUCKETS)
            })
            .expect("the bucket lists are constants and not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed, and then its metrics win.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Folds recorded histogram samples into their buckets every few seconds. The exporter
/// (0.13) keeps raw samples until the next render, so without a scraper they would pile
/// up without bound (about 1 MB/s at 60k messages/s).
pub async fn prometheus_upkeep(stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                prometheus().render();
            }
        }
    }
}

/// A counter both readable here and exported.
pub struct Count {
    value: AtomicU64,
    exported: Counter,
}

impl Count {
    /// Counts from zero here; `exported` (from `metrics::counter!`) is shared by every
    /// `Count` of the same name and labels in the process.
    pub fn new(exported: Counter) -> Self {
        Self {
            value: AtomicU64::new(0),
            exported,
        }
    }

    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
        self.exported.increment(n);
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// A gauge both readable here and exported.
pub struct Level {
    value: AtomicU64,
    exported: Gauge,
}

impl Level {
    pub fn new(exported: Gauge) -> Self {
        Self {
            value: AtomicU64::new(0),
            exported,
        }
    }

    pub fn set(&self, value: u64) {
        self.value.store(value, Ordering::Relaxed);
        self.exported.set(value as f64);
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// One [`Count`] per reason of a fixed set: a series each (`{label}="{code}"`), exported
/// at zero from the start so a dashboard sees every reason before the first one, and
/// readable per reason and in total for the metrics record. Reasons are few (a handful),
/// so a lookup is a scan.
pub struct CountsByReason {
    counts: Vec<(&'static str, Count)>,
}

impl CountsByReason {
    /// The series `name{label=code}` for every code in `codes`.
    pub fn new(name: &'static str, label: &'static str, codes: &[&'static str]) -> Self {
        prometheus();
        Self {
            counts: codes
                .iter()
                .map(|&code| (code, Count::new(metrics::counter!(name, label => code))))
                .collect(),
        }
    }

    /// Counts one more of `code`, which must be one of the set (a code outside it is a
    /// bug, caught in debug builds; release builds count it in no series).
    pub fn add(&self, code: &str) {
        let count = self.counts.iter().find(|(known, _)| *known == code);
        debug_assert!(count.is_some(), "{code} is not one of the counted reasons");
        if let Some((_, count)) = count {
            count.add(1);
        }
    }

    pub fn get(&self, code: &str) -> u64 {
        self.counts
            .iter()
            .find(|(known, _)| *known == code)
            .map_or(0, |(_, count)| count.get())
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().map(|(_, count)| count.get()).sum()
    }

    /// Every reason with its count, in the set's order.
    pub fn by_code(&self) -> Vec<(&'static str, u64)> {
        self.counts
            .iter()
            .map(|(code, count)| (*code, count.get()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_reason_export_every_reason_from_zero_and_read_back() {
        let counts = CountsByReason::new("service_test_refused_total", "reason", &["big", "odd"]);
        counts.add("odd");
        counts.add("odd");
        assert_eq!(
            (counts.get("big"), counts.get("odd"), counts.total()),
            (0, 2, 2)
        );
        assert_eq!(counts.by_code(), [("big", 0), ("odd", 2)]);
        let text = prometheus().render();
        for line in [
            "service_test_refused_total{reason=\"big\"} 0",
            "service_test_refused_total{reason=\"odd\"} 2",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }

    #[test]
    fn histograms_get_buckets_by_name_suffix_and_values_read_back() {
        prometheus();
        metrics::histogram!("service_test_wait_seconds").record(0.003);
        metrics::histogram!("service_test_batch_rows").record(700.0);
        let count = Count::new(metrics::counter!("service_test_things_total"));
        count.add(2);
        count.add(1);
        let level = Level::new(metrics::gauge!("service_test_depth"));
        level.set(7);
        assert_eq!((count.get(), level.get()), (3, 7));

        let text = prometheus().render();
        for line in [
            "service_test_wait_seconds_bucket{le=\"0.005\"} 1",
            "service_test_wait_seconds_bucket{le=\"0.002\"} 0",
            "service_test_batch_rows_bucket{le=\"1000\"} 1",
            "service_test_batch_rows_bucket{le=\"100\"} 0",
            "service_test_things_total 3",
            "service_test_depth 7",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }
}
