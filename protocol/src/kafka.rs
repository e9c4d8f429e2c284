//! The Kafka topics of the pipeline and their partition counts: the defaults every
//! service and `scripts/stack.sh` agree on. A test checks that the stack created exactly
//! these, so the script and the code cannot drift apart silently.

/// A Kafka topic the pipeline uses, with the partition count it is created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaTopic {
    pub name: &'static str,
    pub partitions: i32,
}

/// Frames from the devices, unchanged, keyed by device id.
pub const SENSORS_DATA: KafkaTopic = KafkaTopic {
    name: "sensors-data",
    partitions: 3,
};
/// Alert transitions as JSON.
pub const ALERTS: KafkaTopic = KafkaTopic {
    name: "alerts",
    partitions: 2,
};
/// Periodic pipeline metrics as JSON.
pub const METRICS: KafkaTopic = KafkaTopic {
    name: "metrics",
    partitions: 2,
};
/// Frames that failed validation, with the reason in the headers.
pub const SENSORS_DLQ: KafkaTopic = KafkaTopic {
    name: "sensors-dlq",
    partitions: 3,
};

pub const ALL_TOPICS: [KafkaTopic; 4] = [SENSORS_DATA, ALERTS, METRICS, SENSORS_DLQ];
