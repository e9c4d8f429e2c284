//! The bridge: device frames from MQTT into Kafka's `sensors-data`, acknowledging
//! nothing to the broker before Kafka has it (client mode), with bad input set aside in
//! `sensors-dlq` and a readable `latest` value per device republished for people; and
//! the ingester's confirmations from `sensors-confirm` back to each device's MQTT
//! `confirm` topic, with a readable, retained `completeness` summary beside it.
//!
//! See ARCHITECTURE.md for the map; `app::Bridge` is the entry point.

pub mod app;
pub mod boots;
pub mod completeness;
pub mod config;
pub mod confirm_relay;
pub mod embedded;
pub mod forward;
pub mod gateway_auth;
pub mod inbound;
pub mod kafka;
pub mod latest;
pub mod meta;
pub mod mqtt_client;
pub mod producer_slot;
pub mod readiness;
pub mod seal_check;
pub mod stats;
pub mod validate;

pub use app::Bridge;
pub use config::{BridgeConfig, CliOverrides, Mode};
