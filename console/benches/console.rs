//! Console benchmark: what the plant console costs and how fast it answers, with a peer
//! measured in the same run for each figure (these machines are shared and noisy).
//!
//! ```text
//! set -a; . .stack/env; set +a
//! cargo bench -p console --bench console
//! ```
//!
//! It creates its own database on `DATABASE_URL`'s server (migrated, plus devices up to
//! 500 with 3 channels each), its own key prefix on `REDIS_URL`, and runs the release
//! `console` binary as a child process against them, so its CPU time and RSS can be read
//! from /proc. A writer stands in for the ingester's Redis side at 10 000 readings/s:
//! the same `latest` hash fields and `last_seen` keys, pipelined every 100 ms. Figures:
//!
//! - (a) the overview of 500 devices × 3 channels: latency of 300 sequential GETs over
//!   loopback (server time plus HTTP), beside `/livez` on the same server (the HTTP
//!   floor), and the page's weight with its stylesheet and script;
//! - (b) 100 live viewers (Server-Sent Events, read as a browser reads them): the
//!   console's CPU over a window without viewers and one with 100, its RSS with 100, and
//!   the PostgreSQL transactions on the bench database in each window (viewers must add
//!   none: the live view reads the device list every `live.plant_refresh` and checks
//!   PostgreSQL every 2 s, for everyone);
//! - (c) a 24 h chart of a 10 Hz channel (864 000 readings): the device page's latency
//!   and points, beside a bare `count(*)` over the same rows (the scan's floor).
//!
//! A benchmark, not a test: it prints figures, the bars they are held to and whether
//! they met them, and fails only if it could not measure.

use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use contracts::redis::{LatestValue, RedisKeys};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

const DEVICES: usize = 500;
const CHANNELS: i16 = 3;
const VIEWERS: usize = 100;
const READINGS_PER_S: usize = 10_000;
const WINDOW: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench())
}

async fn bench() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .context("DATABASE_URL is not set (set -a; . .stack/env; set +a)")?;
    let redis_url = std::env::var("REDIS_URL").context("REDIS_URL is not set")?;
    let server = PgConnectOptions::from_str(&url).context("DATABASE_URL")?;
    let name = format!("bench_console_{}", std::process::id());
    let mut admin = PgConnection::connect_with(&server).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .with_context(|| format!("CREATE DATABASE {name}"))?;
    let db = server.clone().database(&name);
    let stats = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(server.clone())
        .await?;
    let result = bench_in(&db, &name, &redis_url, &stats).await;
    if let Err(e) = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
    {
        eprintln!("could not drop the bench database {name}: {e}");
    }
    result
}

/// The console as a child process, killed when dropped.
struct ConsoleProcess(Child);

impl Drop for ConsoleProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl ConsoleProcess {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// User plus system CPU seconds so far.
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the command name (which may hold spaces) start at its ')'.
        let after = &stat[stat.rfind(')').context("/proc stat")? + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        Ok(ticks / clock_ticks())
    }

