//! A proptest that checks random histories of the queue (appends, acks, reads, syncs,
//! crashes, the byte cap) against a model: no unacknowledged record is lost.

use std::collections::BTreeSet;
use std::path::Path;

use edge_agent::queue::{DiskQueue, RecordId};
use proptest::prelude::*;
use support::queue::*;
use tempfile::TempDir;

mod support;

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
