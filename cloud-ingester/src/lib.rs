//! The cloud ingester: frames from Kafka's `sensors-data` into PostgreSQL
//! (`sensor_readings`, `device_stats_hourly`) and Redis.
//!
//! Work in progress (issue 5). Built: decoding and validation (`validate`), the batched
//! PostgreSQL write path with dedup and hourly statistics (`store`), the Redis writer
//! (`redis_sink`), and the consumer loop that orders them so offsets follow commits
//! (`pipeline`). Not built yet: alerts, Prometheus metrics and health endpoints, the
//! metrics record, TOML configuration, system events from the loop. See ARCHITECTURE.md.

pub mod pipeline;
pub mod redis_sink;
pub mod rows;
pub mod stats;
pub mod store;
pub mod validate;
