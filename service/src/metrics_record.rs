//! The periodic metrics record: every interval, one JSON record on a Kafka topic, keyed
//! by the instance, so the pipeline's own health can be followed (and kept) with the same
//! tools as its data, without scraping every instance.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use contracts::metrics::MetricsRecord;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientContext;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Makes a service's records: the envelope (`contracts::metrics::MetricsRecord`) around
/// its counters, with the rates since the previous record of the counters it names.
pub struct Recorder {
    service: &'static str,
    instance: String,
    labels: BTreeMap<String, String>,
    previous: Vec<(&'static str, u64)>,
    previous_at: Instant,
}

impl Recorder {
    pub fn new(service: &'static str, instance: &str, labels: &[(&str, &str)]) -> Self {
        Self {
            service,
            instance: instance.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            previous: Vec::new(),
            previous_at: Instant::now(),
        }
    }

    /// The record of `counters` now; `rated` are the counters to give a rate for, by
    /// name and value (a counter first seen now is rated from zero since the start).
    pub fn record<C: Serialize>(
        &mut self,
        connected: &[(&'static str, bool)],
        counters: C,
        rated: &[(&'static str, u64)],
    ) -> serde_json::Value {
        let now = Instant::now();
        let seconds = now.duration_since(self.previous_at).as_secs_f64().max(1e-3);
        let per_s = rated
            .iter()
            .map(|(name, value)| {
                let before = self
                    .previous
                    .iter()
                    .find(|(known, _)| known == name)
                    .map_or(0, |(_, before)| *before);
                (
                    (*name).to_owned(),
                    value.saturating_sub(before) as f64 / seconds,
                )
            })
            .collect();
        self.previous = rated.to_vec();
        self.previous_at = now;
        let record = MetricsRecord {
            service: self.service.to_owned(),
            instance: self.instance.clone(),
            at_ms: crate::clock::now_ms_i64(),
            labels: self.labels.clone(),
            connected: connected
                .iter()
                .map(|(name, up)| ((*name).to_owned(), *up))
                .collect(),
            counters,
            per_s,
        };
        // Counters are numbers and names: they always serialize.
        serde_json::to_value(record).unwrap_or_default()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_carries_the_envelope_and_rates_since_the_previous_one() {
        let mut recorder = Recorder::new("bridge", "b1", &[("mode", "embedded")]);
        let first = recorder.record(
            &[("kafka", true)],
            serde_json::json!({"received": 0}),
            &[("received", 0)],
        );
        assert_eq!(first["service"], "bridge");
        assert_eq!(first["instance"], "b1");
        assert_eq!(first["labels"]["mode"], "embedded");
        assert_eq!(first["connected"]["kafka"], true);
        assert_eq!(first["counters"]["received"], 0);
        assert!(first["at_ms"].as_i64().is_some_and(|at| at > 0));
        std::thread::sleep(Duration::from_millis(20));
        let second = recorder.record(
            &[("kafka", true)],
            serde_json::json!({"received": 10}),
            &[("received", 10)],
        );
        let rate = second["per_s"]["received"].as_f64().unwrap_or_default();
        assert!(rate > 0.0 && rate <= 10.0 / 0.020, "{second}");
        let parsed: MetricsRecord<serde_json::Value> = serde_json::from_value(second).unwrap();
        assert_eq!(parsed.counters["received"], 10);
    }
}
