//! The batch's commit: its dead letters confirmed by Kafka, then its rows, alert
//! transitions and offsets in one transaction (retried until it commits, the stop comes or
//! a lease is lost), then what follows a commit.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::batch::Batch;
use super::{LoopState, Pipeline, PipelineError};
use crate::alerts::{self, Evaluation};
use crate::coverage::Held;
use crate::dead_letters;
use crate::future_dated::FutureDated;
use crate::ownership::Progress;
use crate::redis_sink::LiveRow;
use crate::rows::Row;
use crate::store::{Committed, EventLevel, StoreError};

impl Pipeline {
    /// Dead letters, then rows with the alert transitions they cause, then offsets, then
    /// the alert records and Redis. `Ok(false)` if `stop` came while PostgreSQL was
    /// unreachable, or Kafka had not confirmed the dead letters when the stop's grace
    /// ended (nothing of the batch is stored or acknowledged).
    pub(super) async fn flush(
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
                    self.readiness.set_postgres(true);
                    break done;
                }
                // A row the decoder should never have produced: retrying cannot help.
                Err(e @ PipelineError::Store(StoreError::InvalidRow { .. })) => return Err(e),
                // Another instance owns some of these partitions now: nothing of the batch
                // was stored; its records are read again by whoever owns them.
                Err(PipelineError::Store(StoreError::LeaseLost { partitions })) => {
                    self.readiness.set_postgres(true);
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
                    self.readiness.set_postgres(false);
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
        self.readiness.progressed();
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
        let events = self.announce(&applied, state).await;
        let live = live_rows(batch.rows, &held, clock_ms, &state.future_dated);
        self.to_redis(live, &events, state).await;
        Ok(true)
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
            alerts::sql::first_seen(self.store.pool(), &state.alerts.unfamiliar_boots(&live))
                .await
                .map_err(PipelineError::AlertState)?;
        let evaluation = state.alerts.evaluate(&live, &first_seen);
        let committed = self
            .store
            .write_batch_held(rows, &evaluation.transitions, progress)
            .await?;
        Ok((committed, evaluation))
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
