//! One segment file: what the queue remembers of it, the full check made when the queue
//! opens, and reads positioned by record id.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::format::{self, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::ids::IdSet;
use super::{Damage, RecordId, MAX_PAYLOAD_LEN};

/// Every this many records a segment remembers the file offset of a record, so reading
/// any id scans at most this many record headers.
pub(crate) const CHECKPOINT_EVERY: u64 = 64;

/// Checkpoints are `u32`: no record may start or end beyond this offset. The configured
/// segment size is capped well below it.
const MAX_FILE_OFFSET: u64 = u32::MAX as u64;

/// Buffer of the one-off check at open (sequential reads of whole segments).
const SCAN_BUFFER: usize = 64 * 1024;

/// Buffer of a read cursor; a few of them live as long as the queue.
const CURSOR_BUFFER: usize = 4 * 1024;

/// What the queue keeps in memory about one segment file: no payloads, no per-record
/// index, only counts and one offset per [`CHECKPOINT_EVERY`] records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment {
    pub first_id: RecordId,
    /// Records `first_id .. first_id + count` are in the file, in order.
    pub count: u64,
    /// Bytes of the file that hold the header and those records.
    pub len: u64,
    /// Bytes the file takes on disk; more than `len` only when damage past `len` could
    /// not be cut off.
    pub file_len: u64,
    /// Records not yet acknowledged, and their payload bytes.
    pub unacked: u64,
    pub unacked_bytes: u64,
    /// Offset of record `first_id + i * CHECKPOINT_EVERY`.
    pub checkpoints: Vec<u32>,
}

impl Segment {
    /// An empty segment whose header has just been written.
    pub(crate) fn new(first_id: RecordId) -> Self {
        Self {
            first_id,
            count: 0,
            len: SEGMENT_HEADER_LEN,
            file_len: SEGMENT_HEADER_LEN,
            unacked: 0,
            unacked_bytes: 0,
            checkpoints: Vec::new(),
        }
    }

    /// One past the last id in this segment.
    pub(crate) fn end(&self) -> RecordId {
        self.first_id + self.count
    }

    /// Accounts for a record written at offset `self.len`.
    pub(crate) fn push(&mut self, payload_len: u64, acked: bool) {
        if self.count.is_multiple_of(CHECKPOINT_EVERY) {
            // `len` stays below MAX_FILE_OFFSET (checked by `scan` and by the segment cap).
            self.checkpoints
                .push(u32::try_from(self.len).unwrap_or(u32::MAX));
        }
        self.count += 1;
        self.len += RECORD_HEADER_LEN + payload_len;
        if !acked {
            self.unacked += 1;
            self.unacked_bytes += payload_len;
        }
    }

    /// The checkpoint at or before `id` (which must be in this segment): its id and offset.
    fn checkpoint(&self, id: RecordId) -> Option<(RecordId, u64)> {
        let block = (id - self.first_id) / CHECKPOINT_EVERY;
        let offset = self.checkpoints.get(usize::try_from(block).ok()?)?;
        Some((self.first_id + block * CHECKPOINT_EVERY, u64::from(*offset)))
    }
}

/// The result of checking a segment file record by record.
#[derive(Debug)]
pub(crate) struct Scan {
    /// The valid records (those before any damage).
    pub segment: Segment,
    /// Where the first damage starts, and what it is.
    pub damage: Option<(u64, Damage)>,
}

/// Reads the segment file at `path` from start to end, checking the header, every length
/// and every CRC, and stops at the first damage or once the segment holds every id below
/// `limit` (the next segment's first id). `acked` decides what counts as unacknowledged.
/// Only a failure to open the file is an error; anything wrong inside is `damage`.
pub(crate) fn scan(
    path: &Path,
    first_id: RecordId,
    limit: Option<RecordId>,
    acked: &IdSet,
) -> io::Result<Scan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut segment = Segment {
        len: 0,
        file_len,
        ..Segment::new(first_id)
    };
    let reader = BufReader::with_capacity(SCAN_BUFFER, file);
    let damage = check_records(reader, &mut segment, limit, acked);
    segment.checkpoints.shrink_to_fit();
    Ok(Scan { segment, damage })
}

