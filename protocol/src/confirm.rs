//! The confirmation: the cloud telling a device which of its readings PostgreSQL holds.
//!
//! Only the agent's disk and PostgreSQL are durable; the broker, the bridge and Kafka in
//! between may lose what they hold. So the agent keeps a frame until a confirmation
//! covers it, and the ingester sends, after it commits, the set of sequence numbers it
//! holds for a (device, boot): a committed prefix and the ranges above it, as TCP's
//! selective acknowledgement does. A confirmation is state, not an event: a lost one
//! costs nothing, the next carries the same information and more. Ranges the cloud
//! refused for good (dead-lettered) are listed too, so the agent drops those instead of
//! resending them forever.
//!
//! # Wire format, version 1
//!
//! Postcard, in this order (varints are LEB128):
//!
//! | field            | encoding              | notes                                       |
//! |------------------|-----------------------|---------------------------------------------|
//! | version          | `u8`                  | always [`CONFIRM_VERSION`]                  |
//! | device           | varint length + bytes | a [`DeviceId`]                              |
//! | boot id          | 8 raw bytes           | the boot the sequence numbers belong to     |
//! | committed below  | varint `u64`          | every seq below it is committed             |
//! | committed ranges | varint `u16` count    | at most [`MAX_CONFIRM_RANGES`]              |
//! | refused ranges   | varint `u16` count    | at most [`MAX_CONFIRM_RANGES`]              |
//! | per range:       |                       | committed ranges first, then refused ones   |
//! | gap              | varint `u64`          | start minus the previous range's end        |
//! | length           | varint `u64`          | at least 1                                  |
//!
//! Ranges are half-open. Committed ranges start after the prefix with a gap of at least
//! one (else they would be part of it); within each list ranges ascend with gaps of at
//! least one, the first refused range counting from 0. A confirmation of 16 ranges is
//! under 100 bytes; one for a device without holes is about 25.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::frame::{BootId, Field, MAX_SEQ};
use crate::id::{DeviceId, IdError};

/// The only confirmation version this crate reads and writes.
pub const CONFIRM_VERSION: u8 = 1;

/// Most ranges in each list. Holes are rare (a frame lost after the broker); a device
/// with more is confirmed in parts, the lowest first, as its holes fill.
pub const MAX_CONFIRM_RANGES: usize = 16;

/// Longest possible encoding of a valid confirmation.
pub const MAX_CONFIRM_LEN: usize =
    1 + 1 + crate::id::MAX_ID_LEN + 8 + 10 + 3 + 3 + 2 * MAX_CONFIRM_RANGES * 20;

/// Sequence numbers `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqRange {
    pub start: u64,
    pub end: u64,
}

impl SeqRange {
    pub fn new(start: u64, end: u64) -> Self {
        Self { start, end }
    }

    fn contains(&self, start: u64, end: u64) -> bool {
        self.start <= start && end <= self.end
    }
}

impl fmt::Display for SeqRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

pub type Ranges = heapless::Vec<SeqRange, MAX_CONFIRM_RANGES>;

/// What the cloud holds of one device's boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    pub device: DeviceId,
    pub boot_id: BootId,
    /// Every sequence number below this is committed.
    pub committed_below: u64,
    /// Committed ranges above the prefix, ascending, with holes between them.
    pub committed: Ranges,
    /// Ranges the cloud refused for good (dead-lettered), ascending.
    pub refused: Ranges,
}

/// What a confirmation says of a frame's readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every reading is committed.
    Committed,
    /// Every reading was refused for good.
    Refused,
    /// Not (yet) covered.
    Open,
}

/// A confirmation whose fields break a rule of the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidConfirmation {
    #[error("device id {0}")]
    Device(IdError),
    #[error("{0} ranges, the limit is {MAX_CONFIRM_RANGES} per list")]
    TooManyRanges(usize),
    #[error("range {index} is empty, overlaps or touches the one before it")]
    RangeOrder { index: usize },
    #[error("range {index} runs past sequence number {MAX_SEQ}")]
    SeqOutOfRange { index: usize },
}

