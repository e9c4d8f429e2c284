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
//! partition while nothing is committed for `health::STALL_AFTER` it says so (readiness,
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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::alerts::data_loss::DataLossRule;
use crate::alerts::publish::{self as alert_publish, AlertEvent};
use crate::alerts::rules::RuleBook;
use crate::alerts::store::Applied;
use crate::alerts::Evaluation;
use crate::alerts::{self, AlertEngine};
use crate::confirmations::{self, ConfirmSink, Confirmations, Routes};
use crate::coverage::Held;
use crate::dead_letters::{self, BurstWindow, DeadLetter};
use crate::future_dated::FutureDated;
use crate::health::STALL_AFTER;
use crate::kafka::IngestContext;
use crate::ownership::{Change, Ownership, Progress, RENEW_EVERY};
use crate::redis_sink::{LiveRow, RedisSink};
use crate::rows::{rows_from_frame, Row};
use crate::stats::IngestStats;
use crate::store::{Committed, EventLevel, Store, StoreError};
use crate::validate::Catalog;
use crate::SERVICE;

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
/// How long one renewal and balancing step may take before it is tried again later.
const BALANCE_TIMEOUT: Duration = Duration::from_secs(5);
/// How far before its stored offset a partition is read again when it is assigned; the
/// records before the stored offset are passed over here. A broker must return the record
/// batch that holds the offset asked for, but Tansu returns the first batch that *starts*
/// at or after it, which would silently skip the rest of a batch the last owner stopped
/// in the middle of. Starting a batch's length earlier (librdkafka's producers put at most
/// 10 000 records in a batch: `batch.num.messages`) makes every broker deliver it.
const REWIND_RECORDS: i64 = 10_000;
/// How long to wait for the topic's metadata in one attempt.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the stop waits for the alert records to go out, at most (and never beyond
/// the stop's grace).
const FINAL_FLUSH: Duration = Duration::from_secs(10);

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

/// The stop's grace: it begins when the loop first sees `stop` (at once while it waits
/// on anything) and lasts `shutdown_grace`. Every wait on Kafka after the stop ends
/// with it, so a stop during a Kafka outage still ends on time.
struct Grace {
    stop: CancellationToken,
    length: Duration,
    ends: OnceLock<Instant>,
}

impl Grace {
    fn new(stop: CancellationToken, length: Duration) -> Self {
        Self {
            stop,
            length,
            ends: OnceLock::new(),
        }
    }

    /// When the grace ends; `None` before the stop.
    fn ends(&self) -> Option<Instant> {
        self.stop
            .is_cancelled()
            .then(|| *self.ends.get_or_init(|| Instant::now() + self.length))
    }

    /// Resolves once the stop came and its grace is over.
    async fn over(&self) {
        self.stop.cancelled().await;
        if let Some(ends) = self.ends() {
            tokio::time::sleep_until(ends).await;
        }
    }

    /// What is left of the grace, at most `cap` (all of `cap` before the stop).
    fn left(&self, cap: Duration) -> Duration {
        self.ends()
            .map_or(cap, |ends| ends.saturating_duration_since(Instant::now()))
            .min(cap)
    }
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
    /// because of [`REWIND_RECORDS`] and are passed over.
    skip_below: HashMap<i32, i64>,
    confirmations: Option<Confirmations>,
    grace: Grace,
}

