//! The ingester's counters, readable by the shutdown report and the tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::validate::RejectReason;

#[derive(Debug, Default)]
pub struct IngestStats {
    records: AtomicU64,
    batches: AtomicU64,
    inserted: AtomicU64,
    duplicates: AtomicU64,
    dead_lettered: [AtomicU64; RejectReason::ALL.len()],
    store_errors: AtomicU64,
    redis_errors: AtomicU64,
    flush_micros: AtomicU64,
}

impl IngestStats {
    pub fn batch(&self, records: usize, inserted: u64, duplicates: u64, took: Duration) {
        self.records.fetch_add(records as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.inserted.fetch_add(inserted, Ordering::Relaxed);
        self.duplicates.fetch_add(duplicates, Ordering::Relaxed);
        self.flush_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn dead_lettered(&self, reason: RejectReason) {
        self.dead_lettered[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn redis_error(&self) {
        self.redis_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> IngestSnapshot {
        let get = |cell: &AtomicU64| cell.load(Ordering::Relaxed);
        IngestSnapshot {
            records: get(&self.records),
            batches: get(&self.batches),
            inserted: get(&self.inserted),
            duplicates: get(&self.duplicates),
            dead_lettered: self.dead_lettered.iter().map(get).sum(),
            dead_lettered_by_reason: RejectReason::ALL
                .iter()
                .zip(&self.dead_lettered)
                .map(|(reason, cell)| (reason.code(), get(cell)))
                .collect(),
            store_errors: get(&self.store_errors),
            redis_errors: get(&self.redis_errors),
            flush_seconds: get(&self.flush_micros) as f64 / 1e6,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IngestSnapshot {
    pub records: u64,
    pub batches: u64,
    pub inserted: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    pub dead_lettered_by_reason: Vec<(&'static str, u64)>,
    pub store_errors: u64,
    pub redis_errors: u64,
    pub flush_seconds: f64,
}
