//! The end-to-end scenarios: sustained throughput with 5 and with 500 simulated devices,
//! and publish → committed-row latency at about 10k readings/s, each with the CPU every
//! part of the pipeline used over the same window.
//!
//! A throughput scenario starts its agents, waits out a warm-up, then reads every hop's
//! counter at the start and the end of a steady window: readings the agents published
//! (the probe's MQTT subscriber), messages the bridge produced to Kafka (its /metrics),
//! readings the ingester committed (its /metrics). Then it stops the agents and waits for
//! the pipeline to drain, so the totals can be compared (published vs stored).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::deployment::{stop, Deployment, Workload};
use crate::probe::{Counts, Latency, Probe};
use crate::procstat::{self, CpuWindow, Snapshot};
use e2e::process::Process;

/// Timings of a run.
#[derive(Debug, Clone)]
pub struct Timing {
    pub warmup: Duration,
    pub window: Duration,
    pub latency_window: Duration,
    pub drain_timeout: Duration,
}

impl Timing {
    pub fn full() -> Self {
        Self {
            warmup: Duration::from_secs(10),
            window: Duration::from_secs(30),
            latency_window: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(120),
        }
    }

    /// A smoke run: every scenario, short windows.
    pub fn quick() -> Self {
        Self {
            warmup: Duration::from_secs(4),
            window: Duration::from_secs(8),
            latency_window: Duration::from_secs(6),
            drain_timeout: Duration::from_secs(45),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Throughput {
    pub workload: Workload,
    /// Readings/s the agents published (seen on the broker).
    pub agents_rate: f64,
    pub frames_rate: f64,
    pub bytes_per_reading: f64,
    /// Messages/s the bridge received from MQTT and produced to Kafka (confirmed).
    pub bridge_received_rate: f64,
    pub bridge_produced_rate: f64,
    /// The same in readings/s (messages × the window's readings per frame).
    pub bridge_readings_rate: f64,
    /// Readings/s committed to PostgreSQL by the ingester.
    pub ingest_rate: f64,
    pub cpu: CpuWindow,
    pub agent_rss_kib: u64,
    /// Over the whole scenario: readings published, stored, and dead-lettered records.
    pub published_total: u64,
    pub stored_total: u64,
    pub dead_lettered: f64,
    /// Seconds from stopping the agents until the ingester had stored everything
    /// (None: it had not within the timeout).
    pub drain_s: Option<f64>,
    pub perf: Option<Profile>,
}

#[derive(Debug, Clone)]
pub struct Profile {
    pub command: String,
    pub by_command: Vec<String>,
    pub by_symbol: Vec<String>,
}

/// The agents' own PUBACK → confirmation wait, from their retained gateway status
/// (`health`) at the end of a window: cumulative since each agent started, bucketed (the
/// figure is the upper bound of a histogram bucket, 5 … 30000 ms).
#[derive(Debug, Clone, Default)]
pub struct ConfirmWait {
    /// Gateways whose status arrived during the window.
    pub gateways: usize,
    /// The largest over the gateways (None: no frame confirmed yet).
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    /// Sums over the gateways.
    pub confirmed_frames: u64,
    pub awaiting_confirm: u64,
    pub resent_frames: u64,
}

impl ConfirmWait {
    fn read(probe: &Probe, w: &Workload, since: Instant) -> Self {
        let health = probe.gateway_health(&format!("{}-gw", w.prefix), since);
        let num = |h: &serde_json::Value, k: &str| h.get(k).and_then(serde_json::Value::as_u64);
        let sum = |k: &str| health.iter().filter_map(|h| num(h, k)).sum();
        ConfirmWait {
            gateways: health.len(),
            p50_ms: health
                .iter()
                .filter_map(|h| num(h, "confirm_wait_p50_ms"))
                .max(),
            p99_ms: health
                .iter()
                .filter_map(|h| num(h, "confirm_wait_p99_ms"))
                .max(),
            confirmed_frames: sum("confirmed_frames"),
            awaiting_confirm: sum("awaiting_confirm"),
            resent_frames: sum("resent_frames"),
        }
    }

    pub fn describe(&self) -> String {
        let f = |v: Option<u64>| v.map_or("–".to_owned(), |v| format!("≤ {v} ms"));
        format!(
            "PUBACK → confirmation wait p50 {}, p99 {} over {} frames confirmed ({} awaiting, {} resent, {} gateway{})",
            f(self.p50_ms),
            f(self.p99_ms),
            self.confirmed_frames,
            self.awaiting_confirm,
            self.resent_frames,
            self.gateways,
            if self.gateways == 1 { "" } else { "s" }
        )
    }
}

#[derive(Debug, Clone)]
pub struct LatencyRun {
    pub workload: Workload,
    pub batch_age: String,
    pub offered_rate: f64,
    pub ingest_rate: f64,
    pub latency: Latency,
    pub confirm_wait: ConfirmWait,
    pub cpu: CpuWindow,
}

struct Sample {
    probe: Counts,
    bridge_received: f64,
    bridge_produced: f64,
    inserted: f64,
    dead_lettered: f64,
    procs: Snapshot,
}

fn sample(p: &Deployment, probe: &Probe) -> anyhow::Result<Sample> {
    let b = p.bridge_metrics()?;
    let i = p.ingester_metrics()?;
    Ok(Sample {
        probe: probe.counts(),
        bridge_received: b.get("bridge_messages_received_total"),
        bridge_produced: b.get("bridge_messages_produced_total"),
        inserted: i.get("ingester_readings_inserted_total"),
        dead_lettered: b.get("bridge_messages_dead_lettered_total")
            + i.get("ingester_records_dead_lettered_total"),
        procs: Snapshot::take(),
    })
}

fn check_agents(agents: &mut [Process]) -> anyhow::Result<()> {
    for a in agents.iter_mut() {
        a.check_alive()?;
    }
    Ok(())
}

pub async fn throughput(
    p: &mut Deployment,
    probe: &Probe,
    w: &Workload,
    timing: &Timing,
    profile_dir: Option<&Path>,
) -> anyhow::Result<Throughput> {
    println!();
    println!("== throughput, {}: {}", w.name, w.describe());
    let before = sample(p, probe)?;
    let mut agents = p.start_agents(w)?;
    tokio::time::sleep(timing.warmup).await;
    check_agents(&mut agents)?;
    p.check_running()?;
    let parts = p.parts(&agents).await;
    let start = sample(p, probe)?;
    let perf = match profile_dir {
        Some(dir) => Some(start_perf(dir, &w.prefix, timing.window)?),
        None => None,
    };
    tokio::time::sleep(timing.window).await;
    let end = sample(p, probe)?;
    let agent_rss_kib = agents
        .iter()
        .filter_map(|a| a.pid().and_then(procstat::rss_kib))
        .max()
        .unwrap_or(0);
    check_agents(&mut agents)?;
    p.check_running()?;
    let profile = match perf {
        Some((child, data)) => Some(finish_perf(child, &data, timing.window)?),
        None => None,
    };
    let cpu = procstat::window(&start.procs, &end.procs, &parts);
    let secs = cpu.seconds;
    let readings = end.probe.readings - start.probe.readings;
    let frames = end.probe.frames - start.probe.frames;
    let per_frame = if frames > 0 {
        readings as f64 / frames as f64
    } else {
        0.0
    };
    let produced = end.bridge_produced - start.bridge_produced;
    let result_rates = (
        readings as f64 / secs,
        frames as f64 / secs,
        (end.probe.bytes - start.probe.bytes) as f64 / readings.max(1) as f64,
        (end.bridge_received - start.bridge_received) / secs,
        produced / secs,
        produced * per_frame / secs,
        (end.inserted - start.inserted) / secs,
    );
    println!(
        "   window {secs:.1} s after {:.0} s warm-up:",
        timing.warmup.as_secs_f64()
    );
    println!(
        "   agents published   {:>10.0} readings/s ({:.0} frames/s, {:.1} readings a frame, {:.2} B a reading on the wire)   [probe: MQTT subscriber on the bridge's broker]",
        result_rates.0, result_rates.1, per_frame, result_rates.2
    );
    println!(
        "   bridge             {:>10.0} readings/s ({:.0} msgs/s received, {:.0} msgs/s confirmed by Kafka)   [bridge /metrics]",
        result_rates.5, result_rates.3, result_rates.4
    );
    println!(
        "   ingester committed {:>10.0} readings/s   [ingester_readings_inserted_total]",
        result_rates.6
    );
    if end.probe.undecodable > start.probe.undecodable {
        println!(
            "   note: {} telemetry payloads did not decode",
            end.probe.undecodable - start.probe.undecodable
        );
    }
    print_cpu(&cpu);

    // Stop the agents and let the pipeline drain.
    for a in agents.iter_mut() {
        stop(a, Duration::from_secs(5));
    }
    let stopped = Instant::now();
    let mut last = sample(p, probe)?;
    let mut last_change = Instant::now();
    let drain_s = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sample(p, probe)?;
        let published = now.probe.readings - before.probe.readings;
        let stored = now.inserted - before.inserted;
        if stored >= published as f64 && now.bridge_produced >= now.bridge_received {
            break Some(stopped.elapsed().as_secs_f64());
        }
        if now.inserted > last.inserted {
            last_change = Instant::now();
        }
        last = now;
        if stopped.elapsed() > timing.drain_timeout
            || last_change.elapsed() > Duration::from_secs(15)
        {
            break None;
        }
    };
    let after = sample(p, probe)?;
    let published_total = after.probe.readings - before.probe.readings;
    let stored_total = (after.inserted - before.inserted) as u64;
    let dead_lettered = after.dead_lettered - before.dead_lettered;
    match drain_s {
        Some(s) => println!(
            "   drained {s:.1} s after the agents stopped: {published_total} readings published, {stored_total} stored, {dead_lettered} records dead-lettered"
        ),
        None => println!(
            "   NOT drained within {:.0} s: {published_total} readings published (as seen by the probe), {stored_total} stored, {dead_lettered} dead-lettered",
            timing.drain_timeout.as_secs_f64()
        ),
    }
    Ok(Throughput {
        workload: w.clone(),
        agents_rate: result_rates.0,
        frames_rate: result_rates.1,
        bytes_per_reading: result_rates.2,
        bridge_received_rate: result_rates.3,
        bridge_produced_rate: result_rates.4,
        bridge_readings_rate: result_rates.5,
        ingest_rate: result_rates.6,
        cpu,
        agent_rss_kib,
        published_total,
        stored_total,
        dead_lettered,
        drain_s,
        perf: profile,
    })
}

pub async fn latency(
    p: &mut Deployment,
    probe: &Probe,
    w: &Workload,
    timing: &Timing,
) -> anyhow::Result<LatencyRun> {
    let batch_age = p
        .ingester_batch_age
        .clone()
        .unwrap_or_else(|| "50ms (default)".to_owned());
    println!();
    println!(
        "== latency, {}: {}; ingester batch.age {batch_age}",
        w.name,
        w.describe()
    );
    let mut agents = p.start_agents(w)?;
    tokio::time::sleep(timing.warmup).await;
    check_agents(&mut agents)?;
    let parts = p.parts(&agents).await;
    let start = sample(p, probe)?;
    let window_start = Instant::now();
    probe.track(&format!("{}-", w.prefix));
    tokio::time::sleep(timing.latency_window).await;
    // The agents' health at the end of the window (they publish it every second).
    let confirm_wait = ConfirmWait::read(probe, w, window_start);
    let latency = probe.finish_tracking(Duration::from_secs(5)).await;
    let end = sample(p, probe)?;
    check_agents(&mut agents)?;
    p.check_running()?;
    for a in agents.iter_mut() {
        stop(a, Duration::from_secs(5));
    }
    let cpu = procstat::window(&start.procs, &end.procs, &parts);
    let offered_rate = (end.probe.readings - start.probe.readings) as f64 / cpu.seconds;
    let ingest_rate = (end.inserted - start.inserted) / cpu.seconds;
    println!(
        "   {:.0} readings/s published, {:.0} committed; publish → committed row over {} frames: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms{}",
        offered_rate,
        ingest_rate,
        latency.samples,
        latency.p50,
        latency.p90,
        latency.p99,
        latency.max,
        if latency.unseen > 0 {
            format!(" ({} frames not visible within 5 s)", latency.unseen)
        } else {
            String::new()
        }
    );
    println!(
        "   [probe: frame arrival on the broker → first poll (every {} ms, mean poll {:.1} ms) that sees the frame's first reading]",
        crate::probe::POLL_INTERVAL.as_millis(),
        latency.mean_poll_ms
    );
    println!(
        "   agent: {}   [the agents' retained status topic, field health: cumulative since the agent started, bucket upper bounds]",
        confirm_wait.describe()
    );
    print_cpu(&cpu);
    // Let the stopped agents' last frames land before the next scenario.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(LatencyRun {
        workload: w.clone(),
        batch_age,
        offered_rate,
        ingest_rate,
        latency,
        confirm_wait,
        cpu,
    })
}

