//! `bench`: the end-to-end benchmark of the pipeline and the writer of the benchmark
//! report. `scripts/bench.sh` runs the component benches first and hands their output to
//! this program, which then runs the real binaries end to end, prints every figure and
//! how it was measured, and writes `benchmarks.md` and `benchmarks.svg`.
//!
//! `bench bridge` is one of those component benches, the bridge throughput benchmark
//! (`bridge_throughput`, run by `scripts/bench-bridge.sh`): it lives here, beside the
//! report that parses its output, and shares this crate's process accounting and number
//! formatting.

mod bridge_throughput;
mod chart;
mod components;
mod database;
mod deployment;
mod e2e;
mod machine;
mod probe;
mod procstat;
mod report;
mod storm;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;

use crate::deployment::{Binaries, Deployment, Workload};

/// End-to-end benchmark of the telemetry pipeline, and the report writer; `bench bridge`
/// is the bridge throughput benchmark.
///
/// Without a subcommand: runs the release binaries of edge-agent, bridge (embedded
/// broker) and cloud-ingester against private PostgreSQL, Redis and Tansu servers:
/// throughput with 5 and with 500 simulated devices, then publish → committed-row latency
/// at about 10k readings/s (ingester defaults, then batch.age 200ms, its default until this
/// bench showed the cost). Reads the component benches' output from --components and
/// writes <out>/benchmarks.md and <out>/benchmarks.svg.
#[derive(Parser, Debug)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Present unless a subcommand is given (clap then requires --components and --out).
    #[command(flatten)]
    end_to_end: Option<Args>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// The bridge throughput benchmark: the bridge in client and embedded mode beside a
    /// Kafka ceiling, Mosquitto alone, the bridge's MQTT side alone and a shell pipeline,
    /// against the stack's Kafka (KAFKA_BROKERS). Run by scripts/bench-bridge.sh.
    Bridge(Box<bridge_throughput::Knobs>),
    /// A connection storm: N registered gateways connecting to the embedded broker at
    /// once, the registry's cache cold and warm, beside a bridge that checks nobody.
    Storm(storm::Knobs),
}

/// The end-to-end run's arguments.
#[derive(clap::Args, Debug)]
struct Args {
    /// Directory holding the component benches' output (bridge.log, ingest.log,
    /// footprint.log and their .cmd files), as scripts/bench.sh writes it.
    #[arg(long)]
    components: PathBuf,
    /// Where benchmarks.md and benchmarks.svg go.
    #[arg(long)]
    out: PathBuf,
    /// Where the end-to-end run keeps its configuration files, process logs and
    /// profile (default: <components>/e2e).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Directory of the release binaries.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Short windows, for a smoke run.
    #[arg(long)]
    quick: bool,
    /// Profile the whole machine with `perf record` during each throughput window.
    #[arg(long)]
    perf: bool,
    /// When the whole command started (for the report), e.g. from `date -u`.
    #[arg(long)]
    started: Option<String>,
    /// Minutes the component benches took before this program started.
    #[arg(long, default_value_t = 0.0)]
    minutes_before: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        // Builds its own runtimes: the CPU table tells their threads apart by name.
        Some(Command::Bridge(knobs)) => bridge_throughput::run(*knobs),
        Some(Command::Storm(knobs)) => storm::run(knobs),
        None => match cli.end_to_end {
            Some(args) => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("tokio runtime")
                .and_then(|runtime| runtime.block_on(run(args))),
            None => Err(anyhow::anyhow!(
                "--components and --out are required (see --help)"
            )),
        },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let began = Instant::now();
    let machine = machine::Machine::detect()?;
    let started = args
        .started
        .clone()
        .unwrap_or_else(|| machine.date_utc.clone());
    println!("bench: end-to-end benchmark — {}", machine.date_utc);
    println!("machine: {}", machine.one_line());
    println!("commit: {}", machine.commit);