/// Why bytes off the wire are not a confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfirmDecodeError {
    #[error("empty payload")]
    Empty,
    #[error(
        "confirmation version {0} is not supported (this build reads version {CONFIRM_VERSION})"
    )]
    UnknownVersion(u8),
    #[error("truncated: the payload ends inside the {0}")]
    Truncated(Field),
    #[error("malformed {0}")]
    Malformed(Field),
    #[error("{0} unexpected bytes after the last range")]
    TrailingBytes(usize),
    #[error(transparent)]
    Invalid(#[from] InvalidConfirmation),
}

/// Why a confirmation could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfirmEncodeError {
    #[error("output buffer too small (MAX_CONFIRM_LEN = {MAX_CONFIRM_LEN} bytes always suffices)")]
    BufferTooSmall,
    #[error(transparent)]
    Invalid(#[from] InvalidConfirmation),
}

#[derive(Serialize, Deserialize)]
struct WireHeader<'a> {
    device: &'a str,
    boot_id: BootId,
    committed_below: u64,
    committed: u16,
    refused: u16,
}

#[derive(Serialize, Deserialize)]
struct WireRange {
    gap: u64,
    len: u64,
}

impl Confirmation {
    /// Nothing committed, nothing refused.
    pub fn new(device: DeviceId, boot_id: BootId) -> Self {
        Self {
            device,
            boot_id,
            committed_below: 0,
            committed: Ranges::new(),
            refused: Ranges::new(),
        }
    }

    /// What this confirmation says of the readings `start..end`.
    pub fn verdict(&self, start: u64, end: u64) -> Verdict {
        if end <= self.committed_below || self.committed.iter().any(|r| r.contains(start, end)) {
            Verdict::Committed
        } else if self.refused.iter().any(|r| r.contains(start, end)) {
            Verdict::Refused
        } else {
            Verdict::Open
        }
    }

    /// Checks every rule of the format that the types alone do not enforce.
    pub fn validate(&self) -> Result<(), InvalidConfirmation> {
        if self.committed_below > MAX_SEQ + 1 {
            return Err(InvalidConfirmation::SeqOutOfRange { index: 0 });
        }
        check_ranges(&self.committed, Some(self.committed_below), 0)?;
        check_ranges(&self.refused, None, self.committed.len())
    }

    /// Encodes into `buf` and returns the part of it that holds the confirmation.
    pub fn encode<'b>(&self, buf: &'b mut [u8]) -> Result<&'b mut [u8], ConfirmEncodeError> {
        self.validate()?;
        let (version, _) = buf
            .split_first_mut()
            .ok_or(ConfirmEncodeError::BufferTooSmall)?;
        *version = CONFIRM_VERSION;
        let header = WireHeader {
            device: &self.device,
            boot_id: self.boot_id,
            committed_below: self.committed_below,
            committed: self.committed.len() as u16,
            refused: self.refused.len() as u16,
        };
        let mut used = 1 + write(&header, &mut buf[1..])?;
        for (list, mut previous_end) in
            [(&self.committed, self.committed_below), (&self.refused, 0)]
        {
            for range in list {
                let wire = WireRange {
                    gap: range.start - previous_end,
                    len: range.end - range.start,
                };
                previous_end = range.end;
                used += write(&wire, &mut buf[used..])?;
            }
        }
        Ok(&mut buf[..used])
    }

    /// Decodes one confirmation that must fill `bytes` exactly. Never panics, whatever
    /// the input.
    pub fn decode(bytes: &[u8]) -> Result<Self, ConfirmDecodeError> {
        let (&version, rest) = bytes.split_first().ok_or(ConfirmDecodeError::Empty)?;
        if version != CONFIRM_VERSION {
            return Err(ConfirmDecodeError::UnknownVersion(version));
        }
        let (header, mut rest) = postcard::take_from_bytes::<WireHeader>(rest)
            .map_err(|e| wire_error(e, Field::Header))?;
        let device = DeviceId::new(header.device).map_err(InvalidConfirmation::Device)?;
        let mut confirmation = Confirmation {
            device,
            boot_id: header.boot_id,
            committed_below: header.committed_below,
            committed: Ranges::new(),
            refused: Ranges::new(),
        };
        let mut index = 0;
        for (count, list, mut previous_end) in [
            (
                header.committed,
                &mut confirmation.committed,
                header.committed_below,
            ),
            (header.refused, &mut confirmation.refused, 0),
        ] {
            let count = usize::from(count);
            if count > MAX_CONFIRM_RANGES {
                return Err(InvalidConfirmation::TooManyRanges(count).into());
            }
            for _ in 0..count {
                let (wire, tail) = postcard::take_from_bytes::<WireRange>(rest)
                    .map_err(|e| wire_error(e, Field::Range(index)))?;
                rest = tail;
                let out_of_range = InvalidConfirmation::SeqOutOfRange { index };
                let start = previous_end.checked_add(wire.gap).ok_or(out_of_range)?;
                let end = start.checked_add(wire.len).ok_or(out_of_range)?;
                previous_end = end;
                // Cannot fail: count <= MAX_CONFIRM_RANGES was checked above.
                list.push(SeqRange { start, end })
                    .map_err(|_| InvalidConfirmation::TooManyRanges(count))?;
                index += 1;
            }
        }
        if !rest.is_empty() {
            return Err(ConfirmDecodeError::TrailingBytes(rest.len()));
        }
        confirmation.validate()?;
        Ok(confirmation)
    }
}

