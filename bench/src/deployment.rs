//! The pipeline under test, as it ships: the release binaries of the edge agent, the
//! bridge and the ingester, started with generated configuration files against private
//! servers (PostgreSQL, Redis and Tansu from testkit), on free ports only.
//!
//! Measuring the real binaries rather than the libraries in-process is the point: the
//! figures then include everything a deployment pays for (process boundaries, the
//! binaries' own runtimes and defaults, their logging) and the CPU of each hop can be
//! read from /proc per process.
//!
//! The bridge runs in embedded mode (rumqttd in-process, the fast path; devices connect
//! to the bridge). The devices the workloads simulate are registered in `devices` and
//! `device_channels` first, since the ingester dead-letters readings of unknown ones.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
pub use e2e::endpoints::Metrics;
use e2e::process::Process;

use crate::database::PrivateDatabase;
use sqlx::postgres::PgPool;

/// Where the release binaries are.
pub struct Binaries {
    pub edge_agent: PathBuf,
    pub bridge: PathBuf,
    pub ingester: PathBuf,
}

impl Binaries {
    pub fn in_dir(dir: &Path) -> anyhow::Result<Self> {
        let find = |name: &str| {
            let path = dir.join(name);
            if path.exists() {
                Ok(path)
            } else {
                Err(anyhow::anyhow!(
                    "{} is missing: build it first (cargo build --release --locked -p edge-agent -p bridge -p cloud-ingester)",
                    path.display()
                ))
            }
        };
        Ok(Self {
            edge_agent: find("edge-agent")?,
            bridge: find("bridge")?,
            ingester: find("cloud-ingester")?,
        })
    }
}

/// A set of simulated devices, split over several agent processes (each agent is
/// single-threaded by design, so one process cannot offer 100k readings/s).
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    /// Device ids are `{prefix}-{index}`.
    pub prefix: String,
    pub devices: usize,
    pub channels: usize,
    pub period_ms: u64,
    pub agents: usize,
    pub max_readings: usize,
    pub max_age_ms: u64,
    /// The agents' `delivery.confirm`: "pipeline" (the default: a frame leaves the disk
    /// on the ingester's confirmation) or "broker" (on the MQTT PUBACK).
    pub confirm: &'static str,
}

impl Workload {
    /// The three workloads of a run: 5 devices and 500 devices offering more than the
    /// 100k readings/s bar, and about 10k readings/s for latency.
    pub fn standard() -> [Workload; 3] {
        [
            Workload {
                name: "5 devices".to_owned(),
                prefix: "t5".to_owned(),
                devices: 5,
                channels: 240,
                period_ms: 10,
                agents: 5,
                max_readings: 50,
                max_age_ms: 1000,
                confirm: "pipeline",
            },
            Workload {
                name: "500 devices".to_owned(),
                prefix: "t500".to_owned(),
                devices: 500,
                channels: 3,
                period_ms: 12,
                agents: 4,
                max_readings: 50,
                max_age_ms: 1000,
                confirm: "pipeline",
            },
            Workload {
                name: "latency at ~10k readings/s".to_owned(),
                prefix: "lat".to_owned(),
                devices: 50,
                channels: 2,
                period_ms: 10,
                agents: 1,
                max_readings: 50,
                max_age_ms: 1000,
                confirm: "pipeline",
            },
        ]
    }

    pub fn device_ids(&self) -> Vec<String> {
        (0..self.devices)
            .map(|i| format!("{}-{i:03}", self.prefix))
            .collect()
    }

    /// Readings per second the configuration asks the agents to sample.
    pub fn configured_rate(&self) -> f64 {
        (self.devices * self.channels) as f64 * 1000.0 / self.period_ms as f64
    }

    pub fn describe(&self) -> String {
        format!(
            "{} devices × {} channels every {} ms = {:.0} readings/s configured, over {} agent process{}; frames sealed at {} readings or {} ms; delivery.confirm = {:?}",
            self.devices,
            self.channels,
            self.period_ms,
            self.configured_rate(),
            self.agents,
            if self.agents == 1 { "" } else { "es" },
            self.max_readings,
            self.max_age_ms,
            self.confirm
        )
    }
}

/// Stops a part best-effort (SIGTERM, SIGKILL after `grace`), saying so if it did not
/// exit cleanly: a measurement is not the place to fail on it.
pub fn stop(process: &mut Process, grace: Duration) {
    if process.is_running() {
        if let Err(e) = process.terminate(grace) {
            println!("note: {e:#}");
        }
    }
}

