//! The Redis writer's round trips, open alerts and outages against the stack's real Redis
//! (see tests/redis_sink.rs). Every test works under its own key prefix
//! (`testkit::unique_name`) and deletes its keys at the end; nothing here touches other
//! keys, flushes, or stops the shared Redis. Outages are simulated with a small TCP proxy
//! in front of it, which also counts the commands the sink sends.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use cloud_ingester::redis_sink::{RedisSink, RedisSinkError, WriteOutcome};
use cloud_ingester::rows::Row;
use redis::AsyncCommands;
use support::redis_sink::{cleanup, config, connection, expected_latest, latest, live, row};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
