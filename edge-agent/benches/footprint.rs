//! Footprint of the edge agent with the five seed devices simulated at their configured
//! rates: resident memory, CPU share, bytes per reading on the wire, and binary size,
//! each beside its bar.
//!
//! Run: `cargo bench -p edge-agent --bench footprint [-- SECONDS]` (default 60 s).
//! It builds the agent with the `release-pi` profile, starts a private Mosquitto, runs the
//! binary with `config/simulated-plant.toml` pointed at it, and samples /proc for the
//! agent process every 100 ms. Bytes per reading counts the MQTT payloads of the telemetry topics a
//! subscriber received, divided by the readings they carried.
//!
//! It runs the agent twice, the same time each: with `delivery.confirm = "pipeline"` (the
//! default, measured for the table), with a subscriber playing the cloud that confirms
//! every reading it receives, as the ingester would; and with `confirm = "broker"`
//! (delete on PUBACK), the peer for what confirmations cost in memory and in writes.
//! Writes are counted two ways: every write call (/proc/PID/io `wchar`: queue segments,
//! acks file and MQTT socket alike), and what reaches storage (`write_bytes` less
//! `cancelled_write_bytes`: page cache pages of the queue's files, the SD card's figure,
//! on which the ≤ +5 % bar is judged).
//!
//! A third run, the same time again, is the pipeline one over TLS: a second private
//! Mosquitto with a TLS listener that demands a client certificate (certificates made for
//! the run), the agent given `mqtt.tls`; its RSS beside the plain run's is what TLS costs
//! the Pi (bar: at most 0.5 MiB).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use protocol::topic::{Topic, TopicKind};
use protocol::{BootId, Confirmation, DeviceId, Frame, MAX_CONFIRM_LEN};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

/// PEM files for a TLS run: the CA that signs both the broker's and the agent's
/// certificates, each certificate and its key.
struct Certificates {
    _dir: tempfile::TempDir,
    ca: std::path::PathBuf,
    broker: (std::path::PathBuf, std::path::PathBuf),
    client: (std::path::PathBuf, std::path::PathBuf),
}

impl Certificates {
    fn make() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "footprint CA");
        let ca =
            CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).expect("write PEM");
            path
        };
        let signed = |name: &str, subject: &str| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(vec![subject.to_owned()]).expect("params");
            params.distinguished_name.push(DnType::CommonName, subject);
            let cert = params.signed_by(&key, &ca).expect("certificate");
            (
                write(&format!("{name}.pem"), cert.pem()),
                write(&format!("{name}.key"), key.serialize_pem()),
            )
        };
        let broker = signed("broker", "127.0.0.1");
        let client = signed("client", "footprint-agent");
        let ca_path = write("ca.pem", ca.pem());
        Certificates {
            ca: ca_path,
            broker,
            client,
            _dir: dir,
        }
    }

    fn transport(&self) -> Transport {
        let read = |path: &std::path::Path| std::fs::read(path).expect("read PEM");
        Transport::tls_with_config(TlsConfiguration::Simple {
            ca: read(&self.ca),
            alpn: None,
            client_auth: Some((read(&self.client.0), read(&self.client.1))),
        })
    }
}

/// Builds the agent with the profile shipped to the Pi (`release-pi`: size-optimised,
/// LTO, abort on panic), which is what the footprint is about; returns the binary.
fn build_pi_profile() -> std::path::PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "--locked",
            "--profile",
            "release-pi",
            "-p",
            "edge-agent",
            "--bin",
            "edge-agent",
        ])
        .status()
        .expect("run cargo");
    assert!(
        status.success(),
        "building edge-agent with the release-pi profile failed"
    );
    // This bench runs from target/release/deps/; the profile's output sits beside it.
    let bench = std::env::current_exe().expect("bench path");
    let target = bench.ancestors().nth(3).expect("target directory");
    target.join("release-pi/edge-agent")
}

fn proc_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// (Pss, Anonymous) in KiB, from /proc/PID/smaps_rollup.
fn smaps_rollup(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (field("Pss:"), field("Anonymous:"))
}

