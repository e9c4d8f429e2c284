//! Sampling against a slow SD card (issue 15, item 6): every queue fsync is made to take
//! 300 ms (the `slow-disk-test` hook, `edge_agent::queue::slow_disk`), and the agent runs
//! as it does on the Pi, on one current-thread runtime. No broker: frames stay in the
//! queue, where the test reads them back.
//!
//! Nothing here is a wall-clock assertion: the schedule is judged in device time, by the
//! readings' own timestamps, against the ticks the agent reports having missed.

mod support;

use std::time::Duration;

use edge_agent::agent::RunReport;
use edge_agent::config::{AgentConfig, CliOverrides};
use edge_agent::queue::slow_disk;
use support::{frames_on_disk, spawn_agent, Setup};

const PERIOD_MS: u64 = 10;
const FSYNC_DELAY: Duration = Duration::from_millis(300);
const RUN: Duration = Duration::from_secs(3);

/// One device with one channel sampled every 10 ms, the queue synced every 100 ms, and
/// a broker port nobody listens on. `max_readings` sets how many frames the sampling
/// seals per second, and so how long the hand-over to the queue can buffer a stall.
fn config(setup: &Setup, max_readings: usize) -> AgentConfig {
    // A port that was free a moment ago: connecting is refused, frames stay queued.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let toml = format!(
        r#"
[gateway]
id = "{prefix}"
site = "plant1"
line = "line-a"
topic_prefix = "{prefix}"

[mqtt]
host = "127.0.0.1"
port = {port}
reconnect_min = "50ms"
reconnect_max = "300ms"

[queue]
dir = "{queue}"
fsync_interval = "100ms"

[batch]
max_readings = {max_readings}
max_age = "1s"

[delivery]
confirm = "broker"

[health]
interval = "1s"

[[devices]]
id = "furnace-01"
[[devices.channels]]
id = 0
name = "temperature"
unit = "°C"
period = "{PERIOD_MS}ms"
source = {{ kind = "simulated", model = "furnace" }}
"#,
        prefix = setup.prefix,
        queue = setup.queue_dir().display(),
    );
    let path = setup.dir.path().join("agent.toml");
    std::fs::write(&path, toml).expect("write config");
    AgentConfig::load(&path, &CliOverrides::default()).expect("test config is valid")
}

/// Runs the agent for [`RUN`] with every fsync slowed down; returns its report and the
/// readings' timestamps (ms), in sequence order, from the queue it left on disk.
async fn run_on_a_slow_disk(setup: &Setup, max_readings: usize) -> (RunReport, Vec<u64>) {
    slow_disk::set_fsync_delay(FSYNC_DELAY);
    let (stop, agent) = spawn_agent(config(setup, max_readings));
    tokio::time::sleep(RUN).await;
    stop.send(()).expect("agent still running");
    let report = agent.await.expect("agent task");
    let mut readings: Vec<(u64, u64)> = frames_on_disk(&setup.queue_dir())
        .iter()
        .filter(|f| f.boot_id == report.boot_id)
        .flat_map(|f| f.iter().map(|(seq, ts, _)| (seq, ts)).collect::<Vec<_>>())
        .collect();
    readings.sort_unstable();
    let sealed = report.sealed[0].1;
    assert_eq!(
        readings.iter().map(|&(seq, _)| seq).collect::<Vec<_>>(),
        (0..sealed).collect::<Vec<_>>(),
        "every sealed reading is in the queue, once"
    );
    (report, readings.into_iter().map(|(_, ts)| ts).collect())
}

/// The ticks of the schedule between the first and the last reading, in device time.
fn ticks_spanned(timestamps: &[u64]) -> u64 {
    match (timestamps.first(), timestamps.last()) {
        (Some(first), Some(last)) => (last - first + PERIOD_MS / 2) / PERIOD_MS + 1,
        _ => 0,
    }
}

/// Frames of 50 readings: two a second, far fewer than the hand-over to the queue holds,
/// so however long the queue's fsyncs take, sampling must not wait for them.
#[tokio::test]
async fn sampling_keeps_its_schedule_while_every_fsync_takes_300_ms() {
    let setup = Setup::new();
    let (report, timestamps) = run_on_a_slow_disk(&setup, 50).await;
    let ticks = ticks_spanned(&timestamps);
    let readings = timestamps.len() as u64;
    assert!(
        ticks >= 200,
        "the run spans {ticks} ticks of {PERIOD_MS} ms in device time"
    );
    // A loaded machine may wake the sampler late now and then; a blocked one loses
    // whole fsyncs' worth of ticks (most of them, at 300 ms per fsync).
    assert!(
        readings * 100 >= ticks * 95,
        "{readings} readings over {ticks} ticks of device time: sampling waited for the disk"
    );
    assert_tick_accounting(readings, report.health.missed_ticks, ticks);
}

/// Frames of one reading: a hundred a second, so a 300 ms fsync holds up more frames than
/// the hand-over to the queue buffers (8), and the sampler must wait. The ticks that pass
/// meanwhile are missed, and each one is counted in health: readings and missed ticks
/// together account for every tick of the schedule.
#[tokio::test]
async fn ticks_missed_while_the_queue_cannot_keep_up_are_counted_in_health() {
    let setup = Setup::new();
    let (report, timestamps) = run_on_a_slow_disk(&setup, 1).await;
    let ticks = ticks_spanned(&timestamps);
    let readings = timestamps.len() as u64;
    let missed = report.health.missed_ticks;
    assert!(
        missed > 0 && readings < ticks,
        "{readings} readings, {missed} missed ticks over {ticks} ticks of device time: \
         the disk was expected to hold sampling up"
    );
    assert_tick_accounting(readings, missed, ticks);
}

/// Every tick of the span is either a reading or a missed tick the agent counted. The
/// slack covers the span's ends (the last reading may be a late one, and ticks after it
/// are not in the span) and the odd tick lost to rounding in device time.
fn assert_tick_accounting(readings: u64, missed: u64, ticks: u64) {
    let slack = ticks / 50 + 2;
    eprintln!("{readings} readings + {missed} missed ticks over {ticks} ticks of device time");
    assert!(
        (readings + missed).abs_diff(ticks) <= slack,
        "{readings} readings + {missed} missed ticks should account for the {ticks} ticks \
         of device time (±{slack})"
    );
}
