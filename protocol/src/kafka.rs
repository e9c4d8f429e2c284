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

/// Confirmations from the ingester to the devices, keyed by device id, with the MQTT
/// topic to relay each to in the `mqtt-topic` header. Loss costs nothing (the next one
/// says the same), so one partition per bridge reader is plenty.
pub const SENSORS_CONFIRM: KafkaTopic = KafkaTopic {
    name: "sensors-confirm",
    partitions: 1,
};

pub const ALL_TOPICS: [KafkaTopic; 5] =
    [SENSORS_DATA, ALERTS, METRICS, SENSORS_DLQ, SENSORS_CONFIRM];

/// Content type of a `sensors-confirm` record: one postcard confirmation, version 1.
pub const CONFIRM_CONTENT_TYPE: &str = "application/vnd.plant-telemetry.confirm; v=1";

/// Content type of a `sensors-data` record: one postcard frame, wire version 1.
pub const FRAME_CONTENT_TYPE: &str = "application/vnd.plant-telemetry.frame; v=1";

/// Names of the Kafka record headers the services write and read. Values are UTF-8 text
/// so Kafka UI shows them as they are.
pub mod headers {
    /// Media type of the value (`FRAME_CONTENT_TYPE` for frames).
    pub const CONTENT_TYPE: &str = "content-type";
    /// The MQTT topic the value arrived on.
    pub const MQTT_TOPIC: &str = "mqtt-topic";
    /// When the bridge received it, in ms since the Unix epoch, as decimal text.
    pub const RECEIVED_AT_MS: &str = "received-at-ms";
    /// Short, stable reason code of a dead-lettered record (`decode`, `topic`, ...).
    pub const DLQ_REASON: &str = "dlq-reason";
    /// Human-readable detail of the reason.
    pub const DLQ_DETAIL: &str = "dlq-detail";
    /// Which service dead-lettered the record (`bridge`, `cloud-ingester`).
    pub const DLQ_SOURCE: &str = "dlq-source";
    /// Present when the value is cut short (Kafka refused it whole): the original length.
    pub const DLQ_ORIGINAL_LENGTH: &str = "dlq-original-length";
}
