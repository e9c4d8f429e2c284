//! A deployment of the whole pipeline on one machine, every part a real process or
//! server of its own: PostgreSQL, Redis, a Kafka-compatible broker (Tansu) and, in client
//! mode, Mosquitto (private servers from `testkit`, so a scenario may stop them without
//! touching the shared stack); the ingester, the bridge and the workload's edge agents
//! as child processes (with the workload's added channels registered in PostgreSQL);
//! and the observer on the broker the agents publish to. Scenarios reach into
//! it to inject faults; [`Deployment::finish`] stops the agents cleanly, waits for the
//! pipeline to settle and hands back what the ledger needs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use sqlx::postgres::{PgPool, PgPoolOptions};
use tempfile::TempDir;
use testkit::{Mosquitto, Postgres, Redis, Tansu};

use crate::binaries::binary;
use crate::endpoints::Metrics;
use crate::observer::{Observed, Observer};
use crate::process::Process;
use crate::workload::{self, QueueSize, Workload, FRAME_READINGS};

/// Where the agents' broker lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeMode {
    /// A private Mosquitto with a persistent store; the bridge subscribes to it with a
    /// persistent session and acknowledges after Kafka. The production setup.
    Client,
    /// The bridge's embedded rumqttd: acknowledged on receipt, held in memory.
    Embedded,
}

/// A server a scenario stops and starts.
#[derive(Debug, Clone, Copy)]
pub enum Server {
    /// The agents' Mosquitto (client mode).
    Broker,
    Postgres,
    Redis,
}

impl Server {
    pub fn name(self) -> &'static str {
        match self {
            Server::Broker => "broker",
            Server::Postgres => "PostgreSQL",
            Server::Redis => "Redis",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub seed: u64,
    pub bridge: BridgeMode,
    /// The agents' queue size; `None` keeps the defaults (64 MiB).
    pub queue: Option<QueueSize>,
    /// Readings per second the agents make (see [`Workload::new`]).
    pub rate: u64,
}

/// How long a stopped part may take to exit cleanly.
const STOP_PATIENCE: Duration = Duration::from_secs(60);
/// How long the agents keep delivering their queue after SIGTERM, per 12 000 readings/s
/// of the workload, at least once: what waits for the cloud's confirmation when sampling
/// stops grows with the rate (faster than it, when the rate is above what the pipeline
/// commits on this machine), and the pipeline drains it no faster.
const AGENT_GRACE: Duration = Duration::from_secs(30);
const AGENT_GRACE_PER: u64 = 12_000;
/// Frames an agent may have queued and still count as caught up: about a second's worth
/// of its frames, and never fewer than this.
const CAUGHT_UP_BACKLOG: u64 = 10;
/// How long after its last catalog load the ingester re-reads it on meeting an unknown
/// channel (`CATALOG_RECHECK` in cloud-ingester's `pipeline/batch.rs`), with a margin:
/// frames of the added channels that arrive sooner could be dead-lettered.
const CATALOG_RECHECK: Duration = Duration::from_secs(6);

// Fields drop in this order: the processes before the servers they talk to.
pub struct Deployment {
    /// One per gateway of the workload, in that order.
    pub agents: Vec<Process>,
    pub workload: Workload,
    pub bridge: Process,
    pub ingesters: Vec<Process>,
    observer: Option<Observer>,
    pub db: PgPool,
    pub postgres: Postgres,
    pub redis: Redis,
    pub kafka: Tansu,
    pub mosquitto: Option<Mosquitto>,
    /// The agents' broker: Mosquitto's, or the bridge's embedded one.
    mqtt_port: u16,
    queue_dirs: Vec<PathBuf>,
    /// The `/metrics` address of the bridge, then of each ingester.
    metrics: Vec<String>,
    /// When the agents were started: the workload's rate is what they made since.
    agents_started: Instant,
    dir: TempDir,
}

impl Deployment {
    /// Starts everything and returns once readings of every device are in PostgreSQL.
    pub async fn start(options: Options) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("e2e-")
            .tempdir()
            .context("creating the scenario's directory")?;
        let postgres = Postgres::start();
        let redis = Redis::start();
        let kafka = Tansu::start();
        create_topics(&kafka.brokers()).await?;
        let workload = Workload::new(options.rate)?;
        let mosquitto = (options.bridge == BridgeMode::Client).then(Mosquitto::start);
        let mqtt_port = match &mosquitto {
            Some(broker) => broker.port(),
            None => testkit::free_port(),
        };

