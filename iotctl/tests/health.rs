//! `iotctl health` against the stack: every check named, what is down named with a fix,
//! and a probe that fails fast without a broker.

mod support;

use std::time::{Duration, Instant};

use sqlx::PgPool;

use support::{json, run, stdout};

const CHECKS: [&str; 13] = [
    "postgresql",
    "schema",
    "seed-devices",
    "redis",
    "redis-memory",
    "kafka",
    "kafka-topics",
    "mqtt",
    "mqtt-access",
    "links",
    "bridge",
    "ingester",
    "console",
];

#[sqlx::test(migrations = "../migrations")]
async fn health_lists_every_check_and_passes_what_the_stack_provides(pool: PgPool) {
    let output = run(&pool, &["--json", "health", "--no-probe"]);
    let checks = json(&output);
    let checks = checks.as_array().expect("an array of checks");
    let names: Vec<&str> = checks
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(names, CHECKS);
    for check in checks {
        let name = check["check"].as_str().unwrap();
        let ok = check["ok"].as_bool().unwrap();
        assert!(check["detail"].as_str().is_some_and(|d| !d.is_empty()));
        if matches!(name, "bridge" | "ingester" | "console") {
            // Not running during the tests.
            assert!(!ok, "{check}");
            assert!(check["fix"].as_str().is_some_and(|f| f.contains("start")));
        } else if name == "mqtt-access" {
            // The stack's Mosquitto takes anonymous clients: passed, with a warning.
            assert!(ok && check["warn"] == true, "{check}");
            assert!(check["fix"]
                .as_str()
                .is_some_and(|f| f.contains("registry")));
        } else {
            assert!(ok && check["warn"] == false, "{check}");
            assert!(check["fix"].is_null());
        }
    }
    assert_eq!(
        output.status.code(),
        Some(1),
        "a failed check fails the command"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_wrong_redis_url_fails_the_redis_checks_with_a_fix(pool: PgPool) {
    let dead = format!("redis://127.0.0.1:{}", testkit::free_port());
    let output = run(&pool, &["--redis-url", &dead, "health", "--no-probe"]);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("FAIL redis: "))
        .unwrap_or_else(|| panic!("no FAIL redis line:\n{text}"));
    assert!(
        lines[at].contains(&dead),
        "names the address: {}",
        lines[at]
    );
    assert!(lines[at + 1].trim_start().starts_with("fix: "), "{text}");
    assert!(lines
        .iter()
        .any(|l| l.starts_with("FAIL redis-memory: not checked")));
    assert!(
        lines.iter().any(|l| l.starts_with("ok postgresql: ")),
        "{text}"
    );
    assert!(lines
        .iter()
        .any(|l| l.starts_with("ok schema: at the latest migration")));
}

#[sqlx::test(migrations = "../migrations")]
async fn without_a_broker_the_probe_fails_naming_the_address_and_leaves_nothing(pool: PgPool) {
    let mqtt = format!("127.0.0.1:{}", testkit::free_port());
    let started = Instant::now();
    let output = run(&pool, &["--mqtt", &mqtt, "health"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(20), "fails fast");
    let text = stdout(&output);
    let probe = text
        .lines()
        .find(|l| l.starts_with("FAIL probe: "))
        .unwrap_or_else(|| panic!("no FAIL probe line:\n{text}"));
    assert!(probe.contains(&mqtt), "{probe}");
    let devices: i64 =
        sqlx::query_scalar("SELECT count(*) FROM devices WHERE device_id = 'iotctl-probe'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        devices, 0,
        "the probe registers nothing before it can publish"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn health_asks_the_console_whether_it_is_ready(pool: PgPool) {
    let mut config = console::config::ConsoleConfig::default();
    config.database.url = support::database_url(&pool);
    config.redis.url = testkit::redis_url();
    config.kafka.brokers = testkit::kafka_brokers();
    config.http.listen = ([127, 0, 0, 1], 0).into();
    let console = console::Console::start(config).await.unwrap();
    let url = format!("http://{}", console.addr);
    let check = |output: &std::process::Output| {
        json(output)
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == "console")
            .cloned()
            .unwrap()
    };
    // Ready once its live view has looked at PostgreSQL and Redis.
    let deadline = Instant::now() + Duration::from_secs(15);
    let console_check = loop {
        let mut command = support::iotctl(
            &pool,
            &["--json", "--console-url", &url, "health", "--no-probe"],
        );
        let output = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        let found = check(&output);
        if found["ok"] == true || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(console_check["ok"], true, "{console_check}");
    let detail = console_check["detail"].as_str().unwrap();
    assert!(
        detail.contains("postgres connected") && detail.contains("redis connected"),
        "{detail}"
    );
    console.stop().await;
}
