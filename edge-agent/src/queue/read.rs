//! Reading and acknowledging: unacknowledged records in id order through a few cached
//! cursors, acks in any order, and retiring a segment once nothing in it awaits
//! delivery.

use std::fs;
use std::io;

use tracing::{debug, warn};

use super::segment::{Cursor, ReadFault, Segment};
use super::{segment_path, DiskQueue, QueueError, RecordId, MAX_CURSORS, MAX_REMEMBERED_LENGTHS};

impl DiskQueue {
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

    pub(super) fn remember_length(&mut self, id: RecordId, len: usize) {
        if self.lengths.len() < MAX_REMEMBERED_LENGTHS {
            // Payloads are at most MAX_PAYLOAD_LEN.
            self.lengths
                .insert(id, u32::try_from(len).unwrap_or(u32::MAX));
        }
    }

    /// Removes segment `idx` from the queue and deletes its file.
    pub(super) fn retire(&mut self, idx: usize) -> Option<Segment> {
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
}
