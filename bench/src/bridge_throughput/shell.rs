//! The everyday alternative the bridge is measured against: `mosquitto_sub -q 1 -F
//! '%t %x' | python`, a confluent-kafka producer with the bridge's librdkafka settings
//! (bench/python/pipeline_producer.py). mosquitto_sub acknowledges on receipt, so this
//! baseline has no end-to-end guarantee; its rate is the Python producer's flush()
//! returning after N delivery reports.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use super::cpu::{mosquitto_pid, CpuWatch};
use super::kafka::{on_fresh_topics, percentiles, Probe};
use super::publishers::{warm_up, Publishers};
use super::scenarios::{processes, Outcome};
use super::workload::Workload;
use super::Settings;

/// The shell pipeline's Kafka producer, embedded in the binary rather than run from its
/// path: `target/release/bench` then runs from any directory, and the script measured is
/// the one the binary was built with. It goes to the interpreter with `-c`.
const PIPELINE_PRODUCER: &str = include_str!("../../python/pipeline_producer.py");

fn python_can_produce(python: &Path) -> anyhow::Result<()> {
    let output = Command::new(python)
        .args(["-c", "import confluent_kafka"])
        .output()
        .with_context(|| format!("cannot run {} (set BENCH_PYTHON, or run scripts/bench-bridge.sh, which creates target/bench-venv)", python.display()))?;
    if !output.status.success() {
        bail!(
            "{} cannot import confluent_kafka (run scripts/bench-bridge.sh, which installs it): {}",
            python.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Children of the shell pipeline; killed when dropped.
struct ShellPipeline {
    subscriber: Child,
    producer: Child,
}

impl Drop for ShellPipeline {
    fn drop(&mut self) {
        for child in [&mut self.subscriber, &mut self.producer] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_pipeline(
    settings: &Settings,
    port: u16,
    workload: &Workload,
    topic: &str,
) -> anyhow::Result<(ShellPipeline, std::sync::mpsc::Receiver<String>)> {
    let mut subscriber = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-i", &testkit::unique_name("sub"), "-t", &workload.filter()])
        .args(["-F", "%t %x"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting mosquitto_sub (apt-get install mosquitto-clients)")?;
    let stdout = subscriber.stdout.take().context("mosquitto_sub stdout")?;
    let kafka = settings.kafka(topic, "unused");
    let mut properties: HashMap<String, String> =
        bridge::kafka::producer_config(&kafka, "bench-pipeline", settings.max_in_flight)
            .config_map()
            .clone();
    properties.remove("bootstrap.servers");
    properties.remove("statistics.interval.ms");
    let mut producer = Command::new(&settings.python)
        .args(["-c", PIPELINE_PRODUCER, &settings.kafka_brokers, topic])
        .arg(workload.frames.to_string())
        .arg(serde_json::to_string(&properties)?)
        .stdin(Stdio::from(stdout))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the Python producer")?;
    let lines = producer.stdout.take().context("python stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(lines).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    Ok((
        ShellPipeline {
            subscriber,
            producer,
        },
        rx,
    ))
}

/// Parses `delivered=N failed=F done_ms=T`.
fn parse_done(line: &str) -> anyhow::Result<(usize, usize, u64)> {
    let field = |name: &str| -> anyhow::Result<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("no {name} in {line:?}"))?
            .parse()
            .with_context(|| format!("{name} in {line:?}"))
    };
    Ok((
        field("delivered")? as usize,
        field("failed")? as usize,
        field("done_ms")?,
    ))
}

pub(super) async fn shell(settings: &Settings) -> anyhow::Result<Outcome> {
    python_can_produce(&settings.python)?;
    let workload = Arc::new(Workload::new(settings));
    let topic = testkit::unique_name("shell");
    let scenario = shell_on(settings, &workload, &topic);
    on_fresh_topics(&settings.kafka_brokers, &[&topic], scenario).await
}

async fn shell_on(
    settings: &Settings,
    workload: &Arc<Workload>,
    topic: &str,
) -> anyhow::Result<Outcome> {
    let mosquitto = testkit::Mosquitto::start_with(&settings.mosquitto);
    let port = mosquitto.port();
    let probe = Probe::start(&settings.kafka_brokers, topic, workload.frames).await?;
    let (pipeline, lines) = spawn_pipeline(settings, port, workload, topic)?;
    warm_up(
        port,
        workload,
        || probe.saw_warm_up(),
        Duration::from_secs(30),
    )
    .await?;
    let publishers = Publishers::connect(port, workload, settings).await?;
    let parts = [
        ("mosquitto", mosquitto_pid(port)),
        ("mosquitto_sub", Some(pipeline.subscriber.id())),
        ("python producer", Some(pipeline.producer.id())),
    ];
    let cpu = CpuWatch::start(&processes(settings, &parts), &probe.tids);
    let publishing = publishers.start(workload, settings.rate);
    let (t0, t0_ms) = (publishing.t0, publishing.t0_ms);
    let timeout = settings.timeout;
    let line = tokio::task::spawn_blocking(move || lines.recv_timeout(timeout)).await?;
    let cpu = cpu.stop();
    let last_puback = publishing.last_puback(Duration::from_secs(5)).await;
    drop(pipeline);
    let (mut latencies, probed) = probe.finish(Duration::from_secs(10)).await?;
    let line = line.map_err(|_| {
        anyhow::anyhow!(
            "the pipeline did not confirm {} records within {timeout:?}",
            workload.frames
        )
    })?;
    let (delivered, failed, done_ms) = parse_done(&line)?;
    let mut notes =
        vec!["mosquitto_sub acks on receipt: no end-to-end guarantee; no Kafka headers".to_owned()];
    if failed > 0 {
        notes.push(format!("{failed} records failed in the Python producer"));
    }
    Ok(Outcome {
        // `delivered` counts the warm-up records too.
        delivered: delivered.min(workload.frames),
        elapsed: Duration::from_millis(done_ms.saturating_sub(t0_ms)),
        publishers: last_puback.ok().map(|at| at - t0),
        latency: percentiles(&mut latencies.end_to_end),
        to_bridge: None,
        probed,
        cpu,
        notes,
    })
}
