//! The gateway registry. A gateway is a box that connects to the plant's broker and
//! publishes for some devices (an edge agent's Pi, a PLC gateway). The registry, in
//! PostgreSQL, says which gateways exist, how each proves who it is (a secret only it
//! holds), whether it is enabled and which devices it may speak for.
//!
//! `iotctl gateways …` writes it; the bridge's embedded broker reads it to authenticate
//! every connection. Both go through this crate, so there is one rule for ids, one
//! secret format and one way of checking a secret.

pub mod registry;
pub mod secret;

pub use registry::{Gateway, RegistryError};
pub use secret::{Secret, SecretHash};