/// Ranges ascend with a gap of at least one after `after` (the prefix's end, whose
/// first range may not touch it) or from 0, and end at most at MAX_SEQ + 1.
fn check_ranges(
    ranges: &[SeqRange],
    after: Option<u64>,
    first_index: usize,
) -> Result<(), InvalidConfirmation> {
    let mut previous_end = after;
    for (offset, range) in ranges.iter().enumerate() {
        let index = first_index + offset;
        if range.end > MAX_SEQ + 1 {
            return Err(InvalidConfirmation::SeqOutOfRange { index });
        }
        let touches = previous_end.is_some_and(|end| range.start <= end);
        if range.start >= range.end || touches {
            return Err(InvalidConfirmation::RangeOrder { index });
        }
        previous_end = Some(range.end);
    }
    Ok(())
}

fn write<T: Serialize>(value: &T, buf: &mut [u8]) -> Result<usize, ConfirmEncodeError> {
    postcard::to_slice(value, buf)
        .map(|written| written.len())
        .map_err(|_| ConfirmEncodeError::BufferTooSmall)
}

fn wire_error(error: postcard::Error, field: Field) -> ConfirmDecodeError {
    match error {
        postcard::Error::DeserializeUnexpectedEnd => ConfirmDecodeError::Truncated(field),
        _ => ConfirmDecodeError::Malformed(field),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn device() -> DeviceId {
        DeviceId::new("furnace-01").unwrap()
    }

    fn ranges(list: &[(u64, u64)]) -> Ranges {
        list.iter().map(|&(s, e)| SeqRange::new(s, e)).collect()
    }

    fn round_trip(confirmation: &Confirmation) -> Confirmation {
        let mut buf = [0u8; MAX_CONFIRM_LEN];
        let bytes = confirmation.encode(&mut buf).unwrap();
        Confirmation::decode(bytes).unwrap()
    }

    #[test]
    fn a_prefix_and_ranges_round_trip_and_judge_frames() {
        let mut confirmation = Confirmation::new(device(), BootId([7; 8]));
        confirmation.committed_below = 100;
        confirmation.committed = ranges(&[(150, 200), (250, 300)]);
        confirmation.refused = ranges(&[(100, 150)]);
        assert_eq!(round_trip(&confirmation), confirmation);
        assert_eq!(confirmation.verdict(50, 100), Verdict::Committed);
        assert_eq!(confirmation.verdict(150, 200), Verdict::Committed);
        assert_eq!(confirmation.verdict(100, 150), Verdict::Refused);
        assert_eq!(confirmation.verdict(190, 210), Verdict::Open);
        assert_eq!(confirmation.verdict(200, 250), Verdict::Open);
        assert_eq!(confirmation.verdict(300, 350), Verdict::Open);
        let mut buf = [0u8; MAX_CONFIRM_LEN];
        let plain = Confirmation {
            committed: Ranges::new(),
            refused: Ranges::new(),
            ..confirmation
        };
        assert!(plain.encode(&mut buf).unwrap().len() <= 25);
    }

    #[test]
    fn ranges_that_overlap_touch_or_run_past_the_limit_are_refused() {
        let mut confirmation = Confirmation::new(device(), BootId([1; 8]));
        confirmation.committed_below = 10;
        let mut buf = [0u8; MAX_CONFIRM_LEN];
        for bad in [
            &[(10, 20)][..],
            &[(12, 12)],
            &[(12, 20), (20, 30)],
            &[(30, 40), (12, 20)],
        ] {
            confirmation.committed = ranges(bad);
            assert!(
                matches!(
                    confirmation.encode(&mut buf),
                    Err(ConfirmEncodeError::Invalid(
                        InvalidConfirmation::RangeOrder { .. }
                    ))
                ),
                "{bad:?}"
            );
        }
        confirmation.committed = ranges(&[(12, MAX_SEQ + 2)]);
        assert!(confirmation.encode(&mut buf).is_err());
    }

    #[test]
    fn hostile_bytes_get_a_named_error() {
        assert_eq!(Confirmation::decode(&[]), Err(ConfirmDecodeError::Empty));
        assert_eq!(
            Confirmation::decode(&[9, 0]),
            Err(ConfirmDecodeError::UnknownVersion(9))
        );
        let mut confirmation = Confirmation::new(device(), BootId([1; 8]));
        confirmation.committed = ranges(&[(5, 9)]);
        let mut buf = [0u8; MAX_CONFIRM_LEN];
        let bytes = confirmation.encode(&mut buf).unwrap().to_vec();
        for cut in 1..bytes.len() {
            assert!(
                matches!(
                    Confirmation::decode(&bytes[..cut]),
                    Err(ConfirmDecodeError::Truncated(_) | ConfirmDecodeError::Invalid(_))
                ),
                "cut at {cut}"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            Confirmation::decode(&long),
            Err(ConfirmDecodeError::TrailingBytes(1))
        );
        // A range count past the limit, with no ranges behind it.
        let header = WireHeader {
            device: "furnace-01",
            boot_id: BootId([1; 8]),
            committed_below: 0,
            committed: 1000,
            refused: 0,
        };
        let mut forged = vec![CONFIRM_VERSION];
        forged.extend(postcard::to_allocvec(&header).unwrap());
        assert_eq!(
            Confirmation::decode(&forged),
            Err(InvalidConfirmation::TooManyRanges(1000).into())
        );
    }

    /// The fuzz seed was written by hand from the table above (fuzz/seeds/README.md), so
    /// decoding it checks the documentation against the code.
    #[test]
    fn the_seed_written_from_the_table_decodes() {
        let seed = include_bytes!("../../fuzz/seeds/decode_confirm/furnace-holes");
        let confirmation = Confirmation::decode(seed).unwrap();
        assert_eq!(confirmation.device.as_str(), "furnace-01");
        assert_eq!(confirmation.boot_id, BootId([0, 1, 2, 3, 4, 5, 6, 7]));
        assert_eq!(confirmation.committed_below, 300);
        assert_eq!(confirmation.committed, ranges(&[(350, 450)]));
        assert_eq!(confirmation.refused, ranges(&[(200, 250)]));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(confirmation) = Confirmation::decode(&bytes) {
                prop_assert_eq!(round_trip(&confirmation), confirmation);
            }
        }

        #[test]
        fn valid_confirmations_round_trip(
            prefix in 0u64..1_000_000,
            gaps in proptest::collection::vec((1u64..1000, 1u64..1000), 0..MAX_CONFIRM_RANGES),
        ) {
            let mut confirmation = Confirmation::new(device(), BootId([3; 8]));
            confirmation.committed_below = prefix;
            let mut end = prefix;
            for (gap, len) in gaps {
                confirmation.committed.push(SeqRange::new(end + gap, end + gap + len)).unwrap();
                end += gap + len;
            }
            prop_assert_eq!(round_trip(&confirmation), confirmation);
        }
    }
}
