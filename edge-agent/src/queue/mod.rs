//! The agent's store-and-forward: a durable, bounded, on-disk queue of encoded frames.
//!
//! # Why it exists
//!
//! The gateway must not lose a reading to a Wi-Fi outage, a broker restart or a power
//! cut, and must not fill its SD card while it waits. So every frame is appended here
//! *before* it is published, and leaves only when the broker's PUBACK for it arrives
//! ([`DiskQueue::ack`]). After a restart, whatever was not acknowledged is read back and
//! sent again; the cloud deduplicates by (device, boot, seq), so a replay is harmless.
//!
//! # On disk
//!
//! One directory holds segment files and an `acks` file; other files are ignored.
//!
//! A segment file is named by the id of its first record, zero-padded to 20 digits
//! (`00000000000000000042.seg`), and holds a 16-byte header and then records back to back:
//!
//! | bytes     | segment header                                        |
//! | --------- | ----------------------------------------------------- |
//! | 0..4      | magic `EQSG`                                          |
//! | 4..8      | format version, u32 LE (1)                            |
//! | 8..16     | id of the first record, u64 LE (must match the name)  |
//!
//! | bytes     | each record                                           |
//! | --------- | ----------------------------------------------------- |
//! | 0..4      | payload length, u32 LE, 1 to [`MAX_PAYLOAD_LEN`]      |
//! | 4..8      | CRC-32 (IEEE, `crc32fast`) of the payload, u32 LE     |
//! | 8..8+len  | payload                                               |
//!
//! Ids are not stored: a record's id is the segment's first id plus its position. Ids
//! below the first segment and in gaps between segments are finished (acknowledged,
//! dropped or lost).
//!
//! `acks` is rewritten whole by [`DiskQueue::sync`] (write `acks.tmp`, fsync, rename,
//! fsync the directory), so it is either the old or the new version, never a mix:
//!
//! | bytes     | acks file                                                         |
//! | --------- | ----------------------------------------------------------------- |
//! | 0..4      | magic `EQAK`                                                      |
//! | 4..8      | format version, u32 LE (1)                                        |
//! | 8..16     | next id, u64 LE: ids stay increasing even once every segment is gone |
//! | 16..24    | records dropped or lost over the queue's life, u64 LE            |
//! | 24..28    | number of ranges n, u32 LE                                        |
//! | 28..28+16n | acknowledged ids inside live segments: sorted, disjoint half-open ranges (start, end), u64 LE each |
//! | last 4    | CRC-32 of everything before it, u32 LE                            |
//!
//! A missing or corrupt `acks` file means "nothing acknowledged beyond what the deleted
//! segments imply": everything still on disk is replayed, nothing is lost.
//!
//! # Durability
//!
//! - [`DiskQueue::append`] is one `pwrite`, no fsync: a process crash loses nothing (the
//!   kernel keeps written data); a power cut can lose what was written since the last
//!   [`DiskQueue::sync`] or segment roll.
//! - A segment is sealed (fsync'd once) when a record would take it beyond
//!   `segment_bytes` and the queue rolls to a new one.
//! - [`DiskQueue::sync`] fsyncs the active segment, then the directory if segments were
//!   created or deleted, then rewrites `acks`. In that order, an id recorded as acked
//!   always belongs to data already on disk, and a segment deleted because it was fully
//!   acked cannot reappear next to an `acks` file that no longer mentions it. So after a
//!   crash, acks since the last sync may be replayed, nothing acked before it is, and
//!   nothing unacknowledged is lost.
//!
//! # Repair at open
//!
//! [`DiskQueue::open`] reads every record of every segment and checks lengths and CRCs.
//! A torn or corrupt tail of the last segment (a power cut mid-write, zeros from delayed
//! allocation, garbage) is cut off with `ftruncate`. Damage in an older segment cuts off
//! the rest of that segment; the unacknowledged records lost there are counted exactly
//! (the next segment's name says where this one ended). A segment whose header is wrong
//! is deleted. None of this stops the agent from starting; the [`OpenReport`] says what
//! was found. Damage met later by a read is handled the same way.
//!
//! # Bounds
//!
//! - Disk: the segment files together never exceed `max_bytes`, with no slack: before a
//!   write, the oldest segments are deleted until the record fits (drop-oldest, one whole
//!   segment at a time), and the unacknowledged records they held are counted in
//!   [`QueueStats::dropped_records`]. A full disk (`ENOSPC`, `EDQUOT`) is handled the same
//!   way, one segment per retry, by `append` and by `sync` (so acks keep being recorded);
//!   when nothing is left to drop, `append` returns [`QueueError::DiskFull`].
//! - Memory: no payload is kept. Per segment about 100 bytes plus 4 bytes per 64 records
//!   (the file offset of every 64th record, so reading any id scans at most 63 record
//!   headers); a full default queue of 200-byte records (64 segments, 320k records) costs
//!   about 27 KB (measured in all: 40 KB more RSS after opening such a queue, 92 KB
//!   after filling it). Acknowledged ids cost 16 bytes per gap between acked runs (a few in
//!   practice: acks come roughly in order). Up to 3 read cursors with 4 KiB buffers keep
//!   reading on from where the last read stopped (the backlog's head, the live tail) free
//!   of seeks. The payload lengths of up to 1024 records appended or read and not yet
//!   acked are remembered so [`QueueStats::unacked_bytes`] stays exact; beyond that an ack
//!   subtracts its segment's average (exact again once the segment empties or the queue
//!   reopens).
//!
//! # For the caller
//!
//! - [`DiskQueue::read_unacked`] returns every unacknowledged record, including those
//!   already published and awaiting their PUBACK: the queue does not know what was sent.
//!   The sender keeps its own cursors, and after a reconnect starts again from
//!   [`QueueStats::first_unacked`] (or 0).
//! - Every call is blocking file I/O, kept short: `append` is one write, `ack` and `stats`
//!   touch no file unless a segment is deleted; `sync` costs up to four fsyncs (tens of
//!   milliseconds on an SD card) and `open` reads the whole queue once.
//! - Dropping the queue without [`DiskQueue::sync`] is a crash as far as the queue
//!   knows: call `sync` at shutdown.
//! - One process per directory: `open` takes an exclusive lock on the directory's `lock`
//!   file and refuses with [`QueueError::InUse`] while another queue holds it.
//! - Ids strictly increase across restarts. The one exception is a power cut: ids of
//!   records that never reached the disk can be handed out again, which is harmless
//!   because nothing durable refers to them.

