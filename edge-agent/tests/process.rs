//! The `edge-agent` binary as an operator meets it: help, configuration errors, and a
//! SIGKILL in the middle of a stream followed by a restart.

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::Duration;

use edge_agent::delivery::decode_record;
use edge_agent::queue::{DiskQueue, QueueConfig};
use protocol::{BootId, Frame};
use support::{Ledger, Setup, Subscriber, DEVICES, PATIENCE};
use testkit::{ChildGuard, Mosquitto};

const BIN: &str = env!("CARGO_BIN_EXE_edge-agent");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run edge-agent")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_explains_configuration_layers() {
    let output = run(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "--config",
        "--queue-dir",
        "EDGE_AGENT_",
        "SIGTERM",
        "--check-config",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

#[test]
fn shipped_example_configs_are_valid() {
    for name in ["simulated-plant.toml", "pi.toml"] {
        let path = format!("{}/config/{name}", env!("CARGO_MANIFEST_DIR"));
        let output = run(&["--config", &path, "--check-config"]);
        assert!(output.status.success(), "{name}: {}", stderr(&output));
    }
}

/// `--help` lists EDGE_AGENT_CONFIG as the way to name the file; setting it must not be
/// taken for an unknown setting.
#[test]
fn the_config_file_can_be_named_by_environment() {
    let path = format!("{}/config/simulated-plant.toml", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(BIN)
        .arg("--check-config")
        .env("EDGE_AGENT_CONFIG", &path)
        .output()
        .expect("run edge-agent");
    assert!(output.status.success(), "{}", stderr(&output));
}

/// `--check-config` prints the effective configuration, the password hidden, in a form
/// the agent itself takes back: what an operator sees is what runs.
#[test]
fn the_printed_configuration_loads_back_with_the_password_hidden() {
    let setup = Setup::new();
    let toml = setup
        .config_toml(1883, "1 MiB")
        .replace("[mqtt]", "[mqtt]\npassword = \"hunter2\"");
    let output = check_config(&toml);
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(printed.contains("publishing"), "{printed}");
    assert!(
        !printed.contains("hunter2"),
        "the password is printed: {printed}"
    );
    let again = check_config(&printed);
    assert!(again.status.success(), "{}", stderr(&again));
    let again = String::from_utf8_lossy(&again.stdout);
    assert_eq!(
        again.lines().skip(1).collect::<Vec<_>>(),
        printed.lines().skip(1).collect::<Vec<_>>(),
        "the printed configuration is not what the agent loads from it"
    );
}

fn check_config(toml: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, toml).unwrap();
    run(&["--config", path.to_str().unwrap(), "--check-config"])
}

#[test]
fn invalid_configs_name_the_key_and_exit_2() {
    let setup = Setup::new();
    let good = setup.config_toml(1883, "1 MiB");
    let cases = [
        (
            good.replace("id = \"furnace-01\"", "id = \"fur/nace\""),
            "devices[0].id",
        ),
        (
            good.replace("keep_alive = \"2s\"", "keep_alive = \"soon\""),
            "keep_alive",
        ),
        (good.replace("[mqtt]", "[mqtt]\nhots = \"x\""), "hots"),
        (
            good.replace("max_readings = 10", "max_readings = 65"),
            "batch.max_readings",
        ),
        (
            good.replace("fsync_interval = \"200ms\"", "fsync_interval = \"0s\""),
            "queue.fsync_interval",
        ),
        (
            good.replace("period = \"20ms\"", "period = \"1ms\""),
            "devices[1].channels[0].period",
        ),
        (
            good.replace("model = \"furnace\"", "model = \"volcano\""),
            "volcano",
        ),
    ];
    for (toml, key) in cases {
        let output = check_config(&toml);
        assert_eq!(output.status.code(), Some(2), "{key}: {}", stderr(&output));
        assert!(
            stderr(&output).contains(key),
            "error does not name {key}: {}",
            stderr(&output)
        );
    }
    let output = run(&["--config", "/nonexistent/agent.toml"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("does not exist"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn an_unusable_queue_directory_is_reported_clearly() {
    let setup = Setup::new();
    let config = setup.write_config(testkit::free_port(), "1 MiB");
    let blocker = setup.dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let queue = blocker.join("queue");
    let output = Command::new(BIN)
        .args([
            "--config",
            config.to_str().unwrap(),
            "--queue-dir",
            queue.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains(queue.to_str().unwrap()),
        "error does not name the queue directory: {}",
        stderr(&output)
    );
}

/// The agent as a child that dies with the test; its log is quoted if the test fails.
fn start_agent(config: &std::path::Path) -> ChildGuard {
    ChildGuard::spawn(
        "edge-agent",
        Command::new(BIN)
            .args(["--config", config.to_str().unwrap()])
            .env("RUST_LOG", "warn"),
    )
}

/// Reading identities still in the queue, per (device, boot): what must still arrive.
fn queued_seqs(setup: &Setup) -> BTreeSet<(String, BootId, u64)> {
    let (mut queue, _) = DiskQueue::open(QueueConfig {
        dir: setup.queue_dir(),
        segment_bytes: 8 * 1024,
        max_bytes: 16 * 1024 * 1024,
    })
    .expect("reopen the queue");
    let mut out = BTreeSet::new();
    for (_, record) in queue.read_unacked(0, usize::MAX).expect("read queue") {
        let (_, bytes) = decode_record(&record).expect("record has a topic");
        let frame = Frame::decode(bytes).expect("queued frames decode");
        for (seq, _, _) in frame.iter() {
            out.insert((frame.device.to_string(), frame.boot_id, seq));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_loses_nothing() {
    let setup = Setup::new();
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port(), &setup.prefix).await;
    let config = setup.write_config(broker.port(), "16 MiB");

    let mut first = start_agent(&config);
    let started = tokio::time::Instant::now();
    // Killed mid-stream: once frames of every device flow, and no sooner than 2 s after
    // the start (a schedule, so that there is a stream to interrupt).
    let flowing = subscriber
        .wait_for_every_device("frames arrived before the kill")
        .await;
    tokio::time::sleep_until(started + Duration::from_secs(2)).await;
    first.signal(libc::SIGKILL);
    first.wait();
    let first_boot = *flowing
        .boots("furnace-01")
        .iter()
        .next()
        .expect("frames arrived before the kill");
    // Everything sealed before the kill is either delivered already or still queued.
    let queued = queued_seqs(&setup);
    let covered = |ledger: &Ledger, device: &str| -> BTreeSet<u64> {
        let mut all = ledger.received(device, first_boot);
        all.extend(
            queued
                .iter()
                .filter(|(d, b, _)| d == device && *b == first_boot)
                .map(|(_, _, s)| *s),
        );
        all
    };
    // What the broker took before the kill may still be on its way to the subscriber.
    let seen_before_kill = subscriber
        .wait_for(PATIENCE, |l| {
            DEVICES.iter().all(|d| {
                let all = covered(l, d);
                all.last().is_some_and(|last| all.len() as u64 == last + 1)
            })
        })
        .await;
    let expected: Vec<BTreeSet<u64>> = DEVICES
        .iter()
        .map(|device| {
            let expected = covered(&seen_before_kill, device);
            let last = *expected.last().expect("readings of the first boot");
            assert_eq!(
                expected,
                (0..=last).collect(),
                "{device}: delivered + queued at the kill covers every sealed reading"
            );
            expected
        })
        .collect();

    // The second run resends the first boot's queue and delivers its own frames.
    let done = |l: &Ledger| {
        DEVICES.iter().zip(&expected).all(|(device, expected)| {
            let after = l
                .boots(device)
                .into_iter()
                .find(|b| *b != first_boot)
                .map(|b| l.received(device, b))
                .unwrap_or_default();
            l.received(device, first_boot) == *expected
                && after
                    .last()
                    .is_some_and(|last| after.len() as u64 == last + 1)
        })
    };
    let mut second = start_agent(&config);
    subscriber.wait_for(PATIENCE, done).await;
    let status = second.terminate(Duration::from_secs(60));
    assert!(status.success(), "clean exit after SIGTERM: {status}");
    // What the second run sent just before it stopped may still be on its way.
    let ledger = subscriber.wait_for(PATIENCE, done).await;

    for (device, expected) in DEVICES.iter().zip(expected) {
        assert_eq!(
            ledger.received(device, first_boot),
            expected,
            "{device}: first boot"
        );
        let boots = ledger.boots(device);
        assert_eq!(boots.len(), 2, "{device}: two boots, two boot ids");
        let second_boot = *boots.iter().find(|b| **b != first_boot).unwrap();
        let after = ledger.received(device, second_boot);
        let last = *after.last().expect("the second boot delivered");
        assert_eq!(
            after,
            (0..=last).collect(),
            "{device}: second boot complete"
        );
    }
    let ledger = support::Ledger::of(&subscriber.frames());
    let first_boot_dups: u64 = ledger
        .seqs
        .iter()
        .filter(|((_, b), _)| *b == first_boot)
        .flat_map(|(_, s)| s.values())
        .map(|&n| u64::from(n - 1))
        .sum();
    println!("sigkill: readings delivered twice: {first_boot_dups}");
    // Resent at most: the in-flight window (20 frames) plus the frames acknowledged in
    // the last fsync interval (200 ms, ~3 frames), 10 readings each, with slack.
    assert!(
        first_boot_dups <= 10 * (20 + 10),
        "{first_boot_dups} duplicates"
    );
}
