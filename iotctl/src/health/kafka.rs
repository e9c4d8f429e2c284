//! The Kafka checks of `iotctl health`: the brokers answer, and every topic of the
//! pipeline exists with the partition count a device's partition depends on.

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::metadata::Metadata;

use super::Check;
use crate::global::Global;
use crate::output;
use crate::services::{self, CONNECT_TIMEOUT};

pub(super) async fn kafka_checks(global: &Global) -> Vec<Check> {
    let brokers = global.kafka_brokers.clone();
    let metadata = match fetch_metadata(global).await {
        Ok(metadata) => metadata,
        Err(e) => {
            return vec![
                Check::fail(
                    "kafka",
                    format!(
                        "cannot reach Kafka at {brokers}: {}",
                        output::error_text(&e)
                    ),
                    "start Kafka (local stack: `scripts/stack.sh up`) or correct \
                     --kafka-brokers / KAFKA_BROKERS",
                ),
                Check::blocked("kafka-topics", "kafka"),
            ]
        }
    };
    let reachable = Check::ok(
        "kafka",
        format!(
            "{} broker(s) at {brokers}, {} topics",
            metadata.brokers().len(),
            metadata.topics().len()
        ),
    );
    let found: Vec<(String, Option<usize>)> = metadata
        .topics()
        .iter()
        .map(|t| {
            let partitions = t.error().is_none().then(|| t.partitions().len());
            (t.name().to_owned(), partitions)
        })
        .collect();
    vec![reachable, topics_verdict(&found, &brokers)]
}

async fn fetch_metadata(global: &Global) -> Result<Metadata> {
    let consumer: BaseConsumer = services::kafka(global)
        .create()
        .context("invalid Kafka settings")?;
    // fetch_metadata blocks the calling thread; keep it off the runtime's workers.
    tokio::task::spawn_blocking(move || consumer.fetch_metadata(None, CONNECT_TIMEOUT))
        .await
        .context("the metadata request did not finish")?
        .map_err(Into::into)
}

/// Each topic of the pipeline with its partition count, against what the broker has
/// (`None`: the broker reports an error for the topic).
fn topics_verdict(found: &[(String, Option<usize>)], brokers: &str) -> Check {
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    let mut summary = Vec::new();
    for topic in protocol::kafka::ALL_TOPICS {
        let expected = usize::try_from(topic.partitions).unwrap_or_default();
        match found.iter().find(|(name, _)| name == topic.name) {
            None | Some((_, Some(0))) => {
                problems.push(format!("{} is missing", topic.name));
                fixes.push(format!(
                    "kafka-topics.sh --bootstrap-server {brokers} --create --topic {} \
                     --partitions {expected}",
                    topic.name
                ));
            }
            Some((_, None)) => {
                problems.push(format!(
                    "{} is unavailable (the broker reports an error)",
                    topic.name
                ));
                fixes.push(format!("check the broker's log about {}", topic.name));
            }
            Some((_, Some(n))) if *n != expected => {
                problems.push(format!(
                    "{} has {n} partitions, expected {expected}",
                    topic.name
                ));
                fixes.push(format!(
                    "recreate {} with {expected} partitions (the partition of a device \
                     depends on the count)",
                    topic.name
                ));
            }
            Some(_) => summary.push(format!("{} {expected}", topic.name)),
        }
    }
    if problems.is_empty() {
        Check::ok(
            "kafka-topics",
            format!("partitions: {}", summary.join(", ")),
        )
    } else {
        Check::fail(
            "kafka-topics",
            problems.join("; "),
            format!(
                "{} (the local stack's `scripts/stack.sh up` creates them all)",
                fixes.join("; ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_topic_partitions() {
        let all: Vec<(String, Option<usize>)> = protocol::kafka::ALL_TOPICS
            .iter()
            .map(|t| (t.name.to_owned(), Some(t.partitions as usize)))
            .collect();
        assert!(topics_verdict(&all, "b:9092").ok);
        let mut wrong = all.clone();
        wrong.retain(|(n, _)| n != "alerts");
        wrong[0].1 = Some(1);
        let verdict = topics_verdict(&wrong, "b:9092");
        assert!(!verdict.ok);
        assert!(verdict.detail.contains("alerts is missing"));
        assert!(verdict
            .detail
            .contains("sensors-data has 1 partitions, expected 3"));
        assert!(verdict
            .fix
            .unwrap()
            .contains("--topic alerts --partitions 2"));
    }
}
