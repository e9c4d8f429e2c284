//! `iotctl health`: the seed system's health-check scripts, for real. Every service is
//! asked directly (nothing is inferred from another service's view of it), each check
//! says what it found and, when it fails, how to fix it; then a probe times readings
//! through the whole pipeline. Independent checks run at once, so a dead service costs
//! one timeout, not one per check.

mod probe;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::metadata::Metadata;
use rumqttc::MqttOptions;
use serde::Serialize;
use sqlx::PgPool;

use crate::global::{Global, Outcome};
use crate::http::{self, HttpUrl};
use crate::output::{self, emit, emit_json};
use crate::services::{self, redact, CONNECT_TIMEOUT};

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Skip the end-to-end performance probe.
    #[arg(long)]
    pub no_probe: bool,

    /// Readings the probe sends through the pipeline (in frames of 50).
    #[arg(long, default_value_t = 5000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub probe_readings: u32,

    /// How long the probe waits for its readings to reach PostgreSQL.
    #[arg(long, default_value_t = 30, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub probe_timeout: u64,

    /// Redis `maxmemory` the deployment is configured with.
    #[arg(long, default_value = "512mb", value_name = "SIZE", value_parser = parse_memory)]
    pub redis_maxmemory: u64,

    /// Redis `maxmemory-policy` the deployment is configured with.
    #[arg(long, default_value = "allkeys-lru", value_name = "POLICY")]
    pub redis_policy: String,
}

/// One check's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub ok: bool,
    pub detail: String,
    /// What to do about a failure.
    pub fix: Option<String>,
    /// The probe's figures, for machines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurements: Option<probe::Measurements>,
}

impl Check {
    fn ok(check: &'static str, detail: impl Into<String>) -> Self {
        Self {
            check,
            ok: true,
            detail: detail.into(),
            fix: None,
            measurements: None,
        }
    }

    fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            check,
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
            measurements: None,
        }
    }

    /// A check that could not run because one it depends on failed.
    fn blocked(check: &'static str, by: &str) -> Self {
        Self::fail(
            check,
            format!("not checked: {by} failed"),
            format!("fix the {by} check first"),
        )
    }
}

pub async fn run(global: &Global, args: &HealthArgs) -> Result<Outcome> {
    let ((mut checks, pool), redis, kafka, mqtt, bridge, ingester) = tokio::join!(
        postgres_checks(global),
        redis_checks(global, args),
        kafka_checks(global),
        mqtt_check(global),
        readiness("bridge", &global.bridge_metrics, BRIDGE_FIX),
        readiness("ingester", &global.ingester_metrics, INGESTER_FIX),
    );
    checks.extend(redis);
    checks.extend(kafka);
    checks.extend([mqtt, bridge, ingester]);
    if !args.no_probe {
        checks.push(match &pool {
            Some(pool) => probe::run(global, args, pool).await,
            None => Check::blocked("probe", "postgresql"),
        });
    }
    if let Some(pool) = pool {
        pool.close().await;
    }

    if global.json {
        emit_json(&checks);
    } else {
        for check in &checks {
            let verdict = if check.ok { "ok" } else { "FAIL" };
            emit(&format!("{verdict} {}: {}", check.check, check.detail));
            if let Some(fix) = &check.fix {
                emit(&format!("     fix: {fix}"));
            }
        }
    }
    Ok(if checks.iter().all(|c| c.ok) {
        Outcome::Done
    } else {
        Outcome::Failed
    })
}

const BRIDGE_FIX: &str = "start the bridge (`cargo run --release -p bridge`; metrics on :9101) \
                          or point --bridge-metrics at it";
const INGESTER_FIX: &str = "start the ingester (`cargo run --release -p cloud-ingester -- \
                            --migrate`; metrics on :9102) or point --ingester-metrics at it";

