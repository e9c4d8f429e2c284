//! Opening the queue: the lock, the `acks` file, and the check and repair of every
//! segment at start; and the same repair when a later read meets damage. See "Repair at
//! open" in the module above.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use tracing::{debug, warn};

use super::format::{self, SavedAcks, ACKS_FILE, ACKS_TMP_FILE, MAX_ACKS_FILE_LEN};
use super::segment::{self, ReadFault, Scan, Segment};
use super::{Active, DiskQueue, QueueConfig, QueueError, RecordId, WriteError};

/// What was wrong with a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// The file is shorter than its header, or the header is not this format's or names
    /// another first id.
    BadHeader,
    /// Fewer bytes than a record header where a record should start (a write cut short).
    TornHeader,
    /// A record length of 0 or above [`MAX_PAYLOAD_LEN`](super::MAX_PAYLOAD_LEN) (garbage, or zeros).
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

    /// After a failed read in segment `idx`: checks the file again and cuts off what is
    /// damaged, counting the records lost. Errors when the file cannot be opened, or
    /// reads fine now (a transient failure: the caller retries).
    pub(super) fn recover(&mut self, idx: usize, fault: ReadFault) -> Result<(), QueueError> {
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
