//! The telemetry frame: a batch of readings from one device, and its wire encoding.
//!
//! A reading's identity is (device, boot id, sequence number). The boot id is drawn at
//! random when the agent starts, and the sequence number of reading `i` in a frame is
//! `first_seq + i`, so identity never depends on the device clock. The timestamp is data,
//! not identity: `base_ts_ms` plus the reading's offset.
//!
//! # Wire format, version 1
//!
//! Postcard encoding (varints are LEB128; `zigzag` is not used because nothing here is
//! negative), in this order:
//!
//! | field        | encoding                | notes                                         |
//! |--------------|-------------------------|-----------------------------------------------|
//! | version      | `u8`                    | always [`WIRE_VERSION`]; read before the rest  |
//! | flags        | `u8`                    | bit 0: device clock synchronised; others 0    |
//! | device       | varint length + bytes   | a [`DeviceId`]                                |
//! | boot id      | 8 raw bytes             | random per agent start                        |
//! | first seq    | varint `u64`            | `< 2^63`, so it fits PostgreSQL's `bigint`    |
//! | base ts      | varint `u64`            | ms since the Unix epoch, up to year 9999      |
//! | count        | varint `u16`            | 1 ..= [`MAX_READINGS`]                        |
//! | per reading: |                         |                                               |
//! | tag          | varint `u16`            | `channel << 3 \| quality bits`                 |
//! | delta        | varint `u32`            | ms since the previous reading (first: base)   |
//! | value        | `f32`, little endian    | finite unless the sensor-fault bit is set     |
//!
//! Packing the channel and the quality bits into one varint keeps a reading of channel
//! 0..=15 with a time step under 128 ms to 6 bytes, and under 16.4 s to 7 bytes. Storing
//! the delta to the previous reading rather than the offset from the base keeps slowly
//! sampled channels as cheap as fast ones; it requires readings in time order, which
//! the encoder and decoder both enforce.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::id::{DeviceId, IdError};

/// The wire version of a frame as the agent stores it.
pub const WIRE_VERSION: u8 = 1;

/// The wire version of a sealed frame: version 1's bytes after the version byte, then a
/// tag of [`TAG_LEN`] bytes (`crate::seal` makes and checks it).
pub const SEALED_VERSION: u8 = 2;
/// Bytes of tag a sealed frame ends with.
pub const TAG_LEN: usize = 8;

/// Most readings in one frame. Large enough that the header costs under a byte per
/// reading, small enough that a frame always fits one small MQTT packet.
pub const MAX_READINGS: usize = 64;

/// Largest sequence number a reading may carry: PostgreSQL stores it as `bigint`.
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// 9999-12-31T23:59:59.999Z, the last instant PostgreSQL and every calendar library we
/// feed can represent without surprises.
pub const MAX_TIMESTAMP_MS: u64 = 253_402_300_799_999;

const FLAG_CLOCK_SYNCED: u8 = 0b0000_0001;
const QUALITY_BITS: u32 = 3;
const QUALITY_MASK: u16 = (1 << QUALITY_BITS) - 1;

/// Longest possible encoding of a valid frame: a buffer of this size always suffices.
pub const MAX_FRAME_LEN: usize = HEADER_MAX_LEN + MAX_READINGS * READING_MAX_LEN;
// version + flags + device (1-byte length + bytes) + boot id + seq and ts varints (u64:
// 10 bytes at most) + count varint (u16: 3 bytes at most).
const HEADER_MAX_LEN: usize = 1 + 1 + 1 + crate::id::MAX_ID_LEN + 8 + 10 + 10 + 3;
// tag varint (u16: 3) + delta varint (u32: 5) + f32.
const READING_MAX_LEN: usize = 3 + 5 + 4;

bitflags::bitflags! {
    /// Quality of one reading. Three bits on the wire; a new meaning needs a new
    /// wire version.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Quality: u8 {
        /// The simulator injected an anomaly here on purpose (spike, drift, stuck,
        /// dropout), so alerting can be tested against known ground truth.
        const SIMULATED_ANOMALY = 0b001;
        /// The value lies outside the sensor's physical range.
        const OUT_OF_RANGE = 0b010;
        /// The source failed; the value is not a measurement (and may be NaN).
        const SENSOR_FAULT = 0b100;
    }
}

/// A random 64-bit value chosen at every agent start. Stored in PostgreSQL as the
/// `bigint` with the same eight bytes (big endian), shown as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BootId(pub [u8; 8]);

impl BootId {
    pub fn as_i64(self) -> i64 {
        i64::from_be_bytes(self.0)
    }

    pub fn from_i64(value: i64) -> Self {
        Self(value.to_be_bytes())
    }
}

impl fmt::Display for BootId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", u64::from_be_bytes(self.0))
    }
}

