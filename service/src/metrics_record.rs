//! The periodic metrics record: every interval, one JSON record on a Kafka topic, keyed
//! by the instance, so the pipeline's own health can be followed (and kept) with the same
//! tools as its data, without scraping every instance.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientContext;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Sends `snapshot()` to `topic` with key `key` every `interval`, the first one interval
/// after the start, until `stop`. A record the producer cannot take (its queue full, or
/// Kafka refusing it) is skipped with a warning: the next one carries the totals anyway,
/// and waiting for it would hold up nothing useful.
pub async fn publish_periodically<C, F>(
    producer: FutureProducer<C>,
    topic: String,
    key: String,
    interval: Duration,
    mut snapshot: F,
    stop: CancellationToken,
) where
    C: ClientContext + 'static,
    F: FnMut() -> serde_json::Value + Send + 'static,
{
    let mut tick = tokio::time::interval(interval);
    // The first tick completes at once; a record of all zeros at start says nothing.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let body = snapshot().to_string();
        let sent = producer.send_result(FutureRecord::to(&topic).key(&key).payload(&body));
        if let Err((e, _)) = sent {
            warn!(topic, "metrics record skipped: {e}");
        }
    }
}