fn check_records(
    mut reader: BufReader<File>,
    segment: &mut Segment,
    limit: Option<RecordId>,
    acked: &IdSet,
) -> Option<(u64, Damage)> {
    if segment.file_len < SEGMENT_HEADER_LEN {
        return Some((0, Damage::BadHeader));
    }
    let mut header = [0; SEGMENT_HEADER_LEN as usize];
    if let Err(e) = reader.read_exact(&mut header) {
        return Some((0, Damage::ReadError(e.kind())));
    }
    if header != format::segment_header(segment.first_id) {
        return Some((0, Damage::BadHeader));
    }
    segment.len = SEGMENT_HEADER_LEN;
    let mut payload = Vec::new();
    loop {
        let at = segment.len;
        let left = segment.file_len - at;
        if left == 0 {
            return None;
        }
        if limit.is_some_and(|limit| segment.end() >= limit) {
            return Some((at, Damage::TrailingBytes));
        }
        if left < RECORD_HEADER_LEN {
            return Some((at, Damage::TornHeader));
        }
        let mut record_header = [0; RECORD_HEADER_LEN as usize];
        if let Err(e) = reader.read_exact(&mut record_header) {
            return Some((at, Damage::ReadError(e.kind())));
        }
        let (len, crc) = format::decode_record_header(record_header);
        let record_len = RECORD_HEADER_LEN + u64::from(len);
        if !payload_len_ok(len) || at + record_len > MAX_FILE_OFFSET {
            return Some((at, Damage::BadLength(len)));
        }
        if record_len > left {
            return Some((at, Damage::TornPayload));
        }
        payload.resize(len as usize, 0);
        if let Err(e) = reader.read_exact(&mut payload) {
            return Some((at, Damage::ReadError(e.kind())));
        }
        if crc32fast::hash(&payload) != crc {
            return Some((at, Damage::CrcMismatch));
        }
        let id = segment.end();
        segment.push(u64::from(len), acked.contains(id));
    }
}

fn payload_len_ok(len: u32) -> bool {
    len > 0 && len as usize <= MAX_PAYLOAD_LEN
}

/// Why a positioned read failed.
#[derive(Debug)]
pub(crate) enum ReadFault {
    /// The file could not be opened.
    Open(io::Error),
    /// The file does not hold what the queue expects at `offset`.
    Damage { offset: u64, damage: Damage },
}

/// An open segment file and the id and offset of the next record in it, kept between
/// calls so that reading on from the last record read costs no seek and no header scan.
#[derive(Debug)]
pub(crate) struct Cursor {
    pub first_id: RecordId,
    /// Id of the record at `offset`.
    pub id: RecordId,
    offset: u64,
    reader: BufReader<File>,
}

impl Cursor {
    /// Opens `path` (the file of `segment`), positioned at the checkpoint before `id`.
    pub(crate) fn open(path: &Path, segment: &Segment, id: RecordId) -> Result<Self, ReadFault> {
        let file = File::open(path).map_err(ReadFault::Open)?;
        let mut cursor = Self {
            first_id: segment.first_id,
            id: segment.first_id,
            offset: SEGMENT_HEADER_LEN,
            reader: BufReader::with_capacity(CURSOR_BUFFER, file),
        };
        cursor.seek_to_checkpoint(segment, id)?;
        Ok(cursor)
    }

    /// True when reading `id` from here scans no more headers than from its checkpoint.
    pub(crate) fn is_good_for(&self, segment: &Segment, id: RecordId) -> bool {
        self.first_id == segment.first_id
            && self.id <= id
            && segment
                .checkpoint(id)
                .is_some_and(|(checkpoint, _)| checkpoint <= self.id)
    }

    pub(crate) fn seek_to_checkpoint(
        &mut self,
        segment: &Segment,
        id: RecordId,
    ) -> Result<(), ReadFault> {
        let (checkpoint, offset) = segment.checkpoint(id).ok_or(ReadFault::Damage {
            offset: segment.len,
            damage: Damage::Truncated,
        })?;
        self.reader
            .seek(SeekFrom::Start(offset))
            .map_err(|e| fault(offset, e))?;
        self.id = checkpoint;
        self.offset = offset;
        Ok(())
    }

    /// Reads record `id` (at or after the cursor, inside `segment`) and checks its CRC.
    pub(crate) fn read(&mut self, segment: &Segment, id: RecordId) -> Result<Vec<u8>, ReadFault> {
        while self.id < id {
            let (len, _) = self.record_header(segment)?;
            self.reader
                .seek_relative(i64::from(len))
                .map_err(|e| fault(self.offset, e))?;
            self.advance(len);
        }
        let (len, crc) = self.record_header(segment)?;
        let mut payload = vec![0; len as usize];
        self.reader
            .read_exact(&mut payload)
            .map_err(|e| fault(self.offset, e))?;
        if crc32fast::hash(&payload) != crc {
            return Err(ReadFault::Damage {
                offset: self.offset,
                damage: Damage::CrcMismatch,
            });
        }
        self.advance(len);
        Ok(payload)
    }

    fn record_header(&mut self, segment: &Segment) -> Result<(u32, u32), ReadFault> {
        let mut header = [0; RECORD_HEADER_LEN as usize];
        self.reader
            .read_exact(&mut header)
            .map_err(|e| fault(self.offset, e))?;
        let (len, crc) = format::decode_record_header(header);
        if !payload_len_ok(len) || self.offset + RECORD_HEADER_LEN + u64::from(len) > segment.len {
            return Err(ReadFault::Damage {
                offset: self.offset,
                damage: Damage::BadLength(len),
            });
        }
        Ok((len, crc))
    }

    fn advance(&mut self, len: u32) {
        self.offset += RECORD_HEADER_LEN + u64::from(len);
        self.id += 1;
    }
}

fn fault(offset: u64, e: io::Error) -> ReadFault {
    ReadFault::Damage {
        offset,
        damage: Damage::ReadError(e.kind()),
    }
}