/// One sample of one channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub channel: u8,
    /// Milliseconds after the frame's `base_ts_ms`.
    pub offset_ms: u32,
    pub value: f32,
    pub quality: Quality,
}

/// A batch of readings from one device within one boot, with consecutive sequence
/// numbers starting at `first_seq`, in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub device: DeviceId,
    pub boot_id: BootId,
    pub first_seq: u64,
    /// Milliseconds since the Unix epoch.
    pub base_ts_ms: u64,
    /// False while the device clock has not been synchronised (no NTP yet): the
    /// timestamps are then only good relative to each other.
    pub clock_synced: bool,
    pub readings: heapless::Vec<Reading, MAX_READINGS>,
}

/// A frame whose fields break a rule of the format. Checked when encoding and when
/// decoding, so a frame that encodes always decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidFrame {
    #[error("device id {0}")]
    Device(IdError),
    #[error("frame flags {0:#04x} set bits this version does not define")]
    UnknownFlags(u8),
    #[error("frame holds no readings")]
    NoReadings,
    #[error("frame holds {0} readings, the limit is {MAX_READINGS}")]
    TooManyReadings(usize),
    #[error("reading {index} names channel {channel}, channels go up to 255")]
    ChannelOutOfRange { index: usize, channel: u16 },
    #[error("sequence numbers run past {MAX_SEQ}")]
    SeqOutOfRange,
    #[error("reading {index} is timestamped after year 9999")]
    TimestampOutOfRange { index: usize },
    #[error("reading {index} is earlier than the reading before it")]
    OutOfOrder { index: usize },
    #[error("reading {index} is not a finite number but is not flagged as a sensor fault")]
    NonFiniteValue { index: usize },
}

/// Why bytes off the wire are not a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty payload")]
    Empty,
    #[error("wire version {0} is not supported (this build reads versions {WIRE_VERSION} and {SEALED_VERSION})")]
    UnknownVersion(u8),
    #[error("truncated: the payload ends inside the {0}")]
    Truncated(Field),
    #[error("malformed {0}")]
    Malformed(Field),
    #[error("{0} unexpected bytes after the last reading")]
    TrailingBytes(usize),
    #[error(transparent)]
    Invalid(#[from] InvalidFrame),
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("output buffer too small (a buffer of MAX_FRAME_LEN = {MAX_FRAME_LEN} bytes always suffices)")]
    BufferTooSmall,
    #[error(transparent)]
    Invalid(#[from] InvalidFrame),
}

/// The part of the wire format a decoding error was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Header,
    Reading(usize),
    /// A range of a [`crate::confirm::Confirmation`].
    Range(usize),
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Header => f.write_str("frame header"),
            Field::Reading(index) => write!(f, "reading {index}"),
            Field::Range(index) => write!(f, "range {index}"),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct WireHeader<'a> {
    flags: u8,
    device: &'a str,
    boot_id: BootId,
    first_seq: u64,
    base_ts_ms: u64,
    count: u16,
}

#[derive(Serialize, Deserialize)]
struct WireReading {
    tag: u16,
    delta_ms: u32,
    value: f32,
}

impl Frame {
    /// An empty frame; add readings with `frame.readings.push(..)`.
    pub fn new(device: DeviceId, boot_id: BootId, first_seq: u64, base_ts_ms: u64) -> Self {
        Self {
            device,
            boot_id,
            first_seq,
            base_ts_ms,
            clock_synced: true,
            readings: heapless::Vec::new(),
        }
    }

    /// Sequence number of the reading at `index`.
    pub fn seq(&self, index: usize) -> u64 {
        self.first_seq + index as u64
    }

    /// Absolute time of `reading`, in ms since the Unix epoch.
    pub fn timestamp_ms(&self, reading: &Reading) -> u64 {
        self.base_ts_ms + u64::from(reading.offset_ms)
    }

