//! `cloud-ingester`: reads the configuration, sets up logging, connects PostgreSQL, Kafka
//! and Redis, and runs the ingest loop (see the library's `pipeline` module) with the
//! HTTP endpoint and the metrics record beside it, until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use cloud_ingester::alerts::data_loss::DataLossRule;
use cloud_ingester::config::{CliOverrides, IngesterConfig, LogFormat};
use cloud_ingester::confirmations::ConfirmSink;
use cloud_ingester::health::Health;
use cloud_ingester::kafka::{self, IngestContext};
use cloud_ingester::pipeline::{Pipeline, PipelineSettings};
use cloud_ingester::redis_sink::RedisSink;
use cloud_ingester::stats::IngestStats;
use cloud_ingester::store::{EventLevel, Store};
use cloud_ingester::validate::Catalog;
use cloud_ingester::SERVICE;
use rdkafka::producer::Producer as _;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

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
    /// Metrics and health endpoint address (overrides http.listen).
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
    let source = cli
        .config
        .as_ref()
        .map_or("defaults".to_owned(), |p| p.display().to_string());
    let config = match IngesterConfig::load(cli.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("cloud-ingester: {source}: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        return match config.to_redacted_toml() {
            // A comment first, so the output is itself a valid configuration file.
            Ok(text) => {
                println!("# {source}: ok\n{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cloud-ingester: cannot print the configuration: {e}");
                ExitCode::FAILURE
            }
        };
    }
    service::logging::init(config.log.format, &config.log.level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cloud-ingester: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("cloud-ingester: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Connects, runs until a stop signal, and shuts down in the order that loses nothing:
/// the pipeline finishes its batch and commits, the stop is recorded, the HTTP endpoint
/// and the metrics record stop, and the producer is flushed.
async fn run(config: IngesterConfig) -> anyhow::Result<()> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(config.database.max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&config.database.url)
        .await
        .context("cannot connect to PostgreSQL (database.url)")?;
    if config.database.migrate {
        sqlx::migrate!("../migrations")
            .run(&pool)
            .await
            .context("running the migrations")?;
        info!("migrations applied");
    }
    // The operation log's own handle: the pipeline's keeps write-path state.
    let events = Store::new(pool.clone());
    let catalog = Catalog::load(&pool)
        .await
        .context("reading the device catalog (run with --migrate on a new database)")?;
    let stats = Arc::new(IngestStats::new());
    let health = Arc::new(Health::default());
    health.set_postgres(true);
    let consumer = kafka::consumer(
        &config.kafka,
        &config.id,
        IngestContext::new(health.clone()),
    )
    .context("creating the Kafka consumer (check kafka.properties)")?;
    let producer = kafka::producer(&config.kafka, &config.id)
        .context("creating the Kafka producer (check kafka.properties)")?;
    let confirm = if config.kafka.confirm_topic.is_empty() {
        None
    } else {
        Some(ConfirmSink {
            producer: kafka::confirm_producer(&config.kafka, &config.id)
                .context("creating the Kafka producer of confirmations (check kafka.properties)")?,
            topic: config.kafka.confirm_topic.clone(),
            interval: config.kafka.confirm_interval,
        })
    };
    let redis = if config.redis.url.is_empty() {
        None
    } else {
        Some(
            RedisSink::connect(&config.redis.url, &config.redis.prefix)
                .await
                .context("connecting to Redis (redis.url)")?,
        )
    };

    let stop_rest = CancellationToken::new();
    let (http_addr, http) =
        service::http::serve(config.http.listen, health.clone(), stop_rest.clone())
            .await
            .with_context(|| {
                format!("cannot serve HTTP on {} (http.listen)", config.http.listen)
            })?;
    let upkeep = tokio::spawn(service::metrics::prometheus_upkeep(stop_rest.clone()));
    let metrics_record = (!config.kafka.metrics_topic.is_empty()).then(|| {
        let (stats, id) = (stats.clone(), config.id.clone());
        tokio::spawn(service::metrics_record::publish_periodically(
            producer.clone(),
            config.kafka.metrics_topic.clone(),
            config.id.clone(),
            config.kafka.metrics_interval,
            move || snapshot_json(&stats, &id),
            stop_rest.clone(),
        ))
    });
    info!(
        http = %http_addr,
        devices = catalog.devices(),
        group = config.kafka.group,
        topic = config.kafka.topic,
        "cloud-ingester started"
    );
    record_event(
        &events,
        &config.id,
        EventLevel::Info,
        "start",
        "cloud-ingester started",
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "group": config.kafka.group,
            "topic": config.kafka.topic,
            "batch_rows": config.batch.rows,
            "batch_age_ms": config.batch.age.as_millis() as u64,
        }),
    )
    .await;

    let pipeline = Pipeline {
        consumer: Arc::new(consumer),
        producer: producer.clone(),
        store: Store::new(pool.clone()),
        redis,
        catalog,
        confirm,
        settings: PipelineSettings {
            group: config.kafka.group.clone(),
            topic: config.kafka.topic.clone(),
            dlq_topic: config.kafka.dlq_topic.clone(),
            alerts_topic: config.kafka.alerts_topic.clone(),
            instance: config.id.clone(),
            batch_rows: config.batch.rows,
            batch_age: config.batch.age,
            retention_days: config.retention.days,
            data_loss: DataLossRule::from(&config.alerts),
            max_ahead: config.clock.max_ahead,
            shutdown_grace: config.shutdown_grace,
        },
        stats: stats.clone(),
        health,
    };
    let stop = CancellationToken::new();
    // When the signal came: the last flush below gets what is left of the grace.
    let signalled = Arc::new(std::sync::OnceLock::new());
    tokio::spawn({
        let (stop, signalled) = (stop.clone(), signalled.clone());
        let grace = humantime::format_duration(config.shutdown_grace);
        async move {
            service::shutdown_signal().await;
            let _ = signalled.set(tokio::time::Instant::now());
            info!("stopping: finishing the batch in hand (shutdown grace {grace})");
            stop.cancel();
        }
    });
    let result = pipeline.run(stop).await;

    let (level, message) = match &result {
        Ok(()) => (EventLevel::Info, "cloud-ingester stopped".to_owned()),
        Err(e) => (EventLevel::Error, format!("cloud-ingester failed: {e}")),
    };
    record_event(
        &events,
        &config.id,
        level,
        "stop",
        &message,
        snapshot_json(&stats, &config.id),
    )
    .await;
    stop_rest.cancel();
    for task in [Some(http), Some(upkeep), metrics_record]
        .into_iter()
        .flatten()
    {
        let _ = task.await;
    }
    // During a Kafka outage nothing would go out: wait no longer than the grace allows.
    let left = signalled.get().map_or(FINAL_FLUSH, |at| {
        (*at + config.shutdown_grace)
            .saturating_duration_since(tokio::time::Instant::now())
            .min(FINAL_FLUSH)
    });
    let flushed = tokio::task::spawn_blocking(move || producer.flush(left)).await;
    if !matches!(flushed, Ok(Ok(()))) {
        warn!("some metrics or alert records were not confirmed by Kafka before exit");
    }
    let snapshot = stats.snapshot();
    info!(
        records = snapshot.records,
        inserted = snapshot.inserted,
        duplicates = snapshot.duplicates,
        dead_lettered = snapshot.dead_lettered,
        "cloud-ingester stopped"
    );
    result.context("the ingest loop stopped")
}

/// How long the last flush of the metrics and alert records may take, at most.
const FINAL_FLUSH: Duration = Duration::from_secs(5);

/// The counters as JSON with the instance and the time: the body of the metrics records
/// and the details of the stop event.
fn snapshot_json(stats: &IngestStats, instance: &str) -> serde_json::Value {
    let mut record = match serde_json::to_value(stats.snapshot()) {
        Ok(serde_json::Value::Object(fields)) => fields,
        // A struct of numbers always serializes to an object; an empty record beats none.
        _ => serde_json::Map::new(),
    };
    record.insert("service".to_owned(), SERVICE.into());
    record.insert("instance".to_owned(), instance.into());
    record.insert("at_ms".to_owned(), service::clock::now_ms_i64().into());
    serde_json::Value::Object(record)
}

/// Appends a `system_events` row. A failure is logged, never fatal: the operation log
/// must not stop ingestion.
async fn record_event(
    store: &Store,
    instance: &str,
    level: EventLevel,
    kind: &str,
    message: &str,
    details: serde_json::Value,
) {
    if let Err(e) = store
        .record_event(SERVICE, Some(instance), level, kind, message, details)
        .await
    {
        warn!("cannot record the {kind} system event: {e}");
    }
}
