//! (f): what coverage upkeep costs (issue 14), the same batches written with and
//! without `coverage::record`, with the CPU time of this thread and of the connection's
//! PostgreSQL backend from /proc/…/schedstat.

use std::time::{Duration, Instant};

use cloud_ingester::coverage;
use cloud_ingester::rows::Row;
use sqlx::postgres::PgConnection;
use sqlx::Connection as _;

use crate::report::{fmt_rate, median, rate};
use crate::sql::{stage, BREAKDOWN, INSERT_SELECT, STATS_UPSERT};
use crate::{Settings, DEVICES, READINGS_PER_FRAME};

/// CPU time in ns, from the first field of /proc/…/schedstat (time spent on a CPU): of
/// this thread (the only client thread) and of one PostgreSQL backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    client_ns: u64,
    server_ns: u64,
}

/// A backend whose /proc entry this process can read (PostgreSQL on this host).
#[derive(Debug, Clone, Copy)]
pub struct Backend(Option<i32>);

impl Cpu {
    pub fn readable(pid: i32) -> Backend {
        Backend(schedstat_ns(&format!("/proc/{pid}/schedstat")).map(|_| pid))
    }

    fn now(backend: Backend) -> Self {
        Self {
            client_ns: schedstat_ns("/proc/thread-self/schedstat").unwrap_or(0),
            server_ns: backend
                .0
                .and_then(|pid| schedstat_ns(&format!("/proc/{pid}/schedstat")))
                .unwrap_or(0),
        }
    }

    fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            client_ns: self.client_ns.saturating_sub(earlier.client_ns),
            server_ns: self.server_ns.saturating_sub(earlier.server_ns),
        }
    }

    fn add(&mut self, other: Cpu) {
        self.client_ns += other.client_ns;
        self.server_ns += other.server_ns;
    }

    fn total_ns(self) -> u64 {
        self.client_ns + self.server_ns
    }
}

