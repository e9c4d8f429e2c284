//! The store-and-forward queue on real files: round trips, acknowledgement in any order,
//! restarts with and without a sync, and the byte cap. Repairs, the directory and a
//! model-checked history are in `queue_repair.rs`, `queue_directory.rs` and
//! `queue_model.rs`.

use std::collections::BTreeSet;
use std::fs;

use edge_agent::queue::{AcksState, DiskQueue, QueueConfig, RecordId};
use support::queue::*;
use tempfile::TempDir;

mod support;

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