/// PostgreSQL, then (on the same pool) the schema and the seed devices. The pool is
/// handed on to the probe.
async fn postgres_checks(global: &Global) -> (Vec<Check>, Option<PgPool>) {
    let pool = match services::postgres(global).await {
        Ok(pool) => pool,
        Err(e) => {
            let fix = if global.database_url.is_none() {
                "pass --database-url or set DATABASE_URL"
            } else {
                "start PostgreSQL (local stack: `scripts/stack.sh up`) or correct \
                 --database-url / DATABASE_URL"
            };
            return (
                vec![
                    Check::fail("postgresql", output::error_text(&e), fix),
                    Check::blocked("schema", "postgresql"),
                    Check::blocked("seed-devices", "postgresql"),
                ],
                None,
            );
        }
    };
    let options = pool.connect_options();
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    );
    let version: Result<String, _> = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&pool)
        .await;
    let reachable = match version {
        Ok(version) => Check::ok("postgresql", format!("PostgreSQL {version} at {target}")),
        Err(e) => Check::fail(
            "postgresql",
            format!("connected to {target}, but a query failed: {e}"),
            "check the role's rights on the database",
        ),
    };
    let checks = vec![
        reachable,
        schema_check(&pool).await,
        seed_check(&pool).await,
    ];
    (checks, Some(pool))
}

/// The migrations this build embeds: the schema the services of the same revision
/// expect.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

const MIGRATE_FIX: &str = "apply the migrations: `cargo run --release -p cloud-ingester -- \
                           --migrate` (or `sqlx migrate run` in the repository)";

async fn schema_check(pool: &PgPool) -> Check {
    let expected: Vec<&sqlx::migrate::Migration> = MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .collect();
    let Some(latest) = expected.iter().map(|m| m.version).max() else {
        return Check::ok("schema", "this build embeds no migrations");
    };
    let table: Result<Option<String>, _> =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
            .fetch_one(pool)
            .await;
    match table {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Check::fail(
                "schema",
                format!("no migration has been applied (latest is {latest})"),
                MIGRATE_FIX,
            )
        }
        Err(e) => {
            return Check::fail(
                "schema",
                format!("cannot read the catalog: {e}"),
                MIGRATE_FIX,
            )
        }
    }
    let applied: Vec<(i64, bool, Vec<u8>)> =
        match sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations")
            .fetch_all(pool)
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                return Check::fail(
                    "schema",
                    format!("cannot read _sqlx_migrations: {e}"),
                    MIGRATE_FIX,
                )
            }
        };
    schema_verdict(&expected, &applied)
}

/// Compares the applied migrations (version, success, checksum) with the embedded ones.
fn schema_verdict(
    expected: &[&sqlx::migrate::Migration],
    applied: &[(i64, bool, Vec<u8>)],
) -> Check {
    let latest = expected.iter().map(|m| m.version).max().unwrap_or_default();
    let applied_by_version: HashMap<i64, (bool, &[u8])> = applied
        .iter()
        .map(|(v, ok, sum)| (*v, (*ok, sum.as_slice())))
        .collect();
    let mut failed: Vec<i64> = applied.iter().filter(|r| !r.1).map(|r| r.0).collect();
    failed.sort_unstable();
    if let Some(version) = failed.first() {
        return Check::fail(
            "schema",
            format!("migration {version} failed part-way; the schema is in an unknown state"),
            format!(
                "repair the schema by hand, delete version {version} from _sqlx_migrations, \
                 then migrate again"
            ),
        );
    }
    let mut unknown: Vec<i64> = applied
        .iter()
        .map(|r| r.0)
        .filter(|v| !expected.iter().any(|m| m.version == *v))
        .collect();
    unknown.sort_unstable();
    if !unknown.is_empty() {
        return Check::fail(
            "schema",
            format!(
                "the database has migrations this iotctl does not know ({}): the schema is \
                 newer than this build",
                join(&unknown)
            ),
            "use an iotctl built from the same revision as the services",
        );
    }
    let changed: Vec<i64> = expected
        .iter()
        .filter(|m| {
            applied_by_version
                .get(&m.version)
                .is_some_and(|(_, sum)| *sum != m.checksum.as_ref())
        })
        .map(|m| m.version)
        .collect();
    if !changed.is_empty() {
        return Check::fail(
            "schema",
            format!(
                "migration {} differs from the one applied to this database",
                join(&changed)
            ),
            "an applied migration file was edited: restore it from version control \
             (schema changes go in a new migration)",
        );
    }
    let pending: Vec<i64> = expected
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied_by_version.contains_key(v))
        .collect();
    if !pending.is_empty() {
        let current = applied.iter().map(|r| r.0).max();
        return Check::fail(
            "schema",
            format!(
                "at {}, latest is {latest}: {} pending ({})",
                current.map_or_else(|| "no version".to_owned(), |v| format!("version {v}")),
                pending.len(),
                join(&pending)
            ),
            MIGRATE_FIX,
        );
    }
    let description = expected
        .iter()
        .find(|m| m.version == latest)
        .map(|m| m.description.to_string())
        .unwrap_or_default();
    Check::ok(
        "schema",
        format!(
            "at the latest migration, {latest} ({description}); {} applied",
            expected.len()
        ),
    )
}