#[derive(Default)]
struct Batch {
    rows: Vec<Row>,
    dead_letters: Vec<DeadLetter>,
    /// Highest offset per partition in the batch.
    offsets: BTreeMap<i32, i64>,
    records: usize,
    opened: Option<Instant>,
    /// Where each device's confirmations go, from its records' headers.
    routes: Routes,
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
        let mut kept = Vec::with_capacity(self.dead_letters.len());
        for letter in std::mem::take(&mut self.dead_letters) {
            if !letter.unknown_to_catalog() {
                kept.push(letter);
                continue;
            }
            match catalog.check(&letter.payload) {
                Ok(frame) => {
                    self.routes.note(frame.device.as_str(), letter.mqtt_topic());
                    rows_from_frame(&frame, &mut self.rows);
                }
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
    /// Nothing arrived before the leases were due for renewal.
    Idle,
    Stopped,
}

pub struct Pipeline {
    /// Shared with the blocking metadata calls (`spawn_blocking`).
    pub consumer: Arc<StreamConsumer<IngestContext>>,
    pub producer: FutureProducer,
    pub store: Store,
    pub redis: Option<RedisSink>,
    pub catalog: Catalog,
    /// Where the confirmations to the devices go; `None`: none are sent.
    pub confirm: Option<ConfirmSink>,
    pub settings: PipelineSettings,
    pub stats: Arc<IngestStats>,
    pub health: Arc<crate::health::Health>,
}

impl Pipeline {
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
        if let Some(confirmations) = state.confirmations.take() {
            confirmations.stop().await;
        }
        match tokio::time::timeout(BALANCE_TIMEOUT, state.ownership.leave()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("partition leases not released (they expire by themselves): {e}"),
            Err(_) => warn!("partition leases not released in time (they expire by themselves)"),
        }
        // Alert records are sent without waiting for Kafka; see them out, within the grace.
        let producer = self.producer.clone();
        let left = state.grace.left(FINAL_FLUSH);
        let flushed = tokio::task::spawn_blocking(move || producer.flush(left)).await;
        if !matches!(flushed, Ok(Ok(()))) {
            warn!("some alert records were not confirmed by Kafka before the stop");
        }
        close_consumer(self.consumer, state.grace.left(FINAL_FLUSH)).await;
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
        let resume = alerts::store::load_resume(pool)
            .await
            .map_err(PipelineError::AlertState)?;
        // Readings dated beyond the bound were never evaluated: durations do not start
        // from them.
        let max_ahead_ms = i64::try_from(self.settings.max_ahead.as_millis()).unwrap_or(i64::MAX);
        let watermarks = alerts::store::load_watermarks(
            pool,
            service::clock::now_ms_i64().saturating_add(max_ahead_ms),
        )
        .await
        .map_err(PipelineError::AlertState)?;
        let coverage = alerts::store::load_coverage(pool)
            .await
            .map_err(PipelineError::AlertState)?;
        let accepted = alerts::store::load_accepted(pool)
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

    /// The topic's partition count, from Kafka's metadata; waits for Kafka and the topic
    /// (`None`: stopped meanwhile).
    async fn partition_count(&self, stop: &CancellationToken) -> Option<i32> {
        let mut last_warning: Option<Instant> = None;
        loop {
            let consumer = self.consumer.clone();
            let topic = self.settings.topic.clone();
            let counted = tokio::task::spawn_blocking(move || -> Result<i32, String> {
                let metadata = consumer
                    .fetch_metadata(Some(&topic), METADATA_TIMEOUT)
                    .map_err(|e| e.to_string())?;
                let found = metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .ok_or_else(|| "it is not in the metadata".to_owned())?;
                if let Some(error) = found.error() {
                    return Err(format!("{error:?}"));
                }
                match i32::try_from(found.partitions().len()) {
                    Ok(0) | Err(_) => Err("it has no partitions".to_owned()),
                    Ok(count) => Ok(count),
                }
            })
            .await;
            let problem = match counted {
                Ok(Ok(count)) => return Some(count),
                Ok(Err(problem)) => problem,
                Err(e) => e.to_string(),
            };
            if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                warn!(
                    "cannot read the partitions of {} ({problem}); trying again",
                    self.settings.topic
                );
                last_warning = Some(Instant::now());
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Between batches: renews the leases, balances the partitions with the other
    /// instances, measures what waits, acts on a stall or a reset log, and re-assigns
    /// the consumer if anything changed (or `force`: a batch was rolled back).
    async fn balance(&self, state: &mut LoopState, force: bool) {
        state.balanced = Some(Instant::now());
        let change = match tokio::time::timeout(BALANCE_TIMEOUT, state.ownership.balance()).await {
            Ok(Ok(change)) => change,
            Ok(Err(e)) => {
                warn!("cannot renew the partition leases in PostgreSQL: {e}");
                Change::default()
            }
            Err(_) => {
                warn!("cannot renew the partition leases: PostgreSQL did not answer");
                Change::default()
            }
        };
        let mut reassign = force || !change.is_empty();
        for partition in change.released.iter().chain(&change.lost) {
            // Their lag is the new owner's to report now.
            self.stats.set_consumer_lag(*partition, 0);
        }
        if !change.is_empty() {
            self.ownership_changed(&change).await;
            state.reload_alerts = true;
        }
        reassign |= self.restart_reset_logs(state).await;
        let marks = self.consumer.context().high_watermarks();
        let mut waiting = 0;
        for (partition, lease) in state.ownership.held() {
            if let Some(&high) = marks.get(partition) {
                let lag = (high - lease.next_offset.unwrap_or(0)).max(0);
                self.stats.set_consumer_lag(*partition, lag);
                waiting += lag as u64;
            }
        }
        self.health.set_waiting(waiting);
        match self.health.stall() {
            Some(stall)
                if state
                    .stall_handled
                    .is_none_or(|at| at.elapsed() >= STALL_AFTER) =>
            {
                warn!("stalled: {stall}; reading the partitions again from the stored offsets");
                self.event(
                    EventLevel::Warning,
                    "stalled",
                    format!("{stall}; reading the partitions again from the stored offsets"),
                    serde_json::json!({ "waiting": waiting, "topic": self.settings.topic }),
                )
                .await;
                state.stall_handled = Some(Instant::now());
                reassign = true;
            }
            Some(_) => {}
            None => state.stall_handled = None,
        }
        if reassign {
            self.assign(state);
        }
    }

    /// A held partition whose log ends before the stored offset was reset (a broker that
    /// lost its storage, a topic made again): it is read from its beginning, since
    /// skipping to the old offset would skip every record written since. Returns whether
    /// any was. Tansu reports the high watermark as the last batch's first offset + 1, so
    /// only a log shorter by more than a batch ([`REWIND_RECORDS`]) counts as reset.
    async fn restart_reset_logs(&self, state: &mut LoopState) -> bool {
        let marks = self.consumer.context().high_watermarks();
        let suspects: Vec<(i32, i64)> = state
            .ownership
            .held()
            .iter()
            .filter_map(|(&partition, lease)| {
                let next = lease.next_offset?;
                marks
                    .get(&partition)
                    .is_some_and(|&high| high + REWIND_RECORDS < next)
                    .then_some((partition, next))
            })
            .collect();
        let mut any = false;
        for (partition, next) in suspects {
            // The statistics may be seconds old: ask the broker before believing them.
            let consumer = self.consumer.clone();
            let topic = self.settings.topic.clone();
            let fresh = tokio::task::spawn_blocking(move || {
                consumer.fetch_watermarks(&topic, partition, METADATA_TIMEOUT)
            })
            .await;
            let Ok(Ok((low, high))) = fresh else {
                continue;
            };
            if high + REWIND_RECORDS >= next {
                continue;
            }
            warn!(
                partition,
                stored = next,
                high,
                "the partition's log ends before the stored offset (it was reset); reading it \
                 from the beginning"
            );
            self.event(
                EventLevel::Warning,
                "offset_reset",
                format!(
                    "partition {partition} of {} ends at {high}, before the stored offset {next}: \
                     the log was reset; reading it again from {low}",
                    self.settings.topic
                ),
                serde_json::json!({
                    "topic": self.settings.topic,
                    "partition": partition,
                    "stored": next,
                    "low": low,
                    "high": high,
                }),
            )
            .await;
            state.ownership.restart_from_beginning(partition);
            any = true;
        }
        any
    }

    /// Assigns the consumer exactly the held partitions, each from a little before its
    /// stored offset ([`REWIND_RECORDS`]).
    fn assign(&self, state: &mut LoopState) {
        let mut list = TopicPartitionList::new();
        state.skip_below.clear();
        for (&partition, lease) in state.ownership.held() {
            let offset = match lease.next_offset {
                Some(next) => {
                    state.skip_below.insert(partition, next);
                    Offset::Offset((next - REWIND_RECORDS).max(0))
                }
                None => Offset::Beginning,
            };
            if let Err(e) = list.add_partition_offset(&self.settings.topic, partition, offset) {
                warn!(partition, "cannot assign the partition: {e}");
            }
        }
        let partitions: Vec<i32> = state.ownership.held().keys().copied().collect();
        info!(?partitions, "consuming");
        if let Err(e) = self.consumer.assign(&list) {
            warn!("Kafka refused the assignment (tried again at the next renewal): {e}");
        }
    }

    /// The partitions this instance took, gave back or lost, as a system event; the
    /// alert state is reloaded before the next evaluation, since another instance may
    /// have moved the alerts of the devices this one just got.
    async fn ownership_changed(&self, change: &Change) {
        info!(
            claimed = ?change.claimed,
            released = ?change.released,
            lost = ?change.lost,
            "partition ownership changed"
        );
        self.event(
            EventLevel::Info,
            "rebalance",
            format!(
                "partitions of {}: claimed {:?}, released {:?}, lost {:?}",
                self.settings.topic, change.claimed, change.released, change.lost
            ),
            serde_json::json!({
                "topic": self.settings.topic,
                "claimed": change.claimed,
                "released": change.released,
                "lost": change.lost,
            }),
        )
        .await;
    }

    /// One attempt at the batch's transaction: reloads the alert state first if a
    /// rebalance asked for it, evaluates the rows against it (all but those dated beyond
    /// the clock bound of `now_ms`), and writes both.
    async fn try_write(
        &self,
        rows: &[Row],
        now_ms: i64,
        progress: &Progress,
        state: &mut LoopState,
    ) -> Result<(Committed, Evaluation), PipelineError> {
        if state.reload_alerts {
            state.alerts = self.load_alerts().await?;
            state.reload_alerts = false;
        }
        let live = state.future_dated.live(rows, now_ms);
        let first_seen =
            alerts::store::first_seen(self.store.pool(), &state.alerts.unfamiliar_boots(&live))
                .await
                .map_err(PipelineError::AlertState)?;
        let evaluation = state.alerts.evaluate(&live, &first_seen);
        let committed = self
            .store
            .write_batch_held(rows, &evaluation.transitions, progress)
            .await?;
        Ok((committed, evaluation))
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
        let renew_at = state
            .balanced
            .map_or_else(Instant::now, |at| at + RENEW_EVERY);
        loop {
            let closes_at = batch
                .opened
                .map_or(renew_at, |opened| opened + self.settings.batch_age);
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Fill::Stopped,
                _ = tokio::time::sleep_until(closes_at) => {
                    return if batch.opened.is_some() { Fill::Aged } else { Fill::Idle };
                }
                message = self.consumer.recv() => match message {
                    Ok(message) => {
                        let stored = state.skip_below.get(&message.partition());
                        if stored.is_some_and(|&stored| message.offset() < stored) {
                            continue;
                        }
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
    /// unreachable, or Kafka had not confirmed the dead letters when the stop's grace
    /// ended (nothing of the batch is stored or acknowledged).
    async fn flush(
        &mut self,
        batch: Batch,
        stop: &CancellationToken,
        state: &mut LoopState,
    ) -> Result<bool, PipelineError> {
        let started = std::time::Instant::now();
        // `message.timeout.ms = 0`: during a Kafka outage this waits for as long as it
        // lasts, unless a stop's grace ends first. The letters left in the producer's
        // queue then go nowhere (they are purged at exit) but the batch is not stored,
        // so they are read and dead-lettered again after the restart.
        tokio::select! {
            produced = dead_letters::produce(
                &self.producer,
                &self.settings.dlq_topic,
                &batch.dead_letters,
                &self.stats,
            ) => produced.map_err(PipelineError::DeadLetter)?,
            () = state.grace.over() => {
                warn!(
                    records = batch.records,
                    dead_letters = batch.dead_letters.len(),
                    "stopping: Kafka did not confirm the batch's dead letters within the \
                     shutdown grace; nothing of the batch is stored, it is read again after \
                     the restart"
                );
                return Ok(false);
            }
        }
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
        let progress = state.ownership.progress(&batch.offsets);
        // One reading of the clock judges which readings are future-dated, however long
        // PostgreSQL keeps the batch waiting.
        let clock_ms = service::clock::now_ms_i64();
        let mut backoff = Duration::from_millis(200);
        let mut failing: Option<(std::time::Instant, u32, String)> = None;
        let (committed, evaluation) = loop {
            match self
                .try_write(&batch.rows, clock_ms, &progress, state)
                .await
            {
                Ok(done) => {
                    self.health.set_postgres(true);
                    break done;
                }
                // A row the decoder should never have produced: retrying cannot help.
                Err(e @ PipelineError::Store(StoreError::InvalidRow { .. })) => return Err(e),
                // Another instance owns some of these partitions now: nothing of the batch
                // was stored; its records are read again by whoever owns them.
                Err(PipelineError::Store(StoreError::LeaseLost { partitions })) => {
                    self.health.set_postgres(true);
                    warn!(
                        ?partitions,
                        "lost the lease on partitions while writing; the batch was rolled \
                         back and is read again from the stored offsets"
                    );
                    self.balance(state, true).await;
                    return Ok(true);
                }
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
        state.ownership.committed(&progress);
        let Committed {
            outcome,
            mut applied,
            held,
        } = committed;
        state
            .alerts
            .note_coverage(&held, service::clock::now_ms_i64());
        applied.extend(self.data_loss(state).await);
        if let Some(confirmations) = &state.confirmations {
            confirmations.after_commit(&held, &batch.routes, &batch.dead_letters);
        }
        self.health.progressed();
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
            // For the tools that show the group's progress; nothing reads it back.
            if let Err(e) = self
                .consumer
                .store_offset(&self.settings.topic, *partition, *offset)
            {
                warn!(
                    partition,
                    "offset not stored in Kafka (informational only): {e}"
                );
            }
        }
        self.stats.batch(
            batch.records,
            outcome.inserted,
            outcome.duplicates,
            started.elapsed(),
        );
        self.future_dated(&batch.rows, clock_ms, state).await;
        let at_ms = service::clock::now_ms_i64();
        let events: Vec<AlertEvent> = applied
            .iter()
            .map(|applied| alert_publish::event(applied, state.alerts.rules(), at_ms))
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
        let live = live_rows(batch.rows, &held, clock_ms, &state.future_dated);
        self.to_redis(live, &events, state).await;
        Ok(true)
    }

    /// Counts a committed batch's future-dated readings per device, and records the
    /// start of each device's episode of them as a `future_dated` system event.
    async fn future_dated(&self, rows: &[Row], clock_ms: i64, state: &mut LoopState) {
        let max_ahead = state.future_dated.max_ahead();
        for ahead in state.future_dated.committed(rows, clock_ms) {
            self.stats.future_dated(&ahead.device_id, ahead.readings);
            if !ahead.begins {
                continue;
            }
            let (boot, seq, ts_ms) = ahead.first;
            let ahead_ms = ts_ms.saturating_sub(clock_ms);
            warn!(
                device = ahead.device_id,
                ahead_ms, "a reading dated beyond clock.max_ahead: stored, not live"
            );
            self.event(
                EventLevel::Warning,
                "future_dated",
                format!(
                    "{}: reading dated {} ahead of the ingester's clock (beyond \
                     clock.max_ahead {}); stored, but it and those after it that far ahead \
                     drive neither latest, last_seen nor alerts until a reading within the \
                     bound arrives",
                    ahead.device_id,
                    humantime::format_duration(Duration::from_millis(ahead_ms.max(0) as u64)),
                    humantime::format_duration(max_ahead),
                ),
                serde_json::json!({
                    "device_id": ahead.device_id,
                    "boot": format!("{:016x}", boot as u64),
                    "seq": seq,
                    "ts_ms": ts_ms,
                    "ahead_ms": ahead_ms,
                    "max_ahead_ms": max_ahead.as_millis() as u64,
                    "readings": ahead.readings,
                }),
            )
            .await;
        }
    }

    /// The `data_loss` transitions due now, written in a transaction of their own and
    /// adopted once it commits. A failure is logged; they are due again at the next check.
    async fn data_loss(&self, state: &mut LoopState) -> Vec<Applied> {
        let evaluation = state
            .alerts
            .evaluate_data_loss(service::clock::now_ms_i64());
        if evaluation.transitions.is_empty() {
            return Vec::new();
        }
        match alerts::store::apply_alone(self.store.pool(), &evaluation.transitions).await {
            Ok(applied) => {
                state.alerts.adopt(evaluation);
                applied
            }
            Err(e) => {
                warn!("cannot write the data_loss alert transitions (tried again later): {e}");
                Vec::new()
            }
        }
    }

    /// [`Pipeline::data_loss`] when no batch came (a loss opens by the clock), published
    /// as a batch's transitions are: Kafka, then Redis unless a Redis gap is open (its end
    /// rebuilds the open alerts from the table). Skipped while a rebalance's reload of
    /// the alert state is pending: the next batch does it first.
    async fn data_loss_between_batches(&self, state: &mut LoopState) {
        if state.reload_alerts {
            return;
        }
        let applied = self.data_loss(state).await;
        if applied.is_empty() {
            return;
        }
        let at_ms = service::clock::now_ms_i64();
        let events: Vec<AlertEvent> = applied
            .iter()
            .map(|applied| alert_publish::event(applied, state.alerts.rules(), at_ms))
            .collect();
        for event in &events {
            self.stats.alert_transition(event.transition);
        }
        if !self.settings.alerts_topic.is_empty() {
            if let Err(e) =
                alert_publish::to_kafka(&self.producer, &self.settings.alerts_topic, &events).await
            {
                warn!("alert records not published to Kafka (they are in the alerts table): {e}");
            }
        }
        let Some(redis) = &self.redis else {
            return;
        };
        if state.redis_down_since.is_some() {
            return;
        }
        if let Err(e) = alert_publish::to_redis(redis, &events).await {
            self.stats.redis_error();
            self.redis_gap_begins(state, &e.to_string()).await;
        }
    }

    /// The batch's newest values and alert transitions into Redis, best effort: while
    /// Redis is away the newest value per channel waits in memory (bounded by the number
    /// of channels), and when it is back the open alerts are rebuilt from the database.
    /// Each gap is logged once as a `redis_gap` system event, and again when it ends.
    async fn to_redis(&self, rows: Vec<LiveRow>, events: &[AlertEvent], state: &mut LoopState) {
        let Some(redis) = &self.redis else {
            return;
        };
        let backlog = &mut state.redis_backlog;
        // What an earlier failure left waiting goes too (newer rows win anyway); the
        // batch is only copied in that rare case.
        let written = if backlog.is_empty() {
            redis.write_batch(&rows, service::clock::now_ms_i64()).await
        } else {
            let mut all: Vec<LiveRow> = backlog.values().cloned().collect();
            all.extend_from_slice(&rows);
            redis.write_batch(&all, service::clock::now_ms_i64()).await
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
                for live in rows {
                    let key = (live.row.device_id.clone(), live.row.channel_id);
                    match backlog.get(&key) {
                        Some(kept) if !live.is_newer_than(kept) => {}
                        _ => {
                            backlog.insert(key, live);
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

/// The committed rows that may drive Redis: all but the future-dated ones, each with when
/// PostgreSQL first saw its boot (from the commit's coverage, which names every boot of
/// the batch).
fn live_rows(rows: Vec<Row>, held: &[Held], clock_ms: i64, future: &FutureDated) -> Vec<LiveRow> {
    let first_seen: HashMap<(&str, i64), i64> = held
        .iter()
        .map(|held| ((held.device_id.as_str(), held.boot_id), held.first_seen_us))
        .collect();
    rows.into_iter()
        .filter(|row| !future.is_ahead(row, clock_ms))
        .filter_map(|row| {
            let boot_seen_us = *first_seen.get(&(row.device_id.as_str(), row.boot_id))?;
            Some(LiveRow { row, boot_seen_us })
        })
        .collect()
}

/// Commits the stored offsets to the group (for the tools that show them) and closes the
/// consumer, on a thread of its own, waiting for that at most `wait`. Both talk to the
/// group coordinator, and during a Kafka outage the close (librdkafka's, when the
/// consumer is dropped) waits for it as long as the outage lasts; a close left behind
/// ends with the process. Nothing is lost either way: the stored offsets that count are
/// in PostgreSQL.
async fn close_consumer(consumer: Arc<StreamConsumer<IngestContext>>, wait: Duration) {
    let (closed, has_closed) = tokio::sync::oneshot::channel::<()>();
    let closing = std::thread::Builder::new()
        .name("consumer-close".to_owned())
        .spawn(move || {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                // Nothing stored since the last automatic commit is not an error.
                if e.rdkafka_error_code() != Some(RDKafkaErrorCode::NoOffset) {
                    warn!("final offset commit to Kafka failed (informational only): {e}");
                }
            }
            drop(consumer);
            let _ = closed.send(());
        });
    if let Err(e) = closing {
        warn!("cannot close the Kafka consumer on a thread of its own: {e}");
        return;
    }
    if tokio::time::timeout(wait, has_closed).await.is_err() {
        warn!(
            "Kafka did not answer the consumer's close within the shutdown grace; stopping \
             without it (the group's offsets are informational, PostgreSQL holds the progress)"
        );
    }
}

/// Adds one record to the batch: its rows, or a dead letter.
fn add(catalog: &Catalog, batch: &mut Batch, message: &BorrowedMessage<'_>) {
    batch.opened.get_or_insert_with(Instant::now);
    batch.records += 1;
    let offset = batch.offsets.entry(message.partition()).or_insert(-1);
    *offset = (*offset).max(message.offset());
    let payload = message.payload().unwrap_or_default();
    match catalog.check(payload) {
        Ok(frame) => {
            let mqtt_topic = confirmations::mqtt_topic_of(message.headers());
            batch.routes.note(frame.device.as_str(), mqtt_topic);
            rows_from_frame(&frame, &mut batch.rows);
        }
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