    /// The readings with their sequence numbers and absolute timestamps.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, &Reading)> + '_ {
        self.readings
            .iter()
            .enumerate()
            .map(move |(i, r)| (self.seq(i), self.timestamp_ms(r), r))
    }

    /// Checks every rule of the format that the types alone do not enforce.
    pub fn validate(&self) -> Result<(), InvalidFrame> {
        let count = self.readings.len();
        if count == 0 {
            return Err(InvalidFrame::NoReadings);
        }
        if self.first_seq > MAX_SEQ - (count as u64 - 1) {
            return Err(InvalidFrame::SeqOutOfRange);
        }
        let mut previous_offset = 0;
        for (index, reading) in self.readings.iter().enumerate() {
            if reading.offset_ms < previous_offset {
                return Err(InvalidFrame::OutOfOrder { index });
            }
            previous_offset = reading.offset_ms;
            if self.base_ts_ms > MAX_TIMESTAMP_MS - u64::from(reading.offset_ms) {
                return Err(InvalidFrame::TimestampOutOfRange { index });
            }
            if !reading.value.is_finite() && !reading.quality.contains(Quality::SENSOR_FAULT) {
                return Err(InvalidFrame::NonFiniteValue { index });
            }
        }
        Ok(())
    }

    /// Encodes into `buf` and returns the part of it that holds the frame.
    pub fn encode<'b>(&self, buf: &'b mut [u8]) -> Result<&'b mut [u8], EncodeError> {
        self.validate()?;
        let (version, rest) = buf.split_first_mut().ok_or(EncodeError::BufferTooSmall)?;
        *version = WIRE_VERSION;
        let header = WireHeader {
            flags: if self.clock_synced {
                FLAG_CLOCK_SYNCED
            } else {
                0
            },
            device: &self.device,
            boot_id: self.boot_id,
            first_seq: self.first_seq,
            base_ts_ms: self.base_ts_ms,
            // MAX_READINGS fits a u16, and so does every heapless::Vec length here.
            count: self.readings.len() as u16,
        };
        let mut used = 1 + write(&header, rest)?;
        let mut previous_offset = 0;
        for reading in &self.readings {
            let wire = WireReading {
                tag: u16::from(reading.channel) << QUALITY_BITS | u16::from(reading.quality.bits()),
                delta_ms: reading.offset_ms - previous_offset,
                value: reading.value,
            };
            previous_offset = reading.offset_ms;
            used += write(&wire, &mut buf[used..])?;
        }
        Ok(&mut buf[..used])
    }

    /// Decodes one frame that must fill `bytes` exactly. Never panics, whatever the
    /// input: every way bytes can fail to be a frame has its own [`DecodeError`].
    ///
    /// A sealed frame (version 2, [`crate::seal`]) decodes like a version 1 frame, its
    /// tag unchecked: checking it needs the gateway's key, which the bridge holds.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (&version, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
        let rest = match version {
            WIRE_VERSION => rest,
            SEALED_VERSION => rest
                .len()
                .checked_sub(TAG_LEN)
                .map(|body| &rest[..body])
                .ok_or(DecodeError::Truncated(Field::Header))?,
            other => return Err(DecodeError::UnknownVersion(other)),
        };
        let (header, mut rest) = postcard::take_from_bytes::<WireHeader>(rest)
            .map_err(|e| wire_error(e, Field::Header))?;
        if header.flags & !FLAG_CLOCK_SYNCED != 0 {
            return Err(InvalidFrame::UnknownFlags(header.flags).into());
        }
        let device = DeviceId::new(header.device).map_err(InvalidFrame::Device)?;
        let count = usize::from(header.count);
        if count > MAX_READINGS {
            return Err(InvalidFrame::TooManyReadings(count).into());
        }
        let mut frame = Frame {
            device,
            boot_id: header.boot_id,
            first_seq: header.first_seq,
            base_ts_ms: header.base_ts_ms,
            clock_synced: header.flags & FLAG_CLOCK_SYNCED != 0,
            readings: heapless::Vec::new(),
        };
        let mut offset_ms: u32 = 0;
        for index in 0..count {
            let (wire, tail) = postcard::take_from_bytes::<WireReading>(rest)
                .map_err(|e| wire_error(e, Field::Reading(index)))?;
            rest = tail;
            let channel = wire.tag >> QUALITY_BITS;
            let channel = u8::try_from(channel)
                .map_err(|_| InvalidFrame::ChannelOutOfRange { index, channel })?;
            offset_ms = offset_ms
                .checked_add(wire.delta_ms)
                .ok_or(InvalidFrame::TimestampOutOfRange { index })?;
            let reading = Reading {
                channel,
                offset_ms,
                value: wire.value,
                // Every combination of the three bits is defined.
                quality: Quality::from_bits_truncate((wire.tag & QUALITY_MASK) as u8),
            };
            // Cannot overflow: count <= MAX_READINGS was checked above.
            frame
                .readings
                .push(reading)
                .map_err(|_| InvalidFrame::TooManyReadings(count))?;
        }
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        frame.validate()?;
        Ok(frame)
    }
}

fn write<T: Serialize>(value: &T, buf: &mut [u8]) -> Result<usize, EncodeError> {
    postcard::to_slice(value, buf)
        .map(|written| written.len())
        .map_err(|_| EncodeError::BufferTooSmall)
}

fn wire_error(error: postcard::Error, field: Field) -> DecodeError {
    match error {
        postcard::Error::DeserializeUnexpectedEnd => DecodeError::Truncated(field),
        _ => DecodeError::Malformed(field),
    }
}
