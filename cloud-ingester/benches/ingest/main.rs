//! Ingest benchmark: readings per second into PostgreSQL through `Store::write_batch`,
//! and through the whole pipeline from a preloaded Kafka topic (with Redis and the alert
//! rules on), beside a ceiling and the everyday alternative, all measured in the same run
//! on the same table.
//!
//! ```text
//! set -a; . .stack/env; set +a
//! cargo bench -p cloud-ingester --bench ingest
//! ```
//!
//! Settings (environment): `BENCH_READINGS` (default 1,000,000), `BENCH_BATCH` (20,000,
//! the ingester's default batch), `BENCH_ROUNDS` (3), `BENCH_NAIVE_READINGS` (50,000),
//! `BENCH_AUTOCOMMIT_READINGS` (2,000), `BENCH_SMALL_BATCH` (1,000) and
//! `BENCH_SMALL_READINGS` (100,000) for the coverage upkeep at small batches.
//!
//! (f) is what coverage upkeep costs (issue 14): the same batches written with
//! write_batch's plain statement, without and with `coverage::record` in the transaction,
//! with the CPU time of this thread and of the connection's PostgreSQL backend read from
//! /proc/…/schedstat around the whole write and around each `coverage::record` call.
//!
//! It creates its own database on `DATABASE_URL`'s server (the role needs CREATEDB),
//! applies the migrations and drops the database at the end, so it never touches the
//! stack's data; likewise its own Kafka topics on `KAFKA_BROKERS` and its own key prefix
//! on `REDIS_URL`. A benchmark, not a test: it prints figures and asserts nothing.
//!
//! One module per concern: `data` (the generated readings and frames), `sql` (the COPY
//! and statements the figures compare), `upkeep` ((f), coverage upkeep and its CPU),
//! `pipeline` ((e), the whole ingest loop from Kafka) and `report` (the header and the
//! number formats).

mod data;
mod pipeline;
mod report;
mod sql;
mod upkeep;

use std::str::FromStr;
use std::time::Instant;

use anyhow::Context as _;
use cloud_ingester::store::{encode_row, Store};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::Connection as _;

use data::generate;
use pipeline::pipeline_rate;
use report::{fmt_rate, median, print_header, print_load, rate};
use sql::{
    insert_one, raw_copy, raw_copy_into, reset, staged, wal_lsn, wal_since, Wal, BREAKDOWN,
    INDEX_STEPS,
};
use upkeep::{print_upkeep, upkeep, Cpu, Upkeep};

const DEVICES: usize = 100;
const READINGS_PER_FRAME: usize = 50;
/// Each device samples every 100 ms (a 10 Hz vibration channel, say).
const PERIOD_MS: u64 = 100;
const CHUNK: usize = 1 << 20;

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .with_context(|| format!("{name}={v:?} is not a count")),
        Err(_) => Ok(default),
    }
}

struct Settings {
    readings: usize,
    batch: usize,
    rounds: usize,
    naive: usize,
    autocommit: usize,
    small_batch: usize,
    small_readings: usize,
}

fn main() -> anyhow::Result<()> {
    let settings = Settings {
        readings: env_usize("BENCH_READINGS", 1_000_000)?,
        batch: env_usize("BENCH_BATCH", 20_000)?.max(1),
        rounds: env_usize("BENCH_ROUNDS", 3)?.max(1),
        naive: env_usize("BENCH_NAIVE_READINGS", 50_000)?,
        autocommit: env_usize("BENCH_AUTOCOMMIT_READINGS", 2_000)?,
        small_batch: env_usize("BENCH_SMALL_BATCH", 1_000)?.max(1),
        small_readings: env_usize("BENCH_SMALL_READINGS", 100_000)?,
    };
    // One client thread: the server needs the other core.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench(settings))
}

async fn bench(settings: Settings) -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .context("DATABASE_URL is not set (set -a; . .stack/env; set +a)")?;
    let server = PgConnectOptions::from_str(&url).context("DATABASE_URL")?;
    let name = format!(
        "bench_ingest_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    );
    let mut admin = PgConnection::connect_with(&server).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .with_context(|| format!("CREATE DATABASE {name}"))?;
    let result = bench_in(&settings, server.clone().database(&name)).await;
    let dropped = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await;
    if let Err(e) = &dropped {
        eprintln!("could not drop the bench database {name}: {e}");
    }
    result
}