/// The pipeline deployed for the run: the private servers and the two cloud-side
/// binaries (bridge, ingester), which the agents of each workload are started against
/// (`start_agents`). Not the ingester's `Pipeline` (its in-process processing loop).
pub struct Deployment {
    pub bins: Binaries,
    pub dir: PathBuf,
    pub log_dir: PathBuf,
    // The servers stop when these drop.
    _postgres: testkit::Postgres,
    _redis: testkit::Redis,
    _tansu: testkit::Tansu,
    pub pool: PgPool,
    pub mqtt_port: u16,
    pub bridge_http: u16,
    pub ingester_http: u16,
    pub bridge: Option<Process>,
    pub ingester: Option<Process>,
    /// The batch age the running ingester was given (None: its default).
    pub ingester_batch_age: Option<String>,
    pub bridge_config: String,
    pub ingester_config: String,
    ingester_runs: u32,
}

impl Deployment {
    /// Starts the servers, applies the migrations, registers the workloads' devices, then
    /// starts the bridge and the ingester and waits until both are ready.
    pub async fn start(
        bins: Binaries,
        dir: PathBuf,
        log_dir: PathBuf,
        workloads: &[&Workload],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        println!("starting private PostgreSQL, Redis and Tansu (testkit) ...");
        let PrivateDatabase {
            server: postgres,
            url: database_url,
            pool,
        } = PrivateDatabase::start(4).await?;
        let redis = testkit::Redis::start();
        let tansu = testkit::Tansu::start();
        for w in workloads {
            register_devices(&pool, w).await?;
        }
        create_confirm_topic(&tansu.brokers())?;
        let mqtt_port = testkit::free_port();
        let bridge_http = testkit::free_port();
        let ingester_http = testkit::free_port();
        let bridge_config = format!(
            "# bridge: embedded broker on a free port (loopback, anonymous: the agents here have no gateway secrets), Kafka = private Tansu; every other key at its default\n\
             mode = \"embedded\"\nid = \"bench-bridge\"\n\n[embedded]\nlisten = \"127.0.0.1:{mqtt_port}\"\nallow_anonymous = true\n\n\
             [kafka]\nbrokers = \"{}\"\n\n[http]\nlisten = \"127.0.0.1:{bridge_http}\"\n",
            tansu.brokers()
        );
        let ingester_config = format!(
            "# cloud-ingester: private servers; every other key (batch.rows 20000, batch.age 50ms, 4 connections) at its default\n\
             id = \"bench-ingester\"\n\n[database]\nurl = \"{database_url}\"\n# a private cluster, entered as its superuser\nallow_superuser = true\n\n[redis]\nurl = \"{}\"\n\n\
             [kafka]\nbrokers = \"{}\"\ngroup = \"bench-ingester\"\n\n[http]\nlisten = \"127.0.0.1:{ingester_http}\"\n",
            redis.url(),
            tansu.brokers()
        );
        write(&dir.join("bridge.toml"), &bridge_config)?;
        write(&dir.join("cloud-ingester.toml"), &ingester_config)?;
        let mut deployment = Self {
            bins,
            dir,
            log_dir,
            _postgres: postgres,
            _redis: redis,
            _tansu: tansu,
            pool,
            mqtt_port,
            bridge_http,
            ingester_http,
            bridge: None,
            ingester: None,
            ingester_batch_age: None,
            bridge_config,
            ingester_config,
            ingester_runs: 0,
        };
        println!("starting the bridge (embedded broker on 127.0.0.1:{mqtt_port}) ...");
        let config = deployment.dir.join("bridge.toml");
        let mut bridge = Process::new(
            "bridge",
            &deployment.bins.bridge,
            &["--config".to_owned(), config.display().to_string()],
            &deployment.log_dir,
        );
        bridge.start()?;
        wait_ready(&mut bridge, deployment.bridge_http, Duration::from_secs(60)).await?;
        deployment.bridge = Some(bridge);
        deployment.restart_ingester(None).await?;
        Ok(deployment)
    }

