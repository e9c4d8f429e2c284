//! Alerts: the rules of `device_channels` applied to every reading, in device time.
//!
//! This module is the rule engine only, with no I/O (in the manner of rumqtt's protocol
//! state): [`AlertEngine::evaluate`] turns a batch of readings into the [`Transition`]s
//! it causes without changing anything, and [`AlertEngine::adopt`] makes them the
//! engine's state once the batch's PostgreSQL transaction, which writes them to `alerts`
//! beside the readings, has committed. A batch that fails and is retried is therefore
//! evaluated afresh, and a committed reading has had its transitions committed with it.
//! `sql` holds the SQL, `publish` the Kafka and Redis side; `state` is the engine's
//! memory per device and channel, `evaluate` the rules applied to one reading.
//!
//! Rules, per channel (see [`rules::ChannelRules`]):
//! - **high / low**: above `warn_high` (below `warn_low`) for at least `min_duration_ms`
//!   opens a warning; above the critical threshold for as long opens a critical alert or
//!   escalates the warning. A value beyond the critical threshold by the
//!   warning-to-critical distance fires at once (a spike). The alert resolves when the
//!   value comes back inside the lowest threshold it is about by `hysteresis`.
//! - **stuck**: the same value, bit for bit, for `silence_ms`. A live analog sensor never
//!   repeats exactly; resolves at the first different value.
//! - **dropout**: no reading from a channel for `silence_ms` while the device goes on
//!   sending its other channels (opens then, resolves when the channel is back), or a
//!   gap that long between two of its readings (opened and resolved together, so the
//!   gap is on record). A device that falls silent altogether is not a dropout: its
//!   `last_seen` key expiring in Redis shows it offline.
//!
//! Device time, not the ingester's clock, measures every duration, so a replay or a
//! backlog gives the same verdicts as live data. No clock decides what is new, though
//! (`service::clock`): a device's readings are taken in identity order, its newest boot
//! (the one PostgreSQL first saw later) by sequence number, and a reading at or before
//! the newest already evaluated for its channel, or of a boot older than the device's
//! newest, is skipped: it was evaluated when first stored, or it is a replaced boot's
//! late backlog, and neither must reopen what is over. The caller keeps readings dated
//! beyond `clock.max_ahead` out of [`AlertEngine::evaluate`], so a clock gone wrong
//! neither raises nor freezes anything. Where evaluation resumes is reloaded at start
//! from `reading_coverage` (the newest boot and the highest sequence number held) and
//! `sensor_readings` (device time, within the bound). A device clock that goes back
//! ends every run (a duration cannot span it), as a silence does.
//!
//! One rule is per device, not per channel, and judged from what PostgreSQL holds rather
//! than from readings: **data_loss** (`data_loss`), readings missing below the device's
//! highest committed sequence number for longer than a window. See [`data_loss`].

pub mod data_loss;
mod evaluate;
pub mod publish;
pub mod rules;
pub mod sql;
mod state;

use std::collections::{HashMap, HashSet};

use crate::rows::Row;
use data_loss::{DataLossRule, DeviceLoss};
use rules::RuleBook;
use state::{Boot, ChannelState, DeviceState};

/// Which rule an alert is about (`alerts.rule`): part of the alert records readers share.
pub use contracts::alerts::Rule;

/// `alerts.severity`; ordered, so an alert only ever escalates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn code(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn from_code(code: &str) -> Option<Severity> {
        match code {
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// What happened to an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Opened,
    /// A warning became critical (and back to `open` if it had been acknowledged).
    Escalated,
    Resolved,
}

impl Change {
    pub fn code(self) -> &'static str {
        match self {
            Change::Opened => "opened",
            Change::Escalated => "escalated",
            Change::Resolved => "resolved",
        }
    }
}

/// One alert: at most one unresolved per device, channel and rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AlertKey {
    pub device_id: String,
    /// `None` for a device-level rule (`data_loss`), always `Some` for the others (the
    /// table's CHECK holds the same).
    pub channel_id: Option<i16>,
    pub rule: Rule,
}

/// One change to one alert, caused by one reading (or by the silence before it).
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub key: AlertKey,
    pub change: Change,
    pub severity: Severity,
    /// The reading concerned: the one that fired, escalated or cleared the alert (none
    /// for a dropout that opens while the channel is silent).
    pub value: Option<f64>,
    /// The threshold broken (high and low rules only).
    pub threshold: Option<f64>,
    /// Device time of the reading concerned, or of the last reading before a silence
    /// (`alerts.value_ts`).
    pub ts_ms: i64,
    pub message: String,
}

/// When PostgreSQL first saw each (device, boot) of a batch that is not its device's
/// newest boot in the engine, in µs since the epoch ([`AlertEngine::unfamiliar_boots`]);
/// a boot missing from it was never stored before.
pub type FirstSeen = HashMap<(String, i64), i64>;

