//! Byte layout of the queue's files: segment header, record header, acks file. The
//! layout itself is documented in the module above.

use super::ids::IdSet;
use super::RecordId;

pub(crate) const SEGMENT_MAGIC: [u8; 4] = *b"EQSG";
pub(crate) const ACKS_MAGIC: [u8; 4] = *b"EQAK";
pub(crate) const FORMAT_VERSION: u32 = 1;
pub(crate) const SEGMENT_HEADER_LEN: u64 = 16;
pub(crate) const RECORD_HEADER_LEN: u64 = 8;
pub(crate) const SEGMENT_SUFFIX: &str = ".seg";
pub(crate) const ACKS_FILE: &str = "acks";
pub(crate) const ACKS_TMP_FILE: &str = "acks.tmp";
/// Magic, version, next id, lost total, range count.
const ACKS_FIXED_LEN: usize = 28;
const ACKS_CRC_LEN: usize = 4;
/// An acks file larger than this is not ours (a million gaps between acked runs).
pub(crate) const MAX_ACKS_FILE_LEN: u64 = 16 << 20;

pub(crate) fn segment_file_name(first_id: RecordId) -> String {
    format!("{first_id:020}{SEGMENT_SUFFIX}")
}

/// The first id of a segment file name, or `None` for any other file.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<RecordId> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(crate) fn segment_header(first_id: RecordId) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut header = [0; SEGMENT_HEADER_LEN as usize];
    header[0..4].copy_from_slice(&SEGMENT_MAGIC);
    header[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[8..16].copy_from_slice(&first_id.to_le_bytes());
    header
}

/// Replaces `out` with one record: length, CRC32 of the payload, payload.
pub(crate) fn encode_record(out: &mut Vec<u8>, payload: &[u8]) {
    out.clear();
    // Callers bound payloads to MAX_PAYLOAD_LEN, far below u32::MAX.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// (payload length, payload CRC) of a record header.
pub(crate) fn decode_record_header(header: [u8; RECORD_HEADER_LEN as usize]) -> (u32, u32) {
    let [a, b, c, d, e, f, g, h] = header;
    (
        u32::from_le_bytes([a, b, c, d]),
        u32::from_le_bytes([e, f, g, h]),
    )
}

/// What the acks file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SavedAcks {
    /// The id the next append would have got at the time of the sync.
    pub next_id: RecordId,
    /// Records given up (dropped at the cap or lost to corruption) over the queue's life.
    pub lost_total: u64,
    /// Acknowledged ids inside the segments that were live at the time of the sync.
    pub acked: IdSet,
}

pub(crate) fn encode_acks(next_id: RecordId, lost_total: u64, acked: &IdSet) -> Vec<u8> {
    let ranges = acked.ranges();
    let mut out = Vec::with_capacity(ACKS_FIXED_LEN + 16 * ranges.len() + ACKS_CRC_LEN);
    out.extend_from_slice(&ACKS_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&next_id.to_le_bytes());
    out.extend_from_slice(&lost_total.to_le_bytes());
    // The number of ranges is bounded by the records in the queue, far below u32::MAX.
    let count = u32::try_from(ranges.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&count.to_le_bytes());
    for &(start, end) in ranges {
        out.extend_from_slice(&start.to_le_bytes());
        out.extend_from_slice(&end.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes an acks file; the error says what is wrong with it.
pub(crate) fn decode_acks(bytes: &[u8]) -> Result<SavedAcks, String> {
    let too_short = || format!("{} bytes, too short", bytes.len());
    let body_len = bytes
        .len()
        .checked_sub(ACKS_CRC_LEN)
        .filter(|&n| n >= ACKS_FIXED_LEN)
        .ok_or_else(too_short)?;
    let (body, crc) = bytes.split_at(body_len);
    if le_u32(crc, 0) != Some(crc32fast::hash(body)) {
        return Err("checksum mismatch".to_owned());
    }
    if body[0..4] != ACKS_MAGIC {
        return Err("not an acks file (bad magic)".to_owned());
    }
    let version = le_u32(body, 4).ok_or_else(too_short)?;
    if version != FORMAT_VERSION {
        return Err(format!("unknown version {version}"));
    }
    let next_id = le_u64(body, 8).ok_or_else(too_short)?;
    let lost_total = le_u64(body, 16).ok_or_else(too_short)?;
    let count = le_u32(body, 24).ok_or_else(too_short)? as usize;
    if Some(body_len)
        != count
            .checked_mul(16)
            .and_then(|n| n.checked_add(ACKS_FIXED_LEN))
    {
        return Err(format!(
            "{count} ranges announced, {body_len} bytes present"
        ));
    }
    let ranges = (0..count)
        .map(|i| {
            let at = ACKS_FIXED_LEN + 16 * i;
            Some((le_u64(body, at)?, le_u64(body, at + 8)?))
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(too_short)?;
    if ranges.last().is_some_and(|&(_, end)| end > next_id) {
        return Err("acknowledged ids beyond the next id".to_owned());
    }
    let acked = IdSet::from_ranges(ranges).ok_or("ranges out of order")?;
    Ok(SavedAcks {
        next_id,
        lost_total,
        acked,
    })
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(saved: &SavedAcks) -> Vec<u8> {
        encode_acks(saved.next_id, saved.lost_total, &saved.acked)
    }

    fn saved() -> SavedAcks {
        SavedAcks {
            next_id: 900,
            lost_total: 7,
            acked: IdSet::from_ranges(vec![(3, 10), (12, 13), (500, 899)]).unwrap(),
        }
    }

    #[test]
    fn acks_round_trip() {
        assert_eq!(decode_acks(&encode(&saved())).unwrap(), saved());
        let empty = SavedAcks::default();
        assert_eq!(decode_acks(&encode(&empty)).unwrap(), empty);
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_detected() {
        let bytes = encode(&saved());
        for i in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(decode_acks(&bad).is_err(), "bit {i} flipped went unnoticed");
        }
        for len in 0..bytes.len() {
            assert!(decode_acks(&bytes[..len]).is_err(), "truncated to {len}");
        }
    }

    #[test]
    fn segment_names_round_trip_and_reject_strangers() {
        assert_eq!(segment_file_name(42), "00000000000000000042.seg");
        assert_eq!(
            parse_segment_file_name("00000000000000000042.seg"),
            Some(42)
        );
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        for name in [
            "42.seg",
            "0000000000000000004x.seg",
            "acks",
            "99999999999999999999.seg",
        ] {
            assert_eq!(parse_segment_file_name(name), None, "{name}");
        }
    }

    #[test]
    fn record_header_round_trip() {
        let mut out = Vec::new();
        encode_record(&mut out, b"hello");
        let (len, crc) = decode_record_header(out[..8].try_into().unwrap());
        assert_eq!(len, 5);
        assert_eq!(crc, crc32fast::hash(b"hello"));
        assert_eq!(&out[8..], b"hello");
    }
}