    fn rss_mib(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .context("VmRSS")?
            .trim()
            .trim_end_matches(" kB")
            .parse()?;
        Ok(kib / 1024.0)
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// `stats`: a connection to another database of the server, so that reading
/// `pg_stat_database` adds no transaction to the bench database's count.
async fn bench_in(
    db: &PgConnectOptions,
    name: &str,
    redis_url: &str,
    stats: &PgPool,
) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(db.clone())
        .await?;
    sqlx::migrate!("../migrations").run(&pool).await?;
    let devices = plant(&pool).await?;
    // Now, not by autovacuum in the middle of a measured window.
    sqlx::query("VACUUM ANALYZE").execute(&pool).await?;
    // A backend reports its transactions when it ends or after 10 s idle: end this one,
    // so that the set-up is not counted in the windows of (b).
    pool.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(db.clone())
        .await?;
    let prefix = format!("bench-console-{}", std::process::id());
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let console = ConsoleProcess(
        Command::new(env!("CARGO_BIN_EXE_console"))
            .env("DATABASE_URL", db.to_url_lossy().as_str())
            .env("REDIS_URL", redis_url)
            .env("CONSOLE_REDIS__PREFIX", &prefix)
            .env("CONSOLE_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("CONSOLE_LOG__LEVEL", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("starting target/release/console")?,
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(write_latest(
        redis_url.to_owned(),
        prefix.clone(),
        devices.clone(),
        stop.clone(),
        written.clone(),
    ));
    let http = reqwest::Client::new();
    wait_ready(&http, &base).await?;
    // The first overview after every tile has a value.
    tokio::time::sleep(Duration::from_secs(2)).await;

    print_header(&pool).await?;
    let channels = devices.iter().map(|(_, n)| *n as usize).sum();
    overview(&http, &base, channels).await?;
    viewers(&http, &base, &console, stats, name, &written).await?;
    chart(&http, &base, &pool).await?;

    stop.store(true, Ordering::Relaxed);
    writer.await??;
    let mut redis = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut redis)
        .await?;
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(&mut redis).await?;
    }
    Ok(())
}

async fn print_header(pool: &PgPool) -> anyhow::Result<()> {
    let now: String = sqlx::query_scalar(
        "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS \"UTC\"')",
    )
    .fetch_one(pool)
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
    println!("console benchmark (console/benches/console.rs)");
    println!("run: {now}, {cpu}, {cores} cores; release console binary as a child process");
    println!(
        "plant: {DEVICES} devices, the five seed devices and the rest with {CHANNELS} channels each; \
         Redis written at {READINGS_PER_S} readings/s (latest + last_seen, as the ingester writes them)"
    );
    Ok(())
}

/// Devices `bench-0001`… beside the five seed devices, up to [`DEVICES`], each with
/// [`CHANNELS`] channels and thresholds: (device, channel count).
async fn plant(pool: &PgPool) -> anyhow::Result<Vec<(String, i16)>> {
    let seed: i64 = sqlx::query_scalar("SELECT count(*) FROM devices")
        .fetch_one(pool)
        .await?;
    let extra = DEVICES as i64 - seed;
    sqlx::query(
        "INSERT INTO devices (device_id, name, kind, site, line, description) \
         SELECT format('bench-%s', lpad(i::text, 4, '0')), format('Bench machine %s', i), \
                'bench', format('site-%s', i % 2), format('line-%s', i % 10), 'benchmark' \
           FROM generate_series(1, $1) AS i",
    )
    .bind(extra)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO device_channels (device_id, channel_id, name, unit, sample_period_ms, \
                range_min, range_max, nominal, warn_high, crit_high) \
         SELECT d.device_id, c, format('ch%s', c), 'bar', 100, 0, 400, 150, 250, 300 \
           FROM devices d, generate_series(0, 2) AS c WHERE d.kind = 'bench'",
    )
    .execute(pool)
    .await?;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT device_id, count(*) FROM device_channels GROUP BY device_id ORDER BY device_id",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(d, n)| (d, n as i16)).collect())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_ready(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(response) = http.get(format!("{base}/readyz")).send().await {
            if response.status() == 200 {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the console is not ready at {base}/readyz after 30 s")
}

/// Writes `latest` fields and `last_seen` at [`READINGS_PER_S`], in pipelines every
/// 100 ms, round robin over every channel.
async fn write_latest(
    redis_url: String,
    prefix: String,
    devices: Vec<(String, i16)>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    written: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let keys = RedisKeys::new(prefix);
    let mut redis = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    let channels: Vec<(&str, i16)> = devices
        .iter()
        .flat_map(|(d, n)| (0..*n).map(move |c| (d.as_str(), c)))
        .collect();
    let per_tick = READINGS_PER_S / 10;
    let mut next = 0usize;
    let mut seq = 0i64;
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let now = service::clock::now_ms_i64();
        let mut pipe = redis::pipe();
        for _ in 0..per_tick {
            let (device, channel) = channels[next % channels.len()];
            next += 1;
            seq += 1;
            let value = LatestValue {
                ts: now,
                v: Some(150.0 + (seq % 97) as f32 * 0.5),
                q: 0,
                boot: "00000000000000b1".into(),
                seq,
                synced: true,
                boot_seen_us: Some(1),
            };
            pipe.hset(keys.latest(device), channel, serde_json::to_string(&value)?)
                .ignore();
            pipe.set(keys.last_seen(device), now).ignore();
        }
        let _: () = pipe.query_async(&mut redis).await?;
        written.fetch_add(per_tick as u64, Ordering::Relaxed);
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT MET"
    }
}

