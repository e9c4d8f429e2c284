//! Names that travel through every hop: device ids, sites, lines and topic prefixes.
//!
//! One rule serves them all because each of them ends up as an MQTT topic segment, a
//! Kafka record key, a Redis key part and a PostgreSQL value: 1 to [`MAX_ID_LEN`] bytes of
//! ASCII letters, digits, `-`, `_` and `.`. That excludes the MQTT separators and
//! wildcards (`/`, `+`, `#`), the broker-reserved `$`, NUL, white space and anything a
//! shell or a key-value store would need quoted. The `devices` table enforces the same
//! rule with a CHECK constraint.

use core::fmt;
use core::ops::Deref;

/// Longest device id, site, line or prefix, in bytes.
pub const MAX_ID_LEN: usize = 24;

/// Why a name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("is empty")]
    Empty,
    #[error("is {len} bytes long, the limit is {MAX_ID_LEN}")]
    TooLong { len: usize },
    #[error("has {ch:?} at byte {at}; only ASCII letters, digits, '-', '_' and '.' are allowed")]
    InvalidChar { ch: char, at: usize },
}

/// Checks `name` against the naming rule described in the module documentation.
pub fn validate_id(name: &str) -> Result<(), IdError> {
    if name.is_empty() {
        return Err(IdError::Empty);
    }
    if let Some((at, ch)) = name
        .char_indices()
        .find(|&(_, ch)| !(ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.')))
    {
        return Err(IdError::InvalidChar { ch, at });
    }
    if name.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { len: name.len() });
    }
    Ok(())
}

/// A validated device id, stored inline (no allocator needed).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(heapless::String<MAX_ID_LEN>);

impl DeviceId {
    pub fn new(name: &str) -> Result<Self, IdError> {
        validate_id(name)?;
        let mut inline = heapless::String::new();
        // Cannot fail: validate_id bounded the length to the capacity.
        inline
            .push_str(name)
            .map_err(|_| IdError::TooLong { len: name.len() })?;
        Ok(Self(inline))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for DeviceId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl TryFrom<&str> for DeviceId {
    type Error = IdError;
    fn try_from(name: &str) -> Result<Self, IdError> {
        Self::new(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_seed_device_ids() {
        for name in [
            "furnace-01",
            "cnc-spindle-01",
            "press-01",
            "paint-booth-01",
            "compressor-01",
            "a",
            "A_b.c-9",
        ] {
            assert_eq!(validate_id(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn rejects_mqtt_specials_nul_space_and_dollar() {
        for (name, ch, at) in [
            ("a/b", '/', 1),
            ("+", '+', 0),
            ("dev#", '#', 3),
            ("x\0", '\0', 1),
            ("two words", ' ', 3),
            ("$SYS", '$', 0),
            ("ofen-\u{e4}", '\u{e4}', 5),
        ] {
            assert_eq!(
                validate_id(name),
                Err(IdError::InvalidChar { ch, at }),
                "{name}"
            );
        }
    }

    #[test]
    fn length_limits() {
        assert_eq!(validate_id(""), Err(IdError::Empty));
        let longest = "d".repeat(MAX_ID_LEN);
        assert_eq!(validate_id(&longest), Ok(()));
        let too_long = "d".repeat(MAX_ID_LEN + 1);
        assert_eq!(
            validate_id(&too_long),
            Err(IdError::TooLong {
                len: MAX_ID_LEN + 1
            })
        );
        assert!(DeviceId::new(&too_long).is_err());
        assert_eq!(DeviceId::new(&longest).map(|d| d.len()), Ok(MAX_ID_LEN));
    }
}
