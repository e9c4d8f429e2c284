//! Partitions between batches: how many the topic has, the leases renewed and balanced
//! with the other instances, reset logs and stalls noticed, and the consumer assigned
//! exactly the held partitions from their stored offsets.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{LoopState, Pipeline};
use crate::kafka::{self, IngestContext};
use crate::ownership::Change;
use crate::readiness::STALL_AFTER;
use crate::store::EventLevel;

/// How long one renewal and balancing step may take before it is tried again later.
pub(super) const BALANCE_TIMEOUT: Duration = Duration::from_secs(5);
/// How far before its stored offset a partition is read again when it is assigned; the
/// records before the stored offset are passed over here. A broker must return the record
/// batch that holds the offset asked for, but Tansu returns the first batch that *starts*
/// at or after it, which would silently skip the rest of a batch the last owner stopped
/// in the middle of. Starting a batch's length earlier (librdkafka's producers put at most
/// 10 000 records in a batch: `batch.num.messages`) makes every broker deliver it.
pub(super) const REWIND_RECORDS: i64 = 10_000;
/// What happens to the records an assignment reads again below the stored offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rewound {
    /// Passed over: they were stored.
    Skipped,
    /// Written again: they may be new (see `Pipeline::replace_consumer`).
    Kept,
}

/// How long to wait for the topic's metadata in one attempt.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

impl Pipeline {
    /// The topic's partition count, from Kafka's metadata; waits for Kafka and the topic
    /// (`None`: stopped meanwhile).
    pub(super) async fn partition_count(&self, stop: &CancellationToken) -> Option<i32> {
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
    pub(super) async fn balance(&self, state: &mut LoopState, force: bool) {
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
        self.readiness.set_waiting(waiting);
        match self.readiness.stall() {
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
            self.assign(state, Rewound::Skipped);
        }
    }

    /// A held partition whose log ends before the stored offset was reset (a broker that
    /// lost its storage, a topic made again): it is read from its beginning, since
    /// skipping to the old offset would skip every record written since. Returns whether
    /// any was. Tansu reports the high watermark as the last batch's first offset + 1, so
    /// a log shorter by less than a batch ([`REWIND_RECORDS`]) is read to its real end
    /// before it is believed reset (`kafka::log_end`): only when its stored offset has
    /// not moved since the last balance (a partition being read is not reset), and once
    /// per high watermark.
    async fn restart_reset_logs(&self, state: &mut LoopState) -> bool {
        let marks = self.consumer.context().high_watermarks();
        let suspects: Vec<(i32, i64)> = state
            .ownership
            .held()
            .iter()
            .filter_map(|(&partition, lease)| {
                let next = lease.next_offset?;
                let still = state.offsets_seen.get(&partition) == Some(&next);
                marks
                    .get(&partition)
                    .is_some_and(|&high| {
                        high + REWIND_RECORDS < next
                            || (high < next
                                && still
                                && state.log_ends_checked.get(&partition) != Some(&(high, next)))
                    })
                    .then_some((partition, next))
            })
            .collect();
        state.offsets_seen = state
            .ownership
            .held()
            .iter()
            .filter_map(|(&partition, lease)| Some((partition, lease.next_offset?)))
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
            if high >= next {
                continue;
            }
            if high + REWIND_RECORDS >= next {
                let (kafka, instance, topic) = (
                    self.kafka.clone(),
                    self.settings.instance.clone(),
                    self.settings.topic.clone(),
                );
                let end = tokio::task::spawn_blocking(move || {
                    kafka::log_end(
                        &kafka,
                        &instance,
                        &topic,
                        partition,
                        high,
                        Duration::from_millis(500),
                        METADATA_TIMEOUT,
                    )
                })
                .await;
                match end {
                    Ok(Ok(end)) if end >= next => {
                        state.log_ends_checked.insert(partition, (high, next));
                        continue;
                    }
                    Ok(Ok(_)) => {}
                    // Not readable now: asked again at the next balance.
                    _ => continue,
                }
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

    /// Drops a consumer that lost Kafka for a new one, assigned the held partitions from
    /// their stored offsets (`service::kafka_connection` says why). If no new one can be
    /// made, the old one goes on, as librdkafka would have it.
    ///
    /// The broker that comes back may have lost its logs, and a log that restarted from
    /// offset 0 but is not yet shorter than the stored offset by [`REWIND_RECORDS`] does
    /// not look reset (`restart_reset_logs`): its records below the stored offset are new.
    /// So the rewound records are kept, not skipped, this once; those that were stored
    /// are written again as nothing (the store's key).
    pub(super) fn replace_consumer(&mut self, state: &mut LoopState) {
        let consumer = match kafka::consumer(
            &self.kafka,
            &self.settings.instance,
            IngestContext::new(self.readiness.clone()),
        ) {
            Ok(consumer) => consumer,
            Err(e) => {
                warn!("the Kafka consumer lost its connection and a new one cannot be made: {e}");
                return;
            }
        };
        warn!("the Kafka consumer lost its connection; reading on with a new one from the stored offsets");
        self.stats.consumer_replaced();
        let lost = std::mem::replace(&mut self.consumer, Arc::new(consumer));
        // Left to close by itself: the loop goes on with the new one.
        drop(service::kafka_connection::retire(lost));
        self.assign(state, Rewound::Kept);
    }

    /// Assigns the consumer exactly the held partitions, each from a little before its
    /// stored offset ([`REWIND_RECORDS`]); the records read again below it are skipped
    /// or kept as `rewound` says.
    fn assign(&self, state: &mut LoopState, rewound: Rewound) {
        let mut list = TopicPartitionList::new();
        state.skip_below.clear();
        for (&partition, lease) in state.ownership.held() {
            let offset = match lease.next_offset {
                Some(next) => {
                    if rewound == Rewound::Skipped {
                        state.skip_below.insert(partition, next);
                    }
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
}
