//! The store-and-forward queue on real files: round trips, restarts with and without a
//! sync, the byte cap, a full disk, repairs of torn and corrupt segments, unusable
//! directories, and a proptest that checks random histories against a model.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use edge_agent::queue::{
    AcksState, Damage, DiskQueue, QueueConfig, QueueError, RecordId, MAX_PAYLOAD_LEN,
};
use proptest::prelude::*;
use tempfile::TempDir;

const SEGMENT_HEADER: u64 = 16;
const RECORD_HEADER: u64 = 8;

type Records = Vec<(RecordId, Vec<u8>)>;

fn config(dir: &Path, segment_bytes: u64, max_bytes: u64) -> QueueConfig {
    QueueConfig {
        dir: dir.to_owned(),
        segment_bytes,
        max_bytes,
    }
}

/// A queue whose segments hold exactly `per_segment` records of `len` bytes.
fn config_per_segment(dir: &Path, per_segment: u64, len: usize, max_bytes: u64) -> QueueConfig {
    config(
        dir,
        SEGMENT_HEADER + per_segment * (RECORD_HEADER + len as u64),
        max_bytes,
    )
}

fn open(config: &QueueConfig) -> DiskQueue {
    DiskQueue::open(config.clone()).unwrap().0
}

/// A payload that tells records apart.
fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|k| (i as usize * 7 + k) as u8).collect()
}

fn append_n(queue: &mut DiskQueue, n: u64, len: usize) -> Records {
    (0..n)
        .map(|i| {
            let p = payload(i, len);
            (queue.append(&p).unwrap(), p)
        })
        .collect()
}

fn read_all(queue: &mut DiskQueue) -> Records {
    queue.read_unacked(0, usize::MAX).unwrap()
}

