//! The in-flight bookkeeping of one connection: which frame or control message each
//! packet id stands for, so that a PUBACK removes exactly the frame sent under its id,
//! and any disagreement with rumqttc is caught as a [`Mismatch`].

use std::collections::{HashMap, VecDeque};

use crate::queue::RecordId;

/// What was sent under a packet id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sent {
    Record(RecordId),
    /// Status, meta or health: nothing to remove from the queue on PUBACK.
    Control,
}

/// A way in which the packet ids of a connection stopped matching what was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mismatch {
    /// rumqttc gave a packet id to a publish this task never handed over.
    NothingHanded(u16),
    /// rumqttc gave out a packet id whose PUBACK has not arrived yet.
    MappedTwice(u16),
    /// A PUBACK (or, from rumqttc, any acknowledgement) for a packet id not in flight:
    /// unknown, or acknowledged already.
    NotInFlight(u16),
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NothingHanded(pkid) => {
                write!(f, "packet id {pkid} given to a publish never handed over")
            }
            Self::MappedTwice(pkid) => {
                write!(f, "packet id {pkid} given out again before its PUBACK")
            }
            Self::NotInFlight(pkid) => write!(
                f,
                "acknowledgement for packet id {pkid}, which is not in flight \
                 (unknown or acknowledged already)"
            ),
        }
    }
}

/// Which publish each packet id of one connection stands for.
///
/// rumqttc (0.25) assigns packet ids itself, when its event loop takes a publish off the
/// request channel, and reports each one as `Outgoing::Publish(pkid)`. It takes requests
/// in order, and a publish whose id would still be in flight (the broker acknowledged out
/// of order) is held back, with every request after it, until that id's PUBACK arrives;
/// the PUBACK's event comes before the held publish's. So ids are reported in the order
/// publishes were handed over, and that is the only order this relies on: a PUBACK then
/// removes exactly the publish sent under its id, in whatever order the broker
/// acknowledges (MQTT 3.1.1 says a server SHOULD acknowledge in order, not MUST).
///
/// Anything else means the two sides no longer agree on what an id names, and from then
/// on a PUBACK could delete another frame: the caller drops the connection.
#[derive(Debug, Default)]
pub(super) struct PacketIds {
    /// Handed to rumqttc, no packet id reported yet, in order.
    handed: VecDeque<Sent>,
    in_flight: HashMap<u16, Sent>,
}

impl PacketIds {
    pub(super) fn handed(&mut self, sent: Sent) {
        self.handed.push_back(sent);
    }

    /// rumqttc sent the oldest publish handed over under `pkid`.
    pub(super) fn published(&mut self, pkid: u16) -> Result<(), Mismatch> {
        if self.in_flight.contains_key(&pkid) {
            return Err(Mismatch::MappedTwice(pkid));
        }
        let sent = self
            .handed
            .pop_front()
            .ok_or(Mismatch::NothingHanded(pkid))?;
        self.in_flight.insert(pkid, sent);
        Ok(())
    }

    /// The PUBACK for `pkid` arrived: what it acknowledges.
    pub(super) fn acked(&mut self, pkid: u16) -> Result<Sent, Mismatch> {
        self.in_flight
            .remove(&pkid)
            .ok_or(Mismatch::NotInFlight(pkid))
    }

    pub(super) fn get(&self, pkid: u16) -> Option<Sent> {
        self.in_flight.get(&pkid).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubacks_match_by_packet_id_in_any_order() {
        let mut ids = PacketIds::default();
        for sent in [Sent::Record(7), Sent::Control, Sent::Record(8)] {
            ids.handed(sent);
        }
        for pkid in [1, 2, 3] {
            assert_eq!(ids.published(pkid), Ok(()));
        }
        assert_eq!(ids.acked(3), Ok(Sent::Record(8)));
        // The broker acknowledged 3 before 1: rumqttc reuses 3 (after its PUBACK's event).
        ids.handed(Sent::Record(9));
        assert_eq!(ids.published(3), Ok(()));
        assert_eq!(ids.acked(1), Ok(Sent::Record(7)));
        assert_eq!(ids.acked(3), Ok(Sent::Record(9)));
        assert_eq!(ids.acked(2), Ok(Sent::Control));
    }

    #[test]
    fn every_inconsistency_is_a_mismatch() {
        let mut ids = PacketIds::default();
        assert_eq!(ids.published(1), Err(Mismatch::NothingHanded(1)));
        ids.handed(Sent::Record(1));
        ids.handed(Sent::Record(2));
        assert_eq!(ids.published(1), Ok(()));
        // Given out again before its PUBACK: the second publish is not mapped onto it.
        assert_eq!(ids.published(1), Err(Mismatch::MappedTwice(1)));
        assert_eq!(ids.acked(5), Err(Mismatch::NotInFlight(5)));
        assert_eq!(ids.acked(1), Ok(Sent::Record(1)));
        assert_eq!(
            ids.acked(1),
            Err(Mismatch::NotInFlight(1)),
            "a duplicate PUBACK"
        );
    }
}
