//! The fault-injection suite: the whole pipeline (edge agents, an MQTT broker, the
//! bridge, a Kafka-compatible broker, the ingester, PostgreSQL and Redis) run for real
//! on this machine with a countable workload at a chosen rate (800 readings/s in short
//! mode, the benchmark's 120 000 in long mode), one fault injected per scenario, and then
//! a ledger that holds every reading the agents produced against what PostgreSQL stored.
//!
//! - [`workload`]: what the agents simulate, and their configuration files.
//! - [`deployment`]: the running pipeline, its servers and processes ([`process`],
//!   [`binaries`]), watched through their HTTP [`endpoints`].
//! - [`observer`]: the independent witness of what the agents produced.
//! - [`scenario`]: the faults and their seeded schedules.
//! - [`ledger`]: the accounting and the design's promise per scenario.
//!
//! `tests/faults.rs` runs every scenario in short mode (part of `scripts/test.sh`);
//! the `faults` binary (`scripts/faults.sh`) runs them in long mode.

pub mod binaries;
pub mod deployment;
pub mod endpoints;
pub mod ledger;
pub mod observer;
pub mod process;
pub mod scenario;
pub mod workload;
