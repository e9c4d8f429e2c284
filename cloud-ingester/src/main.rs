//! `cloud-ingester`: parses the command line, connects PostgreSQL, Kafka and Redis, and
//! runs the ingest loop (see the library's `pipeline` module) until SIGTERM or Ctrl-C.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use cloud_ingester::pipeline::{Pipeline, PipelineSettings};
use cloud_ingester::redis_sink::RedisSink;
use cloud_ingester::stats::IngestStats;
use cloud_ingester::store::Store;
use cloud_ingester::validate::Catalog;
use rdkafka::consumer::StreamConsumer;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Consumes device frames from Kafka (`sensors-data`) into PostgreSQL (`sensor_readings`,
/// hourly statistics) and Redis (latest values), exactly once in effect: offsets are
/// stored only after the PostgreSQL transaction that holds their readings commits, and
/// replays are deduplicated. Records that are not valid frames of known devices go to
/// `sensors-dlq` with the reason. Every flag can also be set through the environment
/// variable named after it. SIGTERM or Ctrl-C: finish the batch in hand, commit, exit.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Redis URL; empty disables Redis.
    #[arg(long, env = "REDIS_URL", default_value = "")]
    redis_url: String,
    /// Key prefix in Redis.
    #[arg(long, env = "INGESTER_REDIS_PREFIX", default_value = "plant")]
    redis_prefix: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    /// Consumer group; instances with the same group share the partitions.
    #[arg(long, env = "INGESTER_GROUP", default_value = "cloud-ingester")]
    group: String,
    /// Instance name, for logs and system events.
    #[arg(long, env = "INGESTER_ID", default_value = "ingester-1")]
    id: String,
    #[arg(long, env = "INGESTER_TOPIC", default_value = protocol::kafka::SENSORS_DATA.name)]
    topic: String,
    #[arg(long, env = "INGESTER_DLQ_TOPIC", default_value = protocol::kafka::SENSORS_DLQ.name)]
    dlq_topic: String,
    /// A batch closes at this many readings...
    #[arg(long, env = "INGESTER_BATCH_ROWS", default_value_t = 20_000)]
    batch_rows: usize,
    /// ...or this long after its first record.
    #[arg(long, env = "INGESTER_BATCH_AGE", default_value = "200ms", value_parser = humantime::parse_duration)]
    batch_age: Duration,
    /// Drop sensor_readings partitions older than this many days.
    #[arg(long, env = "INGESTER_RETENTION_DAYS")]
    retention_days: Option<u32>,
    /// Run the database migrations before starting.
    #[arg(long)]
    migrate: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.batch_rows == 0 || cli.batch_rows > 1_000_000 {
        eprintln!("cloud-ingester: --batch-rows must be between 1 and 1000000");
        return ExitCode::from(2);
    }
    if cli.batch_age.is_zero() || cli.batch_age > Duration::from_secs(60) {
        eprintln!("cloud-ingester: --batch-age must be between 1 ms and 60 s");
        return ExitCode::from(2);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
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
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("cloud-ingester: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&cli.database_url)
        .await
        .context("cannot connect to PostgreSQL (DATABASE_URL)")?;
    if cli.migrate {
        sqlx::migrate!("../migrations")
            .run(&pool)
            .await
            .context("running the migrations")?;
        info!("migrations applied");
    }
    let store = Store::new(pool.clone());
    let catalog = Catalog::load(&pool)
        .await
        .context("reading the device catalog (run with --migrate on a new database)")?;
    let mut kafka = ClientConfig::new();
    kafka.set("bootstrap.servers", &cli.kafka_brokers);
    let consumer: StreamConsumer = kafka
        .clone()
        .set("group.id", &cli.group)
        .set("client.id", &cli.id)
        // Offsets are stored by the pipeline after the PostgreSQL commit, and
        // committed from there every second and on rebalance or close.
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("queued.max.messages.kbytes", "16384")
        .create()
        .context("creating the Kafka consumer")?;
    let producer: FutureProducer = kafka
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "0")
        .create()
        .context("creating the Kafka producer")?;
    let redis = if cli.redis_url.is_empty() {
        None
    } else {
        Some(
            RedisSink::connect(&cli.redis_url, &cli.redis_prefix)
                .await
                .context("connecting to Redis")?,
        )
    };
    info!(
        devices = catalog.devices(),
        group = cli.group,
        topic = cli.topic,
        "cloud-ingester started"
    );
    let stats = Arc::new(IngestStats::default());
    let pipeline = Pipeline {
        consumer,
        producer,
        store,
        redis,
        catalog,
        settings: PipelineSettings {
            topic: cli.topic,
            dlq_topic: cli.dlq_topic,
            instance: cli.id,
            batch_rows: cli.batch_rows,
            batch_age: cli.batch_age,
            retention_days: cli.retention_days,
        },
        stats: stats.clone(),
    };
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown_signal().await;
            info!("stopping: finishing the batch in hand");
            stop.cancel();
        }
    });
    pipeline.run(stop).await?;
    let snapshot = stats.snapshot();
    info!(
        records = snapshot.records,
        inserted = snapshot.inserted,
        duplicates = snapshot.duplicates,
        dead_lettered = snapshot.dead_lettered,
        "cloud-ingester stopped"
    );
    Ok(())
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
