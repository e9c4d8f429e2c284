//! Why a record was dead-lettered: the code in the `dlq-reason` header
//! (`protocol::kafka::headers::DLQ_REASON`) of every record on `sensors-dlq`, written by
//! the bridge and the ingester and read by operators, `iotctl` and the fault suite. One
//! type for both writers, so a code means the same wherever it is written or read.
//!
//! Each service refuses for its own subset of reasons ([`Reason::BRIDGE`],
//! [`Reason::INGESTER`]), and exports one metric series per reason of its subset, at zero
//! before the first.

/// Why a record went to the dead-letter topic. [`Reason::code`] is its header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The MQTT topic is not `{prefix}/{site}/{line}/{device}/telemetry` (bridge).
    Topic,
    /// Not a valid frame, or not one of ours: wrong content type, no payload (both).
    Decode,
    /// The frame names a different device than its topic (bridge).
    DeviceMismatch,
    /// Kafka refused the record for good, e.g. too large for the topic (bridge).
    KafkaRejected,
    /// The frame is not sealed by the gateway that speaks for its device, or that
    /// gateway is disabled (bridge, with the gateway registry).
    Unauthorized,
    /// The frame's device is not in the `devices` table (ingester).
    UnknownDevice,
    /// The frame has a channel its device's `device_channels` lacks (ingester).
    UnknownChannel,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::Topic,
        Reason::Decode,
        Reason::DeviceMismatch,
        Reason::KafkaRejected,
        Reason::Unauthorized,
        Reason::UnknownDevice,
        Reason::UnknownChannel,
    ];

    /// The reasons the bridge dead-letters a message for.
    pub const BRIDGE: [Reason; 5] = [
        Reason::Topic,
        Reason::Decode,
        Reason::DeviceMismatch,
        Reason::KafkaRejected,
        Reason::Unauthorized,
    ];

    /// The reasons the ingester dead-letters a record for.
    pub const INGESTER: [Reason; 3] = [
        Reason::Decode,
        Reason::UnknownDevice,
        Reason::UnknownChannel,
    ];

    /// The short, stable code: the `dlq-reason` header and the `reason` metric label.
    pub fn code(self) -> &'static str {
        match self {
            Reason::Topic => "topic",
            Reason::Decode => "decode",
            Reason::DeviceMismatch => "device-mismatch",
            Reason::KafkaRejected => "kafka-rejected",
            Reason::Unauthorized => "unauthorized",
            Reason::UnknownDevice => "unknown-device",
            Reason::UnknownChannel => "unknown-channel",
        }
    }

    /// The reason a header's code names; `None` for a code no version of the services
    /// writes.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|reason| reason.code() == code)
    }
}

/// Why one record was set aside: its dead letter's `dlq-reason` (the code) and
/// `dlq-detail` (what a person needs to find the fault) headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_as_its_reason_and_is_distinct() {
        for reason in Reason::ALL {
            assert_eq!(Reason::from_code(reason.code()), Some(reason));
        }
        assert_eq!(Reason::from_code("Decode"), None);
        assert_eq!(Reason::from_code(""), None);
        let codes: std::collections::HashSet<_> = Reason::ALL.map(Reason::code).into();
        assert_eq!(codes.len(), Reason::ALL.len());
    }

    #[test]
    fn every_reason_is_written_by_a_service_and_no_subset_repeats_one() {
        for reason in Reason::ALL {
            assert!(
                Reason::BRIDGE.contains(&reason) || Reason::INGESTER.contains(&reason),
                "{reason:?} is written by no service"
            );
        }
        for subset in [&Reason::BRIDGE[..], &Reason::INGESTER[..]] {
            let codes: std::collections::HashSet<_> = subset.iter().map(|r| r.code()).collect();
            assert_eq!(codes.len(), subset.len(), "{subset:?}");
        }
    }
}
