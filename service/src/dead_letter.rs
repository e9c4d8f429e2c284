//! What both services that dead-letter records (the bridge and the ingester) must agree
//! on: which Kafka errors are about one record, and how far a refused dead letter is cut.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// A dead letter Kafka refuses whole is sent again cut to this many bytes, with its
/// original length in a header, so that one oversized record never stops a service.
pub const TRUNCATED_BYTES: usize = 1024;

/// Errors about one record itself, which another record would not get: the record can
/// be set aside (dead-lettered, or cut short) and the service goes on. Any other error is
/// about Kafka or the service and must not be papered over.
pub fn is_about_the_record(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::BadMessage
        )
    )
}
