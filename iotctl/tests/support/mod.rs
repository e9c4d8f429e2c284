//! What every `iotctl` integration test needs: the binary against the stack's real
//! services. Each test has its own database (`#[sqlx::test]`), and its own Kafka topic
//! and Redis key prefix (testkit names), so the tests run in parallel and never touch
//! operator data.
// Each test file compiles this module and uses only some of it.
#![allow(dead_code)]

use std::process::{Command, Output};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use serde_json::Value;
use sqlx::PgPool;

/// The URL of the test's own database: the stack's URL with its database name.
pub fn database_url(pool: &PgPool) -> String {
    let name = pool
        .connect_options()
        .get_database()
        .expect("sqlx::test databases have a name")
        .to_owned();
    let base = testkit::database_url();
    let slash = base.rfind('/').expect("DATABASE_URL has a database path");
    format!("{}/{name}", &base[..slash])
}

/// `iotctl` with the stack's addresses and the test's database, except where `args`
/// give an address of their own (clap refuses a flag given twice).
pub fn iotctl(pool: &PgPool, args: &[&str]) -> Command {
    let (mqtt_host, mqtt_port) = testkit::mqtt_host_port();
    let defaults = [
        ("--database-url", database_url(pool)),
        ("--redis-url", testkit::redis_url()),
        ("--kafka-brokers", testkit::kafka_brokers()),
        ("--mqtt", format!("{mqtt_host}:{mqtt_port}")),
        // Nothing listens there: no bridge, ingester or console runs during the tests.
        (
            "--bridge-metrics",
            format!("http://127.0.0.1:{}", testkit::free_port()),
        ),
        (
            "--ingester-metrics",
            format!("http://127.0.0.1:{}", testkit::free_port()),
        ),
        (
            "--console-url",
            format!("http://127.0.0.1:{}", testkit::free_port()),
        ),
    ];
    let mut command = Command::new(env!("CARGO_BIN_EXE_iotctl"));
    command.env_remove("IOTCTL_MQTT");
    for (flag, value) in defaults {
        if !args.contains(&flag) {
            command.args([flag, value.as_str()]);
        }
    }
    command.args(args);
    command
}

pub fn run(pool: &PgPool, args: &[&str]) -> Output {
    iotctl(pool, args).output().expect("run iotctl")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            stdout(output),
            stderr(output)
        )
    })
}

pub fn kafka() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", testkit::kafka_brokers());
    config
}

pub async fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = kafka().create().unwrap();
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for result in admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }
}