fn join(versions: &[i64]) -> String {
    versions
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The five machines of the seed system and their channels (migration
/// `…02_seed_devices.sql`), which the simulator and the dashboards rely on.
const SEED: [(&str, &[(i16, &str)]); 5] = [
    ("furnace-01", &[(0, "temperature")]),
    (
        "cnc-spindle-01",
        &[(0, "vibration_rms"), (1, "bearing_temp")],
    ),
    ("press-01", &[(0, "pressure")]),
    ("paint-booth-01", &[(0, "humidity"), (1, "temperature")]),
    ("compressor-01", &[(0, "active_power"), (1, "line_current")]),
];

/// (device, channel, channel name) of a seed device; no channel when it has none.
type SeedRow = (String, Option<i16>, Option<String>);

async fn seed_check(pool: &PgPool) -> Check {
    let ids: Vec<&str> = SEED.iter().map(|(id, _)| *id).collect();
    let rows: Result<Vec<SeedRow>, _> = sqlx::query_as(
        "SELECT d.device_id, c.channel_id, c.name \
           FROM devices d LEFT JOIN device_channels c USING (device_id) \
          WHERE d.device_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            return Check::fail(
                "seed-devices",
                format!("cannot read devices: {e}"),
                MIGRATE_FIX,
            )
        }
    };
    seed_verdict(&rows)
}

fn seed_verdict(rows: &[SeedRow]) -> Check {
    let mut problems = Vec::new();
    for (device, channels) in SEED {
        let found: Vec<(i16, &str)> = rows
            .iter()
            .filter(|(d, _, _)| d == device)
            .filter_map(|(_, c, n)| Some((((*c)?), n.as_deref()?)))
            .collect();
        if !rows.iter().any(|(d, _, _)| d == device) {
            problems.push(format!("device {device} is missing"));
            continue;
        }
        for (channel, name) in channels {
            match found.iter().find(|(c, _)| c == channel) {
                None => problems.push(format!("{device} has no channel {channel} ({name})")),
                Some((_, actual)) if actual != name => problems.push(format!(
                    "{device} channel {channel} is named {actual}, expected {name}"
                )),
                Some(_) => {}
            }
        }
    }
    if problems.is_empty() {
        let channels: usize = SEED.iter().map(|(_, c)| c.len()).sum();
        Check::ok(
            "seed-devices",
            format!(
                "all {} seed devices and their {channels} channels present",
                SEED.len()
            ),
        )
    } else {
        Check::fail(
            "seed-devices",
            problems.join("; "),
            "the seed migration (20261130000002_seed_devices.sql) creates them: restore the \
             rows from it, or migrate a fresh database",
        )
    }
}

async fn redis_checks(global: &Global, args: &HealthArgs) -> Vec<Check> {
    let mut con = match services::redis(global).await {
        Ok(con) => con,
        Err(e) => {
            let fix = if global.redis_url.is_none() {
                "pass --redis-url or set REDIS_URL"
            } else {
                "start Redis (local stack: `scripts/stack.sh up`) or correct --redis-url / \
                 REDIS_URL"
            };
            return vec![
                Check::fail("redis", output::error_text(&e), fix),
                Check::blocked("redis-memory", "redis"),
            ];
        }
    };
    let url = redact(global.redis_url.as_deref().unwrap_or_default());
    let info: Result<String, _> = redis::cmd("INFO").arg("server").query_async(&mut con).await;
    let reachable = match info {
        Ok(info) => {
            let version = info
                .lines()
                .find_map(|l| l.strip_prefix("redis_version:"))
                .unwrap_or("(version unknown)");
            Check::ok("redis", format!("Redis {} at {url}", version.trim()))
        }
        Err(e) => Check::fail(
            "redis",
            format!("connected to {url}, but INFO failed: {e}"),
            "check the Redis user's rights (iotctl needs INFO, CONFIG GET, GET, HGETALL)",
        ),
    };
    let config: Result<HashMap<String, String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory*")
        .query_async(&mut con)
        .await;
    let memory = match config {
        Ok(config) => memory_verdict(&config, args.redis_maxmemory, &args.redis_policy),
        Err(e) => Check::fail(
            "redis-memory",
            format!("CONFIG GET failed: {e}"),
            "allow CONFIG GET for this user, or check maxmemory by hand",
        ),
    };
    vec![reachable, memory]
}