mod format;
mod ids;
mod segment;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tracing::{debug, warn};

use self::format::{
    SavedAcks, ACKS_FILE, ACKS_TMP_FILE, MAX_ACKS_FILE_LEN, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use self::ids::IdSet;
use self::segment::{Cursor, ReadFault, Scan, Segment};

/// A record's identity in the queue: global, strictly increasing across segments and
/// restarts.
pub type RecordId = u64;

/// Default size beyond which the queue rolls to a new segment file.
pub const DEFAULT_SEGMENT_BYTES: u64 = 1024 * 1024;
/// Default cap on all segment files together.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Largest payload a record may hold (a protocol frame is under 1 KiB).
pub const MAX_PAYLOAD_LEN: usize = 64 * 1024;

const MIN_SEGMENT_BYTES: u64 = 64;
const MAX_SEGMENT_BYTES: u64 = 1024 * 1024 * 1024;
/// Read cursors kept open: the backlog's head, the live tail, one spare.
const MAX_CURSORS: usize = 3;
/// Payload lengths remembered for records in flight (see the module documentation).
const MAX_REMEMBERED_LENGTHS: usize = 1024;

/// Where the queue lives and how big it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Directory of the queue; created if missing.
    pub dir: PathBuf,
    /// The queue rolls to a new segment file when a record would take the current one
    /// beyond this (64 B to 1 GiB). Also the granularity of drop-oldest.
    pub segment_bytes: u64,
    /// Cap on all segment files together; at least `segment_bytes`, and best many times
    /// it, since the oldest segment is dropped whole.
    pub max_bytes: u64,
}

impl QueueConfig {
    /// A queue in `dir` with the default sizes (1 MiB segments, 64 MiB in all).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }

    fn validate(&self) -> Result<(), QueueError> {
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return Err(QueueError::Config(format!(
                "segment_bytes must be between {MIN_SEGMENT_BYTES} B and 1 GiB, got {}",
                self.segment_bytes
            )));
        }
        if self.max_bytes < self.segment_bytes {
            return Err(QueueError::Config(format!(
                "max_bytes ({}) must be at least segment_bytes ({})",
                self.max_bytes, self.segment_bytes
            )));
        }
        Ok(())
    }
}

/// What went wrong. Every message names the file or directory and the problem.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("invalid queue configuration: {0}")]
    Config(String),
    #[error("queue directory {} is in use by another process (is a second edge-agent running?)", .path.display())]
    InUse { path: PathBuf },
    #[error("queue directory {} cannot be created: {cause}", .path.display())]
    CreateDir { path: PathBuf, cause: io::Error },
    #[error("queue directory {} cannot be read: {cause}", .path.display())]
    ReadDir { path: PathBuf, cause: io::Error },
    #[error("queue directory {} is not writable: {cause} (opening {})", .path.display(), .file.display())]
    NotWritable {
        path: PathBuf,
        file: PathBuf,
        cause: io::Error,
    },
    #[error("queue file {}: cannot {op}: {cause}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    #[error("a queue record holds 1 to {max} bytes, this one has {len}")]
    RecordSize { len: usize, max: usize },
    #[error("queue directory {} is full and holds nothing more to drop; a {len}-byte record cannot be written: {cause}", .path.display())]
    DiskFull {
        path: PathBuf,
        len: usize,
        cause: io::Error,
    },
}

/// What was wrong with a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// The file is shorter than its header, or the header is not this format's or names
    /// another first id.
    BadHeader,
    /// Fewer bytes than a record header where a record should start (a write cut short).
    TornHeader,
    /// A record length of 0 or above [`MAX_PAYLOAD_LEN`] (garbage, or zeros).
    BadLength(u32),
    /// A record's payload runs past the end of the file (a write cut short).
    TornPayload,
    /// A payload does not match its CRC.
    CrcMismatch,
    /// Bytes after the last id this segment may hold (the next segment starts there).
    TrailingBytes,
    /// The file is shorter than the records the queue knew of.
    Truncated,
    /// Reading failed; the file is left as it is and the rest of it is not used.
    ReadError(io::ErrorKind),
}

