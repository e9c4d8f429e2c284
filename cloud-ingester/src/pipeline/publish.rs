//! What follows the commits, best effort: the `data_loss` transitions judged by the
//! clock (in a transaction of their own), the alert records on Kafka, and the newest
//! values and open alerts in Redis, with its gaps bridged in memory.

use tracing::{info, warn};

use super::{LoopState, Pipeline};
use crate::alerts;
use crate::alerts::publish::{self as alert_publish, AlertEvent};
use crate::alerts::sql::Applied;
use crate::redis_sink::LiveRow;
use crate::store::EventLevel;

impl Pipeline {
    /// The `data_loss` transitions due now, written in a transaction of their own and
    /// adopted once it commits. A failure is logged; they are due again at the next check.
    pub(super) async fn data_loss(&self, state: &mut LoopState) -> Vec<Applied> {
        let evaluation = state
            .alerts
            .evaluate_data_loss(service::clock::now_ms_i64());
        if evaluation.transitions.is_empty() {
            return Vec::new();
        }
        match alerts::sql::apply_alone(self.store.pool(), &evaluation.transitions).await {
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
    pub(super) async fn data_loss_between_batches(&self, state: &mut LoopState) {
        if state.reload_alerts {
            return;
        }
        let applied = self.data_loss(state).await;
        if applied.is_empty() {
            return;
        }
        let events = self.announce(&applied, state).await;
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

    /// The records of committed alert transitions, counted and sent to the Kafka
    /// `alerts` topic (when one is set); a failed send is logged, as the rows are in the
    /// `alerts` table already.
    pub(super) async fn announce(&self, applied: &[Applied], state: &LoopState) -> Vec<AlertEvent> {
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
        events
    }

    /// The batch's newest values and alert transitions into Redis, best effort: while
    /// Redis is away the newest value per channel waits in memory (bounded by the number
    /// of channels), and when it is back the open alerts are rebuilt from the database.
    /// Each gap is logged once as a `redis_gap` system event, and again when it ends.
    pub(super) async fn to_redis(
        &self,
        rows: Vec<LiveRow>,
        events: &[AlertEvent],
        state: &mut LoopState,
    ) {
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
    pub(super) async fn redis_gap_begins(&self, state: &mut LoopState, error: &str) {
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