    let components = components::Components::read(&args.components)?;
    let c = &components;
    println!();
    println!("component benches (from {}):", args.components.display());
    println!(
        "  bridge: Kafka ceiling {:.0} msgs/s, embedded {:.0} msgs/s, client {}",
        c.bridge.kafka_ceiling,
        c.bridge.embedded,
        match &c.bridge.client {
            Ok(v) => format!("{v:.0} msgs/s"),
            Err(why) => format!("not measured ({why})"),
        }
    );
    println!(
        "  ingest: raw COPY {:.0} readings/s, write_batch {:.0}, pipeline from Kafka {:.0}",
        c.ingest.copy_ceiling, c.ingest.write_batch, c.ingest.pipeline
    );
    println!(
        "  coverage upkeep: coverage::record {:.1} % of the write's CPU ({:.2} µs/reading), write rate with/without {:.1} %",
        100.0 * c.ingest.coverage.cpu_share,
        c.ingest.coverage.us_per_reading,
        100.0 * c.ingest.coverage.rate_ratio
    );
    println!(
        "  edge-agent footprint: RSS {:.2} MiB, CPU {:.2} %, {:.2} B a reading",
        c.footprint.rss_peak_mib, c.footprint.cpu_pct, c.footprint.bytes_per_reading_all
    );
    println!(
        "  edge-agent, pipeline / broker: VmHWM {:.2} / {:.2} MiB, bytes to storage {:.0} / {:.0}",
        c.footprint.rss_peak_mib,
        c.footprint.broker_rss_peak_mib,
        c.footprint.to_storage.0,
        c.footprint.to_storage.1
    );

    let timing = if args.quick {
        e2e::Timing::quick()
    } else {
        e2e::Timing::full()
    };
    let work = args
        .work
        .clone()
        .unwrap_or_else(|| args.components.join("e2e"));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let bins = Binaries::in_dir(&args.bin_dir)?;
    let [five, five_hundred, lat] = Workload::standard();
    let config_dir = tempfile::tempdir().context("temp dir for the configuration files")?;
    let mut deployment = Deployment::start(
        bins,
        config_dir.path().to_owned(),
        work.clone(),
        &[&five, &five_hundred, &lat],
    )
    .await?;
    let probe = probe::Probe::start(deployment.mqtt_port, deployment.pool.clone()).await?;

    let mut throughput = Vec::new();
    let profile_dir = args.perf.then_some(work.as_path());
    throughput.push(e2e::throughput(&mut deployment, &probe, &five, &timing, profile_dir).await?);
    // The same 5-device scenario with delete-on-PUBACK (the old behaviour), straight after,
    // for the cost of waiting for the cloud's confirmation.
    let five_broker = deployment::Workload {
        confirm: "broker",
        ..five.clone()
    };
    let broker = e2e::throughput(&mut deployment, &probe, &five_broker, &timing, None).await?;
    throughput
        .push(e2e::throughput(&mut deployment, &probe, &five_hundred, &timing, profile_dir).await?);
    let mut latency = vec![e2e::latency(&mut deployment, &probe, &lat, &timing).await?];
    deployment.restart_ingester(Some("200ms")).await?;
    latency.push(e2e::latency(&mut deployment, &probe, &lat, &timing).await?);
    let pl = &throughput[0];
    println!();
    println!("== confirmations (issue 14): delivery.confirm = \"pipeline\" against \"broker\"");
    println!(
        "   {}: committed {:.0} readings/s with pipeline, {:.0} with broker: {:.1} % (bar ≥ 95 %)   [ingester_readings_inserted_total over each window]",
        pl.workload.name,
        pl.ingest_rate,
        broker.ingest_rate,
        100.0 * pl.ingest_rate / broker.ingest_rate.max(f64::MIN_POSITIVE)
    );
    println!(
        "   largest agent RSS: {:.2} MiB with pipeline, {:.2} MiB with broker ({:+.2} MiB; bar within 0.2)   [/proc VmRSS at the end of each window]",
        pl.agent_rss_kib as f64 / 1024.0,
        broker.agent_rss_kib as f64 / 1024.0,
        (pl.agent_rss_kib as f64 - broker.agent_rss_kib as f64) / 1024.0
    );
    for l in &latency {
        println!(
            "   latency run, batch.age {}: {} (bar p99 ≤ 500 ms)   [agents' retained status, health; bucketed, since agent start]",
            l.batch_age,
            l.confirm_wait.describe()
        );
    }
    if probe.poll_errors() > 0 {
        println!("note: {} latency polls failed", probe.poll_errors());
    }

    let configs = deployment.configs(&[&five, &five_hundred, &lat]);
    probe.stop().await;
    deployment.stop();

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let svg = args.out.join("benchmarks.svg");
    chart::draw_report(&svg, &machine, &components, &throughput, &latency)?;
    let total_minutes = args.minutes_before + began.elapsed().as_secs_f64() / 60.0;
    let report = report::Report {
        machine: &machine,
        quick: args.quick,
        timing: &timing,
        components: &components,
        throughput: &throughput,
        latency: &latency,
        broker: &broker,
        configs: &configs,
        chart_file: "benchmarks.svg",
        started: &started,
        total_minutes,
    };
    let md_path = args.out.join("benchmarks.md");
    std::fs::write(&md_path, report.markdown())
        .with_context(|| format!("writing {}", md_path.display()))?;
    println!();
    println!("wrote {} and {}", md_path.display(), svg.display());
    Ok(())
}