impl Damage {
    /// Damage in the bytes themselves, which is cut off; a read error leaves the file.
    fn is_in_data(self) -> bool {
        !matches!(self, Damage::ReadError(_))
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::BadHeader => f.write_str("missing or invalid segment header"),
            Damage::TornHeader => f.write_str("torn record header"),
            Damage::BadLength(len) => write!(f, "invalid record length {len}"),
            Damage::TornPayload => f.write_str("torn record payload"),
            Damage::CrcMismatch => f.write_str("record CRC mismatch"),
            Damage::TrailingBytes => f.write_str("bytes after the segment's last record"),
            Damage::Truncated => f.write_str("file shorter than its records"),
            Damage::ReadError(kind) => write!(f, "read error ({kind})"),
        }
    }
}

/// One damaged segment found and repaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    pub file: PathBuf,
    /// Where the damage starts; nothing from here on is used.
    pub offset: u64,
    pub damage: Damage,
    /// Bytes removed from the disk (0 when a read error left the file as it was).
    pub bytes_cut: u64,
    /// Unacknowledged records known to be lost: in an older segment, every one up to the
    /// next segment; in the last segment, those the last sync had made durable (a torn
    /// tail written after the last sync was never durable and is not counted).
    pub records_lost: u64,
}

impl fmt::Display for Repair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} at byte {}; cut {} bytes, {} unacknowledged records lost",
            self.file.display(),
            self.damage,
            self.offset,
            self.bytes_cut,
            self.records_lost
        )
    }
}

/// The state of the `acks` file at open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AcksState {
    Loaded,
    /// No acks file (a new queue): everything on disk is unacknowledged.
    #[default]
    Missing,
    /// Unusable, for the reason given: everything on disk is replayed.
    Corrupt(String),
}

/// What [`DiskQueue::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub dir: PathBuf,
    pub segments: u64,
    /// Records waiting for delivery, and their payload bytes.
    pub unacked_records: u64,
    pub unacked_bytes: u64,
    pub next_id: RecordId,
    pub acks: AcksState,
    /// Damaged segment files, each repaired.
    pub repairs: Vec<Repair>,
    /// Unacknowledged records lost to the damage (the sum over `repairs`).
    pub lost_records: u64,
    /// Unacknowledged records dropped because the queue exceeded `max_bytes` (after the
    /// cap was lowered).
    pub dropped_records: u64,
}

impl fmt::Display for OpenReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "queue {}: {} unacknowledged records ({} bytes) in {} segments, next id {}",
            self.dir.display(),
            self.unacked_records,
            self.unacked_bytes,
            self.segments,
            self.next_id
        )?;
        match &self.acks {
            AcksState::Loaded => {}
            AcksState::Missing => f.write_str("; no acks file")?,
            AcksState::Corrupt(why) => write!(f, "; acks file unusable ({why}), replaying all")?,
        }
        if !self.repairs.is_empty() {
            write!(
                f,
                "; repaired {} damaged segments, {} records lost",
                self.repairs.len(),
                self.lost_records
            )?;
        }
        if self.dropped_records > 0 {
            write!(f, "; dropped {} records over the cap", self.dropped_records)?;
        }
        Ok(())
    }
}

/// A snapshot of the queue's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub unacked_records: u64,
    /// Payload bytes of the unacknowledged records.
    pub unacked_bytes: u64,
    /// Bytes of all segment files (never above `max_bytes`).
    pub disk_bytes: u64,
    pub segments: u64,
    /// Unacknowledged records dropped since open: drop-oldest at the cap or on a full disk.
    pub dropped_records: u64,
    /// Unacknowledged records lost to damaged files since open (including at open).
    pub corrupt_records: u64,
    /// Dropped and lost records over the queue's life (persisted by each sync).
    pub lost_records_total: u64,
    pub next_id: RecordId,
    pub first_unacked: Option<RecordId>,
}

/// The durable, bounded queue of frames. See the module documentation.
#[derive(Debug)]
pub struct DiskQueue {
    dir: PathBuf,
    segment_bytes: u64,
    max_bytes: u64,
    /// Live segments in id order; the last one is the active one when `active` is set.
    segments: VecDeque<Segment>,
    active: Option<Active>,
    /// Acknowledged ids, only inside live segments.
    acked: IdSet,
    /// Payload lengths of some unacknowledged records (see the module documentation).
    lengths: BTreeMap<RecordId, u32>,
    next_id: RecordId,
    cursors: Vec<Cursor>,
    write_buf: Vec<u8>,
    /// Unacknowledged records of segments dropped since the last
    /// [`DiskQueue::take_dropped`], so the caller can say exactly what was given up.
    dropped_records: Vec<(RecordId, Vec<u8>)>,
    dropped: u64,
    corrupt: u64,
    lost_total: u64,
    /// The acks file is behind the memory state.
    acks_dirty: bool,
    /// Segment files were created or deleted since the directory was last fsync'd.
    dir_dirty: bool,
    /// Held open for the queue's lifetime: its exclusive lock keeps a second process
    /// (a second agent started by mistake) from writing the same segments.
    _lock: File,
}

/// The write handle of the last segment, which receives appends.
#[derive(Debug)]
struct Active {
    file: File,
    /// Written since its last fsync.
    dirty: bool,
}

/// Why one attempt to write failed.
enum WriteError {
    /// Out of space: dropping an older segment may help.
    Full(io::Error),
    Fatal(QueueError),
}

