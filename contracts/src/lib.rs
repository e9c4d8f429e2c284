//! The contracts between binaries that are not frames: what one process writes and
//! another reads as JSON, by key name or by code. The ingester writes Redis and alert
//! records that `iotctl` (and any dashboard) reads; the agent writes the health report
//! that `iotctl completeness` reads, and each device's meta that the bridge reads; the
//! bridge and the ingester write the dead-letter reason codes that operators, `iotctl`
//! and the fault suite read. Each shape lives here once, so a reader cannot drift from
//! its writer, and a reader depends on this small crate rather than on the writer's.
//!
//! The binary wire formats (frames, confirmations, topics and Kafka headers) are in
//! `protocol`, which must also build for a microcontroller; these need `std` and serde.

pub mod alerts;
pub mod dead_letter;
pub mod meta;
pub mod metrics;
pub mod redis;
pub mod status;
