//! A consumer that lost its connection to Kafka is dropped and made again, in the bridge's
//! confirmation relay and in the ingester alike: this says when.
//!
//! The broker that comes back may not be the one that left. Tansu restarted without its
//! storage gives the topics new ids and answers a fetch by an old id with a leader hint
//! whose topic id is zero, which librdkafka 2.12 then looks up by a null name: a
//! segmentation fault in the service. A new consumer asks for the metadata first, so it
//! never fetches by an id the broker does not know. Against a broker that only blinked,
//! a new consumer costs a metadata round trip.
//!
//! This narrows the window, it does not close it: the old consumer reconnects at once
//! when the broker is already back, so a service whose process slept through the
//! broker's restart (frozen, or on a suspended VM), or did not read its consumer's
//! errors meanwhile, may still crash; its supervisor restarts it, and the agents resend
//! whatever was not confirmed.

use std::ops::Deref;

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// The error says the connection to Kafka was lost.
pub fn lost(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown)
    )
}

/// Gets rid of a consumer that lost Kafka: unassigned first, so that it fetches nothing
/// more even if it reconnects while it closes, then closed and destroyed on a blocking
/// thread (that waits on librdkafka's threads, not on a runtime worker). The returned
/// handle may be awaited or left to finish.
pub fn retire<T, C, X>(consumer: T) -> tokio::task::JoinHandle<()>
where
    T: Deref<Target = C> + Send + 'static,
    C: Consumer<X>,
    X: ConsumerContext,
{
    let _ = consumer.unassign();
    tokio::task::spawn_blocking(move || drop(consumer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lost_connection_counts() {
        for code in [
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
        ] {
            assert!(lost(&KafkaError::MessageConsumption(code)), "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::OffsetOutOfRange,
        ] {
            assert!(!lost(&KafkaError::MessageConsumption(code)), "{code:?}");
        }
    }
}
