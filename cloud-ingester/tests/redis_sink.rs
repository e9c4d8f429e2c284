//! The Redis writer against the stack's real Redis. Every test works under its own
//! key prefix (`testkit::unique_name`) and deletes its keys at the end; nothing here
//! touches other keys, flushes, or stops the shared Redis. Outages are simulated with a
//! small TCP proxy in front of it, which also counts the commands the sink sends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use cloud_ingester::redis_sink::{
    LiveRow, RedisSink, RedisSinkConfig, RedisSinkError, WriteOutcome,
};
use cloud_ingester::rows::Row;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------
// helpers

fn row(device: &str, channel: i16, ts_ms: i64, boot_id: i64, seq: i64, value: f32) -> Row {
    Row {
        device_id: device.to_owned(),
        boot_id,
        seq,
        ts_ms,
        value,
        channel_id: channel,
        quality: 0,
        clock_synced: true,
    }
}

/// When PostgreSQL first saw the boot of the tests that use one boot at a time.
const SEEN_US: i64 = 1_700_000_000_000_000;

/// Committed rows as the pipeline hands them over, every boot first seen at `SEEN_US`.
fn live(rows: &[Row]) -> Vec<LiveRow> {
    live_seen(rows, |_| SEEN_US)
}

/// Committed rows, each boot first seen at `seen(boot)`.
fn live_seen(rows: &[Row], seen: impl Fn(i64) -> i64) -> Vec<LiveRow> {
    rows.iter()
        .map(|row| LiveRow {
            row: row.clone(),
            boot_seen_us: seen(row.boot_id),
        })
        .collect()
}

fn config(url: &str, prefix: &str) -> RedisSinkConfig {
    RedisSinkConfig::new(url).with_prefix(prefix)
}

async fn connection() -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(testkit::redis_url())?;
    Ok(client.get_multiplexed_async_connection().await?)
}

/// Deletes every key under `{prefix}:`.
async fn cleanup(prefix: &str) -> anyhow::Result<()> {
    let mut con = connection().await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut con)
            .await?;
        if !keys.is_empty() {
            let _: () = con.del(&keys).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// A latest-hash field, parsed.
#[derive(Debug, PartialEq)]
struct Latest {
    ts: i64,
    v: Option<f64>,
    q: i64,
    boot: String,
    seq: i64,
    synced: bool,
    boot_seen_us: Option<i64>,
}

async fn latest(
    con: &mut MultiplexedConnection,
    prefix: &str,
    device: &str,
) -> anyhow::Result<BTreeMap<i16, Latest>> {
    let hash: BTreeMap<String, String> = con.hgetall(format!("{prefix}:latest:{device}")).await?;
    let mut out = BTreeMap::new();
    for (field, json) in hash {
        let value: serde_json::Value =
            serde_json::from_str(&json).with_context(|| format!("field {field}: {json}"))?;
        let parsed = Latest {
            ts: value["ts"].as_i64().context("ts")?,
            v: value["v"].as_f64(),
            q: value["q"].as_i64().context("q")?,
            boot: value["boot"].as_str().context("boot")?.to_owned(),
            seq: value["seq"].as_i64().context("seq")?,
            synced: value["synced"].as_bool().context("synced")?,
            boot_seen_us: value["boot_seen_us"].as_i64(),
        };
        out.insert(field.parse()?, parsed);
    }
    Ok(out)
}

fn expected_latest(row: &Row) -> Latest {
    expected_latest_seen(row, SEEN_US)
}

fn expected_latest_seen(row: &Row, boot_seen_us: i64) -> Latest {
    Latest {
        ts: row.ts_ms,
        v: Some(f64::from(row.value)),
        q: i64::from(row.quality),
        boot: format!("{:016x}", row.boot_id as u64),
        seq: row.seq,
        synced: row.clock_synced,
        boot_seen_us: Some(boot_seen_us),
    }
}

/// The newest reading per channel in the pipeline's order: (when its boot was first
/// seen, boot as unsigned, seq); no timestamp.
fn newest_per_channel<'a>(
    rows: impl IntoIterator<Item = &'a Row>,
    seen: impl Fn(i64) -> i64,
) -> BTreeMap<i16, &'a Row> {
    let order = |row: &Row| (seen(row.boot_id), row.boot_id as u64, row.seq);
    let mut out: BTreeMap<i16, &Row> = BTreeMap::new();
    for row in rows {
        let kept = out.entry(row.channel_id).or_insert(row);
        if order(row) > order(kept) {
            *kept = row;
        }
    }
    out
}

