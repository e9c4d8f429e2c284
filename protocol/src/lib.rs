//! The wire protocol of the plant-telemetry pipeline, shared by the edge agent, the bridge
//! and the cloud ingester: the telemetry [`Frame`] with its compact postcard encoding, the
//! [`Confirmation`] the cloud sends back once PostgreSQL holds a device's readings, and
//! the MQTT [`topic`] scheme.
//!
//! It is `no_std` and allocation-free (fixed-capacity `heapless` containers) so the same
//! code that the cloud services decode with could run on a microcontroller next to the
//! sensor. Decoding is total: any byte string yields a frame or a typed error, never a
//! panic (proptest and a `cargo fuzz` target check this).
#![cfg_attr(not(test), no_std)]

pub mod confirm;
pub mod frame;
pub mod id;
pub mod kafka;
pub mod seal;
pub mod topic;

pub use confirm::{Confirmation, SeqRange, Verdict, MAX_CONFIRM_LEN};
pub use frame::{
    BootId, DecodeError, EncodeError, Field, Frame, InvalidFrame, Quality, Reading, MAX_FRAME_LEN,
    MAX_READINGS, MAX_SEQ, MAX_TIMESTAMP_MS, WIRE_VERSION,
};
pub use id::{validate_id, DeviceId, IdError, MAX_ID_LEN};
pub use seal::{FrameKey, SealError, MAX_SEALED_LEN};
pub use topic::{Topic, TopicError, TopicKind};
