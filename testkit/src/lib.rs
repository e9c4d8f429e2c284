//! Where integration tests find the real services of the local stack, and how they keep
//! out of each other's way.
//!
//! `scripts/stack.sh up` starts the services and writes their addresses to `.stack/env`;
//! `scripts/test.sh` exports that file before running `cargo test`. This crate only reads
//! those variables, so the stack script stays the one source of truth for ports and
//! credentials. A missing variable fails the test with a message saying how to fix it,
//! rather than silently pointing at some default that may not be the stack.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Reads a variable the stack exports, or panics with instructions. Panicking is right
/// here: this is test set-up, and the message is the useful part.
pub fn stack_var(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{name} is not set. Start the stack and export its addresses first: \
             `scripts/stack.sh up && set -a && . .stack/env && set +a` \
             (scripts/test.sh does both)"
        ),
    }
}

/// `postgres://…` URL of the stack's database; the role may create databases, which
/// `#[sqlx::test]` needs for its throw-away test databases.
pub fn database_url() -> String {
    stack_var("DATABASE_URL")
}

/// `redis://…` URL of the stack's Redis.
pub fn redis_url() -> String {
    stack_var("REDIS_URL")
}

/// Host and port of the stack's Mosquitto (not 1883: that port belongs to the bridge's
/// embedded broker).
pub fn mqtt_host_port() -> (String, u16) {
    let host = stack_var("MQTT_HOST");
    let port = stack_var("MQTT_PORT");
    let port = port
        .parse()
        .unwrap_or_else(|_| panic!("MQTT_PORT={port:?} is not a port number"));
    (host, port)
}

/// `host:port` list of the stack's Kafka-compatible broker.
pub fn kafka_brokers() -> String {
    stack_var("KAFKA_BROKERS")
}

/// A name no other test, and no earlier run of this test, uses: for topics, key
/// prefixes, consumer groups and client ids. `{purpose}-{16 hex digits}`, at most 24
/// characters, so it is also a valid device id, MQTT topic segment and Kafka topic.
pub fn unique_name(purpose: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    assert!(
        purpose.len() <= 7 && purpose.bytes().all(|b| b.is_ascii_lowercase()),
        "unique_name purpose {purpose:?}: up to 7 lowercase letters"
    );
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut hasher = DefaultHasher::new();
    (
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed),
    )
        .hash(&mut hasher);
    format!("{purpose}-{:016x}", hasher.finish())
}
