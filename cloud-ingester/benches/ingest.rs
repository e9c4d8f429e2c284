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

use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cloud_ingester::coverage;
use cloud_ingester::rows::{rows_from_frame, Row};
use cloud_ingester::store::{encode_row, Store, COPY_COLUMNS, PGCOPY_HEADER};
use protocol::{BootId, DeviceId, Frame, Quality, Reading};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::types::chrono::DateTime;
use sqlx::Connection as _;

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

struct PipelineRun {
    rate: f64,
    batches: u64,
    flush_ms: f64,
}

/// Preloads a fresh topic with `frames`, then runs the ingester's pipeline on it (Redis
/// and alert rules on, the bench devices registered with thresholds none of their values
/// reach) until every reading is stored. Timed from the first batch's commit (not the
/// consumer group's join) to the last's.
async fn pipeline_rate(
    pool: &PgPool,
    settings: &Settings,
    frames: &[KeyedFrame],
    readings: u64,
) -> anyhow::Result<PipelineRun> {
    use cloud_ingester::config::IngesterConfig;
    use cloud_ingester::pipeline::Pipeline;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
    use rdkafka::ClientConfig;

    reset(pool).await?;
    sqlx::query(
        "INSERT INTO devices (device_id, name, kind, site, line) \
         SELECT DISTINCT device_id, device_id, 'bench', 'bench', 'bench' FROM unnest($1::text[]) AS d(device_id)",
    )
    .bind(frames.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>())
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO device_channels (device_id, channel_id, name, unit, sample_period_ms, \
             range_min, range_max, warn_high, crit_high, hysteresis, min_duration_ms) \
         SELECT device_id, c, 'ch' || c, 'u', 100, -100, 100, 40, 60, 1, 1000 \
           FROM devices, generate_series(0, 3) AS c WHERE kind = 'bench'",
    )
    .execute(pool)
    .await?;

    let brokers = std::env::var("KAFKA_BROKERS").context("KAFKA_BROKERS is not set")?;
    let redis_url = std::env::var("REDIS_URL").context("REDIS_URL is not set")?;
    let suffix = format!("{}-{}", std::process::id(), frames.len());
    let (topic, dlq, alerts, confirms) = (
        format!("bench-ingest-{suffix}"),
        format!("bench-ingest-dlq-{suffix}"),
        format!("bench-ingest-alerts-{suffix}"),
        format!("bench-ingest-confirm-{suffix}"),
    );
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &brokers);
    let admin: AdminClient<DefaultClientContext> = client.create()?;
    let new_topics: Vec<NewTopic> = [&topic, &dlq, &alerts, &confirms]
        .iter()
        .map(|name| NewTopic::new(name, 3, TopicReplication::Fixed(1)))
        .collect();
    for created in admin
        .create_topics(&new_topics, &AdminOptions::new())
        .await?
    {
        created.map_err(|(name, e)| anyhow::anyhow!("creating topic {name}: {e}"))?;
    }
    let producer: FutureProducer = client
        .clone()
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()?;
    for (device, payload) in frames {
        // As the bridge writes it: where the confirmations to the device are routed.
        let mqtt_topic = format!("bench/site/line/{device}/telemetry");
        let record_headers =
            rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                key: protocol::kafka::headers::MQTT_TOPIC,
                value: Some(&mqtt_topic),
            });
        let mut record = FutureRecord::to(&topic)
            .key(device)
            .payload(payload)
            .headers(record_headers);
        loop {
            match producer.send_result(record) {
                Ok(_) => break,
                Err((_, back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;

    let prefix = format!("bench{}", std::process::id());
    let redis = cloud_ingester::redis_sink::RedisSink::connect(&redis_url, &prefix).await?;
    let mut config = IngesterConfig {
        id: "bench".to_owned(),
        ..IngesterConfig::default()
    };
    config.kafka.brokers = brokers;
    config.kafka.group = format!("bench-ingest-{suffix}");
    config.kafka.topic = topic.clone();
    config.kafka.dlq_topic = dlq.clone();
    config.kafka.alerts_topic = alerts.clone();
    config.kafka.confirm_topic = confirms.clone();
    config.kafka.confirm_interval = Duration::from_millis(200);
    config.batch.rows = settings.batch;
    config.batch.age = Duration::from_millis(200);
    let pipeline = Pipeline::connect(&config, pool, producer.clone(), Some(redis)).await?;
    let stats = pipeline.stats();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(pipeline.run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(600);
    // Counted from the first batch's commit, so the group join is left out; the readings
    // of that batch are left out with it.
    let first = loop {
        let inserted = stats.snapshot().inserted;
        if inserted > 0 {
            break inserted;
        }
        anyhow::ensure!(Instant::now() < deadline, "the pipeline consumed nothing");
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let t = Instant::now();
    while stats.snapshot().inserted < readings {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the pipeline stalled: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = t.elapsed();
    stop.cancel();
    task.await??;
    let snapshot = stats.snapshot();
    anyhow::ensure!(
        snapshot.inserted == readings && snapshot.dead_lettered == 0,
        "the pipeline stored {snapshot:?}"
    );

    admin
        .delete_topics(&[&topic, &dlq, &alerts, &confirms], &AdminOptions::new())
        .await?;
    let redis_client = redis::Client::open(redis_url)?;
    let mut con = redis_client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut con)
        .await?;
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(&mut con).await?;
    }
    println!(
        "    confirmations sent {}, unsent {}",
        snapshot.confirmations_sent, snapshot.confirmations_unsent
    );
    Ok(PipelineRun {
        rate: (readings - first) as f64 / elapsed.as_secs_f64(),
        batches: snapshot.batches,
        flush_ms: 1000.0 * snapshot.flush_seconds / snapshot.batches.max(1) as f64,
    })
}

/// An encoded frame and its Kafka key (the device id).
type KeyedFrame = (String, Vec<u8>);

#[derive(Default)]
struct Wal {
    ceiling: u64,
    store: u64,
    replay: u64,
}

/// `n` readings from `DEVICES` devices, as 50-reading frames, round robin across
/// devices (the order a Kafka consumer sees them in), turned into rows as the ingester
/// does. Timestamps start two hours ago, so every reading lands in a day partition the
/// migration created (yesterday .. a week ahead) and the hourly stats see a few buckets.
fn generate(n: usize) -> anyhow::Result<(Vec<Row>, Vec<KeyedFrame>)> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let base = now_ms - 2 * 3_600_000;
    let ids: Vec<DeviceId> = (0..DEVICES)
        .map(|d| DeviceId::new(&format!("bench-dev-{d:03}")))
        .collect::<Result<_, _>>()?;
    let mut rows = Vec::with_capacity(n);
    let mut frames = Vec::with_capacity(n / READINGS_PER_FRAME + 1);
    let mut encoded = [0u8; protocol::MAX_FRAME_LEN];
    let mut frame_no = 0usize;
    while rows.len() < n {
        let device = frame_no % DEVICES;
        let per_device = (frame_no / DEVICES) as u64;
        let first_seq = per_device * READINGS_PER_FRAME as u64;
        let mut frame = Frame::new(
            ids[device].clone(),
            BootId((0x5eed_0000_0000_0000_u64 + device as u64).to_be_bytes()),
            first_seq,
            base + first_seq * PERIOD_MS,
        );
        for i in 0..READINGS_PER_FRAME.min(n - rows.len()) {
            let seq = first_seq + i as u64;
            frame
                .readings
                .push(Reading {
                    channel: (seq % 4) as u8,
                    offset_ms: (i as u64 * PERIOD_MS) as u32,
                    value: 20.0 + 5.0 * ((seq as f32) * 0.01 + device as f32).sin(),
                    quality: Quality::empty(),
                })
                .map_err(|_| anyhow::anyhow!("frame full"))?;
        }
        frame.validate()?;
        rows_from_frame(&frame, &mut rows);
        frames.push((
            frame.device.as_str().to_owned(),
            frame.encode(&mut encoded)?.to_vec(),
        ));
        frame_no += 1;
    }
    Ok((rows, frames))
}

const STAGING: &str = "CREATE TEMP TABLE IF NOT EXISTS bench_staging (\
     device_id text, boot_id bigint, seq bigint, ts timestamptz, value real, \
     channel_id smallint, quality smallint, clock_synced boolean) ON COMMIT DELETE ROWS";

const INSERT_SELECT: &str = "INSERT INTO sensor_readings (device_id, boot_id, seq, ts, value, \
     channel_id, quality, clock_synced) SELECT device_id, boot_id, seq, ts, value, channel_id, \
     quality, clock_synced FROM bench_staging";

const STATS_UPSERT: &str = "INSERT INTO device_stats_hourly AS s \
         (device_id, channel_id, hour, count, min, max, sum, sum_sq) \
     SELECT device_id, channel_id, date_bin('1 hour', ts, timestamptz '2000-01-01 00:00:00+00'), \
            count(*), min(value), max(value), sum(value::float8), sum(value::float8 * value::float8) \
       FROM rows WHERE value NOT IN ('NaN', 'Infinity', '-Infinity') GROUP BY 1, 2, 3 \
     ON CONFLICT (device_id, channel_id, hour) DO UPDATE SET count = s.count + EXCLUDED.count, \
         min = least(s.min, EXCLUDED.min), max = greatest(s.max, EXCLUDED.max), \
         sum = s.sum + EXCLUDED.sum, sum_sq = s.sum_sq + EXCLUDED.sum_sq, updated_at = now()";

/// Indexes of sensor_readings, added one at a time to `bench_indexes`.
const INDEX_STEPS: [(&str, &str); 4] = [
    ("no index", ""),
    (
        "+ the dedup key UNIQUE (device_id, ts, boot_id, seq)",
        "ALTER TABLE bench_indexes ADD UNIQUE (device_id, ts, boot_id, seq)",
    ),
    (
        "+ B-tree (device_id, channel_id, ts)",
        "CREATE INDEX ON bench_indexes (device_id, channel_id, ts)",
    ),
    (
        "+ BRIN (ts): all of sensor_readings' indexes",
        "CREATE INDEX ON bench_indexes USING brin (ts)",
    ),
];

/// Steps of write_batch's two statements: (label, SQL after the staging COPY, index of
/// the step it adds to). `{insert}` and `{stats}` are filled in by `staged`.
const BREAKDOWN: [(&str, &str, Option<usize>); 5] = [
    ("1. COPY into the temp staging table only", "", None),
    (
        "2. 1 + INSERT ... SELECT into sensor_readings",
        "{insert}",
        Some(0),
    ),
    (
        "3. 2 + stats upsert from staging (write_batch, plain statement)",
        "WITH rows AS (SELECT * FROM bench_staging), ins AS ({insert}), \
         stats AS ({stats}) SELECT 1",
        Some(1),
    ),
    (
        "4. 2 + ON CONFLICT DO NOTHING",
        "{insert} ON CONFLICT DO NOTHING",
        Some(1),
    ),
    (
        "5. 4 + RETURNING into stats upsert (write_batch, dedup stmt)",
        "WITH rows AS ({insert} ON CONFLICT DO NOTHING RETURNING device_id, channel_id, ts, \
         value), stats AS ({stats}) SELECT count(*) FROM rows",
        Some(3),
    ),
];

/// One transaction: `rows` by binary COPY into a temp staging table, then `sql` (a
/// BREAKDOWN step).
async fn staged(pool: &PgPool, rows: &[Row], sql: &str) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    stage(&mut tx, rows).await?;
    if !sql.is_empty() {
        let sql = sql
            .replace("{insert}", INSERT_SELECT)
            .replace("{stats}", STATS_UPSERT);
        sqlx::query(&sql).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The temp staging table (created if missing) filled with `rows` by binary COPY.
async fn stage(tx: &mut PgConnection, rows: &[Row]) -> anyhow::Result<()> {
    sqlx::raw_sql(STAGING).execute(&mut *tx).await?;
    let mut copy = tx
        .copy_in_raw(&format!(
            "COPY bench_staging ({COPY_COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let mut buf = Vec::with_capacity(CHUNK + 256);
    buf.extend_from_slice(PGCOPY_HEADER);
    for row in rows {
        encode_row(&mut buf, row);
        if buf.len() >= CHUNK {
            copy.send(buf.as_slice()).await?;
            buf.clear();
        }
    }
    buf.extend_from_slice(&(-1_i16).to_be_bytes());
    copy.send(buf.as_slice()).await?;
    copy.finish().await?;
    Ok(())
}

/// CPU time in ns, from the first field of /proc/…/schedstat (time spent on a CPU): of
/// this thread (the only client thread) and of one PostgreSQL backend.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    client_ns: u64,
    server_ns: u64,
}

/// A backend whose /proc entry this process can read (PostgreSQL on this host).
#[derive(Debug, Clone, Copy)]
struct Backend(Option<i32>);

impl Cpu {
    fn readable(pid: i32) -> Backend {
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
struct Upkeep {
    readings: u64,
    wall: Duration,
    cpu: Cpu,
    coverage_wall: Duration,
    coverage_cpu: Cpu,
}

impl Upkeep {
    fn rate(&self) -> f64 {
        rate(self.readings, self.wall)
    }

    /// µs of CPU (client + backend) a reading.
    fn us_per_reading(&self, cpu: Cpu) -> f64 {
        cpu.total_ns() as f64 / 1e3 / self.readings.max(1) as f64
    }

    /// coverage::record's share of the whole write's CPU (client + backend).
    fn coverage_share(&self) -> f64 {
        self.coverage_cpu.total_ns() as f64 / self.cpu.total_ns().max(1) as f64
    }
}

/// (f): `rows` in batches of `batch`, one transaction each, as write_batch's plain path
/// does it (staging COPY, then the INSERT ... SELECT with the stats upsert, BREAKDOWN step
/// 3), and with `coverage` also `coverage::record` on the batch, the call `Store` makes,
/// before the commit. The tables (reading_coverage too) must be empty.
async fn upkeep(
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
fn print_upkeep(
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

async fn reset(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE sensor_readings, device_stats_hourly, reading_coverage")
        .execute(pool)
        .await?;
    Ok(())
}

/// One binary COPY of `rows` straight into sensor_readings, encoded and sent in 1 MiB
/// chunks exactly as the store sends its staging COPY.
async fn raw_copy(pool: &PgPool, rows: &[Row]) -> anyhow::Result<u64> {
    raw_copy_into(pool, "sensor_readings", rows).await
}

async fn raw_copy_into(pool: &PgPool, table: &str, rows: &[Row]) -> anyhow::Result<u64> {
    let mut conn = pool.acquire().await?;
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY {table} ({COPY_COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let mut buf = Vec::with_capacity(CHUNK + 256);
    buf.extend_from_slice(PGCOPY_HEADER);
    for row in rows {
        encode_row(&mut buf, row);
        if buf.len() >= CHUNK {
            copy.send(buf.as_slice()).await?;
            buf.clear();
        }
    }
    buf.extend_from_slice(&(-1_i16).to_be_bytes());
    copy.send(buf.as_slice()).await?;
    Ok(copy.finish().await?)
}

async fn insert_one(conn: &mut PgConnection, row: &Row) -> anyhow::Result<u64> {
    let ts = DateTime::from_timestamp_millis(row.ts_ms).context("timestamp")?;
    Ok(sqlx::query(
        "INSERT INTO sensor_readings \
             (device_id, boot_id, seq, ts, value, channel_id, quality, clock_synced) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
    )
    .bind(&row.device_id)
    .bind(row.boot_id)
    .bind(row.seq)
    .bind(ts)
    .bind(row.value)
    .bind(row.channel_id)
    .bind(row.quality)
    .bind(row.clock_synced)
    .execute(conn)
    .await?
    .rows_affected())
}

async fn wal_lsn(pool: &PgPool) -> anyhow::Result<String> {
    Ok(
        sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
            .fetch_one(pool)
            .await?,
    )
}

async fn wal_since(pool: &PgPool, lsn: String) -> anyhow::Result<u64> {
    let bytes: i64 = sqlx::query_scalar(
        "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::pg_lsn)::bigint",
    )
    .bind(lsn)
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(bytes).unwrap_or(0))
}

async fn print_header(
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

fn print_load() {
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("  load average: {}", load.trim());
    }
}

fn rate(rows: u64, elapsed: Duration) -> f64 {
    rows as f64 / elapsed.as_secs_f64()
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M/s", r / 1e6)
    } else if r >= 10e3 {
        format!("{:.0}k/s", r / 1e3)
    } else {
        format!("{r:.0}/s")
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
