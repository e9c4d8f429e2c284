//! The ingest loop: Kafka records into batches, batches into one PostgreSQL transaction
//! each (rows, statistics, alert transitions and the partitions' next offsets), then
//! Redis.
//!
//! Order is the guarantee. A batch's dead letters are confirmed by Kafka first, then its
//! rows are committed in PostgreSQL together with the offsets they reach, fenced by this
//! instance's partition leases (`ownership`). Every assignment starts from the offsets
//! stored there, so a crash, a lost lease or a broker that forgets its consumer groups
//! replays what was not committed, which the store's dedup key makes harmless; nothing
//! is ever skipped. Kafka's own committed offsets follow, for the tools that show them.
//!
//! The loop never sits still while data waits: between batches it renews its leases and
//! balances the partitions with the other instances, and when records wait on a held
//! partition while nothing is committed for `readiness::STALL_AFTER` it says so (readiness,
//! a `stalled` system event) and re-reads its partitions from the stored offsets. Redis comes last and is best effort: when it is
//! down, ingestion goes on and the newest value per device and channel waits in memory
//! (one row each, so bounded) until it is back.
//!
//! Alerts ride on the same transaction: the batch's readings are evaluated by the
//! [`AlertEngine`] before the write, its transitions are written beside the rows, and the
//! engine adopts them only once that commits. The alert records on Kafka and the open
//! alerts in Redis follow the commit. The `data_loss` rule is the exception: it follows
//! the coverage each commit returns and the clock, not the rows, so its transitions are
//! judged after each commit (and between batches while none come) and written in a
//! transaction of their own.
//!
//! After each commit the devices are told what PostgreSQL holds of their readings
//! (`confirmations`, its own task: nothing on this path waits for it).
//!
//! Back-pressure: while a batch is being written nothing more is consumed; librdkafka's
//! prefetch (`queued.max.messages.kbytes`) is the only other buffer.
//!
//! One submodule per step: `batch` (a batch assembled, its dead letters), `commit` (its
//! transaction, retried, and what follows it), `publish` (alert records, Redis, `data_loss`
//! by the clock), `balance` (leases, assignment, stalls, reset logs), `upkeep` (catalog,
//! partitions, retention) and `shutdown` (the stop's grace and the way out).

mod balance;
mod batch;
mod commit;
mod publish;
mod shutdown;
mod upkeep;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::StreamConsumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::alerts::data_loss::DataLossRule;
use crate::alerts::publish as alert_publish;
use crate::alerts::rules::RuleBook;
use crate::alerts::{self, AlertEngine};
use crate::config::{IngesterConfig, KafkaConfig};
use crate::confirmations::{ConfirmSink, Confirmations};
use crate::dead_letters::BurstWindow;
use crate::future_dated::FutureDated;
use crate::kafka::{self, IngestContext};
use crate::ownership::{Ownership, RENEW_EVERY};
use crate::readiness::IngesterReadiness;
use crate::redis_sink::{LiveRow, RedisSink};
use crate::stats::IngestStats;
use crate::store::{EventLevel, Store, StoreError};
use crate::validate::Catalog;
use crate::SERVICE;

use batch::{Batch, Fill};
use shutdown::Grace;
use upkeep::{CATALOG_REFRESH, PARTITION_UPKEEP};

#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Instances with the same group share the topic's partitions.
    pub group: String,
    pub topic: String,
    pub dlq_topic: String,
    /// Where alert transitions are published as JSON; empty: not published.
    pub alerts_topic: String,
    pub instance: String,
    /// A batch closes at this many readings (dead letters count as one each)...
    pub batch_rows: usize,
    /// ...or this long after its first record, whichever comes first.
    pub batch_age: Duration,
    /// Drop `sensor_readings` partitions older than this many days (None: keep all).
    pub retention_days: Option<u32>,
    /// When missing readings open a `data_loss` alert.
    pub data_loss: DataLossRule,
    /// A reading dated further ahead of the ingester's clock is stored but drives no
    /// live view and no alert (`service::clock`, [`crate::future_dated`]).
    pub max_ahead: Duration,
    /// After `stop`, how long the batch in hand may wait for Kafka (its dead letters,
    /// the last alert records) before the stop wins.
    pub shutdown_grace: Duration,
}

impl PipelineSettings {
    /// The settings `config` gives the pipeline.
    pub fn from_config(config: &IngesterConfig) -> Self {
        Self {
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
        }
    }
}

/// What can keep a pipeline from being put together (see [`Pipeline::connect`]).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("reading the device catalog (run with --migrate on a new database): {0}")]
    Catalog(sqlx::Error),
    #[error("creating the Kafka consumer (check kafka.properties): {0}")]
    Consumer(KafkaError),
    #[error("creating the Kafka producer of confirmations (check kafka.properties): {0}")]
    ConfirmProducer(KafkaError),
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot record the partitions of {topic} in PostgreSQL: {error}")]
    Partitions { topic: String, error: sqlx::Error },
    #[error("Kafka refused a dead-letter record: {0}")]
    DeadLetter(KafkaError),
    #[error("PostgreSQL: {0}")]
    Store(#[from] StoreError),
    #[error("cannot load the alert rules and state from PostgreSQL: {0}")]
    AlertState(sqlx::Error),
}

