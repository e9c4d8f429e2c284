//! The ingester binary's front door: the shipped example configuration is valid, every
//! flag still overrides its key, and bad settings stop it with exit code 2 and a message
//! naming the key, before anything connects.

use std::path::PathBuf;
use std::process::{Command, Output};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/cloud-ingester.toml");

/// The binary with an environment of our choosing: none of the caller's `INGESTER_*` or
/// conventional variables, and a database URL unless a case removes it.
fn ingester() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cloud-ingester"));
    for (name, _) in std::env::vars() {
        if name.starts_with("INGESTER_") || name == "REDIS_URL" || name == "KAFKA_BROKERS" {
            command.env_remove(name);
        }
    }
    command.env(
        "DATABASE_URL",
        "postgres://telemetry:secret@db.invalid/telemetry",
    );
    command
}

fn run(command: &mut Command) -> (Output, String, String) {
    let output = command.output().expect("run cloud-ingester");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

fn file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("ingester.toml");
    std::fs::write(&path, text).expect("write the test configuration");
    path
}

#[test]
fn the_example_configuration_is_valid() {
    let (output, stdout, stderr) = run(ingester().args(["--config", EXAMPLE, "--check-config"]));
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.starts_with(&format!("# {EXAMPLE}: ok: ")) && stdout.contains("sensors-data"),
        "{stdout}"
    );
    assert!(stdout.contains("telemetry:***@db.invalid"), "{stdout}");
    assert!(
        !stdout.contains("secret"),
        "the password is printed: {stdout}"
    );
}

#[test]
fn every_flag_overrides_its_key() {
    let (output, stdout, stderr) = run(ingester().args([
        "--config",
        EXAMPLE,
        "--check-config",
        "--database-url",
        "postgres://flag@db.invalid/x",
        "--redis-url",
        "redis://cache.invalid:6379",
        "--redis-prefix",
        "flagprefix",
        "--kafka-brokers",
        "kafka.invalid:9092",
        "--group",
        "flaggroup",
        "--id",
        "flag-id",
        "--topic",
        "flagtopic",
        "--dlq-topic",
        "flagdlq",
        "--confirm-topic",
        "flagconfirm",
        "--batch-rows",
        "123",
        "--batch-age",
        "7ms",
        "--retention-days",
        "9",
        "--migrate",
        "--http-listen",
        "127.0.0.1:9999",
    ]));
    assert!(output.status.success(), "{stderr}");
    for line in [
        "url = \"postgres://flag@db.invalid/x\"",
        "url = \"redis://cache.invalid:6379\"",
        "prefix = \"flagprefix\"",
        "brokers = \"kafka.invalid:9092\"",
        "group = \"flaggroup\"",
        "id = \"flag-id\"",
        "topic = \"flagtopic\"",
        "dlq_topic = \"flagdlq\"",
        "confirm_topic = \"flagconfirm\"",
        "rows = 123",
        "age = \"7ms\"",
        "days = 9",
        "migrate = true",
        "listen = \"127.0.0.1:9999\"",
    ] {
        assert!(stdout.contains(line), "{line} missing from:\n{stdout}");
    }
}

#[test]
fn bad_settings_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        ("[kafka]\nbroker = \"x\"\n", "kafka.broker"),
        ("[batch]\nrows = 0\n", "batch.rows"),
        ("[batch]\nage = \"soon\"\n", "batch.age"),
        (
            "[kafka]\nmetrics_interval = \"500ms\"\n",
            "kafka.metrics_interval",
        ),
        (
            "[kafka.properties]\n\"enable.auto.commit\" = false\n",
            "kafka.properties.enable.auto.commit",
        ),
        ("[retention]\ndays = 0\n", "retention.days"),
    ];
    for (text, named) in cases {
        let path = file(&dir, text);
        let (output, _, stderr) = run(ingester().arg("--config").arg(&path).arg("--check-config"));
        assert_eq!(output.status.code(), Some(2), "{text}: {stderr}");
        assert!(stderr.contains(named), "{text}: {stderr}");
    }

    let (output, _, stderr) = run(ingester().env_remove("DATABASE_URL").arg("--check-config"));
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("database.url") && stderr.contains("DATABASE_URL"),
        "{stderr}"
    );

    let (output, _, stderr) = run(ingester()
        .env("INGESTER_BATCH__AGE", "banana")
        .arg("--check-config"));
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("BATCH.AGE"), "{stderr}");

    let (output, _, stderr) = run(ingester().args(["--batch-rows", "0", "--check-config"]));
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("batch.rows"), "{stderr}");

    let (output, _, stderr) =
        run(ingester().args(["--config", "/nonexistent.toml", "--check-config"]));
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("nonexistent.toml"), "{stderr}");
}

#[test]
fn ingester_variables_win_over_the_conventional_ones() {
    let (output, stdout, stderr) = run(ingester()
        .env("KAFKA_BROKERS", "conventional.invalid:9092")
        .env("INGESTER_KAFKA__BROKERS", "prefixed.invalid:9092")
        .env("INGESTER_DATABASE__URL", "postgres://prefixed@db.invalid/x")
        .arg("--check-config"));
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.contains("brokers = \"prefixed.invalid:9092\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("postgres://prefixed@db.invalid/x"),
        "{stdout}"
    );
}
