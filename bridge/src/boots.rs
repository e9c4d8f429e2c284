//! Which of a device's boots is the newest: the pipeline's clock policy across boots
//! (`service::clock`), as the bridge's retained views apply it.
//!
//! A boot id is random, so nothing in it says which boot came first, and a device clock
//! cannot be trusted to. What can: an agent that restarts sends its new boot's live
//! frames first and its old boot's backlog after them, so **the boot first seen later is
//! the newer**, and a boot once replaced stays older. [`Boots`] remembers, per device,
//! the boot it holds for newest and the boots that one replaced, so a replaced boot's
//! late frames or confirmations are recognised as old and never replace the newer boot's
//! values (`latest`, `completeness`).
//!
//! In memory only: after a bridge restart the first boot seen is taken for the newest,
//! even an old one (a backlog arriving first), until a frame or confirmation of another
//! boot arrives and replaces it. Within a boot, each user orders by its own measure
//! (sequence numbers for `latest`, stored readings for `completeness`).

use protocol::BootId;

/// Boots a device remembers having replaced, the most recent, so their late frames or
/// confirmations are recognised as old. An agent restarts rarely; a boot's backlog is
/// gone long before four more boots follow it.
pub const MAX_REPLACED_BOOTS: usize = 4;

/// How a boot compares with a device's newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// The newest boot itself: its own measure decides within it.
    Current,
    /// Never seen: it is the newest now, and the one it replaced is remembered.
    Newer,
    /// A boot the newest replaced: older.
    Replaced,
}

/// One device's newest boot and the boots it replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boots {
    current: BootId,
    /// The most recent last; at most [`MAX_REPLACED_BOOTS`].
    replaced: Vec<BootId>,
}

impl Boots {
    /// A device whose first boot seen is `first`.
    pub fn new(first: BootId) -> Self {
        Self {
            current: first,
            replaced: Vec::new(),
        }
    }

    /// Places `boot` among this device's boots; a boot never seen becomes the newest.
    pub fn see(&mut self, boot: BootId) -> Order {
        if boot == self.current {
            return Order::Current;
        }
        if self.replaced.contains(&boot) {
            return Order::Replaced;
        }
        if self.replaced.len() >= MAX_REPLACED_BOOTS {
            self.replaced.remove(0);
        }
        self.replaced.push(self.current);
        self.current = boot;
        Order::Newer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(n: u8) -> BootId {
        BootId([n; 8])
    }

    #[test]
    fn the_boot_first_seen_later_is_newer_and_a_replaced_one_stays_older() {
        let mut boots = Boots::new(boot(1));
        assert_eq!(boots.see(boot(1)), Order::Current);
        assert_eq!(boots.see(boot(2)), Order::Newer);
        // The old boot's backlog, however far its sequence numbers go.
        assert_eq!(boots.see(boot(1)), Order::Replaced);
        assert_eq!(boots.see(boot(2)), Order::Current);
        assert_eq!(boots.see(boot(3)), Order::Newer);
        assert_eq!(boots.see(boot(2)), Order::Replaced);
        assert_eq!(boots.see(boot(1)), Order::Replaced);
    }

    #[test]
    fn only_the_most_recent_replaced_boots_are_remembered() {
        let mut boots = Boots::new(boot(1));
        for n in 2..=6 {
            assert_eq!(boots.see(boot(n)), Order::Newer);
        }
        // 2..=5 replaced and remembered; 1 has been forgotten, so it reads as new.
        for n in 2..=5 {
            assert_eq!(boots.see(boot(n)), Order::Replaced, "boot {n}");
        }
        assert_eq!(boots.see(boot(1)), Order::Newer);
        assert_eq!(boots.see(boot(1)), Order::Current);
    }
}
