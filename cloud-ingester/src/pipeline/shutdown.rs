//! The stop: its grace, and what the loop does on its way out (confirmations, leases,
//! the last alert records, the consumer's close), each bounded by that grace.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::Producer;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::balance::BALANCE_TIMEOUT;
use super::{LoopState, Pipeline};
use crate::kafka::IngestContext;

/// How long the stop waits for the alert records to go out, at most (and never beyond
/// the stop's grace).
const FINAL_FLUSH: Duration = Duration::from_secs(10);

/// The stop's grace: it begins when the loop first sees `stop` (at once while it waits
/// on anything) and lasts `shutdown_grace`. Every wait on Kafka after the stop ends
/// with it, so a stop during a Kafka outage still ends on time.
pub(super) struct Grace {
    stop: CancellationToken,
    length: Duration,
    ends: OnceLock<Instant>,
}

impl Grace {
    pub(super) fn new(stop: CancellationToken, length: Duration) -> Self {
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
    pub(super) async fn over(&self) {
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

impl Pipeline {
    /// After the last batch: stops the confirmations, gives back the leases, sees the
    /// alert records out and closes the consumer, all within the stop's grace.
    pub(super) async fn shut_down(self, mut state: LoopState) {
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
    }
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