type StreamEntry = (String, BTreeMap<String, String>);

async fn stream(
    con: &mut MultiplexedConnection,
    prefix: &str,
    device: &str,
) -> anyhow::Result<Vec<StreamEntry>> {
    let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
        .arg(format!("{prefix}:recent:{device}"))
        .arg("-")
        .arg("+")
        .query_async(con)
        .await?;
    Ok(entries)
}

// ---------------------------------------------------------------------------------
// a TCP proxy in front of the stack's Redis: counts commands, can fail

/// Forwards to the stack's Redis, records the name of every command clients send,
/// can cut all connections and refuse new ones (`down`), and can answer the next
/// `EVALSHA` with `NOSCRIPT` itself.
struct Proxy {
    port: u16,
    upstream: String,
    commands: Arc<Mutex<Vec<String>>>,
    up: Arc<AtomicBool>,
    noscript_once: Arc<AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

/// Splits `redis://[userinfo@]host:port[/db]` into (before host, host:port, rest).
fn split_url(url: &str) -> anyhow::Result<(String, String, String)> {
    let rest = url
        .strip_prefix("redis://")
        .context("REDIS_URL is not redis://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (userinfo, host_port) = match authority.rfind('@') {
        Some(i) => (&authority[..=i], &authority[i + 1..]),
        None => ("", authority),
    };
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:6379")
    };
    Ok((format!("redis://{userinfo}"), host_port, path.to_owned()))
}

