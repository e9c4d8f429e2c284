//! Footprint of the edge agent with the five seed devices simulated at their configured
//! rates: resident memory, CPU share, bytes per reading on the wire, and binary size,
//! each beside its bar.
//!
//! Run: `cargo bench -p edge-agent --bench footprint [-- SECONDS]` (default 60 s).
//! It builds the agent with the `release-pi` profile, starts a private Mosquitto, runs the
//! binary with `config/simulated-plant.toml` pointed at it, and samples /proc for the
//! agent process every 100 ms. Bytes per reading counts the MQTT payloads of the telemetry topics a
//! subscriber received, divided by the readings they carried.

use std::time::{Duration, Instant};

use protocol::Frame;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

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
    let dir = tempfile::tempdir().expect("temp dir");

    let mut options = MqttOptions::new(testkit::unique_name("sub"), "127.0.0.1", broker.port());
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(options, 10);
    client
        .subscribe("plant/+/+/+/telemetry", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let totals = std::sync::Arc::new(std::sync::Mutex::new(Default::default()));
    let seen = totals.clone();
    let counter = tokio::spawn(async move {
        let totals = seen;
        // Per frame size (readings): (frames, payload bytes).
        let mut by_size = std::collections::BTreeMap::<usize, (u64, u64)>::new();
        loop {
            let Ok(event) = events.poll().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            if let Event::Incoming(Packet::Publish(p)) = event {
                if let Ok(frame) = Frame::decode(&p.payload) {
                    let entry = by_size.entry(frame.readings.len()).or_default();
                    entry.0 += 1;
                    entry.1 += p.payload.len() as u64;
                    *totals.lock().unwrap_or_else(|e| e.into_inner()) = by_size.clone();
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let config = format!("{}/config/simulated-plant.toml", env!("CARGO_MANIFEST_DIR"));
    let mut agent = std::process::Command::new(&bin)
        .args([
            "--config",
            &config,
            "--mqtt-port",
            &broker.port().to_string(),
        ])
        .arg("--queue-dir")
        .arg(dir.path().join("queue"))
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start edge-agent");
    let pid = agent.id();
    // Let the runtime and the first frames settle before measuring CPU.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let cpu_start = cpu_ticks(pid).unwrap_or(0);
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
    let wall = started.elapsed().as_secs_f64();
    let hwm = proc_field(pid, "VmHWM:").unwrap_or(0);
    let (pss, anonymous) = smaps_rollup(pid);
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
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = agent.wait();
    tokio::time::sleep(Duration::from_millis(500)).await;
    counter.abort();
    let by_size: std::collections::BTreeMap<usize, (u64, u64)> =
        totals.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let frames: u64 = by_size.values().map(|(f, _)| f).sum();
    let bytes: u64 = by_size.values().map(|(_, b)| b).sum();
    let readings: u64 = by_size.iter().map(|(n, (f, _))| *n as u64 * f).sum();
    let per_reading_at = |n: usize| {
        by_size
            .get(&n)
            .map(|(f, b)| format!("{:.2} B ({f} frames)", *b as f64 / (*f * n as u64) as f64))
            .unwrap_or_else(|| "no such frames".to_owned())
    };
    rss_samples.sort_unstable();
    let median_rss = rss_samples.get(rss_samples.len() / 2).copied().unwrap_or(0);

    println!("edge-agent footprint: 5 simulated seed devices (config/simulated-plant.toml),");
    println!(
        "{seconds} s measured after 2 s warm-up, /proc sampled every 100 ms, release-pi build."
    );
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
        100.0 * cpu / wall
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