fn schedstat_ns(path: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One pass of (f) over a row set: the whole write, and the `coverage::record` calls in it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Upkeep {
    readings: u64,
    wall: Duration,
    cpu: Cpu,
    coverage_wall: Duration,
    coverage_cpu: Cpu,
}

impl Upkeep {
    pub fn rate(&self) -> f64 {
        rate(self.readings, self.wall)
    }

    /// µs of CPU (client + backend) a reading.
    fn us_per_reading(&self, cpu: Cpu) -> f64 {
        cpu.total_ns() as f64 / 1e3 / self.readings.max(1) as f64
    }

    /// coverage::record's share of the whole write's CPU (client + backend).
    pub fn coverage_share(&self) -> f64 {
        self.coverage_cpu.total_ns() as f64 / self.cpu.total_ns().max(1) as f64
    }
}

/// (f): `rows` in batches of `batch`, one transaction each, as write_batch's plain path
/// does it (staging COPY, then the INSERT ... SELECT with the stats upsert, BREAKDOWN step
/// 3), and with `coverage` also `coverage::record` on the batch, the call `Store` makes,
/// before the commit. The tables (reading_coverage too) must be empty.
pub async fn upkeep(
    conn: &mut PgConnection,
    backend: Backend,
    rows: &[Row],
    batch: usize,
    coverage: bool,
) -> anyhow::Result<Upkeep> {
    let sql = BREAKDOWN[2]
        .1
        .replace("{insert}", INSERT_SELECT)
        .replace("{stats}", STATS_UPSERT);
    let mut run = Upkeep {
        readings: rows.len() as u64,
        ..Upkeep::default()
    };
    let cpu = Cpu::now(backend);
    let t = Instant::now();
    for chunk in rows.chunks(batch) {
        let mut tx = conn.begin().await?;
        stage(&mut tx, chunk).await?;
        sqlx::query(&sql).execute(&mut *tx).await?;
        if coverage {
            let before = Cpu::now(backend);
            let started = Instant::now();
            let held = coverage::record(&mut tx, chunk).await?;
            run.coverage_wall += started.elapsed();
            run.coverage_cpu.add(Cpu::now(backend).since(before));
            anyhow::ensure!(!held.is_empty(), "coverage::record returned nothing");
        }
        tx.commit().await?;
    }
    run.wall = t.elapsed();
    run.cpu = Cpu::now(backend).since(cpu);
    Ok(run)
}

/// (f)'s figures: medians over the rounds of each pass's figures and of each round's
/// ratios.
pub fn print_upkeep(
    settings: &Settings,
    rounds: &[[Upkeep; 2]],
    small: &[[Upkeep; 2]],
    small_readings: usize,
    backend: Backend,
    store_rate: f64,
) {
    let med = |f: &dyn Fn(&[Upkeep; 2]) -> f64, of: &[[Upkeep; 2]]| {
        median(&mut of.iter().map(f).collect::<Vec<_>>())
    };
    let rate_ratio = |p: &[Upkeep; 2]| p[1].rate() / p[0].rate();
    let share = |p: &[Upkeep; 2]| p[1].coverage_share();
    let extra =
        |p: &[Upkeep; 2]| 1.0 - p[0].cpu.total_ns() as f64 / p[1].cpu.total_ns().max(1) as f64;
    let wall_share = |p: &[Upkeep; 2]| {
        p[1].coverage_wall.as_secs_f64() / p[1].wall.as_secs_f64().max(f64::MIN_POSITIVE)
    };
    let where_cpu = if backend.0.is_some() {
        "CPU: this thread + the connection's PostgreSQL backend"
    } else {
        "CPU: this thread only (PostgreSQL's backend is not on this host)"
    };
    println!();
    println!(
        "(f) coverage upkeep: the same batches of {} rows written without and with coverage::record ({} rounds, median)",
        settings.batch,
        rounds.len()
    );
    for (label, i) in [
        ("(f0) write_batch's plain statement, no coverage", 0),
        ("(f1) the same + coverage::record (what Store does)", 1),
    ] {
        let us = |c: &dyn Fn(&Upkeep) -> f64| {
            median(&mut rounds.iter().map(|p| c(&p[i])).collect::<Vec<_>>())
        };
        println!(
            "  {label:<60} {:>8}   {:.2} µs CPU/reading (client {:.2}, PostgreSQL {:.2})",
            fmt_rate(us(&|u| u.rate())),
            us(&|u| u.us_per_reading(u.cpu)),
            us(&|u| u.cpu.client_ns as f64 / 1e3 / u.readings.max(1) as f64),
            us(&|u| u.cpu.server_ns as f64 / 1e3 / u.readings.max(1) as f64),
        );
    }
    println!(
        "  {:<60} {:>8}",
        "(b) for comparison: Store::write_batch (same statements + coverage)",
        fmt_rate(store_rate)
    );
    println!(
        "  (f1)/(f0) write rate = {:.1}%",
        100.0 * med(&rate_ratio, rounds)
    );
    let cov_us = med(&|p| p[1].us_per_reading(p[1].coverage_cpu), rounds);
    let cov_client = med(
        &|p| p[1].coverage_cpu.client_ns as f64 / 1e3 / p[1].readings.max(1) as f64,
        rounds,
    );
    println!(
        "  coverage::record CPU share of (f1) = {:.1}%, {cov_us:.3} µs/reading (client {cov_client:.3}; {:.1}% of (f1)'s wall time)   (bar: <= 5%)",
        100.0 * med(&share, rounds),
        100.0 * med(&wall_share, rounds),
    );
    println!(
        "  (f1) - (f0) CPU = {:+.1}% of (f1)'s CPU   (the same cost by difference, noisier)",
        100.0 * med(&extra, rounds)
    );
    if !small.is_empty() {
        println!(
            "  at {} rows a batch ({} readings per coverage row; the first {small_readings} readings): (f1)/(f0) write rate = {:.1}%, coverage::record CPU share = {:.1}% ({:.3} µs/reading)",
            settings.small_batch,
            readings_per_coverage_row(settings.small_batch),
            100.0 * med(&rate_ratio, small),
            100.0 * med(&share, small),
            med(&|p| p[1].us_per_reading(p[1].coverage_cpu), small),
        );
    }
    println!(
        "  How measured: one connection of its own, tables (reading_coverage too) truncated before each pass; \
         per batch one transaction: staging COPY, write_batch's plain INSERT ... SELECT with the stats upsert \
         (breakdown step 3), then in (f1) coverage::record on the batch, as Store calls it, then COMMIT. {where_cpu}, \
         from /proc/<task>/schedstat (ns on a CPU), read around each pass and around each coverage::record call; \
         WAL writer and checkpointer are not counted. The share is coverage::record's CPU over the whole of (f1)'s \
         (client and backend together, as the ingest loop is serial); (f0) and (f1) alternate in order from round \
         to round. The data: {DEVICES} devices, frames of {READINGS_PER_FRAME} readings round robin, so a batch of {} \
         rows touches {} (device, boot) coverage rows, {} readings each. The statement's work goes with the coverage \
         rows a batch touches more than with its readings, so per reading it costs most when each device has a \
         single frame in a batch (small batches, many devices): the line at {} rows a batch shows that case.",
        settings.batch,
        settings.batch.div_ceil(readings_per_coverage_row(settings.batch)),
        readings_per_coverage_row(settings.batch),
        settings.small_batch,
    );
}

/// Readings of one (device, boot) in a batch of `batch` rows of the generated data
/// (frames round robin over the devices).
fn readings_per_coverage_row(batch: usize) -> usize {
    let frames = batch.div_ceil(READINGS_PER_FRAME);
    batch / frames.clamp(1, DEVICES)
}
