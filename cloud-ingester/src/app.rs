//! Wires the parts together: PostgreSQL (and its migrations), the pipeline with its Kafka
//! clients and Redis, the HTTP endpoint, the metrics record, the start and stop system
//! events; and takes them down in the order that loses nothing.
//!
//! Shutdown order: the pipeline finishes its batch and commits, the stop is recorded,
//! the HTTP endpoint and the metrics record stop, and the producer is flushed with what
//! is left of the shutdown grace.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::producer::{FutureProducer, Producer as _};
use service::http::Readiness as _;
use service::metrics_record::Recorder;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::IngesterConfig;
use crate::kafka;
use crate::pipeline::Pipeline;
use crate::readiness::IngesterReadiness;
use crate::redis_sink::RedisSink;
use crate::stats::{IngestSnapshot, IngestStats};
use crate::store::{EventLevel, Store};
use crate::SERVICE;

/// How long the last flush of the metrics and alert records may take, at most.
const FINAL_FLUSH: Duration = Duration::from_secs(5);

/// The whole service, started: made by [`Ingester::start`] (the binary) or
/// [`Ingester::start_on`] (a test's database), ended by [`Ingester::run_until`].
pub struct Ingester {
    config: IngesterConfig,
    http_addr: SocketAddr,
    /// The operation log's own handle: the pipeline's keeps write-path state.
    events: Store,
    pipeline: Pipeline,
    producer: FutureProducer,
    stats: Arc<IngestStats>,
    readiness: Arc<IngesterReadiness>,
    http: JoinHandle<()>,
    /// `None` when `kafka.metrics_topic` is empty.
    metrics_record: Option<JoinHandle<()>>,
    stop_rest: CancellationToken,
}

/// Refuses a superuser login unless `database.allow_superuser` says otherwise.
async fn refuse_superuser(pool: &PgPool, allowed: bool) -> anyhow::Result<()> {
    let (user, superuser): (String, bool) = sqlx::query_as(
        "SELECT current_user::text, rolsuper FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(pool)
    .await
    .context("reading the database role (database.url)")?;
    if superuser && !allowed {
        anyhow::bail!(
            "database.url logs in as {user}, a superuser: connect as a login in the \
             telemetry_ingester role (README, Security), or set database.allow_superuser = true"
        );
    }
    if superuser {
        warn!(
            user,
            "connected to PostgreSQL as a superuser (database.allow_superuser = true)"
        );
    }
    Ok(())
}

impl Ingester {
    /// Connects PostgreSQL (applying the migrations when `database.migrate` says so),
    /// then starts every part as [`Ingester::start_on`] does.
    pub async fn start(config: IngesterConfig) -> anyhow::Result<Ingester> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(config.database.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&config.database.url)
            .await
            .context("cannot connect to PostgreSQL (database.url)")?;
        refuse_superuser(&pool, config.database.allow_superuser).await?;
        if config.database.migrate {
            sqlx::migrate!("../migrations").run(&pool).await.context(
                "running the migrations (database.migrate; they need the schema's owner, \
                     which a telemetry_ingester login is not: `iotctl migrate` as the owner)",
            )?;
            info!("migrations applied");
        }
        Self::start_on(config, pool).await
    }

    /// Starts every part on a connected database (`database.*` is not read): the
    /// pipeline's Kafka clients and Redis, the HTTP endpoint, the metrics record; records
    /// the start. Consuming begins in [`Ingester::run_until`].
    pub async fn start_on(config: IngesterConfig, pool: PgPool) -> anyhow::Result<Ingester> {
        let events = Store::new(pool.clone());
        let producer = kafka::producer(&config.kafka, &config.id)
            .context("creating the Kafka producer (check kafka.properties)")?;
        let redis = if config.redis.url.is_empty() {
            None
        } else {
            Some(
                RedisSink::connect(&config.redis.url, &config.redis.prefix)
                    .await
                    .context("connecting to Redis (redis.url)")?,
            )
        };
        let pipeline = Pipeline::connect(&config, &pool, producer.clone(), redis).await?;
        let (stats, readiness) = (pipeline.stats(), pipeline.readiness());

        let stop_rest = CancellationToken::new();
        let (http_addr, http) =
            service::http::serve(&config.http, readiness.clone(), stop_rest.clone()).await?;
        let metrics_record = (!config.kafka.metrics_topic.is_empty()).then(|| {
            let (stats, readiness) = (stats.clone(), readiness.clone());
            let mut recorder = Recorder::new(SERVICE, &config.id, &[]);
            tokio::spawn(service::metrics_record::publish_periodically(
                producer.clone(),
                config.kafka.metrics_topic.clone(),
                config.id.clone(),
                config.kafka.metrics_interval,
                move || record(&mut recorder, &stats, &readiness),
                stop_rest.clone(),
            ))
        });
        info!(
            http = %http_addr,
            devices = pipeline.devices(),
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
        Ok(Ingester {
            config,
            http_addr,
            events,
            pipeline,
            producer,
            stats,
            readiness,
            http,
            metrics_record,
            stop_rest,
        })
    }

    /// Where `/metrics`, `/livez` and `/readyz` are served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn stats(&self) -> Arc<IngestStats> {
        self.stats.clone()
    }

    pub fn readiness(&self) -> Arc<IngesterReadiness> {
        self.readiness.clone()
    }

    /// Consumes until `shutdown` completes or the loop fails, then shuts down in the order
    /// that loses nothing. Returns the final counters.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<IngestSnapshot> {
        let Ingester {
            config,
            events,
            pipeline,
            producer,
            stats,
            readiness,
            http,
            metrics_record,
            stop_rest,
            ..
        } = self;
        let stop = CancellationToken::new();
        // When the signal came: the last flush below gets what is left of the grace.
        let mut signalled = None;
        let run = pipeline.run(stop.clone());
        tokio::pin!(run);
        let result = tokio::select! {
            result = &mut run => result,
            () = shutdown => {
                signalled = Some(tokio::time::Instant::now());
                let grace = humantime::format_duration(config.shutdown_grace);
                info!("stopping: finishing the batch in hand (shutdown grace {grace})");
                stop.cancel();
                run.await
            }
        };

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
            // The totals only: a rate over the moment since this recorder was made
            // would be meaningless.
            Recorder::new(SERVICE, &config.id, &[]).record(
                &readiness.checks(),
                stats.snapshot(),
                &[],
            ),
        )
        .await;
        stop_rest.cancel();
        for task in [Some(http), metrics_record].into_iter().flatten() {
            let _ = task.await;
        }
        // During a Kafka outage nothing would go out: wait no longer than the grace allows.
        let left = signalled.map_or(FINAL_FLUSH, |at| {
            (at + config.shutdown_grace)
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
        result.context("the ingest loop stopped")?;
        Ok(snapshot)
    }
}

/// The metrics record (`contracts::metrics::MetricsRecord`) of the counters now, with
/// their rates since the previous one: the body of the records on the metrics topic.
fn record(
    recorder: &mut Recorder,
    stats: &IngestStats,
    readiness: &IngesterReadiness,
) -> serde_json::Value {
    let counters = stats.snapshot();
    let rated = [
        ("records", counters.records),
        ("inserted", counters.inserted),
        ("dead_lettered", counters.dead_lettered),
    ];
    recorder.record(&readiness.checks(), counters, &rated)
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