impl Proxy {
    async fn start() -> anyhow::Result<Self> {
        let (_, upstream, _) = split_url(&testkit::redis_url())?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let commands = Arc::new(Mutex::new(Vec::new()));
        let up = Arc::new(AtomicBool::new(true));
        let noscript_once = Arc::new(AtomicBool::new(false));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let accept_task = {
            let (commands, up, noscript_once) =
                (commands.clone(), up.clone(), noscript_once.clone());
            let generation = generation.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        continue;
                    };
                    tokio::spawn(forward(
                        client,
                        server,
                        commands.clone(),
                        noscript_once.clone(),
                        generation.subscribe(),
                    ));
                }
            })
        };
        Ok(Self {
            port,
            upstream,
            commands,
            up,
            noscript_once,
            generation,
            accept_task,
        })
    }

    /// The stack's Redis URL, pointed at the proxy.
    fn url(&self) -> anyhow::Result<String> {
        let (head, host_port, path) = split_url(&testkit::redis_url())?;
        ensure!(host_port == self.upstream);
        Ok(format!("{head}127.0.0.1:{}{path}", self.port))
    }

    fn commands(&self) -> Vec<String> {
        self.commands.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// One complete command at the start of `buf`: (its length in bytes, its name).
fn parse_command(buf: &[u8]) -> Option<(usize, String)> {
    fn line(buf: &[u8], from: usize) -> Option<(&[u8], usize)> {
        let end = buf[from..].windows(2).position(|w| w == b"\r\n")? + from;
        Some((&buf[from..end], end + 2))
    }
    let (header, mut at) = line(buf, 0)?;
    let Some(count) = header.strip_prefix(b"*") else {
        // Inline command: the whole line.
        let name = String::from_utf8_lossy(header.split(|&b| b == b' ').next()?);
        return Some((at, name.to_uppercase()));
    };
    let count: usize = std::str::from_utf8(count).ok()?.parse().ok()?;
    let mut name = String::new();
    for i in 0..count {
        let (len, next) = line(buf, at)?;
        let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        let end = next + len;
        if buf.len() < end + 2 {
            return None;
        }
        if i == 0 {
            name = String::from_utf8_lossy(&buf[next..end]).to_uppercase();
        }
        at = end + 2;
    }
    Some((at, name))
}

async fn forward(
    mut client: TcpStream,
    mut server: TcpStream,
    commands: Arc<Mutex<Vec<String>>>,
    noscript_once: Arc<AtomicBool>,
    mut generation: tokio::sync::watch::Receiver<u64>,
) {
    let mut pending = Vec::new();
    let mut from_client = vec![0u8; 64 * 1024];
    let mut from_server = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            _ = generation.changed() => return,
            read = client.read(&mut from_client) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                pending.extend_from_slice(&from_client[..n]);
                while let Some((len, name)) = parse_command(&pending) {
                    let bytes: Vec<u8> = pending.drain(..len).collect();
                    let inject = name == "EVALSHA" && noscript_once.swap(false, Ordering::SeqCst);
                    if let Ok(mut c) = commands.lock() {
                        c.push(name);
                    }
                    let written = if inject {
                        client
                            .write_all(b"-NOSCRIPT No matching script. Please use EVAL.\r\n")
                            .await
                    } else {
                        server.write_all(&bytes).await
                    };
                    if written.is_err() {
                        return;
                    }
                }
            }
            read = server.read(&mut from_server) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                if client.write_all(&from_server[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// tests

#[tokio::test]
async fn latest_holds_the_newest_value_per_channel_within_and_across_batches() -> anyhow::Result<()>
{
    let prefix = testkit::unique_name("rsink");
    let sink = RedisSink::new(&testkit::redis_url(), &prefix)?;
    let mut con = connection().await?;
    let now = service::clock::now_ms_i64();
    let (dev, boot) = ("furnace-01", 0x0102_0304_0506_0708);

    // Batch 1: three channels, readings deliberately not in order.
    let batch1 = vec![
        row(dev, 0, now - 300, boot, 1, 10.0),
        row(dev, 0, now - 100, boot, 3, 12.5),
        row(dev, 0, now - 200, boot, 2, 11.0),
        row(dev, 1, now - 100, boot, 5, 851.25),
        row(dev, 1, now - 500, boot, 4, 849.0),
        row(dev, 2, now - 50, boot, 6, -3.5),
    ];
    let outcome = sink.write_batch(&live(&batch1), now).await?;
    assert_eq!(outcome.latest_advanced, 3, "{outcome:?}");
    assert_eq!(outcome.latest_stale, 0, "{outcome:?}");
    assert_eq!(outcome.last_seen_advanced, 1, "{outcome:?}");
    let stored = latest(&mut con, &prefix, dev).await?;
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[&0], expected_latest(&batch1[1]));
    assert_eq!(stored[&1], expected_latest(&batch1[3]));
    assert_eq!(stored[&2], expected_latest(&batch1[5]));
    // The documented, human-readable format.
    let raw: String = con.hget(format!("{prefix}:latest:{dev}"), "1").await?;
    assert_eq!(
        raw,
        format!(
            r#"{{"ts":{},"v":851.25,"q":0,"boot":"0102030405060708","seq":5,"synced":true,"boot_seen_us":{SEEN_US}}}"#,
            now - 100
        )
    );

    // Batch 2: channel 1 newer, channel 0 older than stored (a lower seq, a later time:
    // time takes no part), channel 3 new.
    let batch2 = vec![
        row(dev, 1, now - 10, boot, 7, 852.0),
        row(dev, 0, now - 50, boot, 0, 99.0),
        row(dev, 3, now - 20, boot, 9, 1.0),
    ];
    let outcome = sink.write_batch(&live(&batch2), now).await?;
    assert_eq!(
        (outcome.latest_advanced, outcome.latest_stale),
        (2, 1),
        "{outcome:?}"
    );
    let stored = latest(&mut con, &prefix, dev).await?;
    assert_eq!(
        stored[&0],
        expected_latest(&batch1[1]),
        "channel 0 must not go back"
    );
    assert_eq!(stored[&1], expected_latest(&batch2[0]));
    assert_eq!(stored[&2], expected_latest(&batch1[5]));
    assert_eq!(stored[&3], expected_latest(&batch2[2]));

    // A replay of batch 2 changes nothing.
    let outcome = sink.write_batch(&live(&batch2), now).await?;
    assert_eq!(
        (
            outcome.latest_advanced,
            outcome.latest_stale,
            outcome.stream_appended,
            outcome.last_seen_advanced
        ),
        (0, 3, 0, 0),
        "{outcome:?}"
    );
    assert_eq!(latest(&mut con, &prefix, dev).await?, stored);

    // Same timestamp: the later seq wins, in either arrival order.
    let tie_a = row(dev, 5, now, boot, 20, 1.0);
    let tie_b = row(dev, 5, now, boot, 21, 2.0);
    sink.write_batch(&live(std::slice::from_ref(&tie_b)), now)
        .await?;
    sink.write_batch(&live(std::slice::from_ref(&tie_a)), now)
        .await?;
    assert_eq!(
        latest(&mut con, &prefix, dev).await?[&5],
        expected_latest(&tie_b)
    );

    // A non-finite value is stored as null rather than breaking the JSON.
    sink.write_batch(&live(&[row(dev, 6, now, boot, 30, f32::NAN)]), now)
        .await?;
    assert_eq!(latest(&mut con, &prefix, dev).await?[&6].v, None);

    cleanup(&prefix).await
}

/// Random readings with many ties, plus replays, split into batches in random order:
/// after every batch, latest equals the maximum (boot first seen, boot, seq) per channel
/// of all readings written so far, last_seen the time of the maximum over all channels,
/// and the stream stays in time order.
#[test]
fn out_of_order_batches_never_move_latest_or_last_seen_back() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let prefix = testkit::unique_name("rsink");
    let url = testkit::redis_url();
    let base = service::clock::now_ms_i64() - 60_000;
    let boots = [i64::MIN + 1, -5, 3, 0x7f00_0000_0000_0000];
    // When each was first seen: the last two together (ordered by boot id then), and
    // not in the boot ids' order.
    let seen = |boot: i64| match boot {
        -5 => SEEN_US,
        3 | 0x7f00_0000_0000_0000 => SEEN_US + 2,
        _ => SEEN_US + 1,
    };

    // (ts offset, boot index, channel) per reading; seq is the index; then replays and
    // a permutation; then batch boundaries.
    let strategy = prop::collection::vec((0i64..40, 0usize..boots.len(), 0i16..3), 1..60)
        .prop_flat_map(|readings| {
            let n = readings.len();
            (
                Just(readings),
                prop::collection::vec(0..n, 0..n),
                prop::collection::vec(1usize..8, 1..20),
            )
        })
        .prop_flat_map(|(readings, replays, cuts)| {
            let order: Vec<usize> = (0..readings.len()).chain(replays).collect();
            (Just(readings), Just(order).prop_shuffle(), Just(cuts))
        });

    let mut runner = TestRunner::new(ProptestConfig {
        cases: 40,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let case = AtomicU32::new(0);
    let result = runner.run(&strategy, |(readings, order, cuts)| {
        let device = format!("dev-{}", case.fetch_add(1, Ordering::Relaxed));
        let rows: Vec<Row> = readings
            .iter()
            .enumerate()
            .map(|(seq, &(off, boot, ch))| {
                row(&device, ch, base + off, boots[boot], seq as i64, seq as f32)
            })
            .collect();
        let check = runtime.block_on(async {
            let sink = RedisSink::new(&url, &prefix)?;
            let mut con = connection().await?;
            let mut written: Vec<&Row> = Vec::new();
            let mut at = 0;
            let mut cut = cuts.iter().cycle();
            while at < order.len() {
                let size = (*cut.next().context("cuts")?).min(order.len() - at);
                let batch: Vec<Row> = order[at..at + size]
                    .iter()
                    .map(|&i| rows[i].clone())
                    .collect();
                at += size;
                written.extend(order[at - size..at].iter().map(|&i| &rows[i]));
                sink.write_batch(&live_seen(&batch, seen), service::clock::now_ms_i64())
                    .await?;

                let newest = newest_per_channel(written.iter().copied(), seen);
                let want: BTreeMap<i16, Latest> = newest
                    .iter()
                    .map(|(&ch, row)| (ch, expected_latest_seen(row, seen(row.boot_id))))
                    .collect();
                let got = latest(&mut con, &prefix, &device).await?;
                if got != want {
                    bail!(
                        "after {at} of {} readings: latest {got:?}, want {want:?}",
                        order.len()
                    );
                }
                let newest_ts = written
                    .iter()
                    .max_by_key(|row| (seen(row.boot_id), row.boot_id as u64, row.seq))
                    .context("written")?
                    .ts_ms;
                let last_seen: Option<i64> =
                    con.get(format!("{prefix}:last_seen:{device}")).await?;
                if last_seen != Some(newest_ts) {
                    bail!("after {at} readings: last_seen {last_seen:?}, want {newest_ts}");
                }
            }
            let entries = stream(&mut con, &prefix, &device).await?;
            let ts: Vec<i64> = entries
                .iter()
                .map(|(_, f)| f.get("ts").and_then(|t| t.parse().ok()).unwrap_or(-1))
                .collect();
            if !ts.windows(2).all(|w| w[0] <= w[1]) || ts.contains(&-1) {
                bail!("stream out of time order: {ts:?}");
            }
            anyhow::Ok(())
        });
        check.map_err(|e| TestCaseError::fail(format!("{e:#}")))
    });
    runtime.block_on(cleanup(&prefix))?;
    result.map_err(|e| anyhow::anyhow!("{e}"))
}

/// Issue 15: an agent restarted sends its new boot's live frames first and the old
/// boot's backlog after them. Whatever that backlog's times (later, from a clock that
/// ran ahead, or earlier) and sequence numbers, `latest` and `last_seen` keep the newer
/// boot's values, the one PostgreSQL first saw later; a further reading of the new boot
/// moves them on.
#[tokio::test]
async fn an_older_boots_backlog_never_replaces_a_newer_boots_values() -> anyhow::Result<()> {
    let prefix = testkit::unique_name("rsink");
    let sink = RedisSink::new(&testkit::redis_url(), &prefix)?;
    let mut con = connection().await?;
    let now = service::clock::now_ms_i64();
    let (dev, old_boot, new_boot) = ("press-01", 0x7fff_0000_0000_0001, 0x0000_0000_0000_0002);
    // The old boot sorts after the new one by id: only its first sight may decide.
    let seen = |boot: i64| {
        if boot == new_boot {
            SEEN_US + 60_000_000
        } else {
            SEEN_US
        }
    };

    let fresh = vec![
        row(dev, 0, now - 2_000, new_boot, 0, 200.0),
        row(dev, 1, now - 2_000, new_boot, 1, 20.0),
    ];
    let outcome = sink.write_batch(&live_seen(&fresh, seen), now).await?;
    assert_eq!(outcome.latest_advanced, 2, "{outcome:?}");
    let want = latest(&mut con, &prefix, dev).await?;
    let seen_key = format!("{prefix}:last_seen:{dev}");
    assert_eq!(con.get::<_, i64>(&seen_key).await?, now - 2_000);

    // The backlog: later times and far higher seqs, then earlier ones.
    for ts in [now - 10, now - 60_000] {
        let backlog: Vec<Row> = (0..20)
            .map(|i| row(dev, (i % 2) as i16, ts + i, old_boot, 5_000 + i, 999.0))
            .collect();
        let outcome = sink.write_batch(&live_seen(&backlog, seen), now).await?;
        assert_eq!(
            (outcome.latest_advanced, outcome.last_seen_advanced),
            (0, 0),
            "{outcome:?}"
        );
        assert_eq!(latest(&mut con, &prefix, dev).await?, want);
        assert_eq!(con.get::<_, i64>(&seen_key).await?, now - 2_000);
    }

    // Both boots in one batch: the new boot's reading wins.
    let next = row(dev, 0, now - 1_500, new_boot, 2, 201.0);
    let mixed = vec![next.clone(), row(dev, 0, now, old_boot, 9_999, 999.0)];
    sink.write_batch(&live_seen(&mixed, seen), now).await?;
    assert_eq!(
        latest(&mut con, &prefix, dev).await?[&0],
        expected_latest_seen(&next, seen(new_boot))
    );
    assert_eq!(con.get::<_, i64>(&seen_key).await?, now - 1_500);

    cleanup(&prefix).await
}

#[tokio::test]
async fn stream_is_capped_per_batch_and_overall_and_its_entries_are_readable() -> anyhow::Result<()>
{
    let prefix = testkit::unique_name("rsink");
    let mut cfg = config(&testkit::redis_url(), &prefix);
    cfg.stream_maxlen = 50;
    cfg.stream_per_device_per_batch = 20;
    let sink = RedisSink::with_config(cfg)?;
    let mut con = connection().await?;
    let dev = "press-01";
    let now = service::clock::now_ms_i64();
    let start = now - 100_000;

    // One batch of 30 readings in reverse order: only the newest 20 are appended, in
    // ascending time, ids carrying the reading time.
    let batch: Vec<Row> = (0..30)
        .rev()
        .map(|i| row(dev, (i % 4) as i16, start + i, 7, i, i as f32 * 0.5))
        .collect();
    let outcome = sink.write_batch(&live(&batch), now).await?;
    assert_eq!(outcome.stream_appended, 20, "{outcome:?}");
    let entries = stream(&mut con, &prefix, dev).await?;
    assert_eq!(entries.len(), 20);
    for (k, (id, fields)) in entries.iter().enumerate() {
        let i = 10 + k as i64;
        let ts = start + i;
        assert!(id.starts_with(&format!("{ts}-")), "id {id} for ts {ts}");
        assert_eq!(fields["ts"], ts.to_string());
        assert_eq!(fields["ch"], (i % 4).to_string());
        assert_eq!(fields["v"].parse::<f32>()?, i as f32 * 0.5);
        assert_eq!(fields["q"], "0");
    }

    // A replay appends nothing.
    assert_eq!(
        sink.write_batch(&live(&batch), now).await?.stream_appended,
        0
    );

    // Many more batches: the stream stays near its cap (MAXLEN ~ trims whole nodes).
    for b in 1..30i64 {
        let batch: Vec<Row> = (0..20)
            .map(|i| row(dev, 0, start + 1000 * b + i, 7, 1000 * b + i, 1.0))
            .collect();
        sink.write_batch(&live(&batch), now).await?;
    }
    let node: (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("stream-node-max-entries")
        .query_async(&mut con)
        .await?;
    let node: usize = node.1.parse()?;
    let len: usize = con.xlen(format!("{prefix}:recent:{dev}")).await?;
    assert!(len >= 50, "trimmed below MAXLEN: {len}");
    assert!(
        len <= 50 + node,
        "not capped: {len} entries, cap 50 (~{node})"
    );
    let entries = stream(&mut con, &prefix, dev).await?;
    let last = entries.last().context("empty stream")?;
    assert_eq!(last.1["ts"], (start + 1000 * 29 + 19).to_string());

    // Many devices in one batch: the per-device share shrinks to the per-batch cap.
    let mut cfg = config(&testkit::redis_url(), &prefix);
    cfg.stream_per_device_per_batch = 100;
    cfg.stream_per_batch = 40;
    let sink = RedisSink::with_config(cfg)?;
    let batch: Vec<Row> = (0..10)
        .flat_map(|d| (0..50).map(move |i| row(&format!("many-{d}"), 0, now - 50 + i, 1, i, 0.0)))
        .collect();
    let outcome = sink.write_batch(&live(&batch), now).await?;
    assert_eq!(outcome.stream_appended, 40, "10 devices x 4: {outcome:?}");

    cleanup(&prefix).await
}

#[tokio::test]
async fn last_seen_expires_within_the_configured_ttl() -> anyhow::Result<()> {
    let prefix = testkit::unique_name("rsink");
    let mut cfg = config(&testkit::redis_url(), &prefix);
    cfg.last_seen_ttl = Duration::from_secs(30);
    let sink = RedisSink::with_config(cfg)?;
    let mut con = connection().await?;
    let now = service::clock::now_ms_i64();

    // Synchronised clock, reading 5 s old: expires 30 s after the reading.
    sink.write_batch(&live(&[row("cnc-01", 0, now - 5_000, 1, 1, 1.0)]), now)
        .await?;
    let key = format!("{prefix}:last_seen:cnc-01");
    let seen: i64 = con.get(&key).await?;
    assert_eq!(seen, now - 5_000);
    let pttl: i64 = con.pttl(&key).await?;
    assert!(pttl > 0 && pttl <= 25_000, "pttl {pttl}");

    // A newer reading moves it forward and renews the TTL; an older one (a lower seq,
    // whatever its time) does neither.
    sink.write_batch(&live(&[row("cnc-01", 0, now, 1, 2, 1.0)]), now)
        .await?;
    let pttl_new: i64 = con.pttl(&key).await?;
    assert!(pttl_new > 25_000 && pttl_new <= 30_000, "pttl {pttl_new}");
    let outcome = sink
        .write_batch(&live(&[row("cnc-01", 1, now - 1_000, 1, 0, 1.0)]), now)
        .await?;
    assert_eq!(outcome.last_seen_advanced, 0, "{outcome:?}");
    assert_eq!(con.get::<_, i64>(&key).await?, now);
    assert!(con.pttl::<_, i64>(&key).await? <= pttl_new);

    // Unsynchronised clock: its timestamp cannot date the expiry, so the full TTL.
    let mut unsynced = row("paint-01", 0, now - 20_000, 1, 1, 1.0);
    unsynced.clock_synced = false;
    sink.write_batch(&live(&[unsynced]), now).await?;
    let pttl: i64 = con.pttl(format!("{prefix}:last_seen:paint-01")).await?;
    assert!(pttl > 25_000 && pttl <= 30_000, "pttl {pttl}");

    // A reading already older than the TTL does not make a device look online.
    let outcome = sink
        .write_batch(&live(&[row("air-01", 0, now - 60_000, 1, 1, 1.0)]), now)
        .await?;
    assert_eq!(outcome.last_seen_advanced, 0);
    assert_eq!(outcome.latest_advanced, 1, "latest is still recorded");
    let exists: bool = con.exists(format!("{prefix}:last_seen:air-01")).await?;
    assert!(!exists);

    cleanup(&prefix).await
}

#[tokio::test]
async fn one_round_trip_per_batch_and_noscript_is_reloaded() -> anyhow::Result<()> {
    let prefix = testkit::unique_name("rsink");
    let proxy = Proxy::start().await?;
    let sink = RedisSink::new(&proxy.url()?, &prefix)?;
    let mut con = connection().await?;
    let now = service::clock::now_ms_i64();
    sink.ping().await?;

    // Warm-up: loads the script if this Redis has never seen it.
    let before = proxy.commands().len();
    sink.write_batch(&live(&[row("warm", 0, now, 1, 1, 1.0)]), now)
        .await?;
    let warm = proxy.commands()[before..].to_vec();
    assert!(
        warm == ["EVALSHA"] || warm == ["EVALSHA", "SCRIPT", "EVALSHA"],
        "{warm:?}"
    );

    // Small and large batches: exactly one command each, the script.
    for (devices, per_device) in [(1, 3), (5, 4_000), (50, 10)] {
        let batch: Vec<Row> = (0..devices)
            .flat_map(|d| {
                (0..per_device).map(move |i| {
                    row(
                        &format!("d{d}"),
                        (i % 8) as i16,
                        now - per_device + i,
                        1,
                        i,
                        i as f32,
                    )
                })
            })
            .collect();
        let before = proxy.commands().len();
        let outcome = sink.write_batch(&live(&batch), now).await?;
        let sent = proxy.commands()[before..].to_vec();
        assert_eq!(sent, ["EVALSHA"], "{} rows: {outcome:?}", batch.len());
    }

    // Redis lost its script cache (restart): NOSCRIPT, SCRIPT LOAD, EVALSHA, applied.
    proxy.noscript_once.store(true, Ordering::SeqCst);
    let before = proxy.commands().len();
    let newer = row("d0", 0, now + 1, 1, 99_999, 42.0);
    let outcome = sink
        .write_batch(&live(std::slice::from_ref(&newer)), now)
        .await?;
    assert_eq!(proxy.commands()[before..], ["EVALSHA", "SCRIPT", "EVALSHA"]);
    assert_eq!(outcome.latest_advanced, 1);
    assert_eq!(
        latest(&mut con, &prefix, "d0").await?[&0],
        expected_latest(&newer)
    );

    cleanup(&prefix).await
}

#[tokio::test]
async fn open_alerts_are_set_and_cleared() -> anyhow::Result<()> {
    let prefix = testkit::unique_name("rsink");
    let sink = RedisSink::new(&testkit::redis_url(), &prefix)?;
    let mut con = connection().await?;
    let key = format!("{prefix}:alerts:open");

    sink.set_open_alert(7, r#"{"id":7,"device":"furnace-01","state":"open"}"#)
        .await?;
    sink.set_open_alert(8, r#"{"id":8,"state":"open"}"#).await?;
    sink.set_open_alert(7, r#"{"id":7,"state":"acknowledged"}"#)
        .await?;
    let open: BTreeMap<i64, String> = con.hgetall(&key).await?;
    assert_eq!(open.len(), 2);
    assert_eq!(open[&7], r#"{"id":7,"state":"acknowledged"}"#);

    assert!(sink.clear_alert(7).await?);
    assert!(!sink.clear_alert(7).await?, "already cleared");
    let open: BTreeMap<i64, String> = con.hgetall(&key).await?;
    assert_eq!(open.keys().copied().collect::<Vec<_>>(), [8]);
    assert!(sink.clear_alert(8).await?);
    let exists: bool = con.exists(&key).await?;
    assert!(!exists, "an empty hash disappears");

    cleanup(&prefix).await
}

/// The test's own bound, so a hang fails the test instead of stalling it.
async fn guard<T>(call: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(Duration::from_secs(15), call)
        .await
        .context("the call hung")
}

fn assert_bounded(what: &str, elapsed: Duration, limit: Duration) {
    assert!(elapsed < limit, "{what} took {elapsed:?}, limit {limit:?}");
}

#[tokio::test]
async fn unreachable_redis_is_an_error_within_seconds_not_a_hang() -> anyhow::Result<()> {
    let now = service::clock::now_ms_i64();
    let batch = [row("d", 0, now, 1, 1, 1.0)];

    // Closed port: connection refused.
    let sink = RedisSink::new("redis://127.0.0.1:1/", "plant")?;
    for _ in 0..3 {
        let started = Instant::now();
        let result = guard(sink.write_batch(&live(&batch), now)).await?;
        assert!(result.is_err(), "{result:?}");
        assert_bounded(
            "write_batch, refused",
            started.elapsed(),
            Duration::from_secs(6),
        );
    }
    let started = Instant::now();
    assert!(sink.ping().await.is_err());
    assert!(sink.set_open_alert(1, "{}").await.is_err());
    assert!(sink.clear_alert(1).await.is_err());
    assert_bounded(
        "ping + alerts, refused",
        started.elapsed(),
        Duration::from_secs(18),
    );

    // A server that accepts and never answers: the timeouts, not the kernel, end it.
    let silent = TcpListener::bind("127.0.0.1:0").await?;
    let port = silent.local_addr()?.port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let url = format!("redis://127.0.0.1:{port}/");

    // Each layer alone bounds the call. The connection's own timeouts (1 s per
    // attempt, one retry) with a lax overall bound:
    let mut cfg = config(&url, "plant");
    cfg.connection_timeout = Duration::from_secs(1);
    cfg.response_timeout = Duration::from_secs(1);
    cfg.operation_timeout = Duration::from_secs(600);
    let sink = RedisSink::with_config(cfg)?;
    let started = Instant::now();
    let result = guard(sink.write_batch(&live(&batch), now)).await?;
    assert!(
        matches!(result, Err(RedisSinkError::Redis { .. })),
        "{result:?}"
    );
    assert_bounded(
        "write_batch, silent",
        started.elapsed(),
        Duration::from_secs(5),
    );

    // The overall bound, with lax connection timeouts:
    let mut cfg = config(&url, "plant");
    cfg.connection_timeout = Duration::from_secs(600);
    cfg.response_timeout = Duration::from_secs(600);
    cfg.operation_timeout = Duration::from_secs(1);
    let sink = RedisSink::with_config(cfg)?;
    let started = Instant::now();
    let result = guard(sink.write_batch(&live(&batch), now)).await?;
    assert!(
        matches!(result, Err(RedisSinkError::Timeout { .. })),
        "{result:?}"
    );
    assert_bounded(
        "write_batch, silent",
        started.elapsed(),
        Duration::from_secs(3),
    );
    holder.abort();
    Ok(())
}

#[tokio::test]
async fn an_outage_is_an_error_and_the_sink_recovers_by_itself() -> anyhow::Result<()> {
    let prefix = testkit::unique_name("rsink");
    let proxy = Proxy::start().await?;
    let sink = RedisSink::new(&proxy.url()?, &prefix)?;
    let mut con = connection().await?;
    let now = service::clock::now_ms_i64();

    let first = row("comp-01", 0, now - 3, 1, 1, 1.0);
    sink.write_batch(&live(std::slice::from_ref(&first)), now)
        .await?;

    proxy.down();
    let during = row("comp-01", 0, now - 2, 1, 2, 2.0);
    for _ in 0..3 {
        let started = Instant::now();
        let result = guard(sink.write_batch(&live(std::slice::from_ref(&during)), now)).await?;
        assert!(result.is_err(), "write during the outage: {result:?}");
        assert_bounded(
            "write_batch during outage",
            started.elapsed(),
            Duration::from_secs(6),
        );
    }
    assert_eq!(
        latest(&mut con, &prefix, "comp-01").await?[&0],
        expected_latest(&first)
    );

    proxy.up();
    let after = row("comp-01", 0, now - 1, 1, 3, 3.0);
    let deadline = Instant::now() + Duration::from_secs(15);
    let outcome: WriteOutcome = loop {
        match sink
            .write_batch(&live(std::slice::from_ref(&after)), now)
            .await
        {
            Ok(outcome) => break outcome,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => bail!("no recovery after the outage: {e}"),
        }
    };
    assert_eq!(outcome.latest_advanced, 1);
    assert_eq!(
        latest(&mut con, &prefix, "comp-01").await?[&0],
        expected_latest(&after)
    );

    cleanup(&prefix).await
}

#[tokio::test]
async fn invalid_settings_are_errors_not_panics() {
    assert!(RedisSink::new("not a url", "plant").is_err());
    assert!(RedisSink::new("redis://127.0.0.1:6379/", "").is_err());
    let mut cfg = config("redis://127.0.0.1:6379/", "plant");
    cfg.last_seen_ttl = Duration::ZERO;
    assert!(RedisSink::with_config(cfg).is_err());
}
