//! The written report (`docs/benchmarks.md`): machine, date, commit and settings; the
//! bars with their verdicts; each hop's rate beside its ceiling from the same run; CPU per
//! process; latency; footprint; the bottleneck as the numbers show it, with the profile's
//! top entries; and the component benches' raw output as an appendix.
//!
//! Everything here is computed from the measurements handed in; the wording of the
//! bottleneck analysis is chosen by the numbers, not written in advance.
//!
//! This module holds what the report is written from (`Report`) and the bars it is judged
//! by; each section has its own writer, grouped by concern in the submodules, and
//! `Report::markdown` puts them together in the order the report reads.

mod bottleneck;
mod confirmations;
mod console;
mod end_to_end;
mod footprint;
pub(crate) mod format;
mod settings;
mod summary;
#[cfg(test)]
mod tests;

use crate::components::Components;
use crate::e2e::{LatencyRun, Throughput, Timing};
use crate::machine::Machine;

pub const BAR_RATE: f64 = 100_000.0;
pub const BAR_P99_MS: f64 = 250.0;
/// Issue 14: confirmations cost at most 5 % of the throughput, a p99 PUBACK →
/// confirmation wait of 500 ms at ~10k readings/s, and no agent RSS (0.2 MiB).
pub const BAR_CONFIRM_RATIO: f64 = 0.95;
pub const BAR_CONFIRM_WAIT_MS: u64 = 500;
pub const BAR_CONFIRM_RSS_MIB: f64 = 0.2;
/// Issue 14: coverage upkeep at most 5 % of the ingester's CPU per reading, and at most
/// 5 % more SD-card writes with confirmations than without.
pub const BAR_COVERAGE_SHARE: f64 = 0.05;
pub const BAR_CONFIRM_WRITES: f64 = 0.05;

/// Everything one run measured, as the report is written from it.
pub struct Report<'a> {
    pub machine: &'a Machine,
    pub quick: bool,
    pub timing: &'a Timing,
    pub components: &'a Components,
    pub throughput: &'a [Throughput],
    pub latency: &'a [LatencyRun],
    /// The first throughput scenario again, with `delivery.confirm = "broker"`.
    pub broker: &'a Throughput,
    pub configs: &'a [(String, String)],
    pub chart_file: &'a str,
    pub started: &'a str,
    pub total_minutes: f64,
}

impl Report<'_> {
    /// The whole report, its sections in the order it reads.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        self.heading(&mut md);
        self.bars(&mut md);
        self.hops(&mut md);
        self.cpu(&mut md);
        self.latency(&mut md);
        self.confirmations(&mut md);
        self.footprint(&mut md);
        self.console(&mut md);
        self.bottleneck(&mut md);
        self.settings(&mut md);
        self.appendix(&mut md);
        md
    }
}