async fn bench_in(settings: &Settings, db: PgConnectOptions) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(db.clone())
        .await?;
    sqlx::migrate!("../migrations").run(&pool).await?;
    // (f)'s own connection, so that its backend's CPU time can be read.
    let mut upkeep_conn = PgConnection::connect_with(&db).await?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut upkeep_conn)
        .await?;
    let backend = Cpu::readable(backend);

    let started = Instant::now();
    let (rows, frames) = generate(settings.readings)?;
    let generate_s = started.elapsed().as_secs_f64();
    let encoded_bytes = {
        let mut buf = Vec::new();
        rows.iter().for_each(|r| encode_row(&mut buf, r));
        buf.len()
    };

    print_header(&pool, settings, rows.len(), encoded_bytes, generate_s).await?;

    let mut ceiling = Vec::new();
    let mut ceiling_batched = Vec::new();
    let mut store_rates = Vec::new();
    let mut replay_rates = Vec::new();
    let mut wal = Wal::default();
    let mut paths_b = std::collections::BTreeMap::<String, usize>::new();
    let mut paths_d = paths_b.clone();
    let mut upkeeps = Vec::new();
    let mut small_upkeeps = Vec::new();
    let small_rows = &rows[..settings.small_readings.min(rows.len())];
    for round in 1..=settings.rounds {
        // (a) ceiling: one COPY of every row straight into sensor_readings.
        reset(&pool).await?;
        let lsn = wal_lsn(&pool).await?;
        let t = Instant::now();
        let copied = raw_copy(&pool, &rows).await?;
        let a = rate(copied, t.elapsed());
        wal.ceiling = wal_since(&pool, lsn).await?;
        anyhow::ensure!(copied == rows.len() as u64, "raw COPY stored {copied} rows");

        // (a') the same, in batches of `batch` rows, one transaction each.
        reset(&pool).await?;
        let t = Instant::now();
        let mut copied = 0;
        for batch in rows.chunks(settings.batch) {
            copied += raw_copy(&pool, batch).await?;
        }
        let a2 = rate(copied, t.elapsed());

        // (b) Store::write_batch in batches of `batch` rows. A new Store each round:
        // the previous round's replay would otherwise send the first few batches
        // through the dedup statement.
        reset(&pool).await?;
        let store = Store::new(pool.clone());
        let lsn = wal_lsn(&pool).await?;
        let t = Instant::now();
        let mut inserted = 0;
        paths_b.clear();
        for batch in rows.chunks(settings.batch) {
            let outcome = store.write_batch(batch).await?;
            inserted += outcome.inserted;
            *paths_b.entry(format!("{:?}", outcome.path)).or_insert(0) += 1;
        }
        let b = rate(inserted, t.elapsed());
        wal.store = wal_since(&pool, lsn).await?;
        anyhow::ensure!(
            inserted == rows.len() as u64,
            "write_batch stored {inserted} rows"
        );

        // (d) the same rows again: every one a duplicate.
        let lsn = wal_lsn(&pool).await?;
        let t = Instant::now();
        let mut duplicates = 0;
        paths_d.clear();
        for batch in rows.chunks(settings.batch) {
            let outcome = store.write_batch(batch).await?;
            *paths_d.entry(format!("{:?}", outcome.path)).or_insert(0) += 1;
            anyhow::ensure!(outcome.inserted == 0, "a replay inserted {outcome:?}");
            duplicates += outcome.duplicates;
        }
        let d = rate(duplicates, t.elapsed());
        wal.replay = wal_since(&pool, lsn).await?;
        // (f) coverage upkeep: the same batches without and with coverage::record, in
        // alternating order from round to round.
        let mut pair = [Upkeep::default(); 2];
        let mut small_pair = [Upkeep::default(); 2];
        let order = if round % 2 == 1 { [0, 1] } else { [1, 0] };
        for with in order {
            reset(&pool).await?;
            pair[with] =
                upkeep(&mut upkeep_conn, backend, &rows, settings.batch, with == 1).await?;
            reset(&pool).await?;
            small_pair[with] = upkeep(
                &mut upkeep_conn,
                backend,
                small_rows,
                settings.small_batch,
                with == 1,
            )
            .await?;
        }
        println!(
            "round {round}: (a) raw COPY {} | (a') raw COPY in batches {} | (b) write_batch {} | (d) replay {} | (f0) {} (f1) {}, coverage {:.1}% of the CPU",
            fmt_rate(a),
            fmt_rate(a2),
            fmt_rate(b),
            fmt_rate(d),
            fmt_rate(pair[0].rate()),
            fmt_rate(pair[1].rate()),
            100.0 * pair[1].coverage_share()
        );
        upkeeps.push(pair);
        small_upkeeps.push(small_pair);
        ceiling.push(a);
        ceiling_batched.push(a2);
        store_rates.push(b);
        replay_rates.push(d);
    }

    // Where (b)'s time goes: the same staging COPY per batch, followed by parts of
    // write_batch's two statements (one round, table truncated before each).
    let mut breakdown = Vec::new();
    for (label, sql, base) in BREAKDOWN {
        reset(&pool).await?;
        let lsn = wal_lsn(&pool).await?;
        let t = Instant::now();
        for batch in rows.chunks(settings.batch) {
            staged(&pool, batch, sql).await?;
        }
        let r = rate(rows.len() as u64, t.elapsed());
        breakdown.push((label, base, r, wal_since(&pool, lsn).await?));
    }

    // What the table's indexes cost the ceiling: the same single COPY into a plain
    // (unpartitioned) table shaped like sensor_readings, adding its indexes one by one.
    sqlx::raw_sql(
        "CREATE TABLE bench_indexes (LIKE sensor_readings INCLUDING DEFAULTS INCLUDING CONSTRAINTS)",
    )
    .execute(&pool)
    .await?;
    let mut index_costs = Vec::new();
    for (label, ddl) in INDEX_STEPS {
        sqlx::raw_sql(&format!("TRUNCATE bench_indexes; {ddl}"))
            .execute(&pool)
            .await?;
        let t = Instant::now();
        let copied = raw_copy_into(&pool, "bench_indexes", &rows).await?;
        index_costs.push((label, rate(copied, t.elapsed())));
    }
    sqlx::raw_sql("DROP TABLE bench_indexes")
        .execute(&pool)
        .await?;

    // (c) the everyday alternative, on a subset.
    reset(&pool).await?;
    let subset = &rows[..settings.naive.min(rows.len())];
    let t = Instant::now();
    let mut naive_rows = 0;
    for batch in subset.chunks(settings.batch) {
        let mut tx = pool.begin().await?;
        for row in batch {
            naive_rows += insert_one(&mut tx, row).await?;
        }
        tx.commit().await?;
    }
    let c = rate(naive_rows, t.elapsed());
    reset(&pool).await?;
    let subset = &rows[..settings.autocommit.min(rows.len())];
    let t = Instant::now();
    let mut autocommit_rows = 0;
    let mut conn = pool.acquire().await?;
    for row in subset {
        autocommit_rows += insert_one(&mut conn, row).await?;
    }
    drop(conn);
    let c2 = rate(autocommit_rows, t.elapsed());

    let (a, a2, b, d) = (
        median(&mut ceiling),
        median(&mut ceiling_batched),
        median(&mut store_rates),
        median(&mut replay_rates),
    );
    let n = rows.len() as f64;
    println!();
    println!(
        "results (median of {} rounds, readings/s):",
        settings.rounds
    );
    println!(
        "  (a)  raw binary COPY into sensor_readings, one transaction   {:>12}  ceiling",
        fmt_rate(a)
    );
    println!(
        "  (a') raw binary COPY, one transaction per {:>6} rows        {:>12}",
        settings.batch,
        fmt_rate(a2)
    );
    println!(
        "  (b)  Store::write_batch, {:>6} rows a batch                 {:>12}",
        settings.batch,
        fmt_rate(b)
    );
    println!(
        "  (c)  per-row INSERT, one tx per {:>6} rows ({} rows, extrapolated) {:>12}",
        settings.batch,
        naive_rows,
        fmt_rate(c)
    );
    println!(
        "  (c') per-row INSERT, autocommit ({} rows, extrapolated)       {:>12}",
        autocommit_rows,
        fmt_rate(c2)
    );
    println!(
        "  (d)  Store::write_batch replaying all rows (all duplicates)  {:>12}",
        fmt_rate(d)
    );
    println!();
    println!("  (b)/(a)  = {:.0}%   (bar: >= 70%)", 100.0 * b / a);
    println!("  (b)/(a') = {:.0}%", 100.0 * b / a2);
    println!("  (b)      = {}   (bar: >= 250k readings/s)", fmt_rate(b));
    println!("  (b)/(c)  = {:.0}x,  (b)/(c') = {:.0}x", b / c, b / c2);
    println!(
        "  time for {} readings: (a) {:.2} s, (b) {:.2} s, (d) {:.2} s; (c) would take {:.0} s, (c') {:.0} s",
        rows.len(),
        n / a,
        n / b,
        n / d,
        n / c,
        n / c2
    );
    println!("  statements used (last round): (b) {paths_b:?}, (d) {paths_d:?}");
    println!(
        "  WAL written (last round): (a) {:.0} MB, (b) {:.0} MB, (d) {:.1} MB  ({:.0} / {:.0} bytes a reading)",
        wal.ceiling as f64 / 1e6,
        wal.store as f64 / 1e6,
        wal.replay as f64 / 1e6,
        wal.ceiling as f64 / n,
        wal.store as f64 / n,
    );
    println!();
    println!(
        "where (b)'s time goes (one round, {} rows a batch, each a transaction):",
        settings.batch
    );
    for (label, base, r, wal_bytes) in &breakdown {
        let seconds = n / r;
        let step = base.map_or(String::new(), |b| {
            format!("(+{:.2} s on {})", seconds - n / breakdown[b].2, b + 1)
        });
        println!(
            "  {label:<64} {:>8}  {seconds:>5.2} s {step:<16}  WAL {:>3.0} B/reading",
            fmt_rate(*r),
            *wal_bytes as f64 / n
        );
    }
    println!(
        "  {:<64} {:>8}  {:>5.2} s",
        "(a') for comparison: raw COPY straight into sensor_readings",
        fmt_rate(a2),
        n / a2
    );
    println!();
    println!("what the table costs: one COPY of all rows (as (a)) into a plain table shaped like sensor_readings:");
    let mut previous = None;
    for (label, r) in &index_costs {
        let seconds = n / r;
        let step = previous.map_or(String::new(), |p: f64| format!("(+{:.2} s)", seconds - p));
        println!("  {label:<64} {:>8}  {seconds:>5.2} s {step}", fmt_rate(*r));
        previous = Some(seconds);
    }
    println!(
        "  {:<64} {:>8}  {:>5.2} s",
        "(a) for comparison: sensor_readings (partitioned, same indexes)",
        fmt_rate(a),
        n / a
    );
    print_upkeep(
        settings,
        &upkeeps,
        &small_upkeeps,
        small_rows.len(),
        backend,
        b,
    );
    // (e) the whole pipeline, once: Kafka into PostgreSQL, Redis and the alert rules.
    let e = pipeline_rate(&pool, settings, &frames, rows.len() as u64).await?;
    println!();
    println!(
        "(e) the pipeline: {} frames preloaded in Kafka, consumed, validated, alert rules \
         evaluated, written with write_batch ({} rows a batch), offsets stored, Redis updated",
        frames.len(),
        settings.batch
    );
    println!(
        "  (e)  Kafka -> PostgreSQL + Redis + alerts                  {:>12}   (e)/(a) = {:.0}%, (e)/(b) = {:.0}%",
        fmt_rate(e.rate),
        100.0 * e.rate / a,
        100.0 * e.rate / b
    );
    println!(
        "       {} batches, {:.1} ms flush on average; timed from the first batch's commit to the last's",
        e.batches,
        e.flush_ms
    );
    print_load();
    pool.close().await;
    Ok(())
}
