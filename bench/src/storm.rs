//! `bench storm`: a connection storm against the embedded broker with the gateway
//! registry. N registered gateways connect at once (the registry's cache cold, as after
//! a bridge restart), then drop and reconnect at once (the cache warm, as after a network
//! blip); beside them, in the same run, the same storm against a bridge that
//! authenticates nobody (`allow_anonymous`), the peer that shows what authentication
//! adds. The bar (issue 18): 1 000 gateways reconnecting at once are served within 10 s.
//!
//! Run: `set -a; . .stack/env; set +a; target/release/bench storm [--gateways N]`
//! (BENCH_STORM_GATEWAYS; default 1000). The bridges use the stack's Kafka; the registry
//! is a private PostgreSQL (testkit).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use bridge::config::{BridgeConfig, Mode};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet};
use tokio::sync::watch;

use crate::database::PrivateDatabase;
use crate::machine::{now_utc_seconds, Machine};

/// How long one storm may take before it is reported unfinished.
const STORM_LIMIT: Duration = Duration::from_secs(60);
/// A client whose CONNECT failed tries again after this, as an agent does.
const RETRY_AFTER: Duration = Duration::from_millis(200);
const BAR: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug)]
pub struct Knobs {
    /// Gateways connecting at once [default: 1000].
    #[arg(long, env = "BENCH_STORM_GATEWAYS", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    gateways: u32,
}

/// One storm's outcome.
struct Storm {
    /// From the start signal until the last CONNACK.
    elapsed: Duration,
    connected: usize,
    /// CONNECTs that failed and were tried again.
    retries: u64,
    /// CONNACK after the start signal, per client, sorted.
    waits: Vec<Duration>,
}

impl Storm {
    fn percentile(&self, p: f64) -> Duration {
        let at = ((self.waits.len() as f64 - 1.0) * p).round() as usize;
        self.waits.get(at).copied().unwrap_or_default()
    }

    fn line(&self, label: &str, of: usize) -> String {
        format!(
            "{label:<44} {:>6} of {of:<6} {:>8.2} s {:>8.2} s {:>8.2} s {:>8}",
            self.connected,
            self.elapsed.as_secs_f64(),
            self.percentile(0.5).as_secs_f64(),
            self.percentile(0.99).as_secs_f64(),
            self.retries,
        )
    }
}

pub fn run(knobs: Knobs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(storms(knobs.gateways as usize))
}

async fn storms(n: usize) -> anyhow::Result<()> {
    let machine = Machine::detect()?;
    eprintln!("registering {n} gateways in a private PostgreSQL ...");
    let PrivateDatabase {
        server: postgres,
        url,
        pool,
    } = PrivateDatabase::start(2).await?;
    let mut logins = Vec::with_capacity(n);
    for g in 0..n {
        let id = format!("storm-{g:05}");
        let secret = gateways::registry::add(&pool, "bench", &id, &[]).await?;
        logins.push((id, secret.expose().to_owned()));
    }
    pool.close().await;
    let logins = Arc::new(logins);

    eprintln!("storm against a bridge that authenticates nobody (the peer) ...");
    let anonymous = Bridge::start(None).await?;
    let peer = storm(anonymous.port, &logins, false).await;
    anonymous.stop().await;

    eprintln!("storm against a bridge with the registry, its cache cold ...");
    let checked = Bridge::start(Some(&url)).await?;
    let cold = storm(checked.port, &logins, true).await;
    eprintln!("the same gateways again at once, the cache warm ...");
    let warm = storm(checked.port, &logins, true).await;
    checked.stop().await;

    println!();
    println!("connection storm benchmark — {}", now_utc_seconds());
    println!("machine: {}", machine.one_line());
    println!(
        "workload: {n} MQTT 3.1.1 clients (rumqttc) in this process start their CONNECT at \
         the same instant and hold the connection until all are in"
    );
    println!();
    println!(
        "{:<44} {:>16} {:>10} {:>10} {:>10} {:>8}",
        "storm", "connected", "last in", "p50", "p99", "retries"
    );
    println!(
        "{}",
        peer.line("no authentication (allow_anonymous, peer)", n)
    );
    println!(
        "{}",
        cold.line("registry, cache cold (after a bridge restart)", n)
    );
    println!("{}", warm.line("registry, cache warm (a reconnect)", n));
    println!();
    let worst = cold.elapsed.max(warm.elapsed);
    let all_in = cold.connected == n && warm.connected == n;
    println!(
        "bar: {n} gateways reconnecting at once served within {} s: {} (slowest storm {:.2} s; authentication adds {:.2} s to the peer's {:.2} s)",
        BAR.as_secs(),
        if all_in && worst <= BAR { "met" } else { "NOT met" },
        worst.as_secs_f64(),
        cold.elapsed.as_secs_f64() - peer.elapsed.as_secs_f64(),
        peer.elapsed.as_secs_f64(),
    );
    println!();
    println!("{}", HOW_MEASURED.trim());
    drop(postgres);
    ensure!(all_in, "not every gateway got in: see the table");
    Ok(())
}

