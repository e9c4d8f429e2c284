//! Sealed frames: a frame that says which gateway sent it, whatever broker carried it.
//!
//! An MQTT broker authenticates connections, but the embedded one (rumqttd) does not tell
//! its subscriber who published a message, so a gateway that may connect could publish
//! for a device that is not its own. A sealed frame carries proof instead: the frame's
//! bytes with version [`SEALED_VERSION`] and an 8-byte tag, the first bytes of
//! HMAC-SHA-256 over everything before it, under the key of the gateway that speaks for
//! the device. Whoever knows the registry (the bridge) checks it; every other reader
//! decodes a sealed frame like a version 1 one ([`crate::Frame::decode`]).
//!
//! | bytes          | content                                                      |
//! |----------------|--------------------------------------------------------------|
//! | 1              | version, [`SEALED_VERSION`]                                  |
//! | n              | the version 1 encoding after its version byte, unchanged     |
//! | [`TAG_LEN`]    | HMAC-SHA-256(key, the bytes above), first [`TAG_LEN`] bytes  |
//!
//! A gateway's key is derived from its secret ([`FrameKey::derive`]), so the agent needs
//! nothing beyond the secret it connects with. 64 bits of tag cost 8 bytes a frame
//! (0.16 B a reading in a frame of 50) and leave a forger one chance in 2^64 per try.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::frame::{MAX_FRAME_LEN, WIRE_VERSION};
pub use crate::frame::{SEALED_VERSION, TAG_LEN};

/// Longest sealed frame.
pub const MAX_SEALED_LEN: usize = MAX_FRAME_LEN + TAG_LEN;
/// Bytes of a gateway's frame key.
pub const KEY_LEN: usize = 32;

/// What a key is derived for: a new use of the secret gets a label of its own.
const KEY_LABEL: &[u8] = b"plant-telemetry frame key v1";

type HmacSha256 = Hmac<Sha256>;

/// A gateway's frame key. Its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct FrameKey([u8; KEY_LEN]);

impl FrameKey {
    /// The key of the gateway whose secret is `secret` (its text, as in its password
    /// file), as the registry stores it when the secret is made.
    pub fn derive(secret: &[u8]) -> Self {
        let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable());
        mac.update(KEY_LABEL);
        Self(mac.finalize().into_bytes().into())
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).unwrap_or_else(|_| unreachable())
    }
}

/// HMAC takes a key of any length: its constructor cannot fail.
fn unreachable() -> ! {
    unreachable!("HMAC accepts keys of every length")
}

impl core::fmt::Debug for FrameKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("FrameKey(***)")
    }
}

/// Why bytes are not a frame sealed by the expected key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("not sealed: wire version {0} carries no tag")]
    Unsealed(u8),
    #[error("too short to hold a tag")]
    Truncated,
    #[error("the tag does not match the key of the device's gateway")]
    WrongTag,
    #[error("only a version 1 frame can be sealed, this is version {0}")]
    NotVersion1(u8),
    #[error("output buffer too small (MAX_SEALED_LEN = {MAX_SEALED_LEN} bytes always suffices)")]
    BufferTooSmall,
}

/// Seals the version 1 frame `frame` with `key` into `out`.
pub fn seal<'b>(frame: &[u8], key: &FrameKey, out: &'b mut [u8]) -> Result<&'b [u8], SealError> {
    match frame.first() {
        Some(&WIRE_VERSION) => {}
        Some(&other) => return Err(SealError::NotVersion1(other)),
        None => return Err(SealError::Truncated),
    }
    let sealed_len = frame.len() + TAG_LEN;
    let out = out.get_mut(..sealed_len).ok_or(SealError::BufferTooSmall)?;
    let (body, tag) = out.split_at_mut(frame.len());
    body.copy_from_slice(frame);
    body[0] = SEALED_VERSION;
    let mut mac = key.mac();
    mac.update(body);
    tag.copy_from_slice(&mac.finalize().into_bytes()[..TAG_LEN]);
    Ok(out)
}

/// Whether `bytes` claim to be sealed (they may still not be a frame at all).
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.first() == Some(&SEALED_VERSION)
}

/// Checks that `bytes` are sealed and that their tag is `key`'s, in time independent of
/// where a wrong tag differs.
pub fn verify(bytes: &[u8], key: &FrameKey) -> Result<(), SealError> {
    let (body, tag) = split(bytes)?;
    let mut mac = key.mac();
    mac.update(body);
    mac.verify_truncated_left(tag)
        .map_err(|_| SealError::WrongTag)
}

/// A sealed frame's signed part (from its version byte) and its tag.
fn split(bytes: &[u8]) -> Result<(&[u8], &[u8]), SealError> {
    match bytes.first() {
        Some(&SEALED_VERSION) => {}
        Some(&other) => return Err(SealError::Unsealed(other)),
        None => return Err(SealError::Truncated),
    }
    // The version byte and at least one byte of frame before the tag.
    if bytes.len() < 2 + TAG_LEN {
        return Err(SealError::Truncated);
    }
    Ok(bytes.split_at(bytes.len() - TAG_LEN))
}