/// Where a device's evaluation resumes after a (re)load: its newest boot (first seen
/// last) and the highest sequence number PostgreSQL holds of it. Everything stored at or
/// below was evaluated (or passed over) before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeAt {
    pub device_id: String,
    pub boot_id: i64,
    pub first_seen_us: i64,
    pub seq: i64,
}

/// The alert state of every channel, and the rules it applies.
#[derive(Debug, Default)]
pub struct AlertEngine {
    rules: RuleBook,
    devices: HashMap<String, DeviceState>,
    data_loss: DataLossRule,
    /// Per device, its holes and its `data_loss` alert (devices without either may be
    /// absent).
    losses: HashMap<String, DeviceLoss>,
}

/// The outcome of [`AlertEngine::evaluate`] (or [`AlertEngine::evaluate_data_loss`]): the
/// transitions, and the state they lead to, to [`AlertEngine::adopt`] once they are
/// committed.
#[derive(Debug, Default)]
pub struct Evaluation {
    pub transitions: Vec<Transition>,
    devices: HashMap<String, DeviceState>,
    /// Devices whose `data_loss` alert opens (`true`) or resolves.
    losses: Vec<(String, bool)>,
}

/// An unresolved alert, as loaded from the database at start.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAlert {
    pub key: AlertKey,
    pub severity: Severity,
}

impl AlertEngine {
    pub fn new(rules: RuleBook) -> Self {
        Self {
            rules,
            ..Self::default()
        }
    }

    /// The same engine with `rule` as its `data_loss` setting (the default otherwise).
    pub fn with_data_loss(mut self, rule: DataLossRule) -> Self {
        self.data_loss = rule;
        self
    }

    /// Rebuilds the state from the database: the unresolved alerts, per device where
    /// evaluation resumes, and per channel the device time of the newest stored reading
    /// (within the clock bound). Forgets everything else (a breach that had not lasted
    /// `min_duration_ms` yet starts its count again; the devices' holes come back with
    /// [`AlertEngine::restore_coverage`]).
    pub fn restore(
        &mut self,
        open: impl IntoIterator<Item = OpenAlert>,
        resume: impl IntoIterator<Item = ResumeAt>,
        watermarks: impl IntoIterator<Item = (String, i16, i64)>,
    ) {
        self.devices.clear();
        self.losses.clear();
        let mut marks: HashMap<String, (i64, i64)> = HashMap::new();
        for at in resume {
            marks.insert(at.device_id.clone(), (at.boot_id, at.seq));
            self.devices.entry(at.device_id).or_default().boot = Some(Boot {
                id: at.boot_id,
                first_seen_us: Some(at.first_seen_us),
            });
        }
        for (device, channel, ts_ms) in watermarks {
            let mark = marks.get(&device).copied();
            let state = self.devices.entry(device).or_default();
            let channel = state.channels.entry(channel).or_default();
            channel.last_ts = Some(ts_ms);
            // Every reading of the newest boot up to the highest held was stored, so
            // evaluated or passed over; a channel without readings has nothing to skip.
            channel.mark = mark;
            state.last_ts = Some(state.last_ts.map_or(ts_ms, |last| last.max(ts_ms)));
        }
        for alert in open {
            let key = alert.key;
            let channel = match (key.rule, key.channel_id) {
                (Rule::DataLoss, _) => {
                    self.losses.entry(key.device_id).or_default().open = true;
                    continue;
                }
                (_, Some(channel)) => channel,
                // The table's CHECK rules it out: a channel rule without a channel.
                (_, None) => continue,
            };
            let state = self.channel_mut(&key.device_id, channel);
            match key.rule {
                Rule::High => state.high.open = Some(alert.severity),
                Rule::Low => state.low.open = Some(alert.severity),
                Rule::Stuck => state.stuck_open = true,
                Rule::Dropout => state.dropout_open = true,
                Rule::DataLoss => {}
            }
        }
    }

    /// After [`AlertEngine::restore`]: the holes of the devices' boots as
    /// `reading_coverage` has them (oldest written first), and per device the readings an
    /// operator accepted as lost (the count of its last `data_loss` alert, when that was
    /// resolved by hand). A device above the threshold starts its window again now. No
    /// device is judged until this instance commits its readings (see [`data_loss`]).
    pub fn restore_coverage(
        &mut self,
        coverage: impl IntoIterator<Item = crate::coverage::Held>,
        accepted: impl IntoIterator<Item = (String, u64)>,
        now_ms: i64,
    ) {
        for (device, readings) in accepted {
            self.losses.entry(device).or_default().accepted = readings;
        }
        for held in coverage {
            let loss = self.losses.entry(held.device_id).or_default();
            loss.note(held.boot_id, &held.ranges);
        }
        for loss in self.losses.values_mut() {
            loss.settle(&self.data_loss, now_ms);
        }
    }