/// The bridge in this process, embedded mode, on the stack's Kafka: with the registry
/// at `registry`, or anonymous.
struct Bridge {
    port: u16,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<anyhow::Result<bridge::stats::StatsSnapshot>>,
}

impl Bridge {
    async fn start(registry: Option<&str>) -> anyhow::Result<Self> {
        let mut config = BridgeConfig {
            mode: Mode::Embedded,
            id: testkit::unique_name("storm"),
            topic_prefix: testkit::unique_name("storm"),
            ..BridgeConfig::default()
        };
        config.kafka.brokers = testkit::kafka_brokers();
        config.kafka.metrics_topic = String::new();
        config.kafka.confirm_topic = String::new();
        config.latest.enabled = false;
        config.http.listen = ([127, 0, 0, 1], 0).into();
        let port = testkit::free_port();
        config.embedded.listen = ([127, 0, 0, 1], port).into();
        match registry {
            Some(url) => config.embedded.registry_url = url.to_owned(),
            None => config.embedded.allow_anonymous = true,
        }
        config.validate().context("storm bridge configuration")?;
        let bridge = bridge::Bridge::start(config).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(bridge.run_until(async {
            let _ = stopped.await;
        }));
        Ok(Self { port, stop, done })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.done.await;
    }
}

/// Every login connects at once; returns when all are in (or the limit passed), then
/// disconnects them all.
async fn storm(port: u16, logins: &Arc<Vec<(String, String)>>, credentials: bool) -> Storm {
    let (start_all, go) = watch::channel(false);
    let (release, released) = watch::channel(false);
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<Duration>();
    let mut clients = Vec::with_capacity(logins.len());
    for (id, secret) in logins.iter() {
        let mut options = MqttOptions::new(id.clone(), "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(60));
        if credentials {
            options.set_credentials(id.clone(), secret.clone());
        }
        let mut go = go.clone();
        let mut released = released.clone();
        let arrived = arrived_tx.clone();
        clients.push(tokio::spawn(async move {
            let _ = go.wait_for(|started| *started).await;
            let start = Instant::now();
            let (client, mut events) = AsyncClient::new(options, 10);
            let mut retries = 0u64;
            loop {
                if start.elapsed() > STORM_LIMIT {
                    return retries;
                }
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack)))
                        if ack.code == ConnectReturnCode::Success =>
                    {
                        let _ = arrived.send(start.elapsed());
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        retries += 1;
                        tokio::time::sleep(RETRY_AFTER).await;
                    }
                }
            }
            // Held until every client is in: a storm is everyone at once.
            while !*released.borrow() {
                tokio::select! {
                    _ = released.changed() => {}
                    event = events.poll() => if event.is_err() { break },
                }
            }
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), events.poll()).await;
            retries
        }));
    }
    drop(arrived_tx);
    // Every client is made and parked before the signal.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = start_all.send(true);
    let deadline = tokio::time::Instant::now() + STORM_LIMIT + Duration::from_secs(5);
    let mut waits = Vec::with_capacity(logins.len());
    while waits.len() < logins.len() {
        match tokio::time::timeout_at(deadline, arrived.recv()).await {
            Ok(Some(wait)) => waits.push(wait),
            _ => break,
        }
    }
    let _ = release.send(true);
    let mut retries = 0;
    for client in clients {
        retries += client.await.unwrap_or(0);
    }
    waits.sort();
    Storm {
        elapsed: waits.last().copied().unwrap_or(STORM_LIMIT),
        connected: waits.len(),
        retries,
        waits,
    }
}

const HOW_MEASURED: &str = r#"
How measured. One process: the bridge (the library, embedded mode, default configuration
except a free port, the stack's Kafka, no latest values, no confirmation relay) and the
clients, on one 2-thread tokio runtime; rumqttd on its own threads. The registry is a
private PostgreSQL (testkit) holding N gateways registered by iotctl's code
(gateways::registry::add); each client connects as its gateway (user name = id, password
= its secret, client id = id). All clients are created, parked, then released by one
signal; a client whose CONNECT fails (rumqttc gives up on a CONNACK after 5 s) waits
200 ms and tries again (counted as a retry),
as an agent does. "last in" is the signal to the last successful CONNACK; p50/p99 are over
the clients' own signal-to-CONNACK times. Each client holds its connection until all are
in, then disconnects. The warm storm follows the cold one within the registry cache's
trust (embedded.auth_cache, 10 s). The peer is the same storm against a bridge with
allow_anonymous = true, in the same run.
"#;