/// Bytes the process handed to write(2) and friends (/proc/PID/io `wchar`): its queue
/// segments, acks file and MQTT socket alike.
fn written_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let line = io.lines().find(|l| l.starts_with("wchar:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Bytes the process made the kernel send to storage (/proc/PID/io `write_bytes`, page
/// cache pages dirtied, counted once per page until written back), less those of files
/// truncated or deleted before they were written (`cancelled_write_bytes`): what reaches
/// the SD card, page by page, with no socket traffic in it.
fn storage_bytes(pid: u32) -> Option<(u64, u64)> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |name: &str| -> Option<u64> {
        io.lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .parse()
            .ok()
    };
    Some((field("write_bytes:")?, field("cancelled_write_bytes:")?))
}

/// What one run of the agent measured.
struct Run {
    hwm_kib: u64,
    median_rss_kib: u64,
    peak_rss_kib: u64,
    pss_kib: u64,
    anonymous_kib: u64,
    cpu_share: f64,
    written: u64,
    /// Net bytes to storage over the window (see [`storage_bytes`]).
    to_storage: i64,
    /// Per frame size (readings): (frames, payload bytes).
    by_size: BTreeMap<usize, (u64, u64)>,
    confirmed_frames: u64,
}

/// Every reading received per (device, boot), and the confirm topic of each device.
#[derive(Default)]
struct Received {
    by_size: BTreeMap<usize, (u64, u64)>,
    seqs: BTreeMap<(String, BootId), BTreeSet<u64>>,
    confirm_topics: BTreeMap<String, String>,
    /// The agent's own count of frames deleted on a confirmation (its health report).
    confirmed_frames: u64,
}

/// The committed prefix of each (device, boot): what the ingester would confirm.
fn confirmations(received: &Received) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for ((device, boot), seqs) in &received.seqs {
        let (Ok(id), Some(topic)) = (DeviceId::new(device), received.confirm_topics.get(device))
        else {
            continue;
        };
        let mut confirmation = Confirmation::new(id, *boot);
        confirmation.committed_below = seqs
            .iter()
            .zip(0..)
            .take_while(|(seq, expected)| **seq == *expected)
            .count() as u64;
        let mut buf = [0u8; MAX_CONFIRM_LEN];
        if let Ok(bytes) = confirmation.encode(&mut buf) {
            out.push((topic.clone(), bytes.to_vec()));
        }
    }
    out
}