        let db = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy(&postgres.url("postgres"))
            .context("PostgreSQL URL")?;
        let bridge_http = format!("127.0.0.1:{}", testkit::free_port());
        let mut deployment = Self {
            bridge: bridge_process(
                options.bridge,
                mqtt_port,
                &kafka.brokers(),
                &bridge_http,
                dir.path(),
            )?,
            metrics: vec![bridge_http],
            ingesters: Vec::new(),
            agents: Vec::new(),
            workload,
            observer: None,
            queue_dirs: Vec::new(),
            postgres,
            redis,
            kafka,
            mosquitto,
            mqtt_port,
            db,
            agents_started: Instant::now(),
            dir,
        };
        deployment.add_ingester()?;
        deployment.wait_for_schema().await?;
        if deployment.workload.rate() > workload::SEED_RATE {
            deployment
                .workload
                .register_added_channels(&deployment.db)
                .await?;
            tokio::time::sleep(CATALOG_RECHECK).await;
        }
        deployment.bridge.start()?;
        wait_for_port(mqtt_port, &mut deployment.bridge)?;
        deployment.observer =
            Some(Observer::start(mqtt_port, "e2e-observer", &workload::devices()).await?);

        let agent = binary("edge-agent")?;
        deployment.agents_started = Instant::now();
        for gateway in deployment.workload.gateways().to_vec() {
            let config = deployment.workload.agent_config(
                &gateway,
                options.seed,
                mqtt_port,
                options.queue,
                deployment.dir.path(),
            )?;
            deployment
                .queue_dirs
                .push(deployment.dir.path().join(format!("{}-queue", gateway.id)));
            let args = vec![
                "--config".to_owned(),
                config.display().to_string(),
                "--shutdown-grace".to_owned(),
                format!("{}s", deployment.agent_grace().as_secs()),
            ];
            let mut process = Process::new(&gateway.id, &agent, &args, deployment.dir.path());
            process.start()?;
            deployment.agents.push(process);
        }
        deployment.wait_for_every_device().await?;
        Ok(deployment)
    }

    /// Stops everything, keeping the scenario's directory (every process's log, the
    /// agents' configs and queues), and returns its path.
    pub fn keep_logs(self) -> PathBuf {
        let Self { dir, .. } = self;
        dir.keep()
    }

    /// Stops `server`: Mosquitto saves its store and PostgreSQL shuts down fast (open
    /// connections cut); Redis, which keeps no persistence here, is killed and comes
    /// back empty, the harder case for the ingester's resync.
    pub fn stop_server(&mut self, server: Server) -> Result<()> {
        match server {
            Server::Broker => self.mosquitto()?.stop(),
            Server::Postgres => self.postgres.stop(),
            Server::Redis => self.redis.stop(),
        }
        Ok(())
    }

    /// Starts `server` again on the same port (with the same data, but for Redis).
    pub fn start_server(&mut self, server: Server) -> Result<()> {
        match server {
            Server::Broker => self.mosquitto()?.restart(),
            Server::Postgres => self.postgres.restart(),
            Server::Redis => self.redis.restart(),
        }
        Ok(())
    }

    /// Restarts Kafka, which forgets every record (memory storage), and creates the
    /// topics again, as `scripts/stack.sh up` would.
    pub async fn restart_kafka(&mut self) -> Result<()> {
        self.kafka.restart();
        create_topics(&self.kafka.brokers()).await
    }

    /// SIGKILLs Mosquitto: unlike [`Deployment::stop_server`], it saves nothing.
    pub fn kill_broker(&mut self) -> Result<()> {
        self.mosquitto()?.kill();
        Ok(())
    }

    fn mosquitto(&mut self) -> Result<&mut Mosquitto> {
        self.mosquitto
            .as_mut()
            .context("this scenario needs the Mosquitto of client mode")
    }

