//! The bridge binary's front door: the shipped example configuration is valid, and bad
//! settings stop it with exit code 2 and a message naming the key.

use std::process::Command;

fn bridge() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bridge"));
    command.env_remove("BRIDGE_CONFIG");
    command
}

/// Runs `bridge … --check-config`, which must accept the configuration; its report.
fn accepted(command: &mut Command) -> String {
    let output = command.arg("--check-config").output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

const REGISTRY: (&str, &str) = (
    "BRIDGE_EMBEDDED__REGISTRY_URL",
    "postgres://bridge:hunter5@db.invalid/plant",
);

#[test]
fn the_example_configuration_is_valid_in_both_modes() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/bridge.toml");
    let client = accepted(bridge().args(["--config", example, "--mode", "client"]));
    let embedded = accepted(
        bridge()
            .args(["--config", example, "--mode", "embedded"])
            .env(REGISTRY.0, REGISTRY.1),
    );
    for stdout in [client, embedded] {
        assert!(
            stdout.contains("ok:") && stdout.contains("sensors-data"),
            "{stdout}"
        );
        assert!(!stdout.contains("hunter5"), "a secret is printed: {stdout}");
    }
}

/// An embedded broker that would let anyone publish as any device is never the result
/// of configuring nothing.
#[test]
fn the_embedded_broker_does_not_start_without_a_way_to_authenticate_devices() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/bridge.toml");
    let output = bridge()
        .args(["--config", example, "--mode", "embedded", "--check-config"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("embedded.registry_url") && stderr.contains("allow_anonymous"),
        "{stderr}"
    );
    let anonymous = accepted(
        bridge()
            .args(["--config", example, "--mode", "embedded"])
            .env("BRIDGE_EMBEDDED__ALLOW_ANONYMOUS", "true"),
    );
    assert!(anonymous.contains("allow_anonymous = true"), "{anonymous}");
}

#[test]
fn the_configuration_file_can_be_named_by_bridge_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/bridge.toml");
    let stdout = accepted(
        bridge()
            .env("BRIDGE_CONFIG", example)
            .env(REGISTRY.0, REGISTRY.1),
    );
    assert!(
        stdout.starts_with(&format!("# {example}: ok: ")),
        "{stdout}"
    );
}

/// `--check-config` prints the effective configuration, secrets hidden, in a form the
/// bridge itself takes back: what an operator sees is what runs.
#[test]
fn the_printed_configuration_loads_back_with_secrets_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let given = dir.path().join("given.toml");
    std::fs::write(
        &given,
        "mode = \"client\"\n\
         [mqtt]\npassword = \"hunter2\"\n\
         [embedded]\nregistry_url = \"postgres://bridge:hunter6@db.invalid/plant\"\n\
         [embedded.users]\nplc = \"hunter3\"\n\
         [kafka]\nbrokers = \"kafka.invalid:9092\"\n\
         [kafka.properties]\n\"sasl.password\" = \"hunter4\"\n",
    )
    .unwrap();
    let stdout = accepted(bridge().arg("--config").arg(&given));
    assert!(!stdout.contains("hunter"), "a secret is printed: {stdout}");
    let printed = dir.path().join("printed.toml");
    std::fs::write(&printed, stdout.as_bytes()).unwrap();
    let again_stdout = accepted(bridge().arg("--config").arg(&printed));
    assert!(
        again_stdout.contains("client of") && again_stdout.contains("kafka.invalid:9092"),
        "{again_stdout}"
    );
}

#[test]
fn bad_settings_exit_2_naming_the_key() {
    let cases: [(&str, &str, &str); 9] = [
        ("BRIDGE_KAFKA__LINGER", "banana", "LINGER"),
        (
            "BRIDGE_FORWARD__MAX_IN_FLIGHT",
            "0",
            "forward.max_in_flight",
        ),
        ("BRIDGE_TOPIC_PREFIX", "a/b", "topic_prefix"),
        (
            "BRIDGE_KAFKA__CONFIRM_TOPIC",
            "sensors-data",
            "kafka.confirm_topic",
        ),
        ("BRIDGE_MQTT__KEEP_ALIVE", "2s", "mqtt.keep_alive"),
        ("BRIDGE_LOG__LEVEL", "bridge=loud", "log.level"),
        ("BRIDGE_CLOCK__MAX_AHEAD", "2days", "clock.max_ahead"),
        (
            "BRIDGE_KAFKA__PROPERTIES__ACKS",
            "1",
            "kafka.properties.acks",
        ),
        (
            "BRIDGE_EMBEDDED__MAX_PAYLOAD_SIZE",
            "2 MiB",
            "embedded.max_payload_size",
        ),
    ];
    for (variable, value, named) in cases {
        let output = bridge()
            .arg("--check-config")
            .env(REGISTRY.0, REGISTRY.1)
            .env(variable, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{variable}={value}: {stderr}"
        );
        assert!(stderr.contains(named), "{variable}={value}: {stderr}");
    }
    let output = bridge()
        .args(["--config", "/nonexistent.toml", "--check-config"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("nonexistent.toml"));
}
