//! Helpers of the queue's tests (`tests/queue_*.rs`): configurations by record count,
//! distinguishable payloads, and looking at and damaging the segment files.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use edge_agent::queue::{DiskQueue, QueueConfig, RecordId};

pub const SEGMENT_HEADER: u64 = 16;
pub const RECORD_HEADER: u64 = 8;

pub type Records = Vec<(RecordId, Vec<u8>)>;

pub fn config(dir: &Path, segment_bytes: u64, max_bytes: u64) -> QueueConfig {
    QueueConfig {
        dir: dir.to_owned(),
        segment_bytes,
        max_bytes,
    }
}

/// A queue whose segments hold exactly `per_segment` records of `len` bytes.
pub fn config_per_segment(dir: &Path, per_segment: u64, len: usize, max_bytes: u64) -> QueueConfig {
    config(
        dir,
        SEGMENT_HEADER + per_segment * (RECORD_HEADER + len as u64),
        max_bytes,
    )
}

pub fn open(config: &QueueConfig) -> DiskQueue {
    DiskQueue::open(config.clone()).unwrap().0
}

/// A payload that tells records apart.
pub fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|k| (i as usize * 7 + k) as u8).collect()
}

pub fn append_n(queue: &mut DiskQueue, n: u64, len: usize) -> Records {
    (0..n)
        .map(|i| {
            let p = payload(i, len);
            (queue.append(&p).unwrap(), p)
        })
        .collect()
}

pub fn read_all(queue: &mut DiskQueue) -> Records {
    queue.read_unacked(0, usize::MAX).unwrap()
}

pub fn ids(records: &[(RecordId, Vec<u8>)]) -> Vec<RecordId> {
    records.iter().map(|(id, _)| *id).collect()
}

pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

pub fn segment_names(dir: &Path) -> Vec<String> {
    segment_files(dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

pub fn bytes_on_disk(dir: &Path) -> u64 {
    segment_files(dir)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

pub fn last_segment(dir: &Path) -> PathBuf {
    segment_files(dir).pop().unwrap()
}

pub fn flip_byte(path: &Path, offset: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0];
    file.read_exact_at(&mut byte, offset).unwrap();
    file.write_all_at(&[byte[0] ^ 0x5a], offset).unwrap();
}