impl DiskQueue {
    /// Opens or creates the queue in `config.dir` (creating the directory), checks and
    /// repairs every segment (see the module documentation) and says what it found.
    /// Fails only on bad configuration or a directory that cannot be created, read or
    /// written: never because of what is inside the files.
    pub fn open(config: QueueConfig) -> Result<(Self, OpenReport), QueueError> {
        config.validate()?;
        let QueueConfig {
            dir,
            segment_bytes,
            max_bytes,
        } = config;
        create_dir(&dir)?;
        let lock = lock_dir(&dir)?;
        let first_ids = list_segments(&dir)?;
        let (saved, acks) = load_acks(&dir);
        let mut queue = DiskQueue {
            dir,
            segment_bytes,
            max_bytes,
            segments: VecDeque::new(),
            active: None,
            acked: saved.acked,
            lengths: BTreeMap::new(),
            next_id: saved.next_id,
            cursors: Vec::new(),
            write_buf: Vec::new(),
            dropped_records: Vec::new(),
            dropped: 0,
            corrupt: 0,
            lost_total: saved.lost_total,
            // The first sync rewrites the acks file (replacing a corrupt or missing one)
            // and fsyncs the directory (the previous run may have crashed before it did).
            acks_dirty: true,
            dir_dirty: true,
            _lock: lock,
        };
        let mut repairs = Vec::new();
        for (i, &first_id) in first_ids.iter().enumerate() {
            let next_first = first_ids.get(i + 1).copied();
            if let Some(segment) = queue.load_segment(first_id, next_first, &mut repairs)? {
                queue.segments.push_back(segment);
            }
        }
        queue.forget_acks_outside_segments();
        if let Some(last) = queue.segments.back() {
            queue.next_id = queue.next_id.max(last.end());
        }
        // Not even the name of a file found damaged and deleted is used again.
        if let Some(&last_first) = first_ids.last() {
            queue.next_id = queue.next_id.max(last_first);
        }

        // The last segment takes appends again only if it ends exactly at next_id and
        // holds nothing after its records.
        let reuse_last = queue
            .segments
            .back()
            .is_some_and(|s| s.end() == queue.next_id && s.file_len == s.len);
        let count = queue.segments.len();
        let finished: Vec<usize> = (0..count)
            .filter(|&i| queue.segments[i].unacked == 0 && !(reuse_last && i + 1 == count))
            .collect();
        for i in finished.into_iter().rev() {
            queue.retire(i);
        }
        while queue.disk_bytes() > queue.max_bytes && queue.drop_oldest("over the byte cap") {}
        let dropped = queue.dropped;

        match queue.segments.back() {
            Some(last) if last.end() == queue.next_id && last.file_len == last.len => {
                let file = queue.segment_path(last.first_id);
                let handle = OpenOptions::new()
                    .write(true)
                    .open(&file)
                    .map_err(|cause| QueueError::NotWritable {
                        path: queue.dir.clone(),
                        file,
                        cause,
                    })?;
                // What the previous run wrote may still be only in the page cache (it
                // may have crashed): the first sync fsyncs it.
                queue.active = Some(Active {
                    file: handle,
                    dirty: true,
                });
            }
            _ => match queue.create_active() {
                Ok(()) => {}
                // A full disk is not a reason to refuse to start: the first append
                // makes room by dropping the oldest segments.
                Err(WriteError::Full(e)) => {
                    warn!(dir = %queue.dir.display(), error = %e, "queue directory is full");
                }
                Err(WriteError::Fatal(QueueError::Io { path, cause, .. })) => {
                    return Err(QueueError::NotWritable {
                        path: queue.dir.clone(),
                        file: path,
                        cause,
                    })
                }
                Err(WriteError::Fatal(e)) => return Err(e),
            },
        }

        let stats = queue.stats();
        let report = OpenReport {
            dir: queue.dir.clone(),
            segments: stats.segments,
            unacked_records: stats.unacked_records,
            unacked_bytes: stats.unacked_bytes,
            next_id: stats.next_id,
            acks,
            lost_records: repairs.iter().map(|r| r.records_lost).sum(),
            repairs,
            dropped_records: dropped,
        };
        Ok((queue, report))
    }

    /// Appends one record and returns its id. Makes room first by dropping the oldest
    /// segments (counted in [`QueueStats::dropped_records`]) when the record would take
    /// the queue beyond `max_bytes`, or when the disk is full. Fails with
    /// [`QueueError::DiskFull`] when the disk is full and nothing is left to drop, and
    /// [`QueueError::RecordSize`] for an empty or oversized payload; the caller counts
    /// the record as dropped.
    pub fn append(&mut self, payload: &[u8]) -> Result<RecordId, QueueError> {
        let max = MAX_PAYLOAD_LEN.min(
            usize::try_from(self.max_bytes - SEGMENT_HEADER_LEN - RECORD_HEADER_LEN)
                .unwrap_or(usize::MAX),
        );
        if payload.is_empty() || payload.len() > max {
            return Err(QueueError::RecordSize {
                len: payload.len(),
                max,
            });
        }
        format::encode_record(&mut self.write_buf, payload);
        // Every failed attempt drops a segment, and at most one is created per attempt,
        // so this many attempts drop everything there was.
        let attempts = self.segments.len() + 2;
        let mut full = None;
        for _ in 0..attempts {
            match self.try_append(payload.len()) {
                Ok(id) => return Ok(id),
                Err(WriteError::Fatal(e)) => return Err(e),
                Err(WriteError::Full(e)) => {
                    warn!(dir = %self.dir.display(), error = %e, "queue directory full; dropping the oldest segment");
                    full = Some(e);
                    if !self.drop_oldest("disk full") {
                        break;
                    }
                }
            }
        }
        Err(QueueError::DiskFull {
            path: self.dir.clone(),
            len: payload.len(),
            cause: full.unwrap_or_else(|| io::ErrorKind::StorageFull.into()),
        })
    }

