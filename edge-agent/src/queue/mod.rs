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
//!
//! # Where the code is
//!
//! `open` (the lock, the acks file, the check and repair of segments, the report),
//! `write` (append, roll and seal, the byte cap and drop-oldest, `sync`) and `read`
//! (reads in id order, acks, retiring finished segments); beneath them `segment` (one
//! file), `format` (its bytes) and `ids` (the set of acknowledged ids).

mod format;
mod ids;
mod open;
mod read;
mod segment;
mod write;

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use self::ids::IdSet;
use self::segment::{Cursor, Segment};

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

pub use self::open::{AcksState, Damage, OpenReport, Repair};

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
