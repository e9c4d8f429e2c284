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
//! Back-pressure: while a batch is being written nothing more is consumed; librdkafka's
//! prefetch (`queued.max.messages.kbytes`) is the only other buffer.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::redis_sink::RedisSink;
use crate::rows::{rows_from_frame, Row};
use crate::stats::IngestStats;
use crate::store::Store;
use crate::validate::{Catalog, Rejection};
use protocol::kafka::headers;

/// How often the device catalog is re-read, so newly registered devices are accepted.
const CATALOG_REFRESH: Duration = Duration::from_secs(60);
/// How often partitions for the coming days are ensured (and retention applied).
const PARTITION_UPKEEP: Duration = Duration::from_secs(3600);
/// Days of `sensor_readings` partitions kept ready ahead of today.
const PARTITIONS_AHEAD: i32 = 8;

#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub topic: String,
    pub dlq_topic: String,
    pub instance: String,
    /// A batch closes at this many readings...
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
    Store(#[from] crate::store::StoreError),
}

/// A record set aside, with what it came with.
struct DeadLetter {
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    rejection: Rejection,
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
}

enum Fill {
    Full,
    Aged,
    Stopped,
}

pub struct Pipeline {
    pub consumer: StreamConsumer,
    pub producer: FutureProducer,
    pub store: Store,
    pub redis: Option<RedisSink>,
    pub catalog: Catalog,
    pub settings: PipelineSettings,
    pub stats: Arc<IngestStats>,
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
        let mut last_upkeep = Instant::now();
        let mut last_catalog = Instant::now();
        let mut redis_backlog: HashMap<(String, i16), Row> = HashMap::new();
        loop {
            let mut batch = Batch::default();
            let fill = self.fill(&mut batch, &stop).await;
            // `false`: stopped while PostgreSQL was away; the batch will be replayed.
            if !batch.is_empty() && !self.flush(batch, &stop, &mut redis_backlog).await? {
                break;
            }
            if matches!(fill, Fill::Stopped) {
                break;
            }
            if last_catalog.elapsed() >= CATALOG_REFRESH {
                last_catalog = Instant::now();
                match Catalog::load(self.store.pool()).await {
                    Ok(catalog) => self.catalog = catalog,
                    Err(e) => warn!("cannot refresh the device catalog: {e}"),
                }
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
        Ok(())
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

    async fn fill(&mut self, batch: &mut Batch, stop: &CancellationToken) -> Fill {
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
                        if batch.rows.len() >= self.settings.batch_rows {
                            return Fill::Full;
                        }
                    }
                    Err(e) => warn!("Kafka consumer: {e}"),
                },
            }
        }
    }

    /// Dead letters, then rows, then offsets, then Redis. `Ok(false)` if `stop` came
    /// while PostgreSQL was unreachable (nothing of the batch is acknowledged).
    async fn flush(
        &mut self,
        batch: Batch,
        stop: &CancellationToken,
        redis_backlog: &mut HashMap<(String, i16), Row>,
    ) -> Result<bool, PipelineError> {
        let started = std::time::Instant::now();
        self.dead_letter(&batch.dead_letters).await?;
        let mut backoff = Duration::from_millis(200);
        let outcome = loop {
            match self.store.write_batch(&batch.rows).await {
                Ok(outcome) => break outcome,
                // A row the decoder should never have produced: retrying cannot help.
                Err(e @ crate::store::StoreError::InvalidRow { .. }) => return Err(e.into()),
                Err(e) => {
                    self.stats.store_error();
                    error!(
                        "PostgreSQL write failed ({e}); retrying in {} with the same batch",
                        humantime::format_duration(backoff)
                    );
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(false),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
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
        if let Some(redis) = &self.redis {
            // What an earlier failure left waiting goes too (newer rows win anyway); the
            // batch is only copied in that rare case.
            let written = if redis_backlog.is_empty() {
                redis.write_batch(&batch.rows, now_ms()).await
            } else {
                let mut rows: Vec<Row> = redis_backlog.values().cloned().collect();
                rows.extend_from_slice(&batch.rows);
                redis.write_batch(&rows, now_ms()).await
            };
            match written {
                Ok(_) => redis_backlog.clear(),
                Err(e) => {
                    self.stats.redis_error();
                    for row in batch.rows {
                        let key = (row.device_id.clone(), row.channel_id);
                        match redis_backlog.get(&key) {
                            Some(kept) if kept.ts_ms >= row.ts_ms => {}
                            _ => {
                                redis_backlog.insert(key, row);
                            }
                        }
                    }
                    warn!(
                        waiting = redis_backlog.len(),
                        "Redis write failed ({e}); the newest value per channel waits for it"
                    );
                }
            }
        }
        Ok(true)
    }

    /// Produces the batch's dead letters and waits for Kafka to confirm all of them.
    async fn dead_letter(&self, letters: &[DeadLetter]) -> Result<(), PipelineError> {
        let mut deliveries = Vec::with_capacity(letters.len());
        for letter in letters {
            let mut record_headers = OwnedHeaders::new_with_capacity(letter.headers.len() + 3);
            for (key, value) in &letter.headers {
                record_headers = record_headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            let record_headers = record_headers
                .insert(Header {
                    key: headers::DLQ_REASON,
                    value: Some(letter.rejection.reason.code()),
                })
                .insert(Header {
                    key: headers::DLQ_DETAIL,
                    value: Some(&letter.rejection.detail),
                })
                .insert(Header {
                    key: headers::DLQ_SOURCE,
                    value: Some("cloud-ingester"),
                });
            let mut record = FutureRecord::to(&self.settings.dlq_topic)
                .payload(&letter.payload)
                .headers(record_headers);
            if let Some(key) = &letter.key {
                record = record.key(key);
            }
            let delivery = loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => break delivery,
                    Err((e, back))
                        if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) =>
                    {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(PipelineError::DeadLetter(e)),
                }
            };
            deliveries.push((delivery, letter.rejection.reason));
        }
        for (delivery, reason) in deliveries {
            match delivery.await {
                Ok(Ok(_)) => self.stats.dead_lettered(reason),
                Ok(Err((e, _))) => return Err(PipelineError::DeadLetter(e)),
                Err(_) => {
                    return Err(PipelineError::DeadLetter(KafkaError::Canceled));
                }
            }
        }
        Ok(())
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
