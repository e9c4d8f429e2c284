//! The ingest loop: Kafka records into batches, batches into one PostgreSQL transaction
//! each, then Kafka offsets, then Redis.
//!
//! Order is the guarantee. A batch's dead letters are confirmed by Kafka first, then its
//! rows are committed in PostgreSQL, and only then are its offsets stored (librdkafka
//! commits stored offsets every second and on rebalance or close). A crash or a
//! rebalance anywhere before that replays the batch, which the store's dedup key makes
//! harmless; nothing is ever skipped. Redis comes last and is best effort: when it is
//! down, ingestion goes on and the newest value per device and channel waits in memory
//! (one row each, so bounded) until it is back.
//!
//! Alerts ride on the same transaction: the batch's readings are evaluated by the
//! [`AlertEngine`] before the write, its transitions are written beside the rows, and the
//! engine adopts them only once that commits. The alert records on Kafka and the open
//! alerts in Redis follow the commit.
//!
//! Back-pressure: while a batch is being written nothing more is consumed; librdkafka's
//! prefetch (`queued.max.messages.kbytes`) is the only other buffer.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{FutureProducer, Producer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::alerts::publish::{self as alert_publish, AlertEvent};
use crate::alerts::rules::RuleBook;
use crate::alerts::store::Applied;
use crate::alerts::Evaluation;
use crate::alerts::{self, AlertEngine};
use crate::dead_letters::{self, BurstWindow, DeadLetter};
use crate::redis_sink::RedisSink;
use crate::rows::{rows_from_frame, Row};
use crate::stats::IngestStats;
use crate::store::{BatchOutcome, EventLevel, Store, StoreError};
use crate::validate::Catalog;

/// How often the device catalog is re-read, so newly registered devices are accepted.
const CATALOG_REFRESH: Duration = Duration::from_secs(60);
/// A record of a device or channel the catalog does not know re-reads it first, at most
/// this often, so a device registered a moment ago is stored rather than dead-lettered.
const CATALOG_RECHECK: Duration = Duration::from_secs(5);
const CATALOG_LOAD_TIMEOUT: Duration = Duration::from_secs(2);
/// How often partitions for the coming days are ensured (and retention applied).
const PARTITION_UPKEEP: Duration = Duration::from_secs(3600);
/// Days of `sensor_readings` partitions kept ready ahead of today.
const PARTITIONS_AHEAD: i32 = 8;
/// The `system_events.service` of this program.
pub const SERVICE: &str = "cloud-ingester";

#[derive(Debug, Clone)]
pub struct PipelineSettings {
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
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot subscribe to {topic}: {error}")]
    Subscribe { topic: String, error: KafkaError },
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
    redis_backlog: HashMap<(String, i16), Row>,
    /// Since when Redis has been failing; `None` while it works.
    redis_down_since: Option<std::time::Instant>,
    dead_letters: BurstWindow,
    /// A rebalance happened: reload the alert state before the next evaluation.
    reload_alerts: bool,
    /// When the device catalog and the alert rules were last read.
    catalog_loaded: Instant,
}

#[derive(Default)]
struct Batch {
    rows: Vec<Row>,
    dead_letters: Vec<DeadLetter>,
    /// Highest offset per partition in the batch.
    offsets: BTreeMap<i32, i64>,
    records: usize,
    opened: Option<Instant>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Whether the record just added was dead-lettered for a device or channel the
    /// catalog does not know (yet).
    fn last_is_unknown_to_catalog(&self) -> bool {
        self.dead_letters
            .last()
            .is_some_and(DeadLetter::unknown_to_catalog)
    }

    /// Checks the batch's dead letters of unknown devices or channels again against a
    /// newer catalog: those that pass now become rows, the others keep their new reason.
    fn recheck_unknown(&mut self, catalog: &Catalog) {
        let now = now_ms() as u64;
        let mut kept = Vec::with_capacity(self.dead_letters.len());
        for letter in std::mem::take(&mut self.dead_letters) {
            if !letter.unknown_to_catalog() {
                kept.push(letter);
                continue;
            }
            match catalog.check(&letter.payload, now) {
                Ok(frame) => rows_from_frame(&frame, &mut self.rows),
                Err(rejection) => kept.push(DeadLetter {
                    rejection,
                    ..letter
                }),
            }
        }
        self.dead_letters = kept;
    }
}

enum Fill {
    Full,
    Aged,
    Stopped,
}

pub struct Pipeline {
    pub consumer: StreamConsumer<crate::kafka::IngestContext>,
    pub producer: FutureProducer,
    pub store: Store,
    pub redis: Option<RedisSink>,
    pub catalog: Catalog,
    pub settings: PipelineSettings,
    pub stats: Arc<IngestStats>,
    pub health: Arc<crate::health::Health>,
}

