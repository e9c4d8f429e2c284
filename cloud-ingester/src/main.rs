//! `cloud-ingester`: parses the command line and configuration, sets up logging, and runs
//! the ingester (see the library's `app` module) until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cloud_ingester::config::{CliOverrides, IngesterConfig, LogFormat};
use cloud_ingester::Ingester;
use service::run::Runtime;

/// Consumes device frames from Kafka (`sensors-data`) into PostgreSQL (`sensor_readings`,
/// hourly statistics) and Redis (latest values), exactly once in effect: offsets are
/// stored only after the PostgreSQL transaction that holds their readings commits, and
/// replays are deduplicated. Records that are not valid frames of known devices go to
/// `sensors-dlq` with the reason.
///
/// Configuration: built-in defaults, then the TOML file (see
/// cloud-ingester/config/cloud-ingester.toml), then DATABASE_URL, REDIS_URL and
/// KAFKA_BROKERS, then INGESTER_* environment variables (`__` between levels, e.g.
/// INGESTER_KAFKA__GROUP=ingest-b), then the flags below. Serves /metrics, /livez and
/// /readyz on http.listen (default port 9102). Logs go to stderr; RUST_LOG or log.level
/// sets the level. SIGTERM or Ctrl-C: finish the batch in hand, commit, exit; what Kafka
/// has not confirmed within shutdown_grace (10 s) is not stored, and read again after
/// the restart.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Configuration file (optional).
    #[arg(short, long, env = "INGESTER_CONFIG")]
    config: Option<PathBuf>,
    /// PostgreSQL URL (overrides database.url).
    #[arg(long)]
    database_url: Option<String>,
    /// Redis URL; empty disables Redis (overrides redis.url).
    #[arg(long)]
    redis_url: Option<String>,
    /// Key prefix in Redis (overrides redis.prefix).
    #[arg(long)]
    redis_prefix: Option<String>,
    /// Kafka bootstrap servers (overrides kafka.brokers).
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// Consumer group; instances with the same group share the partitions (overrides
    /// kafka.group).
    #[arg(long)]
    group: Option<String>,
    /// Instance name, for logs, metrics records and system events (overrides id).
    #[arg(long)]
    id: Option<String>,
    /// Topic to consume (overrides kafka.topic).
    #[arg(long)]
    topic: Option<String>,
    /// Dead-letter topic (overrides kafka.dlq_topic).
    #[arg(long)]
    dlq_topic: Option<String>,
    /// Topic of the confirmations to the devices; empty turns them off (overrides
    /// kafka.confirm_topic).
    #[arg(long)]
    confirm_topic: Option<String>,
    /// A batch closes at this many readings... (overrides batch.rows).
    #[arg(long)]
    batch_rows: Option<usize>,
    /// ...or this long after its first record, e.g. 50ms (overrides batch.age).
    #[arg(long)]
    batch_age: Option<String>,
    /// Drop sensor_readings partitions older than this many days (overrides
    /// retention.days).
    #[arg(long)]
    retention_days: Option<u32>,
    /// Run the database migrations before starting (sets database.migrate).
    #[arg(long)]
    migrate: bool,
    /// Address of /metrics, /livez and /readyz (overrides http.listen).
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Log format (overrides log.format).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Check the configuration, print it (passwords hidden) and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = CliOverrides {
        id: cli.id,
        database_url: cli.database_url,
        migrate: cli.migrate,
        redis_url: cli.redis_url,
        redis_prefix: cli.redis_prefix,
        kafka_brokers: cli.kafka_brokers,
        group: cli.group,
        topic: cli.topic,
        dlq_topic: cli.dlq_topic,
        confirm_topic: cli.confirm_topic,
        batch_rows: cli.batch_rows,
        batch_age: cli.batch_age,
        retention_days: cli.retention_days,
        http_listen: cli.http_listen,
        log_format: cli.log_format,
    };
    service::run::main(
        "cloud-ingester",
        cli.config.as_deref(),
        cli.check_config,
        |file| IngesterConfig::load(file, &overrides),
        Runtime::MultiThread,
        |config| async {
            Ingester::start(config)
                .await?
                .run_until(service::shutdown_signal())
                .await
        },
    )
}