fn memory_verdict(config: &HashMap<String, String>, maxmemory: u64, policy: &str) -> Check {
    let actual_memory = config.get("maxmemory").and_then(|v| v.parse::<u64>().ok());
    let actual_policy = config.get("maxmemory-policy").map(String::as_str);
    let mut problems = Vec::new();
    if actual_memory != Some(maxmemory) {
        problems.push(format!(
            "maxmemory is {}, expected {}",
            actual_memory.map_or_else(|| "unknown".to_owned(), memory_text),
            memory_text(maxmemory)
        ));
    }
    if actual_policy != Some(policy) {
        problems.push(format!(
            "maxmemory-policy is {}, expected {policy}",
            actual_policy.unwrap_or("unknown")
        ));
    }
    if problems.is_empty() {
        Check::ok(
            "redis-memory",
            format!(
                "maxmemory {}, maxmemory-policy {policy}",
                memory_text(maxmemory)
            ),
        )
    } else {
        Check::fail(
            "redis-memory",
            problems.join("; "),
            format!(
                "redis-cli -u \"$REDIS_URL\" CONFIG SET maxmemory {} and CONFIG SET \
                 maxmemory-policy {policy}, and the same in redis.conf so a restart keeps them",
                memory_text(maxmemory)
            ),
        )
    }
}