impl Pipeline {
    /// Consumes until `stop`; then writes the batch in hand, stores and commits its
    /// offsets, and returns.
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), PipelineError> {
        self.consumer
            .subscribe(&[&self.settings.topic])
            .map_err(|error| PipelineError::Subscribe {
                topic: self.settings.topic.clone(),
                error,
            })?;
        self.upkeep().await;
        let mut state = LoopState {
            alerts: self.load_alerts().await?,
            redis_backlog: HashMap::new(),
            redis_down_since: None,
            dead_letters: BurstWindow::default(),
            reload_alerts: false,
            catalog_loaded: Instant::now(),
        };
        if let Some(redis) = &self.redis {
            if let Err(e) = alert_publish::resync_redis(self.store.pool(), redis).await {
                self.stats.redis_error();
                self.redis_gap_begins(&mut state, &e.to_string()).await;
            }
        }
        let mut last_upkeep = Instant::now();
        loop {
            let mut batch = Batch::default();
            let fill = self.fill(&mut batch, &stop, &mut state).await;
            self.after_rebalance(&mut state).await;
            // `false`: stopped while PostgreSQL was away; the batch will be replayed.
            if !batch.is_empty() && !self.flush(batch, &stop, &mut state).await? {
                break;
            }
            if matches!(fill, Fill::Stopped) {
                break;
            }
            if state.catalog_loaded.elapsed() >= CATALOG_REFRESH {
                self.refresh_catalog(&mut state).await;
            }
            if last_upkeep.elapsed() >= PARTITION_UPKEEP {
                last_upkeep = Instant::now();
                self.upkeep().await;
            }
        }
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            // Nothing stored since the last automatic commit is not an error.
            if e.rdkafka_error_code() != Some(RDKafkaErrorCode::NoOffset) {
                warn!("final offset commit failed (the last batch may be replayed): {e}");
            }
        }
        // Alert records are sent without waiting for Kafka; see them out.
        let producer = self.producer.clone();
        let flushed =
            tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
        if !matches!(flushed, Ok(Ok(()))) {
            warn!("some alert records were not confirmed by Kafka before the stop");
        }
        Ok(())
    }

    /// The alert engine, with the rules, the unresolved alerts and the watermarks as the
    /// database has them.
    async fn load_alerts(&self) -> Result<AlertEngine, PipelineError> {
        let pool = self.store.pool();
        let rules = RuleBook::load(pool)
            .await
            .map_err(PipelineError::AlertState)?;
        let open = alerts::store::load_open(pool)
            .await
            .map_err(PipelineError::AlertState)?;
        let watermarks = alerts::store::load_watermarks(pool)
            .await
            .map_err(PipelineError::AlertState)?;
        info!(open = open.len(), "alert state loaded");
        let mut engine = AlertEngine::new(rules);
        engine.restore(open, watermarks);
        Ok(engine)
    }

    /// Logs each rebalance since the last batch as a system event and, if there was one,
    /// has the alert state reloaded before the next evaluation: another instance may have
    /// moved the alerts of the devices this one just got.
    async fn after_rebalance(&self, state: &mut LoopState) {
        let rebalances = self.consumer.context().take_rebalances();
        if rebalances.is_empty() {
            return;
        }
        for rebalance in &rebalances {
            self.event(
                EventLevel::Info,
                "rebalance",
                format!(
                    "partitions {} of {}: {:?}",
                    rebalance.kind, self.settings.topic, rebalance.partitions
                ),
                serde_json::json!({
                    "change": rebalance.kind,
                    "topic": self.settings.topic,
                    "partitions": rebalance.partitions,
                }),
            )
            .await;
        }
        state.reload_alerts = true;
    }

    /// One attempt at the batch's transaction: reloads the alert state first if a
    /// rebalance asked for it, evaluates the rows against it, and writes both.
    async fn try_write(
        &self,
        rows: &[Row],
        state: &mut LoopState,
    ) -> Result<(BatchOutcome, Vec<Applied>, Evaluation), PipelineError> {
        if state.reload_alerts {
            state.alerts = self.load_alerts().await?;
            state.reload_alerts = false;
        }
        let evaluation = state.alerts.evaluate(rows);
        let (outcome, applied) = self
            .store
            .write_batch_with_alerts(rows, &evaluation.transitions)
            .await?;
        Ok((outcome, applied, evaluation))
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

    /// Partitions for the coming days, and retention.
    async fn upkeep(&self) {
        let today = chrono::Utc::now().date_naive();
        if let Err(e) = self.store.ensure_partitions(today, PARTITIONS_AHEAD).await {
            warn!("cannot create upcoming sensor_readings partitions: {e}");
        }
        if let Some(days) = self.settings.retention_days {
            let cutoff = today - chrono::Days::new(u64::from(days));
            match self.store.drop_partitions_before(cutoff).await {
                Ok(dropped) if dropped > 0 => info!(dropped, %cutoff, "dropped old partitions"),
                Ok(_) => {}
                Err(e) => warn!("retention failed: {e}"),
            }
        }
    }

    /// Re-reads the device catalog and the alert rules.
    async fn refresh_catalog(&mut self, state: &mut LoopState) {
        state.catalog_loaded = Instant::now();
        let pool = self.store.pool();
        // Bounded: it may run while a batch is open, and PostgreSQL may be away.
        let loaded = tokio::time::timeout(CATALOG_LOAD_TIMEOUT, async {
            (Catalog::load(pool).await, RuleBook::load(pool).await)
        })
        .await;
        match loaded {
            Ok((Ok(catalog), Ok(rules))) => {
                self.catalog = catalog;
                state.alerts.set_rules(rules);
            }
            Ok((Err(e), _) | (_, Err(e))) => warn!("cannot refresh the device catalog: {e}"),
            Err(_) => warn!("cannot refresh the device catalog: PostgreSQL did not answer"),
        }
    }

    async fn fill(
        &mut self,
        batch: &mut Batch,
        stop: &CancellationToken,
        state: &mut LoopState,
    ) -> Fill {
        let far = Instant::now() + Duration::from_secs(3600);
        loop {
            let closes_at = batch
                .opened
                .map_or(far, |opened| opened + self.settings.batch_age);
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Fill::Stopped,
                _ = tokio::time::sleep_until(closes_at), if batch.opened.is_some() => return Fill::Aged,
                message = self.consumer.recv() => match message {
                    Ok(message) => {
                        add(&self.catalog, batch, &message);
                        if batch.last_is_unknown_to_catalog()
                            && state.catalog_loaded.elapsed() >= CATALOG_RECHECK
                        {
                            self.refresh_catalog(state).await;
                            batch.recheck_unknown(&self.catalog);
                        }
                        // Dead letters count too, so a flood of bad records is
                        // bounded like good ones.
                        if batch.rows.len() + batch.dead_letters.len() >= self.settings.batch_rows {
                            return Fill::Full;
                        }
                    }
                    Err(e) => warn!("Kafka consumer: {e}"),
                },
            }
        }
    }

    /// Dead letters, then rows with the alert transitions they cause, then offsets, then
    /// the alert records and Redis. `Ok(false)` if `stop` came while PostgreSQL was
    /// unreachable (nothing of the batch is acknowledged).
    async fn flush(
        &mut self,
        batch: Batch,
        stop: &CancellationToken,
        state: &mut LoopState,
    ) -> Result<bool, PipelineError> {
        let started = std::time::Instant::now();
        dead_letters::produce(
            &self.producer,
            &self.settings.dlq_topic,
            &batch.dead_letters,
            &self.stats,
        )
        .await
        .map_err(PipelineError::DeadLetter)?;
        if let Some(count) = state.dead_letters.add(batch.dead_letters.len() as u64) {
            let mut reasons: BTreeMap<&str, u64> = BTreeMap::new();
            for letter in &batch.dead_letters {
                *reasons.entry(letter.rejection.reason.code()).or_default() += 1;
            }
            self.event(
                EventLevel::Warning,
                "dlq_burst",
                format!(
                    "{count} records dead-lettered within {}",
                    humantime::format_duration(dead_letters::BURST_WINDOW)
                ),
                serde_json::json!({ "count": count, "last_batch_reasons": reasons }),
            )
            .await;
        }
        let mut backoff = Duration::from_millis(200);
        let mut failing: Option<(std::time::Instant, u32, String)> = None;
        let (outcome, applied, evaluation) = loop {
            match self.try_write(&batch.rows, state).await {
                Ok(done) => {
                    self.health.set_postgres(true);
                    break done;
                }
                // A row the decoder should never have produced: retrying cannot help.
                Err(e @ PipelineError::Store(StoreError::InvalidRow { .. })) => return Err(e),
                Err(e) => {
                    self.stats.store_error();
                    self.health.set_postgres(false);
                    error!(
                        "PostgreSQL write failed ({e}); retrying in {} with the same batch",
                        humantime::format_duration(backoff)
                    );
                    let since = failing
                        .as_ref()
                        .map_or_else(std::time::Instant::now, |f| f.0);
                    let attempts = failing.as_ref().map_or(0, |f| f.1) + 1;
                    failing = Some((since, attempts, e.to_string()));
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(false),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        state.alerts.adopt(evaluation);
        if let Some((since, attempts, last_error)) = failing {
            let seconds = since.elapsed().as_secs_f64();
            self.event(
                EventLevel::Error,
                "error",
                format!(
                    "PostgreSQL writes failed for {seconds:.1} s ({attempts} attempts); the \
                     batch was retried and stored"
                ),
                serde_json::json!({ "attempts": attempts, "seconds": seconds, "last_error": last_error }),
            )
            .await;
        }
        for (partition, offset) in &batch.offsets {
            // Fails only for a partition revoked meanwhile; its new owner replays.
            if let Err(e) = self
                .consumer
                .store_offset(&self.settings.topic, *partition, *offset)
            {
                warn!(partition, "offset not stored (partition revoked?): {e}");
            }
        }
        self.stats.batch(
            batch.records,
            outcome.inserted,
            outcome.duplicates,
            started.elapsed(),
        );
        let at_ms = now_ms();
        let events: Vec<AlertEvent> = applied
            .iter()
            .map(|applied| AlertEvent::new(applied, state.alerts.rules(), at_ms))
            .collect();
        for event in &events {
            self.stats.alert_transition(event.transition);
        }
        if !events.is_empty() && !self.settings.alerts_topic.is_empty() {
            if let Err(e) =
                alert_publish::to_kafka(&self.producer, &self.settings.alerts_topic, &events).await
            {
                warn!("alert records not published to Kafka (they are in the alerts table): {e}");
            }
        }
        self.to_redis(batch.rows, &events, state).await;
        Ok(true)
    }

    /// The batch's newest values and alert transitions into Redis, best effort: while
    /// Redis is away the newest value per channel waits in memory (bounded by the number
    /// of channels), and when it is back the open alerts are rebuilt from the database.
    /// Each gap is logged once as a `redis_gap` system event, and again when it ends.
    async fn to_redis(&self, rows: Vec<Row>, events: &[AlertEvent], state: &mut LoopState) {
        let Some(redis) = &self.redis else {
            return;
        };
        let backlog = &mut state.redis_backlog;
        // What an earlier failure left waiting goes too (newer rows win anyway); the
        // batch is only copied in that rare case.
        let written = if backlog.is_empty() {
            redis.write_batch(&rows, now_ms()).await
        } else {
            let mut all: Vec<Row> = backlog.values().cloned().collect();
            all.extend_from_slice(&rows);
            redis.write_batch(&all, now_ms()).await
        };
        let written = match written {
            Ok(_) if state.redis_down_since.is_some() => {
                alert_publish::resync_redis(self.store.pool(), redis)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Ok(_) => alert_publish::to_redis(redis, events)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match written {
            Ok(()) => {
                backlog.clear();
                if let Some(since) = state.redis_down_since.take() {
                    let seconds = since.elapsed().as_secs_f64();
                    info!("Redis is back after {seconds:.1} s; latest values and open alerts caught up");
                    self.event(
                        EventLevel::Info,
                        "redis_gap",
                        format!(
                            "Redis was unreachable for {seconds:.1} s; latest values and open \
                             alerts caught up"
                        ),
                        serde_json::json!({ "seconds": seconds, "ended": true }),
                    )
                    .await;
                }
            }
            Err(e) => {
                self.stats.redis_error();
                for row in rows {
                    let key = (row.device_id.clone(), row.channel_id);
                    match backlog.get(&key) {
                        Some(kept) if kept.ts_ms >= row.ts_ms => {}
                        _ => {
                            backlog.insert(key, row);
                        }
                    }
                }
                warn!(
                    waiting = backlog.len(),
                    "Redis write failed ({e}); the newest value per channel waits for it"
                );
                self.redis_gap_begins(state, &e).await;
            }
        }
    }

    /// Notes that Redis failed; the first failure of a gap is a system event.
    async fn redis_gap_begins(&self, state: &mut LoopState, error: &str) {
        if state.redis_down_since.is_some() {
            return;
        }
        state.redis_down_since = Some(std::time::Instant::now());
        self.event(
            EventLevel::Warning,
            "redis_gap",
            format!(
                "Redis unreachable ({error}); PostgreSQL ingestion goes on, the newest values \
                 wait in memory"
            ),
            serde_json::json!({ "error": error, "ended": false }),
        )
        .await;
    }
}

/// Adds one record to the batch: its rows, or a dead letter.
fn add(catalog: &Catalog, batch: &mut Batch, message: &BorrowedMessage<'_>) {
    batch.opened.get_or_insert_with(Instant::now);
    batch.records += 1;
    let offset = batch.offsets.entry(message.partition()).or_insert(-1);
    *offset = (*offset).max(message.offset());
    let payload = message.payload().unwrap_or_default();
    match catalog.check(payload, now_ms() as u64) {
        Ok(frame) => rows_from_frame(&frame, &mut batch.rows),
        Err(rejection) => batch.dead_letters.push(DeadLetter {
            key: message.key().map(<[u8]>::to_vec),
            payload: payload.to_vec(),
            headers: message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
            rejection,
        }),
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
