//! Writing: append (one `pwrite`), rolling and sealing segments, the byte cap and
//! drop-oldest, a full disk, and `sync` (the fsyncs and the `acks` file rewrite). See
//! "Durability" and "Bounds" in the module above.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

use tracing::warn;

use super::format::{self, ACKS_FILE, ACKS_TMP_FILE, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::segment::Segment;
use super::{
    classify, fsync_data, fsync_dir, segment_path, Active, DiskQueue, QueueError, RecordId,
    WriteError, MAX_PAYLOAD_LEN,
};

impl DiskQueue {
    /// Appends one record and returns its id. Makes room first by dropping the oldest
    /// segments (counted in
    /// [`QueueStats::dropped_records`](super::QueueStats::dropped_records)) when the
    /// record would take the queue beyond `max_bytes`, or when the disk is full. Fails with
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

    /// The unacknowledged records dropped at the cap or on a full disk since the last
    /// call, with their payloads, in id order. (Records lost to damage are not here:
    /// their payloads are unreadable.)
    pub fn take_dropped(&mut self) -> Vec<(RecordId, Vec<u8>)> {
        std::mem::take(&mut self.dropped_records)
    }

    /// Deletes the oldest segment, counting its unacknowledged records as dropped.
    pub(super) fn drop_oldest(&mut self, why: &'static str) -> bool {
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
    pub(super) fn create_active(&mut self) -> Result<(), WriteError> {
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
