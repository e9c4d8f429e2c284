//! What the bench prints besides its figures: the header (machine, server, settings,
//! method), the load average, and the formats of rates.

use std::time::Duration;

use sqlx::postgres::PgPool;

use crate::{Settings, DEVICES, READINGS_PER_FRAME};

pub async fn print_header(
    pool: &PgPool,
    s: &Settings,
    n: usize,
    encoded_bytes: usize,
    generate_s: f64,
) -> anyhow::Result<()> {
    let (now, version): (String, String) = sqlx::query_as(
        "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS \"UTC\"'), version()",
    )
    .fetch_one(pool)
    .await?;
    let pg_settings: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name IN \
         ('shared_buffers', 'synchronous_commit', 'fsync', 'full_page_writes', 'wal_level', \
          'max_wal_size', 'wal_compression', 'temp_buffers', 'work_mem', 'checkpoint_timeout') \
         ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("cloud-ingester ingest benchmark");
    println!("  date:     {now}");
    println!("  machine:  {cores} cores ({cpu}), PostgreSQL and this client on the same host");
    println!("  server:   {version}");
    println!(
        "  settings: {}",
        pg_settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  data:     {n} readings from {DEVICES} devices in {READINGS_PER_FRAME}-reading frames \
         ({:.1} MB as binary COPY, {:.0} B a reading; generated in {generate_s:.2} s), \
         batch {} rows, {} rounds",
        encoded_bytes as f64 / 1e6,
        encoded_bytes as f64 / n as f64,
        s.batch,
        s.rounds
    );
    println!();
    println!(
        "How it was measured: one process, one client thread (tokio current_thread), against \
         a database created for the run on DATABASE_URL's server with the project's \
         migrations (sensor_readings with its dedup key, (device, channel, ts) B-tree and \
         BRIN index; day partitions). Every row set is generated up front; each timing \
         covers encoding, sending and committing, with the table truncated before (a), \
         (a'), (b) and (c). (a) is the ceiling: one binary COPY of all rows straight into \
         sensor_readings, no staging, no dedup, no stats. (a') is the same COPY cut into \
         batches of {} rows, one transaction each. (b) is Store::write_batch, batches of \
         {} rows: binary COPY into a temp staging table, then one INSERT ... SELECT into \
         sensor_readings feeding the device_stats_hourly upsert, one transaction and one \
         commit per batch (synchronous_commit as configured: durability not weakened); \
         fresh batches take its plain statement, a batch meeting stored readings is \
         rolled back and redone with INSERT ... ON CONFLICT DO NOTHING RETURNING (and so \
         are the next few). (d) replays every row through (b) again (all duplicates: \
         the dedup statement). The breakdown runs the same staging COPY followed by parts \
         of those statements, to show what costs what. (c) is the everyday alternative: a \
         prepared INSERT ... VALUES ($1..$8) ON CONFLICT DO NOTHING per reading, one round \
         trip each, one transaction per batch, no stats, on the first {} rows and \
         extrapolated as a rate; (c') the same with autocommit (one commit per reading) on \
         the first {} rows. (a), (a'), (b), (d), (f) are repeated {} times interleaved and the \
         median is reported. (e) runs once, after the rest: the same readings as frames \
         preloaded into a fresh 3-partition topic on KAFKA_BROKERS, consumed by the \
         ingester's Pipeline (validation, alert rules on 400 registered channels, \
         write_batch with the alert transitions, offsets, Redis on REDIS_URL), timed from \
         the first batch's commit to the last's. (f) is coverage upkeep (issue 14): the same \
         batches through write_batch's plain statement without and with coverage::record, \
         with the CPU of this thread and of PostgreSQL's backend; its method is printed \
         with its figures. Other work on this host (shared machine) \
         adds noise: load average is printed at the end.",
        s.batch, s.batch, s.naive, s.autocommit, s.rounds
    );
    println!();
    print_load();
    Ok(())
}

pub fn print_load() {
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("  load average: {}", load.trim());
    }
}

pub fn rate(rows: u64, elapsed: Duration) -> f64 {
    rows as f64 / elapsed.as_secs_f64()
}

pub fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M/s", r / 1e6)
    } else if r >= 10e3 {
        format!("{:.0}k/s", r / 1e3)
    } else {
        format!("{r:.0}/s")
    }
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