/// Parses a Redis memory size: bytes, or with a unit as redis.conf reads them (`k` =
/// 1000, `kb` = 1024, and so on for m/mb and g/gb, any case).
pub fn parse_memory(value: &str) -> Result<u64, String> {
    let lower = value.trim().to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &lower[digits.len()..];
    let factor: u64 = match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => {
            return Err(format!(
                "{value:?}: unknown unit {unit:?} (use b, kb, mb, gb)"
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("{value:?} is not a memory size such as 512mb"))
}

/// A byte count as Redis configuration writes it: `512mb`, or `0 (no limit)`.
fn memory_text(bytes: u64) -> String {
    const KB: u64 = 1024;
    match bytes {
        0 => "0 (no limit)".to_owned(),
        b if b % (KB * KB * KB) == 0 => format!("{}gb", b / (KB * KB * KB)),
        b if b % (KB * KB) == 0 => format!("{}mb", b / (KB * KB)),
        b if b % KB == 0 => format!("{}kb", b / KB),
        b => format!("{b} bytes"),
    }
}

async fn kafka_checks(global: &Global) -> Vec<Check> {
    let brokers = global.kafka_brokers.clone();
    let metadata = match fetch_metadata(global).await {
        Ok(metadata) => metadata,
        Err(e) => {
            return vec![
                Check::fail(
                    "kafka",
                    format!(
                        "cannot reach Kafka at {brokers}: {}",
                        output::error_text(&e)
                    ),
                    "start Kafka (local stack: `scripts/stack.sh up`) or correct \
                     --kafka-brokers / KAFKA_BROKERS",
                ),
                Check::blocked("kafka-topics", "kafka"),
            ]
        }
    };
    let reachable = Check::ok(
        "kafka",
        format!(
            "{} broker(s) at {brokers}, {} topics",
            metadata.brokers().len(),
            metadata.topics().len()
        ),
    );
    let found: Vec<(String, Option<usize>)> = metadata
        .topics()
        .iter()
        .map(|t| {
            let partitions = t.error().is_none().then(|| t.partitions().len());
            (t.name().to_owned(), partitions)
        })
        .collect();
    vec![reachable, topics_verdict(&found, &brokers)]
}

async fn fetch_metadata(global: &Global) -> Result<Metadata> {
    let consumer: BaseConsumer = services::kafka(global)
        .create()
        .context("invalid Kafka settings")?;
    // fetch_metadata blocks the calling thread; keep it off the runtime's workers.
    tokio::task::spawn_blocking(move || consumer.fetch_metadata(None, CONNECT_TIMEOUT))
        .await
        .context("the metadata request did not finish")?
        .map_err(Into::into)
}

/// Each topic of the pipeline with its partition count, against what the broker has
/// (`None`: the broker reports an error for the topic).
fn topics_verdict(found: &[(String, Option<usize>)], brokers: &str) -> Check {
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    let mut summary = Vec::new();
    for topic in protocol::kafka::ALL_TOPICS {
        let expected = usize::try_from(topic.partitions).unwrap_or_default();
        match found.iter().find(|(name, _)| name == topic.name) {
            None | Some((_, Some(0))) => {
                problems.push(format!("{} is missing", topic.name));
                fixes.push(format!(
                    "kafka-topics.sh --bootstrap-server {brokers} --create --topic {} \
                     --partitions {expected}",
                    topic.name
                ));
            }
            Some((_, None)) => {
                problems.push(format!(
                    "{} is unavailable (the broker reports an error)",
                    topic.name
                ));
                fixes.push(format!("check the broker's log about {}", topic.name));
            }
            Some((_, Some(n))) if *n != expected => {
                problems.push(format!(
                    "{} has {n} partitions, expected {expected}",
                    topic.name
                ));
                fixes.push(format!(
                    "recreate {} with {expected} partitions (the partition of a device \
                     depends on the count)",
                    topic.name
                ));
            }
            Some(_) => summary.push(format!("{} {expected}", topic.name)),
        }
    }
    if problems.is_empty() {
        Check::ok(
            "kafka-topics",
            format!("partitions: {}", summary.join(", ")),
        )
    } else {
        Check::fail(
            "kafka-topics",
            problems.join("; "),
            format!(
                "{} (the local stack's `scripts/stack.sh up` creates them all)",
                fixes.join("; ")
            ),
        )
    }
}

async fn mqtt_check(global: &Global) -> Check {
    let options = MqttOptions::new(
        services::mqtt_client_id("health"),
        global.mqtt.host.clone(),
        global.mqtt.port,
    );
    match services::mqtt_connect(options).await {
        Ok((client, mut eventloop)) => {
            // A clean goodbye, so the broker does not log a lost client.
            if client.disconnect().await.is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
            }
            Check::ok(
                "mqtt",
                format!("the broker at {} accepts connections", global.mqtt),
            )
        }
        Err(e) => Check::fail(
            "mqtt",
            output::error_text(&e),
            "start the bridge (its embedded broker listens on 1883: `cargo run --release -p \
             bridge`) or point --mqtt / IOTCTL_MQTT at the broker the devices use",
        ),
    }
}

/// A service's `/readyz`: 200 when every dependency it names is connected.
async fn readiness(check: &'static str, url: &HttpUrl, start_fix: &str) -> Check {
    match http::get(url, "/readyz", CONNECT_TIMEOUT).await {
        Ok(response) => {
            let report = response
                .body
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(", ");
            if response.status == 200 {
                Check::ok(check, format!("ready at {url}: {report}"))
            } else {
                Check::fail(
                    check,
                    format!("not ready (HTTP {}) at {url}: {report}", response.status),
                    not_ready_fix(check, &response.body),
                )
            }
        }
        Err(e) => Check::fail(
            check,
            format!(
                "nothing answers at {url}/readyz ({})",
                output::error_text(&e)
            ),
            start_fix,
        ),
    }
}

/// What to do about a service that answers but is not ready: a stall it reports
/// (`not ready: …`) is named as such, otherwise a dependency is down.
fn not_ready_fix(check: &str, body: &str) -> String {
    let stalls: Vec<&str> = body
        .lines()
        .filter_map(|line| line.trim().strip_prefix("not ready: "))
        .collect();
    if stalls.is_empty() {
        format!(
            "the {check} runs but a dependency is down: bring back what the report names \
             \"down\" and see the {check}'s log"
        )
    } else {
        format!(
            "the {check} is not making progress ({}): see its `stalled` system events and its \
             log; it re-reads its work by itself every 30 s, restart it if that does not help",
            stalls.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_service_is_told_apart_from_a_missing_dependency() {
        let stalled = not_ready_fix(
            "ingester",
            "kafka connected\npostgresql connected\nnot ready: 500 records wait\n",
        );
        assert!(
            stalled.starts_with("the ingester is not making progress (500 records wait)"),
            "{stalled}"
        );
        let down = not_ready_fix("ingester", "kafka down\npostgresql connected\n");
        assert!(down.contains("a dependency is down"), "{down}");
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512mb"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_memory("512MB"), Ok(536_870_912));
        assert_eq!(parse_memory("1g"), Ok(1_000_000_000));
        assert_eq!(parse_memory("100"), Ok(100));
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("5tb").is_err());
        assert!(parse_memory("99999999999999gb").is_err());
        assert_eq!(memory_text(536_870_912), "512mb");
        assert_eq!(memory_text(2 * 1024 * 1024 * 1024), "2gb");
        assert_eq!(memory_text(0), "0 (no limit)");
        assert_eq!(memory_text(1000), "1000 bytes");
    }

    #[test]
    fn redis_memory_settings() {
        let config = |memory: &str, policy: &str| {
            HashMap::from([
                ("maxmemory".to_owned(), memory.to_owned()),
                ("maxmemory-policy".to_owned(), policy.to_owned()),
            ])
        };
        let expected = 512 * 1024 * 1024;
        assert!(memory_verdict(&config("536870912", "allkeys-lru"), expected, "allkeys-lru").ok);
        let wrong = memory_verdict(&config("0", "noeviction"), expected, "allkeys-lru");
        assert!(!wrong.ok);
        assert!(wrong
            .detail
            .contains("maxmemory is 0 (no limit), expected 512mb"));
        assert!(wrong.detail.contains("maxmemory-policy is noeviction"));
        assert!(wrong.fix.unwrap().contains("CONFIG SET maxmemory 512mb"));
    }

    #[test]
    fn kafka_topic_partitions() {
        let all: Vec<(String, Option<usize>)> = protocol::kafka::ALL_TOPICS
            .iter()
            .map(|t| (t.name.to_owned(), Some(t.partitions as usize)))
            .collect();
        assert!(topics_verdict(&all, "b:9092").ok);
        let mut wrong = all.clone();
        wrong.retain(|(n, _)| n != "alerts");
        wrong[0].1 = Some(1);
        let verdict = topics_verdict(&wrong, "b:9092");
        assert!(!verdict.ok);
        assert!(verdict.detail.contains("alerts is missing"));
        assert!(verdict
            .detail
            .contains("sensors-data has 1 partitions, expected 3"));
        assert!(verdict
            .fix
            .unwrap()
            .contains("--topic alerts --partitions 2"));
    }

    #[test]
    fn seed_devices() {
        let mut rows: Vec<SeedRow> = SEED
            .iter()
            .flat_map(|(d, channels)| {
                channels
                    .iter()
                    .map(move |(c, n)| (d.to_string(), Some(*c), Some(n.to_string())))
            })
            .collect();
        assert!(seed_verdict(&rows).ok);
        rows.retain(|(d, c, _)| d != "press-01" && !(d == "compressor-01" && *c == Some(1)));
        let verdict = seed_verdict(&rows);
        assert!(!verdict.ok);
        assert!(verdict.detail.contains("device press-01 is missing"));
        assert!(verdict
            .detail
            .contains("compressor-01 has no channel 1 (line_current)"));
    }

    #[test]
    fn schema_versions() {
        let expected: Vec<&sqlx::migrate::Migration> = MIGRATOR.iter().collect();
        let applied: Vec<(i64, bool, Vec<u8>)> = expected
            .iter()
            .map(|m| (m.version, true, m.checksum.to_vec()))
            .collect();
        assert!(schema_verdict(&expected, &applied).ok);

        let behind = &applied[..applied.len() - 1];
        let verdict = schema_verdict(&expected, behind);
        assert!(
            !verdict.ok && verdict.detail.contains("1 pending"),
            "{verdict:?}"
        );

        let mut dirty = applied.clone();
        dirty[1].1 = false;
        assert!(schema_verdict(&expected, &dirty)
            .detail
            .contains("failed part-way"));

        let mut edited = applied.clone();
        edited[0].2 = vec![0; 48];
        assert!(schema_verdict(&expected, &edited)
            .detail
            .contains("differs"));

        let mut newer = applied.clone();
        newer.push((99_990_101_000_000, true, vec![]));
        assert!(schema_verdict(&expected, &newer)
            .detail
            .contains("does not know"));
    }
}