    /// Starts another ingester in the same consumer group.
    pub fn add_ingester(&mut self) -> Result<()> {
        let n = self.ingesters.len() + 1;
        let http = format!("127.0.0.1:{}", testkit::free_port());
        let mut args = vec![
            "--database-url".to_owned(),
            self.postgres.url("postgres"),
            "--redis-url".to_owned(),
            self.redis.url(),
            "--kafka-brokers".to_owned(),
            self.kafka.brokers(),
            "--group".to_owned(),
            "e2e".to_owned(),
            "--id".to_owned(),
            format!("e2e-ingester-{n}"),
            "--http-listen".to_owned(),
            http.clone(),
        ];
        if n == 1 {
            args.push("--migrate".to_owned());
        }
        let name = format!("ingester-{n}");
        let mut process = Process::new(&name, &binary("cloud-ingester")?, &args, self.dir.path());
        // A private, throw-away cluster, entered as its superuser; the roles have tests
        // of their own (cloud-ingester/tests/roles.rs).
        process.env("INGESTER_DATABASE__ALLOW_SUPERUSER", "true");
        process.start()?;
        self.ingesters.push(process);
        self.metrics.push(http);
        Ok(())
    }

    /// The agents' shutdown grace: [`AGENT_GRACE`] per [`AGENT_GRACE_PER`] readings/s.
    fn agent_grace(&self) -> Duration {
        AGENT_GRACE * self.workload.rate().div_ceil(AGENT_GRACE_PER) as u32
    }

