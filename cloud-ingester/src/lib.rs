//! The cloud ingester: frames from Kafka's `sensors-data` into PostgreSQL
//! (`sensor_readings`, `device_stats_hourly`) and Redis.
//!
//! - `validate`: decoding and validation; what fails goes to the dead-letter topic
//!   (`dead_letters`);
//! - `store`: the batched PostgreSQL write path (binary COPY, dedup, hourly statistics,
//!   the batch's alert transitions, all in one transaction), partitions, `system_events`;
//! - `alerts`: the rule engine (thresholds with hysteresis and minimum duration, stuck,
//!   dropout) and its table, Kafka and Redis sides;
//! - `redis_sink`: latest values, recent readings, last seen, open alerts;
//! - `future_dated`: readings dated beyond `clock.max_ahead`, stored but not live;
//! - `coverage`, `confirmations`: which readings PostgreSQL holds per device and boot,
//!   told to each device after every commit (`sensors-confirm`);
//! - `pipeline`: the consumer loop that orders all of it so offsets follow commits;
//! - `app`: the whole service ([`Ingester`]): started, run until a signal, shut down in
//!   the order that loses nothing;
//! - `config`, `kafka` (consumer settings, lag, rebalances), `stats` (Prometheus),
//!   `readiness` (`/readyz`).
//!
//! See ARCHITECTURE.md.

/// The `system_events.service` of this program.
pub const SERVICE: &str = "cloud-ingester";

pub mod alerts;
pub mod app;
pub mod config;
pub mod confirmations;
pub mod coverage;
pub mod dead_letters;
pub mod future_dated;
pub mod kafka;
pub mod ownership;
pub mod pipeline;
pub mod readiness;
pub mod redis_sink;
pub mod rows;
pub mod stats;
pub mod store;
pub mod validate;

pub use app::Ingester;
