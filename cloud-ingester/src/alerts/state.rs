//! The engine's memory between readings: per device its newest boot and per channel the
//! watermark, the runs beyond a threshold, the repeated value and the open alerts.

use std::collections::HashMap;

use super::Severity;

/// One side (high or low) of a channel's threshold rule.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Side {
    pub(super) open: Option<Severity>,
    /// Device time of the first reading of the current unbroken run beyond the warning
    /// (critical) threshold.
    pub(super) warn_since: Option<i64>,
    pub(super) crit_since: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct ChannelState {
    /// (boot, seq) of the newest reading evaluated: the watermark. A reading of the same
    /// boot at or below it is not evaluated again; one of another boot is, once the
    /// device's boot check let it through (it is the device's newest boot).
    pub(super) mark: Option<(i64, i64)>,
    /// Device time of the newest reading evaluated, which durations start from.
    pub(super) last_ts: Option<i64>,
    pub(super) high: Side,
    pub(super) low: Side,
    /// The repeated value's bits and the device time it was first seen.
    pub(super) run: Option<(u32, i64)>,
    pub(super) stuck_open: bool,
    pub(super) dropout_open: bool,
}

/// A boot and when PostgreSQL first saw it (µs since the epoch; `None`: not before the
/// batch being evaluated, so it is the newest, `reading_coverage.first_seen` being
/// written by that batch's commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Boot {
    pub(super) id: i64,
    pub(super) first_seen_us: Option<i64>,
}

impl Boot {
    /// The order of a device's boots: first seen later is newer; boots first seen by the
    /// same transaction (or both by the batch at hand) by boot id as unsigned, the
    /// order the Redis writer uses.
    pub(super) fn order(self) -> (i64, u64) {
        (self.first_seen_us.unwrap_or(i64::MAX), self.id as u64)
    }
}

#[derive(Debug, Clone, Default)]
pub(super) struct DeviceState {
    /// The device's newest boot evaluated: readings of older boots are not evaluated.
    pub(super) boot: Option<Boot>,
    pub(super) channels: HashMap<i16, ChannelState>,
    /// Device time of the device's newest reading (in identity order), any channel.
    pub(super) last_ts: Option<i64>,
    /// No channel's dropout can open before the device's time passes this: at most the
    /// earliest (last reading + silence window) of its channels. The sibling scan runs
    /// only past it; scanning at every reading cost O(channels) each, which a device with
    /// hundreds of channels made the ingester's bottleneck (docs/benchmarks.md). 0, the
    /// default, means "not known yet": any reading time passes it.
    pub(super) dropout_check_at: i64,
}
