//! The queue's repairs at open and on read: torn and corrupt records, damage in older
//! segments, bad headers, an unusable acks file.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use edge_agent::queue::{AcksState, Damage, DiskQueue, QueueConfig};
use support::queue::*;
use tempfile::TempDir;

mod support;

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