    /// (Re)starts the ingester, with `batch_age` (e.g. "50ms") or its default.
    pub async fn restart_ingester(&mut self, batch_age: Option<&str>) -> anyhow::Result<()> {
        if let Some(mut old) = self.ingester.take() {
            stop(&mut old, Duration::from_secs(15));
        }
        self.ingester_runs += 1;
        println!(
            "starting the ingester (batch.age {}) ...",
            batch_age.unwrap_or("default")
        );
        let config = self.dir.join("cloud-ingester.toml");
        let mut args = vec![
            "--config".to_owned(),
            config.display().to_string(),
            "--migrate".to_owned(),
        ];
        if let Some(age) = batch_age {
            args.extend(["--batch-age".to_owned(), age.to_owned()]);
        }
        let mut ingester = Process::new(
            &format!("cloud-ingester-{}", self.ingester_runs),
            &self.bins.ingester,
            &args,
            &self.log_dir,
        );
        ingester.start()?;
        wait_ready(&mut ingester, self.ingester_http, Duration::from_secs(60)).await?;
        self.ingester = Some(ingester);
        self.ingester_batch_age = batch_age.map(str::to_owned);
        Ok(())
    }

    /// Writes the agents' configuration files and starts them.
    pub fn start_agents(&self, w: &Workload) -> anyhow::Result<Vec<Process>> {
        let ids = w.device_ids();
        let per_agent = ids.len().div_ceil(w.agents.max(1));
        let mut agents = Vec::new();
        for (n, chunk) in ids.chunks(per_agent.max(1)).enumerate() {
            let config = agent_config(w, n, chunk, self.mqtt_port, &self.dir);
            let path = self
                .dir
                .join(format!("{}-{}-agent-{n}.toml", w.prefix, w.confirm));
            write(&path, &config)?;
            let name = format!("edge-agent-{}-{}-{n}", w.prefix, w.confirm);
            let mut agent = Process::new(
                &name,
                &self.bins.edge_agent,
                &["--config".to_owned(), path.display().to_string()],
                &self.log_dir,
            );
            agent.start()?;
            agents.push(agent);
        }
        Ok(agents)
    }

    /// The configuration files, as the report shows them: the bridge's, the ingester's,
    /// and for each workload its first agent's with one device and two channels.
    pub fn configs(&self, workloads: &[&Workload]) -> Vec<(String, String)> {
        let mut out = vec![
            ("bridge.toml".to_owned(), self.bridge_config.clone()),
            (
                "cloud-ingester.toml".to_owned(),
                self.ingester_config.clone(),
            ),
        ];
        for w in workloads {
            let ids = w.device_ids();
            let config = agent_config(w, 0, &ids[..1.min(ids.len())], self.mqtt_port, &self.dir);
            out.push((
                format!("edge-agent, {} (first device of the first agent)", w.name),
                truncate_channels(&config, w.channels),
            ));
        }
        out
    }

    pub fn bridge_metrics(&self) -> anyhow::Result<Metrics> {
        Metrics::scrape(&format!("127.0.0.1:{}", self.bridge_http)).context("bridge /metrics")
    }

    pub fn ingester_metrics(&self) -> anyhow::Result<Metrics> {
        Metrics::scrape(&format!("127.0.0.1:{}", self.ingester_http)).context("ingester /metrics")
    }

    /// Root pids of each measured part, for procstat.
    pub async fn parts(&self, agents: &[Process]) -> Vec<(String, Vec<u32>)> {
        let me = std::process::id();
        let mut parts = vec![(
            "edge-agents".to_owned(),
            agents.iter().filter_map(Process::pid).collect::<Vec<_>>(),
        )];
        if let Some(b) = &self.bridge {
            parts.push(("bridge".to_owned(), b.pid().into_iter().collect()));
        }
        parts.push((
            "Tansu (Kafka)".to_owned(),
            crate::procstat::children_named(me, "tansu"),
        ));
        if let Some(i) = &self.ingester {
            parts.push(("cloud-ingester".to_owned(), i.pid().into_iter().collect()));
        }
        let postmaster = match sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
            .fetch_one(&self.pool)
            .await
        {
            Ok(backend) => u32::try_from(backend)
                .ok()
                .and_then(crate::procstat::parent_of),
            Err(_) => None,
        };
        parts.push(("PostgreSQL".to_owned(), postmaster.into_iter().collect()));
        parts.push((
            "Redis".to_owned(),
            crate::procstat::children_named(me, "redis-server"),
        ));
        parts.push(("bench (probe, poller)".to_owned(), vec![me]));
        parts
    }

    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(b) = &mut self.bridge {
            b.check_alive()?;
        }
        if let Some(i) = &mut self.ingester {
            i.check_alive()?;
        }
        Ok(())
    }

    pub fn stop(&mut self) {
        if let Some(mut i) = self.ingester.take() {
            stop(&mut i, Duration::from_secs(15));
        }
        if let Some(mut b) = self.bridge.take() {
            stop(&mut b, Duration::from_secs(15));
        }
    }
}