    /// Up to `max` unacknowledged records with id `>= from`, in id order (acknowledged,
    /// dropped and lost ids are skipped). Damage met on the way is cut off and counted
    /// like at open; an error means the file could not be read this time (retry later).
    pub fn read_unacked(
        &mut self,
        from: RecordId,
        max: usize,
    ) -> Result<Vec<(RecordId, Vec<u8>)>, QueueError> {
        let mut out = Vec::new();
        let mut id = from;
        while out.len() < max {
            let idx = self.segments.partition_point(|s| s.end() <= id);
            let Some(segment) = self.segments.get(idx) else {
                break;
            };
            id = self.acked.first_absent_from(id.max(segment.first_id));
            if id >= segment.end() {
                continue;
            }
            match self.read_record(idx, id) {
                Ok(payload) => {
                    self.remember_length(id, payload.len());
                    out.push((id, payload));
                    id += 1;
                }
                Err(fault) => self.recover(idx, fault)?,
            }
        }
        Ok(out)
    }

    /// Marks a record acknowledged, in any order. Unknown, dropped and already
    /// acknowledged ids are ignored. A segment whose records are all acknowledged is
    /// deleted, except the active one, which is deleted once it is sealed.
    pub fn ack(&mut self, id: RecordId) {
        let idx = self.segments.partition_point(|s| s.end() <= id);
        let is_active = self.active.is_some() && idx + 1 == self.segments.len();
        let Some(segment) = self.segments.get_mut(idx) else {
            return;
        };
        if id < segment.first_id || !self.acked.insert(id) {
            return;
        }
        let len = match self.lengths.remove(&id) {
            Some(len) => u64::from(len),
            None => segment.unacked_bytes / segment.unacked.max(1),
        };
        segment.unacked = segment.unacked.saturating_sub(1);
        segment.unacked_bytes = match segment.unacked {
            0 => 0,
            _ => segment.unacked_bytes.saturating_sub(len),
        };
        self.acks_dirty = true;
        if segment.unacked == 0 && !is_active {
            self.retire(idx);
        }
    }

    /// Makes everything so far durable: fsyncs the active segment, the directory if
    /// segments came or went, and rewrites the acks file (temp file, fsync, rename,
    /// fsync the directory). Does nothing when nothing changed.
    pub fn sync(&mut self) -> Result<(), QueueError> {
        if let (Some(active), Some(last)) = (self.active.as_mut(), self.segments.back()) {
            if active.dirty {
                fsync_data(&active.file).map_err(|cause| QueueError::Io {
                    op: "fsync",
                    path: segment_path(&self.dir, last.first_id),
                    cause,
                })?;
                active.dirty = false;
            }
        }
        // A full disk must not stop acks from being recorded (everything would be
        // replayed after a restart): make room the same way an append does.
        let mut attempts = self.segments.len() + 1;
        loop {
            if self.dir_dirty {
                fsync_dir(&self.dir)?;
                self.dir_dirty = false;
            }
            if !self.acks_dirty {
                return Ok(());
            }
            match self.write_acks() {
                Ok(()) => {
                    self.acks_dirty = false;
                    return Ok(());
                }
                Err(WriteError::Fatal(e)) => return Err(e),
                Err(WriteError::Full(cause)) => {
                    attempts -= 1;
                    if attempts == 0 || !self.drop_oldest("disk full") {
                        return Err(QueueError::Io {
                            op: "write",
                            path: self.dir.join(ACKS_TMP_FILE),
                            cause,
                        });
                    }
                }
            }
        }
    }

    /// The id the next append will get.
    pub fn next_id(&self) -> RecordId {
        self.next_id
    }

    pub fn stats(&self) -> QueueStats {
        let first_unacked = self
            .segments
            .iter()
            .find(|s| s.unacked > 0)
            .map(|s| self.acked.first_absent_from(s.first_id));
        QueueStats {
            unacked_records: self.segments.iter().map(|s| s.unacked).sum(),
            unacked_bytes: self.segments.iter().map(|s| s.unacked_bytes).sum(),
            disk_bytes: self.disk_bytes(),
            segments: self.segments.len() as u64,
            dropped_records: self.dropped,
            corrupt_records: self.corrupt,
            lost_records_total: self.lost_total,
            next_id: self.next_id,
            first_unacked,
        }
    }

    fn segment_path(&self, first_id: RecordId) -> PathBuf {
        segment_path(&self.dir, first_id)
    }

    fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.file_len).sum()
    }

    /// Checks one segment file at open and cuts off its damage. `None` when nothing of
    /// it is left.
    fn load_segment(
        &mut self,
        first_id: RecordId,
        next_first: Option<RecordId>,
        repairs: &mut Vec<Repair>,
    ) -> Result<Option<Segment>, QueueError> {
        let path = self.segment_path(first_id);
        let Scan {
            mut segment,
            damage,
        } = match segment::scan(&path, first_id, next_first, &self.acked) {
            Ok(scan) => scan,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(cause) => {
                return Err(QueueError::Io {
                    op: "open",
                    path,
                    cause,
                })
            }
        };
        let Some((offset, damage)) = damage else {
            return Ok(Some(segment));
        };
        // What the lost part held: every id up to the next segment; for the last
        // segment, what the last sync knew of.
        let end = segment.end();
        let upper = next_first.unwrap_or(self.next_id).max(end);
        let records_lost = (upper - end) - self.acked.count_in(end, upper);
        let bytes_cut = self.cut_off(&path, &mut segment, damage);
        self.corrupt += records_lost;
        self.lost_total += records_lost;
        let repair = Repair {
            file: path,
            offset,
            damage,
            bytes_cut,
            records_lost,
        };
        warn!(%repair, "queue segment damaged; repaired");
        repairs.push(repair);
        Ok((segment.count > 0).then_some(segment))
    }

    /// Removes what follows the valid records of `segment` from its file (the whole
    /// file when no record is valid); returns the bytes removed. A read error leaves the
    /// file as it is.
    fn cut_off(&mut self, path: &Path, segment: &mut Segment, damage: Damage) -> u64 {
        if !damage.is_in_data() {
            return 0;
        }
        self.dir_dirty = true;
        let result = if segment.count == 0 {
            fs::remove_file(path).map(|()| 0)
        } else {
            OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(segment.len))
                .map(|()| segment.len)
        };
        match result {
            Ok(kept) => {
                let cut = segment.file_len.saturating_sub(kept);
                segment.file_len = kept;
                cut
            }
            Err(e) => {
                warn!(file = %path.display(), error = %e, "cannot cut off a damaged part of the queue");
                0
            }
        }
    }

    /// Drops acknowledged ids that no live segment holds (the file may name ids of
    /// segments deleted or cut since).
    fn forget_acks_outside_segments(&mut self) {
        let mut start = 0;
        for segment in &self.segments {
            self.acked.remove_range(start, segment.first_id);
            start = segment.end();
        }
        self.acked.remove_range(start, RecordId::MAX);
    }

    /// Removes segment `idx` from the queue and deletes its file.
    fn retire(&mut self, idx: usize) -> Option<Segment> {
        let segment = self.segments.remove(idx)?;
        if idx == self.segments.len() {
            // The active segment is always the last one.
            self.active = None;
        }
        let (start, end) = (segment.first_id, segment.end());
        self.acked.remove_range(start, end);
        self.lengths.retain(|&id, _| id < start || id >= end);
        self.cursors.retain(|c| c.first_id != start);
        let path = self.segment_path(start);
        match fs::remove_file(&path) {
            Ok(()) => debug!(file = %path.display(), "queue segment deleted"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!(file = %path.display(), error = %e, "cannot delete a queue segment"),
        }
        self.dir_dirty = true;
        self.acks_dirty = true;
        Some(segment)
    }

    /// The unacknowledged records dropped at the cap or on a full disk since the last
    /// call, with their payloads, in id order. (Records lost to damage are not here:
    /// their payloads are unreadable.)
    pub fn take_dropped(&mut self) -> Vec<(RecordId, Vec<u8>)> {
        std::mem::take(&mut self.dropped_records)
    }

    /// Deletes the oldest segment, counting its unacknowledged records as dropped.
    fn drop_oldest(&mut self, why: &'static str) -> bool {
        if let Some(oldest) = self.segments.front() {
            let (first, end, unacked) = (oldest.first_id, oldest.end(), oldest.unacked);
            // Read before deleting: the caller reports which readings it gave up. Only
            // at the cap, so the extra read costs nothing in normal operation.
            match self.read_unacked(first, unacked as usize) {
                Ok(records) => self
                    .dropped_records
                    .extend(records.into_iter().filter(|(id, _)| *id < end)),
                Err(e) => {
                    warn!(error = %e, "cannot read a segment before dropping it; its readings go unreported")
                }
            }
        }
        let Some(segment) = self.retire(0) else {
            return false;
        };
        self.dropped += segment.unacked;
        self.lost_total += segment.unacked;
        if segment.unacked > 0 {
            warn!(
                first_id = segment.first_id,
                records = segment.unacked,
                why,
                "queue dropped its oldest segment"
            );
        }
        true
    }

    fn try_append(&mut self, payload_len: usize) -> Result<RecordId, WriteError> {
        let record_len = self.write_buf.len() as u64;
        if let (Some(_), Some(last)) = (&self.active, self.segments.back()) {
            if last.count > 0 && last.len + record_len > self.segment_bytes {
                self.seal_active();
            }
        }
        let mut needed = record_len;
        if self.active.is_none() {
            needed += SEGMENT_HEADER_LEN;
        }
        while self.disk_bytes() + needed > self.max_bytes {
            let had_active = self.active.is_some();
            if !self.drop_oldest("byte cap reached") {
                break;
            }
            if had_active && self.active.is_none() {
                needed += SEGMENT_HEADER_LEN;
            }
        }
        if self.active.is_none() {
            self.create_active()?;
        }
        let dir = &self.dir;
        let (Some(active), Some(last)) = (self.active.as_mut(), self.segments.back_mut()) else {
            return Err(WriteError::Fatal(QueueError::Config(
                "no active segment after creating one".to_owned(),
            )));
        };
        let offset = last.len;
        if let Err(e) = active.file.write_all_at(&self.write_buf, offset) {
            // Take back whatever part of the record reached the file, so that no torn
            // record sits before the next one.
            let path = segment_path(dir, last.first_id);
            if let Err(e2) = active.file.set_len(offset) {
                warn!(file = %path.display(), error = %e2, "cannot take back a partial write; sealing the segment");
                last.file_len = active
                    .file
                    .metadata()
                    .map_or(offset + record_len, |m| m.len());
                self.active = None;
            }
            let start = last.first_id;
            self.cursors.retain(|c| c.first_id != start);
            return Err(classify(e, "write", path));
        }
        last.push(payload_len as u64, false);
        last.file_len = last.len;
        active.dirty = true;
        let id = self.next_id;
        self.next_id += 1;
        self.remember_length(id, payload_len);
        Ok(id)
    }

    /// Seals the active segment: fsync'd once, or deleted at once if nothing in it
    /// awaits delivery.
    fn seal_active(&mut self) {
        let Some(active) = self.active.take() else {
            return;
        };
        let Some(last) = self.segments.back_mut() else {
            return;
        };
        if last.unacked == 0 {
            let idx = self.segments.len() - 1;
            self.retire(idx);
            return;
        }
        last.checkpoints.shrink_to_fit();
        let first_id = last.first_id;
        if active.dirty {
            if let Err(e) = fsync_data(&active.file) {
                warn!(file = %self.segment_path(first_id).display(), error = %e, "cannot fsync a sealed queue segment");
            }
        }
    }

    /// Starts a new segment file at `next_id`.
    fn create_active(&mut self) -> Result<(), WriteError> {
        let first_id = self.next_id;
        let path = self.segment_path(first_id);
        let created = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .and_then(|file| {
                file.write_all_at(&format::segment_header(first_id), 0)?;
                Ok(file)
            });
        let file = match created {
            Ok(file) => file,
            Err(e) => {
                // Best effort: a header that did not fit must not stay behind.
                let _ = fs::remove_file(&path);
                return Err(classify(e, "create", path));
            }
        };
        self.segments.push_back(Segment::new(first_id));
        self.active = Some(Active { file, dirty: true });
        self.dir_dirty = true;
        Ok(())
    }

    /// Reads record `id` of segment `idx` through the best cursor: one already in this
    /// segment at or before `id`, else a reused or new one seeked to the checkpoint.
    fn read_record(&mut self, idx: usize, id: RecordId) -> Result<Vec<u8>, ReadFault> {
        let segment = &self.segments[idx];
        let best = self
            .cursors
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_good_for(segment, id))
            .max_by_key(|(_, c)| c.id)
            .map(|(i, _)| i);
        let mut cursor = match best {
            Some(i) => self.cursors.remove(i),
            None => match self
                .cursors
                .iter()
                .position(|c| c.first_id == segment.first_id)
            {
                Some(i) => {
                    let mut cursor = self.cursors.remove(i);
                    cursor.seek_to_checkpoint(segment, id)?;
                    cursor
                }
                None => {
                    if self.cursors.len() >= MAX_CURSORS {
                        // The least recently used one is first.
                        self.cursors.remove(0);
                    }
                    Cursor::open(&segment_path(&self.dir, segment.first_id), segment, id)?
                }
            },
        };
        let payload = cursor.read(segment, id)?;
        self.cursors.push(cursor);
        Ok(payload)
    }

    /// After a failed read in segment `idx`: checks the file again and cuts off what is
    /// damaged, counting the records lost. Errors when the file cannot be opened, or
    /// reads fine now (a transient failure: the caller retries).
    fn recover(&mut self, idx: usize, fault: ReadFault) -> Result<(), QueueError> {
        let old = self.segments[idx].clone();
        let path = self.segment_path(old.first_id);
        self.cursors.retain(|c| c.first_id != old.first_id);
        let fault = match fault {
            ReadFault::Open(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(QueueError::Io {
                    op: "open",
                    path,
                    cause: e,
                })
            }
            ReadFault::Open(e) => format!("file vanished: {e}"),
            ReadFault::Damage { offset, damage } => format!("{damage} at byte {offset}"),
        };
        let scan = match segment::scan(&path, old.first_id, Some(old.end()), &self.acked) {
            Ok(scan) => scan,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Scan {
                segment: Segment {
                    len: 0,
                    file_len: 0,
                    ..Segment::new(old.first_id)
                },
                damage: Some((0, Damage::Truncated)),
            },
            Err(cause) => {
                return Err(QueueError::Io {
                    op: "open",
                    path,
                    cause,
                })
            }
        };
        let Scan {
            mut segment,
            damage,
        } = scan;
        if segment.count >= old.count {
            return Err(QueueError::Io {
                op: "read",
                path,
                cause: io::Error::other(format!("{fault}, yet the file checks out now")),
            });
        }
        let (offset, damage) = damage.unwrap_or((segment.len, Damage::Truncated));
        let (end, old_end) = (segment.end(), old.end());
        let records_lost = (old_end - end) - self.acked.count_in(end, old_end);
        let bytes_cut = self.cut_off(&path, &mut segment, damage);
        self.acked.remove_range(end, old_end);
        self.lengths.retain(|&id, _| id < end || id >= old_end);
        self.corrupt += records_lost;
        self.lost_total += records_lost;
        self.acks_dirty = true;
        let repair = Repair {
            file: path,
            offset,
            damage,
            bytes_cut,
            records_lost,
        };
        warn!(%repair, "queue segment damaged; repaired");
        if idx + 1 == self.segments.len() {
            // Its records no longer end at next_id: the next append starts a new segment.
            self.active = None;
        }
        let empty = segment.count == 0;
        self.segments[idx] = segment;
        if empty {
            self.retire(idx);
        }
        Ok(())
    }

    fn remember_length(&mut self, id: RecordId, len: usize) {
        if self.lengths.len() < MAX_REMEMBERED_LENGTHS {
            // Payloads are at most MAX_PAYLOAD_LEN.
            self.lengths
                .insert(id, u32::try_from(len).unwrap_or(u32::MAX));
        }
    }

    fn write_acks(&self) -> Result<(), WriteError> {
        let bytes = format::encode_acks(self.next_id, self.lost_total, &self.acked);
        let tmp = self.dir.join(ACKS_TMP_FILE);
        let written = File::create(&tmp).and_then(|mut file| {
            file.write_all(&bytes)?;
            fsync_data(&file)
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(classify(e, "write", tmp));
        }
        let path = self.dir.join(ACKS_FILE);
        fs::rename(&tmp, &path).map_err(|e| classify(e, "replace", path))?;
        fsync_dir(&self.dir).map_err(WriteError::Fatal)
    }
}

