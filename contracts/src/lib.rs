//! The contracts between binaries that are not frames: what one process writes and
//! another reads as JSON or by key name. The ingester writes Redis and alert records that
//! `iotctl` (and any dashboard) reads; the agent writes the health report that `iotctl
//! completeness` reads. Each shape lives here once, so a reader cannot drift from its
//! writer, and a reader depends on this small crate rather than on the writer's.
//!
//! The binary wire formats (frames, confirmations, topics and Kafka headers) are in
//! `protocol`, which must also build for a microcontroller; these need `std` and serde.

pub mod alerts;
pub mod redis;
pub mod status;