fn agent_config(w: &Workload, n: usize, devices: &[String], port: u16, dir: &Path) -> String {
    // One queue per confirm mode: a run in one mode must not inherit the other's backlog.
    let queue = dir.join(format!("queue-{}-{}-{n}", w.prefix, w.confirm));
    let mut out = format!(
        "# edge-agent {n} of workload {:?}; keys not given are at their defaults\n\
         [gateway]\nid = \"{}-gw{n}\"\nsite = \"plant1\"\nline = \"bench\"\ntopic_prefix = \"plant\"\n\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\ninflight = 200\n\n\
         [queue]\ndir = \"{}\"\nmax_bytes = \"256 MiB\"\n\n\
         [batch]\nmax_readings = {}\nmax_age = \"{}ms\"\n\n[health]\ninterval = \"1s\"\n\n\
         [delivery]\nconfirm = \"{}\"\n",
        w.name,
        w.prefix,
        queue.display(),
        w.max_readings,
        w.max_age_ms,
        w.confirm
    );
    for id in devices {
        out.push_str(&format!("\n[[devices]]\nid = \"{id}\"\n"));
        for c in 0..w.channels {
            out.push_str(&format!(
                "[[devices.channels]]\nid = {c}\nname = \"c{c}\"\nunit = \"kW\"\nperiod = \"{}ms\"\nrange = [0.0, 150.0]\nsource = {{ kind = \"simulated\", model = \"compressor_power\" }}\n",
                w.period_ms
            ));
        }
    }
    out
}

/// An agent configuration as `agent_config` writes it, with only its first two channels
/// shown: the report's copy of it.
fn truncate_channels(config: &str, channels: usize) -> String {
    let mut out = String::new();
    let mut seen = 0;
    for line in config.lines() {
        if line == "[[devices.channels]]" {
            seen += 1;
            if seen == 3 {
                out.push_str(&format!(
                    "# ... {channels} channels in all (ids 0..{}), the same but for id and name\n",
                    channels - 1
                ));
            }
        }
        if seen < 3 {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

async fn register_devices(pool: &PgPool, w: &Workload) -> anyhow::Result<()> {
    let ids = w.device_ids();
    sqlx::query(
        "INSERT INTO devices (device_id, name, kind, site, line, description) \
         SELECT d, d, 'bench', 'plant1', 'bench', 'synthetic device of the benchmark' FROM unnest($1::text[]) AS d",
    )
    .bind(&ids)
    .execute(pool)
    .await
    .with_context(|| format!("registering the devices of {}", w.name))?;
    let channels = i32::try_from(w.channels).context("channel count")?;
    let period = i32::try_from(w.period_ms).context("period")?;
    sqlx::query(
        "INSERT INTO device_channels (device_id, channel_id, name, unit, sample_period_ms, range_min, range_max) \
         SELECT d, c::smallint, 'c' || c, 'kW', $3, 0, 150 \
         FROM unnest($1::text[]) AS d CROSS JOIN generate_series(0, $2 - 1) AS c",
    )
    .bind(&ids)
    .bind(channels)
    .bind(period)
    .execute(pool)
    .await
    .with_context(|| format!("registering the channels of {}", w.name))?;
    Ok(())
}

/// The bridge creates the topics it produces to, not `sensors-confirm` (the ingester's,
/// which the bridge relays to the agents): without it no confirmation reaches an agent
/// and `delivery.confirm = "pipeline"` never deletes a frame. Created with Tansu's CLI
/// (the binary testkit runs), as `scripts/stack.sh` does for the local stack.
fn create_confirm_topic(brokers: &str) -> anyhow::Result<()> {
    let topic = protocol::kafka::SENSORS_CONFIRM;
    let tansu = std::env::var_os("HOME")
        .map(|home| Path::new(&home).join(".cargo/bin/tansu"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("tansu"));
    let out = std::process::Command::new(&tansu)
        .args(["topic", "create", topic.name, "--partitions"])
        .arg(topic.partitions.to_string())
        .arg("--broker")
        .arg(format!("tcp://{brokers}"))
        .output()
        .with_context(|| format!("running {} topic create", tansu.display()))?;
    if !out.status.success() {
        bail!(
            "creating Kafka topic {}: {}",
            topic.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

async fn wait_ready(
    process: &mut Process,
    http_port: u16,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let address = format!("127.0.0.1:{http_port}");
    loop {
        process.check_alive()?;
        let Some(why) = e2e::endpoints::not_ready(&address) else {
            return Ok(());
        };
        if Instant::now() > deadline {
            bail!(
                "{} not ready after {timeout:?} ({why}); log:\n{}",
                process.name(),
                process.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