/// Latencies in ms of `n` sequential GETs of `path`, sorted, and the last body's size.
async fn timed_gets(
    http: &reqwest::Client,
    url: &str,
    n: usize,
) -> anyhow::Result<(Vec<f64>, usize, String)> {
    let mut times = Vec::with_capacity(n);
    let mut body = String::new();
    for _ in 0..n {
        let started = Instant::now();
        let response = http.get(url).send().await?;
        if !response.status().is_success() {
            bail!("{url}: HTTP {}", response.status());
        }
        body = response.text().await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok((times, body.len(), body))
}

async fn overview(http: &reqwest::Client, base: &str, channels: usize) -> anyhow::Result<()> {
    let (livez, _, _) = timed_gets(http, &format!("{base}/livez"), 300).await?;
    let (times, html, body) = timed_gets(http, &format!("{base}/"), 300).await?;
    let tiles = body.matches("<div class=\"tile ").count();
    let css = http
        .get(format!("{base}/static/console.css"))
        .send()
        .await?
        .bytes()
        .await?
        .len();
    let js = http
        .get(format!("{base}/static/console.js"))
        .send()
        .await?
        .bytes()
        .await?
        .len();
    let p99 = percentile(&times, 0.99);
    let total_kb = (html + css + js) as f64 / 1000.0;
    println!();
    println!("(a) overview, {DEVICES} devices, {tiles} channels on the page:");
    println!(
        "- overview GET: p50 {:.1} ms, p99 {p99:.1} ms over 300 sequential GETs (loopback, \
         server time plus HTTP); peer /livez on the same server: p50 {:.2} ms, p99 {:.2} ms; \
         bar p99 <= 50 ms: {}",
        percentile(&times, 0.5),
        percentile(&livez, 0.5),
        percentile(&livez, 0.99),
        verdict(p99 <= 50.0)
    );
    println!(
        "- overview weight: {:.1} KB HTML + {:.1} KB stylesheet + {:.1} KB script = {total_kb:.1} KB \
         uncompressed; bar <= 300 KB: {}",
        html as f64 / 1000.0,
        css as f64 / 1000.0,
        js as f64 / 1000.0,
        verdict(total_kb <= 300.0)
    );
    let sparks = http
        .get(format!("{base}/sparks"))
        .send()
        .await?
        .bytes()
        .await?
        .len();
    println!(
        "- sparklines, loaded once after the page (/sparks, JSON): {:.1} KB",
        sparks as f64 / 1000.0
    );
    if tiles != channels {
        bail!("the overview shows {tiles} tiles, expected {channels}");
    }
    Ok(())
}

/// Transactions committed or rolled back in database `name` so far.
async fn transactions(pool: &PgPool, name: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = $1",
    )
    .bind(name)
    .fetch_one(pool)
    .await?)
}