fn segment_path(dir: &Path, first_id: RecordId) -> PathBuf {
    dir.join(format::segment_file_name(first_id))
}

fn classify(e: io::Error, op: &'static str, path: PathBuf) -> WriteError {
    if matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) {
        WriteError::Full(e)
    } else {
        WriteError::Fatal(QueueError::Io { op, path, cause: e })
    }
}

fn create_dir(dir: &Path) -> Result<(), QueueError> {
    let error = |cause| QueueError::CreateDir {
        path: dir.to_owned(),
        cause,
    };
    fs::create_dir_all(dir).map_err(error)?;
    // create_dir_all accepts an existing regular file at `dir` on some platforms.
    if !dir.is_dir() {
        return Err(error(io::ErrorKind::NotADirectory.into()));
    }
    Ok(())
}

/// First ids of the segment files in `dir`, ascending. Removes a leftover `acks.tmp`.
fn list_segments(dir: &Path) -> Result<Vec<RecordId>, QueueError> {
    let error = |cause| QueueError::ReadDir {
        path: dir.to_owned(),
        cause,
    };
    let mut first_ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(error)? {
        let name = entry.map_err(error)?.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if let Some(first_id) = format::parse_segment_file_name(name) {
            first_ids.push(first_id);
        } else if name == ACKS_TMP_FILE {
            // A sync that did not finish; the acks file it would have replaced is intact.
            let _ = fs::remove_file(dir.join(name));
        } else if name != ACKS_FILE {
            debug!(file = name, "ignoring a stranger in the queue directory");
        }
    }
    first_ids.sort_unstable();
    Ok(first_ids)
}

