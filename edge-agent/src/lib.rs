//! The edge agent as a library, so integration tests and benchmarks drive the same code
//! as the binary. `main.rs` only parses the command line and configuration, sets up
//! logging and signals, and calls [`agent::run`].

pub mod agent;
pub mod batcher;
pub mod clock;
pub mod config;
pub mod confirmations;
pub mod delivery;
pub mod dropped;
pub mod queue;
pub mod sensors;
pub mod status;
pub mod topics;