async fn viewers(
    http: &reqwest::Client,
    base: &str,
    console: &ConsoleProcess,
    pool: &PgPool,
    name: &str,
    written: &AtomicU64,
) -> anyhow::Result<()> {
    // pg_stat_database hears of a backend's transactions up to 10 s late (when it has
    // been idle that long): counts are exact to the refresh or so at each window's end.
    let window = |label: &'static str| async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cpu0 = console.cpu_seconds()?;
        let tx0 = transactions(pool, name).await?;
        let w0 = written.load(Ordering::Relaxed);
        let started = Instant::now();
        tokio::time::sleep(WINDOW).await;
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = (console.cpu_seconds()? - cpu0) / elapsed * 100.0;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let tx = transactions(pool, name).await? - tx0;
        let rate = (written.load(Ordering::Relaxed) - w0) as f64 / elapsed;
        anyhow::Ok((label, cpu, tx, rate, elapsed))
    };
    let idle = window("no viewers").await?;

    let received = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::new();
    for _ in 0..VIEWERS {
        let mut response = http.get(format!("{base}/events")).send().await?;
        let received = received.clone();
        streams.push(tokio::spawn(async move {
            while let Ok(Some(chunk)) = response.chunk().await {
                received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    let r0 = received.load(Ordering::Relaxed);
    let watched = window("100 viewers").await?;
    let rss = console.rss_mib()?;
    let per_viewer =
        (received.load(Ordering::Relaxed) - r0) as f64 / VIEWERS as f64 / (watched.4 + 2.0);
    for stream in streams {
        stream.abort();
    }
    let extra_cpu = watched.1 - idle.1;
    println!();
    println!("(b) live viewers, {WINDOW:?} windows:");
    for (label, cpu, tx, rate, _) in [idle, watched] {
        println!(
            "- {label}: console CPU {cpu:.2} % of a core; PostgreSQL transactions on the bench \
             database {tx}; Redis writer {rate:.0} readings/s"
        );
    }
    println!(
        "- {VIEWERS} viewers cost {extra_cpu:.2} % of a core beyond no viewers; bar <= 5 %: {}",
        verdict(extra_cpu <= 5.0)
    );
    println!(
        "- PostgreSQL: {} transactions with {VIEWERS} viewers, {} without (the live view reads \
         the device list every 30 s and asks whether PostgreSQL answers every 2 s, for \
         everyone); viewers add none: {}",
        watched.2,
        idle.2,
        verdict(watched.2 <= idle.2 + 2)
    );
    println!(
        "- console RSS with {VIEWERS} viewers: {rss:.1} MiB; bar <= 30 MiB: {}; each viewer \
         received {:.1} KB/s of updates",
        verdict(rss <= 30.0),
        per_viewer / 1000.0
    );
    Ok(())
}

async fn chart(http: &reqwest::Client, base: &str, pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO sensor_readings (device_id, boot_id, seq, ts, value, channel_id, clock_synced) \
         SELECT 'bench-0001', 1, i, now() - interval '24 hours' + i * interval '100 ms', \
                150 + 20 * sin(i / 3000.0), 0, true \
           FROM generate_series(0, 863999) AS i",
    )
    .execute(pool)
    .await?;
    // The hourly statistics the ingester would have kept of them.
    sqlx::query(
        "INSERT INTO device_stats_hourly (device_id, channel_id, hour, count, min, max, sum, sum_sq) \
         SELECT device_id, channel_id, to_timestamp(floor(extract(epoch FROM ts) / 3600) * 3600), \
                count(*), min(value), max(value), sum(value), sum(value::float8 * value) \
           FROM sensor_readings GROUP BY 1, 2, 3",
    )
    .execute(pool)
    .await?;
    sqlx::query("VACUUM ANALYZE").execute(pool).await?;
    let mut floor = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let _: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sensor_readings WHERE device_id = 'bench-0001' \
                AND channel_id = 0 AND ts >= now() - interval '24 hours'",
        )
        .fetch_one(pool)
        .await?;
        floor.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    floor.sort_by(f64::total_cmp);
    println!();
    println!("(c) charts of a 10 Hz channel (864 000 readings over 24 h):");
    for (range, what) in [
        (
            "24h",
            "from the hourly statistics: 864 000 readings are too many to scan",
        ),
        (
            "1h",
            "36 000 readings bucketed in SQL (date_bin, min and max per bucket)",
        ),
    ] {
        let (times, _, body) = timed_gets(
            http,
            &format!("{base}/devices/bench-0001?range={range}"),
            20,
        )
        .await?;
        let at = body
            .find("data-channel=\"0\" data-points=\"")
            .context("no chart of channel 0")?
            + "data-channel=\"0\" data-points=\"".len();
        let points: usize = body[at..]
            .split('"')
            .next()
            .unwrap_or("")
            .parse()
            .context("points")?;
        let p99 = percentile(&times, 0.99);
        println!(
            "- device page, range {range}: p50 {:.1} ms, p99 {p99:.1} ms over 20 GETs, {points} \
             points, {what}; bars <= 150 ms and <= 2000 points: {}",
            percentile(&times, 0.5),
            verdict(p99 <= 150.0 && points <= 2000)
        );
    }
    println!(
        "- peer: count(*) over the day's 864 000 rows, p50 {:.1} ms (what a scan of them costs \
         at the least)",
        percentile(&floor, 0.5)
    );
    Ok(())
}