/// Reads the acks file; anything unusable means "nothing acknowledged".
fn load_acks(dir: &Path) -> (SavedAcks, AcksState) {
    let path = dir.join(ACKS_FILE);
    let read = fs::metadata(&path).and_then(|meta| {
        if meta.len() > MAX_ACKS_FILE_LEN {
            return Err(io::Error::other(format!("{} bytes", meta.len())));
        }
        fs::read(&path)
    });
    let decoded = match read {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return (SavedAcks::default(), AcksState::Missing)
        }
        Err(e) => Err(format!("cannot read it: {e}")),
        Ok(bytes) => format::decode_acks(&bytes),
    };
    match decoded {
        Ok(saved) => (saved, AcksState::Loaded),
        Err(why) => {
            warn!(file = %path.display(), why, "acks file unusable; replaying everything on disk");
            (SavedAcks::default(), AcksState::Corrupt(why))
        }
    }
}

fn fsync_dir(dir: &Path) -> Result<(), QueueError> {
    File::open(dir)
        .and_then(|d| {
            slow_disk::before_fsync();
            d.sync_all()
        })
        .map_err(|cause| QueueError::Io {
            op: "fsync",
            path: dir.to_owned(),
            cause,
        })
}

/// Every fsync of a queue file goes through here (and `fsync_dir`), so the slow-disk
/// test hook delays them all.
fn fsync_data(file: &File) -> io::Result<()> {
    slow_disk::before_fsync();
    file.sync_data()
}

/// Test hook, compiled only with the `slow-disk-test` feature (which only the agent's own
/// tests enable, through their dev-dependency on the crate): every queue fsync first
/// sleeps for the delay set here, to play a slow SD card. Without the feature the hook
/// is an empty function, so the agent that ships has no such code.
#[cfg(feature = "slow-disk-test")]
pub mod slow_disk {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    static FSYNC_DELAY_US: AtomicU64 = AtomicU64::new(0);

    /// Makes every queue fsync in this process take at least `delay` more.
    pub fn set_fsync_delay(delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        FSYNC_DELAY_US.store(us, Ordering::Relaxed);
    }

    pub(super) fn before_fsync() {
        let us = FSYNC_DELAY_US.load(Ordering::Relaxed);
        if us > 0 {
            std::thread::sleep(Duration::from_micros(us));
        }
    }
}

#[cfg(not(feature = "slow-disk-test"))]
mod slow_disk {
    pub(super) fn before_fsync() {}
}

/// Takes the directory's `lock` file exclusively, without waiting.
fn lock_dir(dir: &Path) -> Result<File, QueueError> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|cause| QueueError::NotWritable {
            path: dir.to_owned(),
            file: path.clone(),
            cause,
        })?;
    // A lock can outlive its holder by a moment: a child forked by another thread shares
    // the descriptor until it execs. So a busy lock is retried briefly before giving up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(QueueError::InUse {
                    path: dir.to_owned(),
                })
            }
            Err(std::fs::TryLockError::Error(cause)) => {
                return Err(QueueError::NotWritable {
                    path: dir.to_owned(),
                    file: path,
                    cause,
                })
            }
        }
    }
}