fn ids(records: &[(RecordId, Vec<u8>)]) -> Vec<RecordId> {
    records.iter().map(|(id, _)| *id).collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

fn segment_names(dir: &Path) -> Vec<String> {
    segment_files(dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn bytes_on_disk(dir: &Path) -> u64 {
    segment_files(dir)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

fn last_segment(dir: &Path) -> PathBuf {
    segment_files(dir).pop().unwrap()
}

fn flip_byte(path: &Path, offset: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0];
    file.read_exact_at(&mut byte, offset).unwrap();
    file.write_all_at(&[byte[0] ^ 0x5a], offset).unwrap();
}

#[test]
fn append_read_ack_round_trip() {
    let dir = TempDir::new().unwrap();
    let (mut queue, report) = DiskQueue::open(QueueConfig::new(dir.path().join("q"))).unwrap();
    assert_eq!(report.acks, AcksState::Missing);
    assert_eq!((report.unacked_records, report.next_id), (0, 0));
    assert!(report.repairs.is_empty());

    let records: Records = (0..10)
        .map(|i| {
            let p = payload(i, 100 + i as usize);
            (queue.append(&p).unwrap(), p)
        })
        .collect();
    assert!(ids(&records).windows(2).all(|w| w[0] < w[1]));
    assert_eq!(read_all(&mut queue), records);
    let stats = queue.stats();
    assert_eq!(stats.unacked_records, 10);
    assert_eq!(stats.unacked_bytes, (100..110).sum::<u64>());
    assert_eq!(stats.first_unacked, Some(records[0].0));
    assert_eq!(stats.next_id, records[9].0 + 1);
    assert_eq!(queue.next_id(), stats.next_id);

    // Out of order, twice, and ids the queue never had: the last two are no-ops.
    for i in [7, 2, 9, 2, 0] {
        queue.ack(records[i].0);
    }
    queue.ack(12_345);
    let left: Records = [1, 3, 4, 5, 6, 8]
        .iter()
        .map(|&i| records[i].clone())
        .collect();
    assert_eq!(read_all(&mut queue), left);
    let stats = queue.stats();
    assert_eq!(stats.unacked_records, 6);
    assert_eq!(
        stats.unacked_bytes,
        left.iter().map(|(_, p)| p.len() as u64).sum::<u64>()
    );
    assert_eq!(stats.first_unacked, Some(records[1].0));

    // `from` and `max`.
    assert_eq!(queue.read_unacked(records[4].0, 2).unwrap(), left[2..4]);
    assert_eq!(queue.read_unacked(records[7].0, 10).unwrap(), left[5..]);
    assert!(queue.read_unacked(stats.next_id, 10).unwrap().is_empty());
    assert!(queue.read_unacked(0, 0).unwrap().is_empty());
}

#[test]
fn reads_interleaved_from_head_and_tail_across_segments() {
    let dir = TempDir::new().unwrap();
    let config = config_per_segment(dir.path(), 5, 30, 1 << 20);
    let mut queue = open(&config);
    let records = append_n(&mut queue, 300, 30);
    // The delivery loop reads one record at a time from two cursors.
    let (mut head, mut tail) = (0, 150);
    for _ in 0..150 {
        let h = queue.read_unacked(head, 1).unwrap();
        let t = queue.read_unacked(tail, 1).unwrap();
        assert_eq!(h, records[head as usize..=head as usize]);
        assert_eq!(t, records[tail as usize..=tail as usize]);
        head += 1;
        tail += 1;
    }
    // Backwards, which defeats every cursor.
    for id in (0..300).rev().step_by(7) {
        assert_eq!(
            queue.read_unacked(id, 1).unwrap(),
            records[id as usize..=id as usize]
        );
    }
}

#[test]
fn ids_strictly_increase_across_reopens() {
    let dir = TempDir::new().unwrap();
    let config = config_per_segment(dir.path(), 3, 20, 1 << 20);
    let mut queue = open(&config);
    let first = append_n(&mut queue, 5, 20);
    drop(queue); // a crash: no sync

    let mut queue = open(&config);
    assert_eq!(ids(&read_all(&mut queue)), ids(&first));
    let id = queue.append(b"after a crash").unwrap();
    assert!(id > first[4].0);
    for (id, _) in read_all(&mut queue) {
        queue.ack(id);
    }
    queue.sync().unwrap();
    drop(queue);

    let mut queue = open(&config);
    assert!(read_all(&mut queue).is_empty());
    let later = queue.append(b"after everything was acked").unwrap();
    assert!(later > id);
    queue.ack(later);
    queue.sync().unwrap();
    drop(queue);

    // Even with every segment file gone, ids carry on from the acks file.
    for file in segment_files(dir.path()) {
        fs::remove_file(file).unwrap();
    }
    let (mut queue, report) = DiskQueue::open(config).unwrap();
    assert_eq!(report.acks, AcksState::Loaded);
    assert!(queue.append(b"x").unwrap() > later);
}

#[test]
fn fully_acked_segments_are_deleted_whatever_the_ack_order() {
    let dir = TempDir::new().unwrap();
    let config = config_per_segment(dir.path(), 3, 40, 1 << 20);
    let mut queue = open(&config);
    let records = append_n(&mut queue, 12, 40);
    let name = |id: u64| format!("{id:020}.seg");
    assert_eq!(
        segment_names(dir.path()),
        [name(0), name(3), name(6), name(9)]
    );

    // A middle segment, backwards.
    queue.ack(5);
    queue.ack(4);
    assert_eq!(segment_names(dir.path()).len(), 4);
    queue.ack(3);
    assert_eq!(segment_names(dir.path()), [name(0), name(6), name(9)]);

    // The active segment stays while it takes appends...
    for id in [11, 9, 10] {
        queue.ack(id);
    }
    queue.ack(1);
    queue.ack(0);
    assert_eq!(segment_names(dir.path()), [name(0), name(6), name(9)]);
    let left: Records = [2, 6, 7, 8].iter().map(|&i| records[i].clone()).collect();
    assert_eq!(read_all(&mut queue), left);
    let stats = queue.stats();
    assert_eq!(stats.segments, 3);
    assert_eq!(stats.disk_bytes, bytes_on_disk(dir.path()));

    // ...and goes when it is sealed.
    let id = queue.append(&payload(12, 40)).unwrap();
    assert_eq!(id, 12);
    assert_eq!(segment_names(dir.path()), [name(0), name(6), name(12)]);
    queue.ack(2);
    assert_eq!(segment_names(dir.path()), [name(6), name(12)]);
    assert_eq!(queue.stats().first_unacked, Some(6));
}

#[test]
fn acks_of_deleted_segments_are_forgotten() {
    let dir = TempDir::new().unwrap();
    let config = config_per_segment(dir.path(), 4, 30, 1 << 20);
    let mut queue = open(&config);
    append_n(&mut queue, 400, 30);
    // Odd ids first: 200 separate ranges at the worst moment.
    for id in (1..400).step_by(2).chain((0..400).step_by(2)) {
        queue.ack(id);
    }
    queue.sync().unwrap();
    // Only the active segment is left, so at most one range is written (the acks file
    // is 32 bytes plus 16 per range).
    assert_eq!(segment_names(dir.path()), [format!("{:020}.seg", 396)]);
    assert!(fs::metadata(dir.path().join("acks")).unwrap().len() <= 32 + 16);
    drop(queue);
    let mut queue = open(&config);
    assert!(read_all(&mut queue).is_empty());
}

#[test]
fn reopen_after_sync_returns_exactly_the_unacked_records_in_order() {
    let dir = TempDir::new().unwrap();
    let config = config_per_segment(dir.path(), 4, 50, 1 << 20);
    let mut queue = open(&config);
    let records = append_n(&mut queue, 30, 50);
    let acked: BTreeSet<RecordId> = (0..10).chain((10..30).step_by(2)).collect();
    for &id in acked.iter().rev() {
        queue.ack(id);
    }
    queue.sync().unwrap();
    drop(queue);

    let (mut queue, report) = DiskQueue::open(config).unwrap();
    let expected: Records = records
        .into_iter()
        .filter(|(id, _)| !acked.contains(id))
        .collect();
    assert_eq!(report.acks, AcksState::Loaded);
    assert_eq!(report.unacked_records, expected.len() as u64);
    assert_eq!(report.unacked_bytes, 50 * expected.len() as u64);
    assert_eq!(read_all(&mut queue), expected);
    assert_eq!(queue.stats().first_unacked, Some(11));
}

#[test]
fn a_crash_replays_acks_since_the_last_sync_and_loses_nothing_unacked() {
    let dir = TempDir::new().unwrap();
    let config = QueueConfig::new(dir.path());
    let mut queue = open(&config);
    let records = append_n(&mut queue, 10, 64);
    for id in 0..4 {
        queue.ack(id);
    }
    queue.sync().unwrap();
    for id in 4..7 {
        queue.ack(id);
    }
    let late = queue.append(b"written after the last sync").unwrap();
    drop(queue); // no sync

    let mut queue = open(&config);
    let mut expected = records[4..].to_vec();
    expected.push((late, b"written after the last sync".to_vec()));
    assert_eq!(read_all(&mut queue), expected);
}

#[test]
fn the_byte_cap_drops_the_oldest_segments_and_counts_what_was_unacked() {
    let dir = TempDir::new().unwrap();
    let per_segment = 3;
    let config = config_per_segment(dir.path(), per_segment, 40, 4 * (16 + 3 * 48));
    let max = config.max_bytes;
    let mut queue = open(&config);
    let records = append_n(&mut queue, 12, 40);
    queue.ack(0); // acked records in a dropped segment are not counted as dropped
    assert_eq!(queue.stats().disk_bytes, max);
    assert_eq!(queue.stats().dropped_records, 0);

    queue.append(&payload(12, 40)).unwrap();
    let stats = queue.stats();
    assert_eq!(stats.dropped_records, 2);
    assert_eq!(stats.first_unacked, Some(3));
    assert!(stats.disk_bytes <= max);
    assert_eq!(read_all(&mut queue)[..9], records[3..]);

    let (mut appended, mut acked) = (13, 1);
    for i in 13..200 {
        queue.append(&payload(i, 40)).unwrap();
        appended += 1;
        if i % 3 == 1 {
            queue.ack(i);
            acked += 1;
        }
        let stats = queue.stats();
        assert!(stats.disk_bytes <= max, "{} > {max}", stats.disk_bytes);
        assert_eq!(stats.disk_bytes, bytes_on_disk(dir.path()));
        // Every record is acked, dropped, or still here.
        assert_eq!(
            acked + stats.dropped_records + stats.unacked_records,
            appended
        );
        // What is left is the newest, without holes.
        let left = ids(&read_all(&mut queue));
        let oldest = stats.first_unacked.unwrap();
        let newest: Vec<RecordId> = (oldest..appended)
            .filter(|&id| id < 13 || id % 3 != 1)
            .collect();
        assert_eq!(left, newest);
    }
    let dropped = queue.stats().dropped_records;
    queue.sync().unwrap();
    // The acks of dropped segments are forgotten: only the 12 records that fit remain
    // (32 bytes plus 16 per range).
    assert!(fs::metadata(dir.path().join("acks")).unwrap().len() <= 32 + 16 * 12);
    drop(queue);
    let queue = open(&config);
    assert_eq!(queue.stats().lost_records_total, dropped);
    assert_eq!(queue.stats().dropped_records, 0);
}

#[test]
fn a_lowered_cap_is_enforced_at_open() {
    let dir = TempDir::new().unwrap();
    let big = config_per_segment(dir.path(), 4, 40, 1 << 20);
    let mut queue = open(&big);
    append_n(&mut queue, 40, 40);
    drop(queue);

    let small = QueueConfig {
        max_bytes: 3 * big.segment_bytes,
        ..big
    };
    let (mut queue, report) = DiskQueue::open(small.clone()).unwrap();
    assert!(bytes_on_disk(dir.path()) <= small.max_bytes);
    let left = read_all(&mut queue);
    assert_eq!(report.dropped_records + left.len() as u64, 40);
    assert_eq!(*ids(&left).last().unwrap(), 39);
}

/// Ten records of 100 bytes in segments of four: files 0, 4 and 8, the last holding two.
fn ten_records(dir: &Path) -> (QueueConfig, Records) {
    let config = config_per_segment(dir, 4, 100, 1 << 20);
    let mut queue = open(&config);
    let records = append_n(&mut queue, 10, 100);
    drop(queue);
    (config, records)
}

/// After a repair, new records are appended and everything survives another reopen.
fn appends_and_reopens_cleanly(config: &QueueConfig, mut expected: Records) {
    let mut queue = open(config);
    let last = expected.last().map_or(0, |(id, _)| *id);
    let id = queue.append(b"after the repair").unwrap();
    assert!(id > last);
    expected.push((id, b"after the repair".to_vec()));
    assert_eq!(read_all(&mut queue), expected);
    drop(queue);
    let (mut queue, report) = DiskQueue::open(config.clone()).unwrap();
    assert!(report.repairs.is_empty(), "{:?}", report.repairs);
    assert_eq!(read_all(&mut queue), expected);
}

#[test]
fn a_torn_record_at_the_tail_is_cut_off() {
    let dir = TempDir::new().unwrap();
    let (config, records) = ten_records(dir.path());
    let last = last_segment(dir.path());
    let len = fs::metadata(&last).unwrap().len();
    // A power cut 30 bytes before the end of the last record.
    OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 30)
        .unwrap();

    let (mut queue, report) = DiskQueue::open(config.clone()).unwrap();
    assert_eq!(report.repairs.len(), 1, "{report}");
    let repair = &report.repairs[0];
    assert_eq!(repair.file, last);
    assert_eq!(repair.damage, Damage::TornPayload);
    assert_eq!(repair.offset, 16 + 108);
    assert_eq!(repair.bytes_cut, 108 - 30);
    assert_eq!(repair.records_lost, 0); // never synced, so never promised
    assert_eq!(fs::metadata(&last).unwrap().len(), 16 + 108);
    assert_eq!(read_all(&mut queue), records[..9]);
    drop(queue);
    appends_and_reopens_cleanly(&config, records[..9].to_vec());
}

#[test]
fn a_torn_record_header_is_cut_off_and_a_synced_loss_is_counted() {
    let dir = TempDir::new().unwrap();
    let (config, records) = ten_records(dir.path());
    let mut queue = open(&config);
    queue.sync().unwrap(); // the acks file now says ten records exist
    drop(queue);
    let last = last_segment(dir.path());
    // Keep three bytes of the last record's header.
    OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(16 + 108 + 3)
        .unwrap();

    let (mut queue, report) = DiskQueue::open(config.clone()).unwrap();
    assert_eq!(report.repairs.len(), 1);
    assert_eq!(report.repairs[0].damage, Damage::TornHeader);
    assert_eq!(report.repairs[0].bytes_cut, 3);
    assert_eq!(report.repairs[0].records_lost, 1);
    assert_eq!(report.lost_records, 1);
    assert_eq!(queue.stats().corrupt_records, 1);
    assert_eq!(read_all(&mut queue), records[..9]);
    // Id 9 was synced once: it is not handed out again.
    assert_eq!(queue.append(b"next").unwrap(), 10);
    drop(queue);
    let mut expected = records[..9].to_vec();
    expected.push((10, b"next".to_vec()));
    appends_and_reopens_cleanly(&config, expected);
}

#[test]
fn a_flipped_byte_in_the_last_record_is_cut_off() {
    let dir = TempDir::new().unwrap();
    let (config, records) = ten_records(dir.path());
    let last = last_segment(dir.path());
    let len = fs::metadata(&last).unwrap().len();
    flip_byte(&last, len - 1);

    let (mut queue, report) = DiskQueue::open(config.clone()).unwrap();
    assert_eq!(report.repairs.len(), 1);
    assert_eq!(report.repairs[0].damage, Damage::CrcMismatch);
    assert_eq!(report.repairs[0].bytes_cut, 108);
    assert_eq!(read_all(&mut queue), records[..9]);
    drop(queue);
    appends_and_reopens_cleanly(&config, records[..9].to_vec());
}

#[test]
fn garbage_after_the_last_record_is_cut_off() {
    let mut header_without_payload = 50u32.to_le_bytes().to_vec();
    header_without_payload.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    let cases: [(Vec<u8>, Damage); 4] = [
        (vec![0; 4096], Damage::BadLength(0)), // delayed allocation after a power cut
        (vec![0xff; 7], Damage::TornHeader),
        (
            b"not a record, just noise".to_vec(),
            Damage::BadLength(0x2074_6f6e),
        ),
        (header_without_payload, Damage::TornPayload),
    ];
    for (garbage, damage) in cases {
        let dir = TempDir::new().unwrap();
        let (config, records) = ten_records(dir.path());
        let last = last_segment(dir.path());
        OpenOptions::new()
            .append(true)
            .open(&last)
            .unwrap()
            .write_all(&garbage)
            .unwrap();

        let (mut queue, report) = DiskQueue::open(config.clone()).unwrap();
        assert_eq!(report.repairs.len(), 1);
        assert_eq!(report.repairs[0].damage, damage);
        assert_eq!(report.repairs[0].bytes_cut, garbage.len() as u64);
        assert_eq!(report.repairs[0].records_lost, 0);
        assert_eq!(read_all(&mut queue), records);
        drop(queue);
        appends_and_reopens_cleanly(&config, records);
    }
}

#[test]
fn damage_in_an_older_segment_loses_only_the_rest_of_that_segment() {
    let dir = TempDir::new().unwrap();
    let config = config_per_segment(dir.path(), 4, 100, 1 << 20);
    let mut queue = open(&config);
    let records = append_n(&mut queue, 12, 100);
    queue.ack(5);
    queue.ack(7);
    queue.sync().unwrap();
    drop(queue);
    // Record 6 is the third of segment 4; 7 after it is acked, so one unacked record is
    // lost with it.
    let file = dir.path().join(format!("{:020}.seg", 4));
    flip_byte(&file, 16 + 2 * 108 + 8 + 10);

    let (mut queue, report) = DiskQueue::open(config.clone()).unwrap();
    assert_eq!(report.repairs.len(), 1, "{report}");
    let repair = &report.repairs[0];
    assert_eq!(repair.file, file);
    assert_eq!(repair.damage, Damage::CrcMismatch);
    assert_eq!(repair.offset, 16 + 2 * 108);
    assert_eq!(repair.bytes_cut, 2 * 108);
    assert_eq!(repair.records_lost, 1);
    assert_eq!(report.lost_records, 1);
    assert_eq!(queue.stats().corrupt_records, 1);
    let expected: Records = [0, 1, 2, 3, 4, 8, 9, 10, 11]
        .iter()
        .map(|&i| records[i].clone())
        .collect();
    assert_eq!(read_all(&mut queue), expected);
    drop(queue);
    appends_and_reopens_cleanly(&config, expected);
}

#[test]
fn an_older_segment_with_a_bad_header_is_dropped_and_counted() {
    let dir = TempDir::new().unwrap();
    let config = config_per_segment(dir.path(), 4, 100, 1 << 20);
    let mut queue = open(&config);
    let records = append_n(&mut queue, 12, 100);
    drop(queue);
    let first = dir.path().join(format!("{:020}.seg", 0));
    flip_byte(&first, 0);

    let (mut queue, report) = DiskQueue::open(config).unwrap();
    assert_eq!(report.repairs.len(), 1);
    assert_eq!(report.repairs[0].damage, Damage::BadHeader);
    assert_eq!(report.repairs[0].records_lost, 4);
    assert!(!first.exists());
    assert_eq!(read_all(&mut queue), records[4..]);
}

#[test]
fn damage_found_by_a_read_is_cut_off_without_an_error() {
    let dir = TempDir::new().unwrap();
    let config = config_per_segment(dir.path(), 4, 100, 1 << 20);
    let mut queue = open(&config);
    let records = append_n(&mut queue, 12, 100);
    // The SD card rots under a running agent: record 1 of the first segment.
    flip_byte(&dir.path().join(format!("{:020}.seg", 0)), 16 + 108 + 8);

    let expected: Records = [0, 4, 5, 6, 7, 8, 9, 10, 11]
        .iter()
        .map(|&i| records[i].clone())
        .collect();
    assert_eq!(read_all(&mut queue), expected);
    let stats = queue.stats();
    assert_eq!(stats.corrupt_records, 3);
    assert_eq!(stats.unacked_records, 9);
    assert_eq!(stats.disk_bytes, bytes_on_disk(dir.path()));
    // The tail keeps working.
    let id = queue.append(b"still here").unwrap();
    assert_eq!(
        queue.read_unacked(id, 1).unwrap(),
        [(id, b"still here".to_vec())]
    );
}

#[test]
fn a_corrupt_acks_file_replays_everything() {
    let dir = TempDir::new().unwrap();
    let config = config_per_segment(dir.path(), 4, 30, 1 << 20);
    let mut queue = open(&config);
    let records = append_n(&mut queue, 6, 30);
    for id in 0..3 {
        queue.ack(id);
    }
    queue.sync().unwrap();
    drop(queue);
    flip_byte(&dir.path().join("acks"), 9);

    let (mut queue, report) = DiskQueue::open(config.clone()).unwrap();
    assert!(matches!(report.acks, AcksState::Corrupt(_)), "{report}");
    // Segment 0 still holds records 0 to 3: 0 to 2 come back, nothing is lost.
    assert_eq!(read_all(&mut queue), records);
    queue.sync().unwrap();
    drop(queue);
    let (_, report) = DiskQueue::open(config).unwrap();
    assert_eq!(report.acks, AcksState::Loaded);
}

#[test]
fn a_directory_that_cannot_exist_is_a_clear_error() {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("plain-file");
    fs::write(&file, b"not a directory").unwrap();

    for path in [file.join("queue"), file.clone()] {
        let err = DiskQueue::open(QueueConfig::new(&path)).unwrap_err();
        assert!(matches!(err, QueueError::CreateDir { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("cannot be created"), "{message}");
    }
}

#[test]
fn bad_configuration_and_bad_records_are_refused() {
    let dir = TempDir::new().unwrap();
    for (segment_bytes, max_bytes) in [(10, 1 << 20), (4096, 1024), (2 << 30, 4 << 30)] {
        let err = DiskQueue::open(config(dir.path(), segment_bytes, max_bytes)).unwrap_err();
        assert!(matches!(err, QueueError::Config(_)), "{err}");
    }

    let mut queue = open(&config(dir.path(), 256, 256));
    for len in [0, 256 - 24 + 1] {
        let err = queue.append(&vec![1; len]).unwrap_err();
        assert!(matches!(err, QueueError::RecordSize { .. }), "{err}");
    }
    // The largest record that fits the cap on its own.
    queue.append(&[1; 256 - 24]).unwrap();
    assert!(queue.stats().disk_bytes <= 256);

    let mut queue = open(&QueueConfig::new(dir.path().join("big")));
    assert!(queue.append(&vec![1; MAX_PAYLOAD_LEN]).is_ok());
    assert!(queue.append(&vec![1; MAX_PAYLOAD_LEN + 1]).is_err());
}

/// A small tmpfs, to run out of space for real. Unmounted when dropped.
struct SmallDisk {
    dir: TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<Self> {
        let dir = TempDir::new().ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .is_ok_and(|out| out.status.success());
        mounted.then_some(Self { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_drops_the_oldest_records_and_never_fails_for_good() {
    let Some(disk) = SmallDisk::mount("64k") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let dir = disk.dir.path().join("queue");
    // The cap is far above what the disk holds: only ENOSPC bounds the queue. Records
    // cross page boundaries, so some writes fail half done.
    let config = config(&dir, 16 * 1024, 1 << 20);
    let mut queue = open(&config);
    let mut acked = 0;
    for i in 0..2000 {
        let id = queue.append(&payload(i, 200)).unwrap();
        if id.is_multiple_of(5) {
            queue.ack(id);
            acked += 1;
        }
        // The acks file needs room too, and a sync must make it.
        queue.sync().unwrap();
    }
    let stats = queue.stats();
    assert!(stats.dropped_records > 0);
    assert_eq!(acked + stats.dropped_records + stats.unacked_records, 2000);
    let left = ids(&read_all(&mut queue));
    let oldest = stats.first_unacked.unwrap();
    assert_eq!(
        left,
        (oldest..2000).filter(|id| id % 5 != 0).collect::<Vec<_>>()
    );
    queue.sync().unwrap();
    drop(queue);
    let (mut queue, report) = DiskQueue::open(config.clone()).unwrap();
    assert!(report.repairs.is_empty(), "{report}");
    assert_eq!(ids(&read_all(&mut queue)), left);
    drop(queue);

    // A disk filled by someone else while the queue holds nothing it could drop: the
    // queue still opens, each append fails with an error (no panic, no hang), and it
    // recovers once there is room again.
    fs::remove_dir_all(&dir).unwrap();
    let filler = disk.dir.path().join("filler");
    let mut file = fs::File::create(&filler).unwrap();
    while file.write_all(&[0; 4096]).is_ok() {}
    drop(file);
    let (mut queue, report) = DiskQueue::open(config.clone()).unwrap();
    assert_eq!(report.segments, 0);
    for i in 0..5 {
        let err = queue.append(&payload(i, 200)).unwrap_err();
        assert!(matches!(err, QueueError::DiskFull { .. }), "{err}");
        assert!(
            err.to_string().contains(&dir.display().to_string()),
            "{err}"
        );
    }
    fs::remove_file(&filler).unwrap();
    let id = queue.append(b"room again").unwrap();
    assert_eq!(
        queue.read_unacked(id, 1).unwrap(),
        [(id, b"room again".to_vec())]
    );
    drop(queue);
    let (mut queue, report) = DiskQueue::open(config).unwrap();
    assert!(report.repairs.is_empty(), "{report}");
    assert_eq!(read_all(&mut queue), [(id, b"room again".to_vec())]);
}

// A random history against a model.

#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    /// Acks the n-th (modulo) unacknowledged record.
    Ack(prop::sample::Index),
    /// Acks an id that is already acked, or one never handed out.
    AckStale(prop::sample::Index),
    Read(prop::sample::Index, usize),
    Sync,
    /// Drops the queue without a sync and opens it again.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..120).prop_map(Op::Append),
        4 => any::<prop::sample::Index>().prop_map(Op::Ack),
        1 => any::<prop::sample::Index>().prop_map(Op::AckStale),
        1 => (any::<prop::sample::Index>(), 1usize..5).prop_map(|(i, n)| Op::Read(i, n)),
        2 => Just(Op::Sync),
        1 => Just(Op::Crash),
    ]
}

#[derive(Default)]
struct Model {
    payloads: std::collections::BTreeMap<RecordId, Vec<u8>>,
    /// Unacknowledged: the queue returns these unless it dropped them at the cap.
    unacked: BTreeSet<RecordId>,
    /// Acked before the last sync: never returned again.
    acked_synced: BTreeSet<RecordId>,
    /// Acked since the last sync: not returned, except after a crash.
    acked_unsynced: BTreeSet<RecordId>,
    dropped_since_open: u64,
}

impl Model {
    /// Compares everything the queue returns with the model, and learns which records
    /// the cap dropped (they must be the oldest ones).
    fn check(&mut self, queue: &mut DiskQueue, dir: &Path, max_bytes: u64, after_crash: bool) {
        let records = read_all(queue);
        let returned: BTreeSet<RecordId> = ids(&records).into_iter().collect();
        assert!(ids(&records).windows(2).all(|w| w[0] < w[1]));
        for (id, payload) in &records {
            assert_eq!(Some(payload), self.payloads.get(id), "payload of {id}");
        }
        assert!(
            returned.is_disjoint(&self.acked_synced),
            "acked before a sync, yet returned"
        );
        if after_crash {
            // Acks since the last sync may be replayed; those not replayed are final.
            let replayed: BTreeSet<_> = returned
                .intersection(&self.acked_unsynced)
                .copied()
                .collect();
            self.unacked.extend(&replayed);
            self.acked_synced
                .extend(self.acked_unsynced.difference(&replayed));
            self.acked_unsynced.clear();
        } else {
            assert!(
                returned.is_disjoint(&self.acked_unsynced),
                "acked, yet returned"
            );
        }
        assert!(
            returned.is_subset(&self.unacked),
            "returned a record never appended"
        );
        let missing: Vec<RecordId> = self.unacked.difference(&returned).copied().collect();
        if let Some(&first) = returned.first() {
            assert!(
                missing.iter().all(|&m| m < first),
                "lost {missing:?}, not the oldest"
            );
        }
        self.dropped_since_open += missing.len() as u64;
        for id in missing {
            self.unacked.remove(&id);
        }

        let stats = queue.stats();
        assert_eq!(stats.dropped_records, self.dropped_since_open);
        assert_eq!(stats.unacked_records, records.len() as u64);
        assert_eq!(
            stats.unacked_bytes,
            records.iter().map(|(_, p)| p.len() as u64).sum::<u64>()
        );
        assert_eq!(stats.first_unacked, returned.first().copied());
        assert!(stats.disk_bytes <= max_bytes);
        assert_eq!(stats.disk_bytes, bytes_on_disk(dir));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever happens — acks in any order, syncs, crashes, the cap — no unacknowledged
    /// record is lost except by drop-oldest (counted), nothing acked before a sync comes
    /// back, payloads are intact and ids only grow.
    #[test]
    fn no_unacknowledged_record_is_lost(ops in prop::collection::vec(op(), 1..80)) {
        let dir = TempDir::new().unwrap();
        let config = config(dir.path(), 256, 1024);
        let mut queue = open(&config);
        let mut model = Model::default();
        let mut last_id = None;
        for op in ops {
            let mut after_crash = false;
            match op {
                Op::Append(len) => {
                    let p = payload(last_id.map_or(0, |id| id + 1), len);
                    let id = queue.append(&p).unwrap();
                    prop_assert!(last_id.is_none_or(|last| id > last), "id {id} after {last_id:?}");
                    last_id = Some(id);
                    model.payloads.insert(id, p);
                    model.unacked.insert(id);
                }
                Op::Ack(index) => {
                    if !model.unacked.is_empty() {
                        let id = *index.get(&model.unacked.iter().copied().collect::<Vec<_>>());
                        queue.ack(id);
                        model.unacked.remove(&id);
                        model.acked_unsynced.insert(id);
                    }
                }
                Op::AckStale(index) => {
                    let mut stale: Vec<RecordId> = model.acked_synced.iter().chain(&model.acked_unsynced).copied().collect();
                    stale.push(last_id.map_or(0, |id| id + 1000));
                    queue.ack(*index.get(&stale));
                }
                Op::Read(index, max) => {
                    let all = read_all(&mut queue);
                    let from = if all.is_empty() { 0 } else { index.get(&all).0 };
                    let expected: Records = all.into_iter().filter(|(id, _)| *id >= from).take(max).collect();
                    prop_assert_eq!(queue.read_unacked(from, max).unwrap(), expected);
                }
                Op::Sync => {
                    queue.sync().unwrap();
                    model.acked_synced.append(&mut model.acked_unsynced);
                }
                Op::Crash => {
                    drop(queue);
                    let (reopened, report) = DiskQueue::open(config.clone()).unwrap();
                    prop_assert!(report.repairs.is_empty(), "{}", report);
                    queue = reopened;
                    model.dropped_since_open = 0;
                    after_crash = true;
                }
            }
            model.check(&mut queue, dir.path(), config.max_bytes, after_crash);
        }
    }
}

#[test]
fn a_directory_in_use_is_refused_until_released() {
    let dir = TempDir::new().unwrap();
    let config = config(dir.path(), 4096, 1 << 20);
    let mut first = open(&config);
    first.append(b"frame").unwrap();
    let err = DiskQueue::open(config.clone()).expect_err("a second queue on the same directory");
    assert!(matches!(err, QueueError::InUse { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
    drop(first);
    let (mut again, _) = DiskQueue::open(config).expect("the lock went with the first queue");
    assert_eq!(read_all(&mut again).len(), 1);
}