    /// The devices of agent `index`.
    pub fn agent_devices(&self, index: usize) -> Vec<&'static str> {
        self.workload.gateways()[index].devices.clone()
    }

    /// Fails, quoting its log, if a part that should be running has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        self.bridge.check_alive()?;
        for process in self.ingesters.iter_mut().chain(self.agents.iter_mut()) {
            process.check_alive()?;
        }
        Ok(())
    }

    /// Waits until a reading of one of `devices` sampled at or after `since` is
    /// committed: the pipeline carries fresh data again. Returns how long that took.
    pub async fn wait_for_fresh_rows(
        &mut self,
        devices: &[&str],
        since_ms: u64,
    ) -> Result<Duration> {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(120);
        let devices: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
        loop {
            self.check_alive()?;
            let fresh: Option<bool> = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM sensor_readings
                                 WHERE device_id = ANY($1) AND ts >= to_timestamp($2 / 1000.0))",
            )
            .bind(&devices)
            .bind(since_ms as f64)
            .fetch_one(&self.db)
            .await
            .ok();
            if fresh == Some(true) {
                return Ok(started.elapsed());
            }
            if Instant::now() > deadline {
                bail!("no fresh readings of {devices:?} within 120 s of recovery");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the agents cleanly once they have caught up (their queues drain to the
    /// broker), waits until PostgreSQL holds every reading the observer saw or stops
    /// gaining for 30 s, stops the bridge and the ingesters cleanly, and returns what
    /// the ledger needs. On failure the scenario's logs are kept.
    pub async fn finish(mut self) -> Result<Finished> {
        match self.stop_and_settle().await {
            Ok((observed, sampled, completeness, queues, confirmed_dead_letters)) => Ok(Finished {
                observed,
                sampled,
                completeness,
                queues,
                confirmed_dead_letters,
                deployment: self,
            }),
            Err(e) => {
                let logs = self.keep_logs();
                Err(e.context(format!(
                    "stopping the pipeline (logs kept in {})",
                    logs.display()
                )))
            }
        }
    }

    /// [`Deployment::finish`]'s work: (what the observer saw, how long the agents
    /// sampled, the pipeline's completeness report, the agents' queues, the dead letters
    /// the services had confirmed).
    async fn stop_and_settle(
        &mut self,
    ) -> Result<(
        Observed,
        Duration,
        Vec<BootCompleteness>,
        Vec<(u64, u64)>,
        u64,
    )> {
        self.check_alive()?;
        self.wait_for_agents_caught_up().await?;
        let sampled = self.agents_started.elapsed();
        let patience = self.agent_grace() + STOP_PATIENCE;
        Process::terminate_all(&mut self.agents, patience)?;
        let observed = match self.observer.take() {
            // The agents have exited: whatever they published has reached the broker,
            // and the observer needs a moment to receive the last of it.
            Some(observer) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                observer.stop().await
            }
            None => Observed::default(),
        };
        let target = observed.readings();
        let quiet = Duration::from_secs(30);
        let mut last = (0i64, Instant::now());
        loop {
            self.check_alive()?;
            let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM sensor_readings")
                .fetch_one(&self.db)
                .await
                .context("counting stored readings")?;
            if stored as u64 >= target {
                break;
            }
            if stored != last.0 {
                last = (stored, Instant::now());
            } else if last.1.elapsed() > quiet {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Let the last batch's Redis update and a straggling duplicate land, then stop
        // the bridge and the ingesters cleanly: their shutdown is part of what is tested.
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.check_alive()?;
        let confirmed_dead_letters = self.confirmed_dead_letters()?;
        // While the bridge runs: in embedded mode the agents' retained status, which
        // holds what they dropped, lives in its broker.
        let completeness = self.completeness().await?;
        self.bridge.terminate(STOP_PATIENCE)?;
        for ingester in self.ingesters.iter_mut().filter(|i| i.is_running()) {
            ingester.terminate(STOP_PATIENCE)?;
        }
        let mut queues = Vec::new();
        for dir in &self.queue_dirs {
            queues.push(queue_state(dir)?);
        }
        Ok((
            observed,
            sampled,
            completeness,
            queues,
            confirmed_dead_letters,
        ))
    }
}

/// A pipeline whose backlog has settled and whose programs have all stopped cleanly; its
/// servers still run, for the ledger to read.
pub struct Finished {
    pub observed: Observed,
    /// From the agents' start to the SIGTERM that stopped their sampling.
    pub sampled: Duration,
    /// The pipeline's own account of what it holds: `iotctl completeness`, per boot.
    pub completeness: Vec<BootCompleteness>,
    /// Per agent queue: (records still unacknowledged, records dropped over its life).
    pub queues: Vec<(u64, u64)>,
    /// Dead letters Kafka confirmed to the bridge and the running ingesters, by their
    /// own counters (since each one's last start).
    pub confirmed_dead_letters: u64,
    pub deployment: Deployment,
}

impl Finished {
    /// Keeps the scenario's directory (every process's log, the agents' configs and
    /// queues) instead of deleting it, and returns its path.
    pub fn keep_logs(self) -> PathBuf {
        self.deployment.keep_logs()
    }
}

/// One boot in `iotctl completeness --json` (the fields the ledger checks).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct BootCompleteness {
    pub device_id: String,
    /// 16 hex digits.
    pub boot_id: String,
    pub expected: u64,
    pub stored: u64,
    pub missing: u64,
    pub dropped_at_edge: Option<u64>,
    pub unexplained: Option<u64>,
    pub recovered: u64,
    pub missing_ranges: Vec<(u64, u64)>,
}

fn queue_state(dir: &std::path::Path) -> Result<(u64, u64)> {
    use edge_agent::queue::{DiskQueue, QueueConfig};
    let (queue, report) = DiskQueue::open(QueueConfig::new(dir))
        .with_context(|| format!("opening the agent queue {}", dir.display()))?;
    Ok((report.unacked_records, queue.stats().lost_records_total))
}

impl Deployment {
    async fn wait_for_schema(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.check_alive()?;
            let seeded: Result<i64, _> = sqlx::query_scalar("SELECT count(*) FROM devices")
                .fetch_one(&self.db)
                .await;
            if seeded.is_ok_and(|n| n >= workload::devices().len() as i64) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the ingester did not migrate the database within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the bridge and the ingesters have had `expected` dead letters
    /// confirmed (the ingester re-reads its catalog before dead-lettering an unknown
    /// device, so those come a little later), or a minute has passed.
    pub async fn wait_for_dead_letters(&mut self, expected: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.confirmed_dead_letters()? < expected && Instant::now() < deadline {
            self.check_alive()?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(())
    }

    /// The running services' own count of dead letters Kafka confirmed to them.
    /// The `/metrics` and `/readyz` address of the bridge, then of each ingester.
    pub fn http_addresses(&self) -> &[String] {
        &self.metrics
    }

    /// Runs `iotctl completeness --json` against this pipeline: what the pipeline itself
    /// says it holds and misses, for the ledger to hold against what it counted.
    async fn completeness(&self) -> Result<Vec<BootCompleteness>> {
        let iotctl = binary("iotctl")?;
        let args = [
            "--json".to_owned(),
            "--database-url".to_owned(),
            self.postgres.url("postgres"),
            "--mqtt".to_owned(),
            format!("127.0.0.1:{}", self.mqtt_port),
            "completeness".to_owned(),
            "--since".to_owned(),
            "1d".to_owned(),
        ];
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(&iotctl)
                .args(&args)
                .env_remove("IOTCTL_MQTT")
                .output()
                .with_context(|| format!("running {}", iotctl.display()))
        })
        .await
        .context("waiting for iotctl")??;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() || !stderr.trim().is_empty() {
            bail!(
                "iotctl completeness ({}) said: {}",
                output.status,
                stderr.trim()
            );
        }
        serde_json::from_slice(&output.stdout).context("reading iotctl completeness --json")
    }

    fn confirmed_dead_letters(&self) -> Result<u64> {
        let running = std::iter::once(self.bridge.is_running())
            .chain(self.ingesters.iter().map(Process::is_running));
        let mut total = 0.0;
        for (address, _) in self.metrics.iter().zip(running).filter(|(_, up)| *up) {
            let metrics = Metrics::scrape(address)?;
            total += metrics.get("bridge_messages_dead_lettered_total")
                + metrics.get("ingester_records_dead_lettered_total");
        }
        Ok(total as u64)
    }

    /// Waits until every agent reports itself connected with no more than a second's
    /// frames queued (unsent or unconfirmed), so the clean stop measures the pipeline
    /// rather than an agent still backing off its reconnection, working through its
    /// backlog (at most `delivery.catch_up_rate` frames a second, so after outages at a
    /// high rate that takes minutes) or waiting to resend what a broker lost. Gives up
    /// once the agents' queued frames have not fallen for two minutes (at a rate above
    /// what the pipeline commits they never do); the ledger then shows what stayed in
    /// the queues.
    async fn wait_for_agents_caught_up(&mut self) -> Result<()> {
        let patience = Duration::from_secs(120);
        let mut fewest = (u64::MAX, Instant::now());
        loop {
            self.check_alive()?;
            let observer = self.observer.as_ref().context("no observer")?;
            let mut caught_up = true;
            let mut queued_total = 0;
            for gateway in self.workload.gateways() {
                let second = (gateway.rate / FRAME_READINGS).max(CAUGHT_UP_BACKLOG);
                match observer.queued(&gateway.id) {
                    Some(queued) => {
                        caught_up &= queued <= second;
                        queued_total += queued;
                    }
                    None => caught_up = false,
                }
            }
            if caught_up {
                return Ok(());
            }
            if queued_total < fewest.0 {
                fewest = (queued_total, Instant::now());
            } else if fewest.1.elapsed() > patience {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_for_every_device(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let wanted = workload::devices().len() as i64;
        loop {
            self.check_alive()?;
            let devices: i64 =
                sqlx::query_scalar("SELECT count(DISTINCT device_id) FROM sensor_readings")
                    .fetch_one(&self.db)
                    .await
                    .unwrap_or(0);
            if devices >= wanted {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {devices} of {wanted} devices reached PostgreSQL within 90 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn bridge_process(
    mode: BridgeMode,
    mqtt_port: u16,
    brokers: &str,
    http: &str,
    dir: &std::path::Path,
) -> Result<Process> {
    let mut args = vec![
        "--id".to_owned(),
        "e2e-bridge".to_owned(),
        "--kafka-brokers".to_owned(),
        brokers.to_owned(),
        "--http-listen".to_owned(),
        http.to_owned(),
    ];
    match mode {
        BridgeMode::Client => args.extend([
            "--mode".to_owned(),
            "client".to_owned(),
            "--mqtt-host".to_owned(),
            "127.0.0.1".to_owned(),
            "--mqtt-port".to_owned(),
            mqtt_port.to_string(),
        ]),
        BridgeMode::Embedded => args.extend([
            "--mode".to_owned(),
            "embedded".to_owned(),
            "--listen".to_owned(),
            format!("127.0.0.1:{mqtt_port}"),
        ]),
    }
    let mut process = Process::new("bridge", &binary("bridge")?, &args, dir);
    if mode == BridgeMode::Embedded {
        // The suite is about loss, on a private loopback port; authentication has tests
        // of its own (bridge/tests/gateway_auth.rs).
        process.env("BRIDGE_EMBEDDED__ALLOW_ANONYMOUS", "true");
    }
    Ok(process)
}

/// Waits until something accepts connections on `port`, failing early if `process`
/// (the one meant to listen there) dies.
pub fn wait_for_port(port: u16, process: &mut Process) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        process.check_alive()?;
        if Instant::now() > deadline {
            bail!("nothing listens on port {port} after 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

async fn create_topics(brokers: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("Kafka admin client")?;
    let topics: Vec<NewTopic> = protocol::kafka::ALL_TOPICS
        .iter()
        .map(|t| NewTopic::new(t.name, t.partitions, TopicReplication::Fixed(1)))
        .collect();
    for result in admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .context("creating the Kafka topics")?
    {
        result.map_err(|(topic, e)| anyhow::anyhow!("creating topic {topic}: {e}"))?;
    }
    Ok(())
}