    /// After a commit: the coverage of every (device, boot) the batch wrote, as the
    /// transaction returned it. A fact about PostgreSQL, so taken at once rather than
    /// through evaluate/adopt; only the alert it may lead to waits for a commit. It also
    /// dates a boot the batch was the first to store, so the next new boot is ordered
    /// after it. Devices without rules (disabled, unknown) are not followed for loss.
    pub fn note_coverage(&mut self, held: &[crate::coverage::Held], now_ms: i64) {
        for held in held {
            if let Some(boot) = self
                .devices
                .get_mut(&held.device_id)
                .and_then(|state| state.boot.as_mut())
                .filter(|boot| boot.id == held.boot_id)
            {
                boot.first_seen_us = Some(held.first_seen_us);
            }
            if self.rules.channels_of(&held.device_id) == 0 {
                continue;
            }
            let loss = self.losses.entry(held.device_id.clone()).or_default();
            loss.note(held.boot_id, &held.ranges);
            loss.live = true;
            loss.settle(&self.data_loss, now_ms);
        }
    }

    /// The `data_loss` transitions due at `now_ms` (the ingester's clock), without
    /// changing the engine: an alert opens for a device whose missing readings, less those
    /// accepted, have been at least the threshold for the window, and resolves when they
    /// are back below it. Only devices this instance has committed readings of since its
    /// state was loaded are judged, and only those with rules (a disabled device's alert
    /// stays until resolved by hand).
    pub fn evaluate_data_loss(&self, now_ms: i64) -> Evaluation {
        let mut evaluation = Evaluation::default();
        for (device, loss) in &self.losses {
            if !loss.live || self.rules.channels_of(device) == 0 {
                continue;
            }
            if let Some(transition) = loss.verdict(device, &self.data_loss, now_ms) {
                evaluation
                    .losses
                    .push((device.clone(), transition.change == Change::Opened));
                evaluation.transitions.push(transition);
            }
        }
        evaluation
    }

    /// New rules (the device catalog was re-read); the state is kept.
    pub fn set_rules(&mut self, rules: RuleBook) {
        self.rules = rules;
        // Silence windows may have shrunk: every device's next scan bound is stale.
        for state in self.devices.values_mut() {
            state.dropout_check_at = 0;
        }
    }

    pub fn rules(&self) -> &RuleBook {
        &self.rules
    }

    fn channel_mut(&mut self, device: &str, channel: i16) -> &mut ChannelState {
        self.devices
            .entry(device.to_owned())
            .or_default()
            .channels
            .entry(channel)
            .or_default()
    }

    /// The (device, boot) pairs of `rows` that are not their device's newest boot here:
    /// for these [`AlertEngine::evaluate`] needs to know when PostgreSQL first saw them
    /// (a replaced boot's backlog, or a boot never stored before). Usually none.
    pub fn unfamiliar_boots(&self, rows: &[Row]) -> Vec<(String, i64)> {
        let mut unfamiliar: HashSet<(&str, i64)> = HashSet::new();
        for row in rows {
            let current = self
                .devices
                .get(&row.device_id)
                .and_then(|state| state.boot);
            if current.is_none_or(|boot| boot.id != row.boot_id) {
                unfamiliar.insert((&row.device_id, row.boot_id));
            }
        }
        unfamiliar
            .into_iter()
            .map(|(device, boot)| (device.to_owned(), boot))
            .collect()
    }

    /// The transitions `rows` cause, without changing the engine. Per device the rows
    /// are taken in identity order: boots as PostgreSQL first saw them (`first_seen`,
    /// for the boots [`AlertEngine::unfamiliar_boots`] named), then sequence numbers.
    /// Rows of a boot older than the device's newest, or at or before their channel's
    /// watermark, are skipped; rows of channels without rules (a disabled device) only
    /// move the watermark. `rows` must hold no reading dated beyond the clock bound.
    pub fn evaluate(&self, rows: &[Row], first_seen: &FirstSeen) -> Evaluation {
        let mut by_device: HashMap<&str, Vec<&Row>> = HashMap::new();
        for row in rows {
            by_device.entry(&row.device_id).or_default().push(row);
        }
        let mut evaluation = Evaluation::default();
        for (device, rows) in by_device {
            let mut state = self.devices.get(device).cloned().unwrap_or_default();
            let boot_of = |id: i64| -> Boot {
                match state.boot {
                    Some(boot) if boot.id == id => boot,
                    _ => Boot {
                        id,
                        first_seen_us: first_seen.get(&(device.to_owned(), id)).copied(),
                    },
                }
            };
            let mut rows: Vec<(Boot, &Row)> = rows
                .into_iter()
                .map(|row| (boot_of(row.boot_id), row))
                .collect();
            rows.sort_by_key(|(boot, row)| (boot.order(), row.seq, row.channel_id));
            for (boot, row) in rows {
                self.step(device, &mut state, boot, row, &mut evaluation.transitions);
            }
            evaluation.devices.insert(device.to_owned(), state);
        }
        evaluation
    }

    /// Makes an evaluation's state the engine's (after its transitions committed).
    pub fn adopt(&mut self, evaluation: Evaluation) {
        self.devices.extend(evaluation.devices);
        for (device, open) in evaluation.losses {
            self.losses.entry(device).or_default().open = open;
        }
    }
}

#[cfg(test)]
mod tests;