/// What the loop carries from one batch to the next.
struct LoopState {
    alerts: AlertEngine,
    /// The newest row per device and channel that Redis has not taken yet.
    redis_backlog: HashMap<(String, i16), LiveRow>,
    /// The clock bound, and the devices in an episode of future-dated readings.
    future_dated: FutureDated,
    /// Since when Redis has been failing; `None` while it works.
    redis_down_since: Option<std::time::Instant>,
    dead_letters: BurstWindow,
    /// A rebalance happened: reload the alert state before the next evaluation.
    reload_alerts: bool,
    /// When the device catalog and the alert rules were last read.
    catalog_loaded: Instant,
    /// The partitions this instance leases, and where their stored progress ends.
    ownership: Ownership,
    /// When the leases were last renewed and balanced (`None`: not yet).
    balanced: Option<Instant>,
    /// When a stall was last acted on, while it lasts.
    stall_handled: Option<Instant>,
    /// Per assigned partition, the stored offset: records below it were read again only
    /// because of [`balance::REWIND_RECORDS`] and are passed over.
    skip_below: HashMap<i32, i64>,
    /// Per partition, the (high watermark, stored offset) whose log was read to its end
    /// and found to reach the stored offset (Tansu understates its high watermark).
    log_ends_checked: HashMap<i32, (i64, i64)>,
    /// Per partition, its stored offset at the last balance.
    offsets_seen: HashMap<i32, i64>,
    confirmations: Option<Confirmations>,
    grace: Grace,
}

/// The ingest loop and what it runs with; made by [`Pipeline::connect`] only, so the
/// binary, the tests and the benchmark run the same one.
pub struct Pipeline {
    /// Shared with the blocking metadata calls (`spawn_blocking`).
    consumer: Arc<StreamConsumer<IngestContext>>,
    /// What a new consumer is made from, when one loses Kafka.
    kafka: KafkaConfig,
    producer: FutureProducer,
    store: Store,
    redis: Option<RedisSink>,
    catalog: Catalog,
    /// Where the confirmations to the devices go; `None`: none are sent.
    confirm: Option<ConfirmSink>,
    settings: PipelineSettings,
    stats: Arc<IngestStats>,
    readiness: Arc<IngesterReadiness>,
}

impl Pipeline {
    /// The pipeline `config` describes on the connected `pool`: reads the device catalog,
    /// makes the Kafka consumer and, when `kafka.confirm_topic` is set, the producer of
    /// confirmations, with fresh counters and readiness (PostgreSQL counted as up). The
    /// caller's `producer` carries the dead letters and alert records; `redis`, when
    /// given, takes the live view.
    pub async fn connect(
        config: &IngesterConfig,
        pool: &PgPool,
        producer: FutureProducer,
        redis: Option<RedisSink>,
    ) -> Result<Self, ConnectError> {
        let catalog = Catalog::load(pool).await.map_err(ConnectError::Catalog)?;
        let stats = Arc::new(IngestStats::new());
        let readiness = Arc::new(IngesterReadiness::default());
        readiness.set_postgres(true);
        let consumer = kafka::consumer(
            &config.kafka,
            &config.id,
            IngestContext::new(readiness.clone()),
        )
        .map_err(ConnectError::Consumer)?;
        let confirm = if config.kafka.confirm_topic.is_empty() {
            None
        } else {
            Some(ConfirmSink {
                producer: kafka::confirm_producer(&config.kafka, &config.id)
                    .map_err(ConnectError::ConfirmProducer)?,
                topic: config.kafka.confirm_topic.clone(),
                interval: config.kafka.confirm_interval,
            })
        };
        Ok(Self {
            consumer: Arc::new(consumer),
            kafka: config.kafka.clone(),
            producer,
            store: Store::new(pool.clone()),
            redis,
            catalog,
            confirm,
            settings: PipelineSettings::from_config(config),
            stats,
            readiness,
        })
    }

    /// The counters, live while the loop runs.
    pub fn stats(&self) -> Arc<IngestStats> {
        self.stats.clone()
    }

    /// What `/readyz` reports.
    pub fn readiness(&self) -> Arc<IngesterReadiness> {
        self.readiness.clone()
    }

    /// How many devices the catalog read at the start holds.
    pub fn devices(&self) -> usize {
        self.catalog.devices()
    }