fn print_cpu(cpu: &CpuWindow) {
    let parts: Vec<String> = cpu
        .parts
        .iter()
        .map(|(n, v)| format!("{n} {v:.0}"))
        .collect();
    println!(
        "   CPU, % of one core [/proc]: machine {:.0} of {} busy (steal {:.0}) | {} | other {:.0}",
        cpu.machine_busy,
        100 * std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu.machine_steal,
        parts.join(", "),
        cpu.unattributed()
    );
}

/// `perf record` of the whole machine (cpu-clock sampling, 499 Hz) for `window`.
fn start_perf(
    dir: &Path,
    name: &str,
    window: Duration,
) -> anyhow::Result<(std::process::Child, std::path::PathBuf)> {
    let data = dir.join(format!("perf-{name}.data"));
    let child = Command::new("perf")
        .args(["record", "-F", "499", "-a", "-q", "-o"])
        .arg(&data)
        .args(["--", "sleep", &format!("{:.0}", window.as_secs_f64())])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting perf record (install linux-perf, or run without --perf)")?;
    Ok((child, data))
}

fn finish_perf(
    mut child: std::process::Child,
    data: &Path,
    window: Duration,
) -> anyhow::Result<Profile> {
    let status = child.wait().context("waiting for perf record")?;
    if !status.success() {
        anyhow::bail!("perf record failed ({status})");
    }
    let report = |sort: &str, limit: usize| -> anyhow::Result<Vec<String>> {
        let out = Command::new("perf")
            .args(["report", "--stdio", "--no-children", "--sort", sort, "-i"])
            .arg(data)
            .output()
            .context("running perf report")?;
        if !out.status.success() {
            anyhow::bail!(
                "perf report failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|f| f.ends_with('%'))
            })
            .take(limit)
            .map(|l| l.trim_end().to_owned())
            .collect())
    };
    let by_command = report("comm,dso", 15)?;
    let by_symbol = report("comm,dso,sym", 25)?;
    println!("   perf, top commands:");
    for l in &by_command {
        println!("     {l}");
    }
    println!("   perf, top symbols:");
    for l in &by_symbol {
        println!("     {l}");
    }
    Ok(Profile {
        command: format!(
            "perf record -F 499 -a -o {} -- sleep {:.0}; perf report --stdio --no-children --sort comm,dso | comm,dso,sym",
            data.display(),
            window.as_secs_f64()
        ),
        by_command,
        by_symbol,
    })
}