/// Runs the agent for `seconds` with `confirm` and measures it; with `"pipeline"` a
/// subscriber confirms what it receives every 200 ms, as the ingester would. With `tls`,
/// the agent and the subscriber reach the broker over TLS with a client certificate.
async fn run(
    bin: &std::path::Path,
    port: u16,
    confirm: &str,
    seconds: u64,
    tls: Option<&Certificates>,
) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut options = MqttOptions::new(testkit::unique_name("sub"), "127.0.0.1", port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    if let Some(tls) = tls {
        options.set_transport(tls.transport());
    }
    let (client, mut events) = AsyncClient::new(options, 100);
    for filter in ["plant/+/+/+/telemetry", "plant/+/+/+/status"] {
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
    }
    let received = Arc::new(Mutex::new(Received::default()));
    let seen = received.clone();
    let counter = tokio::spawn(async move {
        loop {
            let Ok(event) = events.poll().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Event::Incoming(Packet::Publish(p)) = event else {
                continue;
            };
            let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
            if p.topic.ends_with("/status") {
                let confirmed = serde_json::from_slice::<serde_json::Value>(&p.payload)
                    .ok()
                    .and_then(|status| status["health"]["confirmed_frames"].as_u64());
                if let Some(confirmed) = confirmed {
                    seen.confirmed_frames = seen.confirmed_frames.max(confirmed);
                }
                continue;
            }
            let Ok(frame) = Frame::decode(&p.payload) else {
                continue;
            };
            let entry = seen.by_size.entry(frame.readings.len()).or_default();
            entry.0 += 1;
            entry.1 += p.payload.len() as u64;
            let device = frame.device.as_str().to_owned();
            let seqs = seen
                .seqs
                .entry((device.clone(), frame.boot_id))
                .or_default();
            seqs.extend(frame.first_seq..frame.first_seq + frame.readings.len() as u64);
            if let Ok(topic) = Topic::parse(&p.topic) {
                let confirm = topic.with_kind(TopicKind::Confirm).to_string();
                seen.confirm_topics.insert(device, confirm);
            }
        }
    });
    let confirmer = (confirm == "pipeline").then(|| {
        let (client, received) = (client.clone(), received.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let pending = {
                    let seen = received.lock().unwrap_or_else(PoisonError::into_inner);
                    confirmations(&seen)
                };
                for (topic, payload) in pending {
                    let _ = client.try_publish(topic, QoS::AtMostOnce, false, payload);
                }
            }
        })
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let config = format!("{}/config/simulated-plant.toml", env!("CARGO_MANIFEST_DIR"));
    let mut agent = std::process::Command::new(bin);
    agent
        .args(["--config", &config, "--mqtt-port", &port.to_string()])
        .arg("--queue-dir")
        .arg(dir.path().join("queue"))
        .env("RUST_LOG", "warn")
        .env("EDGE_AGENT_DELIVERY__CONFIRM", confirm);
    if let Some(tls) = tls {
        agent
            .env("EDGE_AGENT_MQTT__TLS__CA", &tls.ca)
            .env("EDGE_AGENT_MQTT__TLS__CLIENT_CERT", &tls.client.0)
            .env("EDGE_AGENT_MQTT__TLS__CLIENT_KEY", &tls.client.1);
    }
    let mut agent = agent.spawn().expect("start edge-agent");
    let pid = agent.id();
    // Let the runtime and the first frames settle before measuring CPU.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let cpu_start = cpu_ticks(pid).unwrap_or(0);
    let written_start = written_bytes(pid).unwrap_or(0);
    let storage_start = storage_bytes(pid).unwrap_or((0, 0));
    let started = Instant::now();
    let mut peak_rss_kib = 0;
    let mut rss_samples = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        if let Some(rss) = proc_field(pid, "VmRSS:") {
            peak_rss_kib = peak_rss_kib.max(rss);
            rss_samples.push(rss);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu = (cpu_ticks(pid).unwrap_or(0) - cpu_start) as f64 / ticks_per_s;
    let written = written_bytes(pid).unwrap_or(0) - written_start;
    let storage_end = storage_bytes(pid).unwrap_or((0, 0));
    let to_storage =
        (storage_end.0 - storage_start.0) as i64 - (storage_end.1 - storage_start.1) as i64;
    let wall = started.elapsed().as_secs_f64();
    let hwm_kib = proc_field(pid, "VmHWM:").unwrap_or(0);
    let (pss_kib, anonymous_kib) = smaps_rollup(pid);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = agent.wait();
    tokio::time::sleep(Duration::from_millis(500)).await;
    counter.abort();
    if let Some(confirmer) = confirmer {
        confirmer.abort();
    }
    let _ = client.disconnect().await;
    rss_samples.sort_unstable();
    let (by_size, confirmed_frames) = {
        let seen = received.lock().unwrap_or_else(PoisonError::into_inner);
        (seen.by_size.clone(), seen.confirmed_frames)
    };
    Run {
        hwm_kib,
        median_rss_kib: rss_samples.get(rss_samples.len() / 2).copied().unwrap_or(0),
        peak_rss_kib,
        pss_kib,
        anonymous_kib,
        cpu_share: cpu / wall,
        written,
        to_storage,
        by_size,
        confirmed_frames,
    }
}

fn stripped_size(path: &std::path::Path, strip: &str) -> Option<u64> {
    let out = std::env::temp_dir().join(testkit::unique_name("strip"));
    let ok = std::process::Command::new(strip)
        .arg("-o")
        .arg(&out)
        .arg(path)
        .status()
        .ok()?
        .success();
    let size = std::fs::metadata(&out).ok().map(|m| m.len());
    let _ = std::fs::remove_file(&out);
    ok.then_some(size).flatten()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let seconds: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(60);
    // Build first: nothing may wait on this single-threaded runtime while cargo runs.
    let bin = build_pi_profile();
    let broker = testkit::Mosquitto::start();
    let run_pipeline = run(&bin, broker.port(), "pipeline", seconds, None).await;
    let run_broker = run(&bin, broker.port(), "broker", seconds, None).await;
    let certificates = Certificates::make();
    let tls_broker = testkit::Mosquitto::start_with(&format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true",
        certificates.ca.display(),
        certificates.broker.0.display(),
        certificates.broker.1.display()
    ));
    let run_tls = run(
        &bin,
        tls_broker.port(),
        "pipeline",
        seconds,
        Some(&certificates),
    )
    .await;
    // The floor in the same run: a C program that does nothing still maps the C library.
    let floor = std::process::Command::new("sleep")
        .arg("5")
        .spawn()
        .ok()
        .map(|mut sleep| {
            std::thread::sleep(Duration::from_millis(300));
            let rss = proc_field(sleep.id(), "VmRSS:").unwrap_or(0);
            let _ = sleep.kill();
            let _ = sleep.wait();
            rss
        });
    let Run {
        hwm_kib: hwm,
        median_rss_kib: median_rss,
        peak_rss_kib,
        pss_kib: pss,
        anonymous_kib: anonymous,
        cpu_share,
        ref by_size,
        ..
    } = run_pipeline;
    let frames: u64 = by_size.values().map(|(f, _)| f).sum();
    let bytes: u64 = by_size.values().map(|(_, b)| b).sum();
    let readings: u64 = by_size.iter().map(|(n, (f, _))| *n as u64 * f).sum();
    let per_reading_at = |n: usize| {
        by_size
            .get(&n)
            .map(|(f, b)| format!("{:.2} B ({f} frames)", *b as f64 / (*f * n as u64) as f64))
            .unwrap_or_else(|| "no such frames".to_owned())
    };

    println!("edge-agent footprint: 5 simulated seed devices (config/simulated-plant.toml),");
    println!(
        "{seconds} s measured after 2 s warm-up, /proc sampled every 100 ms, release-pi build;"
    );
    println!(
        "delivery.confirm = \"pipeline\" with a subscriber confirming what it receives, then the"
    );
    println!("same time with \"broker\" (delete on PUBACK) as the peer.");
    println!();
    println!("| figure | measured | bar |");
    println!("|---|---:|---:|");
    println!(
        "| RSS, peak over the run (VmHWM) | {:.2} MiB | ≤ 4 MiB |",
        hwm as f64 / 1024.0
    );
    println!(
        "| RSS, median / max of samples | {:.2} / {:.2} MiB | |",
        median_rss as f64 / 1024.0,
        peak_rss_kib as f64 / 1024.0
    );
    println!(
        "| PSS (shared library pages split among their users) | {:.2} MiB | |",
        pss as f64 / 1024.0
    );
    println!(
        "| anonymous memory (heap, stack; the rest is file pages of code) | {:.2} MiB | |",
        anonymous as f64 / 1024.0
    );
    if let Some(floor) = floor {
        println!(
            "| peer: RSS of `sleep` (C, does nothing) in the same run | {:.2} MiB | |",
            floor as f64 / 1024.0
        );
    }
    println!(
        "| CPU, share of one core | {:.2} % | ≤ 1 % |",
        100.0 * cpu_share
    );
    println!(
        "| peer: RSS peak with confirm = \"broker\" (VmHWM) | {:.2} MiB (pipeline {:+.2} MiB) | pipeline within 0.2 MiB |",
        run_broker.hwm_kib as f64 / 1024.0,
        (hwm as f64 - run_broker.hwm_kib as f64) / 1024.0
    );
    println!(
        "| RSS peak over TLS with a client certificate (VmHWM; pipeline, a TLS Mosquitto) | {:.2} MiB ({:+.2} MiB; {} frames received) | within +0.5 MiB |",
        run_tls.hwm_kib as f64 / 1024.0,
        (run_tls.hwm_kib as f64 - hwm as f64) / 1024.0,
        run_tls.by_size.values().map(|(f, _)| f).sum::<u64>()
    );
    println!(
        "| frames deleted on a confirmation, by the agent's last health report (pipeline run) | {} of {frames} received | |",
        run_pipeline.confirmed_frames
    );
    let extra = run_pipeline.written as f64 / run_broker.written.max(1) as f64 - 1.0;
    println!(
        "| bytes written (write calls: queue, acks file, MQTT socket), pipeline / broker | {} / {} B ({:+.1} %) | |",
        run_pipeline.written,
        run_broker.written,
        100.0 * extra
    );
    let extra_storage = run_pipeline.to_storage as f64 / run_broker.to_storage.max(1) as f64 - 1.0;
    println!(
        "| bytes to storage (/proc io write_bytes − cancelled_write_bytes: pages of the queue's files the SD card gets), pipeline / broker | {} / {} B ({:+.1} %) | ≤ +5 % |",
        run_pipeline.to_storage,
        run_broker.to_storage,
        100.0 * extra_storage
    );
    println!(
        "| wire bytes per reading, all frames | {:.2} B ({readings} readings in {frames} frames) | |",
        bytes as f64 / readings.max(1) as f64
    );
    println!(
        "| wire bytes per reading, frames of 50 | {} | ≤ 8 B |",
        per_reading_at(50)
    );
    println!(
        "| wire bytes per reading, frames of 10 | {} | ≤ 12 B |",
        per_reading_at(10)
    );
    let native = bin.as_path();
    if let Some(size) = stripped_size(native, "strip") {
        println!(
            "| binary, x86-64, stripped | {:.2} MiB | |",
            size as f64 / (1 << 20) as f64
        );
    }
    let aarch64 = native
        .ancestors()
        .nth(2)
        .map(|target| target.join("aarch64-unknown-linux-gnu/release-pi/edge-agent"));
    match aarch64.filter(|p| p.exists()) {
        Some(path) => match stripped_size(&path, "aarch64-linux-gnu-strip") {
            Some(size) => println!(
                "| binary, aarch64, stripped | {:.2} MiB | ≤ 5 MiB |",
                size as f64 / (1 << 20) as f64
            ),
            None => println!("| binary, aarch64 | (aarch64-linux-gnu-strip missing) | ≤ 5 MiB |"),
        },
        None => {
            println!("| binary, aarch64 | (build it first: scripts/cross-build.sh) | ≤ 5 MiB |")
        }
    }
    println!();
    println!("The seed devices sample about 21 readings/s in all; frames are sealed at 50");
    println!("readings or 5 s, so slow channels ship smaller frames than the 50-reading bar.");
}