    /// Consumes until `stop`; then writes the batch in hand, stores and commits its
    /// offsets, and returns.
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), PipelineError> {
        self.upkeep().await;
        let Some(partitions) = self.partition_count(&stop).await else {
            return Ok(());
        };
        let ownership = Ownership::new(
            self.store.pool().clone(),
            &self.settings.group,
            &self.settings.topic,
            &member_id(&self.settings.instance),
        );
        ownership
            .register_partitions(partitions)
            .await
            .map_err(|error| PipelineError::Partitions {
                topic: self.settings.topic.clone(),
                error,
            })?;
        let mut state = LoopState {
            alerts: self.load_alerts().await?,
            redis_backlog: HashMap::new(),
            future_dated: FutureDated::new(self.settings.max_ahead),
            redis_down_since: None,
            dead_letters: BurstWindow::default(),
            reload_alerts: false,
            catalog_loaded: Instant::now(),
            ownership,
            balanced: None,
            stall_handled: None,
            skip_below: HashMap::new(),
            log_ends_checked: HashMap::new(),
            offsets_seen: HashMap::new(),
            confirmations: self
                .confirm
                .take()
                .map(|sink| Confirmations::start(sink, self.stats.clone())),
            grace: Grace::new(stop.clone(), self.settings.shutdown_grace),
        };
        if let Some(redis) = &self.redis {
            if let Err(e) = alert_publish::resync_redis(self.store.pool(), redis).await {
                self.stats.redis_error();
                self.redis_gap_begins(&mut state, &e.to_string()).await;
            }
        }
        let mut last_upkeep = Instant::now();
        loop {
            if state.balanced.is_none_or(|at| at.elapsed() >= RENEW_EVERY) {
                self.balance(&mut state, false).await;
            }
            let mut batch = Batch::default();
            let fill = self.fill(&mut batch, &stop, &mut state).await;
            if matches!(fill, Fill::ConnectionLost) {
                // At once, before the batch's write: the lost consumer must be gone
                // before it reconnects (`service::kafka_connection`).
                self.replace_consumer(&mut state);
            }
            let committed_any = !batch.is_empty();
            // `false`: stopped before the batch could be stored (PostgreSQL away, or its
            // dead letters unconfirmed when the grace ended); it is read again after a
            // restart.
            if committed_any && !self.flush(batch, &stop, &mut state).await? {
                break;
            }
            if matches!(fill, Fill::Stopped) {
                break;
            }
            if !committed_any {
                // No commit to judge the holes after: the clock alone may open an alert.
                self.data_loss_between_batches(&mut state).await;
            }
            if state.catalog_loaded.elapsed() >= CATALOG_REFRESH {
                self.refresh_catalog(&mut state).await;
            }
            if last_upkeep.elapsed() >= PARTITION_UPKEEP {
                last_upkeep = Instant::now();
                self.upkeep().await;
            }
        }
        self.shut_down(state).await;
        Ok(())
    }

    /// The alert engine, with the rules, the unresolved alerts and the watermarks as the
    /// database has them.
    async fn load_alerts(&self) -> Result<AlertEngine, PipelineError> {
        let pool = self.store.pool();
        let rules = RuleBook::load(pool)
            .await
            .map_err(PipelineError::AlertState)?;
        let open = alerts::sql::load_open(pool)
            .await
            .map_err(PipelineError::AlertState)?;
        let resume = alerts::sql::load_resume(pool)
            .await
            .map_err(PipelineError::AlertState)?;
        // Readings dated beyond the bound were never evaluated: durations do not start
        // from them.
        let max_ahead_ms = i64::try_from(self.settings.max_ahead.as_millis()).unwrap_or(i64::MAX);
        let watermarks = alerts::sql::load_watermarks(
            pool,
            service::clock::now_ms_i64().saturating_add(max_ahead_ms),
        )
        .await
        .map_err(PipelineError::AlertState)?;
        let coverage = alerts::sql::load_coverage(pool)
            .await
            .map_err(PipelineError::AlertState)?;
        let accepted = alerts::sql::load_accepted(pool)
            .await
            .map_err(PipelineError::AlertState)?;
        info!(
            open = open.len(),
            lossy_boots = coverage.len(),
            "alert state loaded"
        );
        let mut engine = AlertEngine::new(rules).with_data_loss(self.settings.data_loss);
        engine.restore(open, resume, watermarks);
        engine.restore_coverage(coverage, accepted, service::clock::now_ms_i64());
        Ok(engine)
    }

    /// Appends a `system_events` row; a failure is logged, never fatal.
    async fn event(
        &self,
        level: EventLevel,
        kind: &str,
        message: String,
        details: serde_json::Value,
    ) {
        let instance = Some(self.settings.instance.as_str());
        if let Err(e) = self
            .store
            .record_event(SERVICE, instance, level, kind, &message, details)
            .await
        {
            warn!("cannot record the {kind} system event ({message}): {e}");
        }
    }
}

/// The lease owner's name: the instance name made unique to this process, so a restarted
/// instance never takes its predecessor's leases (or that one's late writes) for its own.
fn member_id(instance: &str) -> String {
    static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{instance}-{}-{:x}-{n}",
        std::process::id(),
        service::clock::now_ms_i64()
    )
}
