//! The queue's directory and limits: a directory that cannot exist, bad configuration
//! and records, a full disk (a real small tmpfs), and a directory in use.

use std::fs;
use std::io::Write;
use std::process::Command;

use edge_agent::queue::{DiskQueue, QueueConfig, QueueError, MAX_PAYLOAD_LEN};
use support::queue::*;
use tempfile::TempDir;

mod support;

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
