//! The `data_loss` rule: readings of a device that PostgreSQL does not hold although
//! later ones of the same boot are committed (holes below the highest committed sequence
//! number, as `reading_coverage` has them), for longer than a window.
//!
//! A hole is normal for a moment: a frame lost after the broker is resent by the agent a
//! few seconds after a later one is confirmed. So the rule waits
//! [`DataLossRule::window_ms`], by the ingester's clock (the coverage changes at commits,
//! which device time does not measure, and a device that stops sending after a loss must
//! still be reported). It resolves when resends fill the holes back below the threshold;
//! holes that never fill (the agent's byte cap dropped them) keep it open until an
//! operator resolves it by hand.
//!
//! What counts: the missing readings summed over the device's boots with holes (at most
//! [`MAX_LOSSY_BOOTS`], the most recently written), not only its current boot: after a
//! reboot the agent still resends the old boot's frames from its queue, and a loss does
//! not stop being one because the device restarted. Each boot's holes are those of its
//! lowest ranges of coverage, as far as the commit returns them (`coverage::HELD_RANGES`),
//! so a boot torn into more pieces counts at least what those show.
//!
//! An operator's resolution accepts the loss: readings missing when the resolved alert
//! opened (its `value`) no longer count, and only a further loss of at least the
//! threshold opens a new alert. The engine learns of it when it reloads its state (start,
//! rebalance); until then it holds the alert for open and sends nothing for it.
//!
//! Only an instance that commits a device's readings sees its holes fill, so a device is
//! judged only once this instance has committed its readings since the state was loaded
//! (after a rebalance, by its new owner only). A device silent since before a restart is
//! therefore not judged again until it sends.

use super::{AlertKey, Change, Rule, Severity, Transition};
use crate::config::AlertsConfig;

/// Most boots with holes followed per device; beyond it the least recently written is
/// forgotten and its holes stop counting (a device that lost readings in every one of
/// that many boots has had its alert open all along).
pub const MAX_LOSSY_BOOTS: usize = 16;
/// Holes an alert's message names; the count covers them all.
const RANGES_SHOWN: usize = 4;

/// The rule's settings (`alerts.data_loss_*` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataLossRule {
    /// Opens at this many missing readings (at least 1)...
    pub readings: u64,
    /// ...missing for this long, in ms of the ingester's clock.
    pub window_ms: i64,
}

impl From<&AlertsConfig> for DataLossRule {
    fn from(config: &AlertsConfig) -> Self {
        Self {
            readings: config.data_loss_readings.max(1),
            window_ms: i64::try_from(config.data_loss_window.as_millis()).unwrap_or(i64::MAX),
        }
    }
}

impl Default for DataLossRule {
    fn default() -> Self {
        Self::from(&AlertsConfig::default())
    }
}

/// The holes of a coverage (ascending half-open ranges): what lies below the first range
/// and between the ranges. Their total is `confirmations::missing`.
pub fn holes(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut covered_to = 0;
    let mut holes = Vec::new();
    for &(start, end) in ranges {
        if start > covered_to {
            holes.push((covered_to, start));
        }
        covered_to = covered_to.max(end);
    }
    holes
}

/// One boot's holes, half-open.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BootHoles {
    boot_id: i64,
    holes: Vec<(u64, u64)>,
}

impl BootHoles {
    fn missing(&self) -> u64 {
        self.holes.iter().map(|(start, end)| end - start).sum()
    }
}

/// What the engine knows of one device's losses.
#[derive(Debug, Clone, Default)]
pub struct DeviceLoss {
    /// Boots with holes, least recently written first.
    boots: Vec<BootHoles>,
    /// Readings an operator accepted as lost; shrinks as holes fill.
    pub(super) accepted: u64,
    /// Ingester time since when the readings missing beyond `accepted` have been at least
    /// the threshold.
    above_since: Option<i64>,
    /// Its `data_loss` alert is unresolved (as far as the engine knows).
    pub(super) open: bool,
    /// This instance committed the device's readings since its state was loaded.
    pub(super) live: bool,
}

impl DeviceLoss {
    /// Readings missing over the followed boots.
    fn missing(&self) -> u64 {
        self.boots.iter().map(BootHoles::missing).sum()
    }

    /// Takes a boot's coverage as it stands now: its holes replace what was known of it,
    /// and it becomes the most recently written.
    pub(super) fn note(&mut self, boot_id: i64, ranges: &[(u64, u64)]) {
        self.boots.retain(|boot| boot.boot_id != boot_id);
        let holes = holes(ranges);
        if holes.is_empty() {
            return;
        }
        if self.boots.len() >= MAX_LOSSY_BOOTS {
            self.boots.remove(0);
        }
        self.boots.push(BootHoles { boot_id, holes });
    }

    /// After a change of the holes: the accepted part shrinks with holes that filled, and
    /// the window starts (at `now_ms`) or ends.
    pub(super) fn settle(&mut self, rule: &DataLossRule, now_ms: i64) {
        let missing = self.missing();
        self.accepted = self.accepted.min(missing);
        if missing - self.accepted >= rule.readings {
            self.above_since.get_or_insert(now_ms);
        } else {
            self.above_since = None;
        }
    }

    /// The transition due at `now_ms`, if any.
    pub(super) fn verdict(
        &self,
        device: &str,
        rule: &DataLossRule,
        now_ms: i64,
    ) -> Option<Transition> {
        let missing = self.missing();
        let (change, ts_ms, message) = match (self.open, self.above_since) {
            (false, Some(since)) if now_ms.saturating_sub(since) >= rule.window_ms => {
                (Change::Opened, since, self.describe(missing))
            }
            (true, None) => (
                Change::Resolved,
                now_ms,
                format!("holes filled: {missing} readings missing"),
            ),
            _ => return None,
        };
        Some(Transition {
            key: AlertKey {
                device_id: device.to_owned(),
                channel_id: None,
                rule: Rule::DataLoss,
            },
            change,
            severity: Severity::Warning,
            value: Some(missing as f64),
            threshold: Some(rule.readings as f64),
            ts_ms,
            message,
        })
    }

    /// `312 readings missing in boot 00ab…: 1200-1499, 1700-1711`: the count, then the
    /// holes as inclusive ranges, newest boot first, at most [`RANGES_SHOWN`] of them.
    fn describe(&self, missing: u64) -> String {
        let mut shown = 0;
        let mut left = 0;
        let mut parts = Vec::new();
        for boot in self.boots.iter().rev() {
            let ranges: Vec<String> = boot
                .holes
                .iter()
                .take(RANGES_SHOWN - shown)
                .map(|&(start, end)| match end - start {
                    1 => start.to_string(),
                    _ => format!("{start}-{}", end - 1),
                })
                .collect();
            shown += ranges.len();
            left += boot.holes.len() - ranges.len();
            if !ranges.is_empty() {
                let boot_id = protocol::BootId::from_i64(boot.boot_id);
                parts.push(format!("boot {boot_id}: {}", ranges.join(", ")));
            }
        }
        let mut text = match self.boots.len() {
            1 => format!("{missing} readings missing in {}", parts.join("")),
            boots => format!(
                "{missing} readings missing in {boots} boots: {}",
                parts.join("; ")
            ),
        };
        if left > 0 {
            text.push_str(&format!(" (+{left} more ranges)"));
        }
        if self.accepted > 0 {
            text.push_str(&format!(
                "; {} of them were accepted earlier (resolved by hand)",
                self.accepted
            ));
        }
        text
    }
}
