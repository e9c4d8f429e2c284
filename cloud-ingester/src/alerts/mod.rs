//! Alerts: the rules of `device_channels` applied to every reading, in device time.
//!
//! This module is the rule engine only, with no I/O (in the manner of rumqtt's protocol
//! state): [`AlertEngine::evaluate`] turns a batch of readings into the [`Transition`]s
//! it causes without changing anything, and [`AlertEngine::adopt`] makes them the
//! engine's state once the batch's PostgreSQL transaction, which writes them to `alerts`
//! beside the readings, has committed. A batch that fails and is retried is therefore
//! evaluated afresh, and a committed reading has had its transitions committed with it.
//! `store` holds the SQL, `publish` the Kafka and Redis side.
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
pub mod publish;
pub mod rules;
pub mod store;

use std::collections::{HashMap, HashSet};

use crate::rows::Row;
use data_loss::{DataLossRule, DeviceLoss};
use rules::{ChannelRules, RuleBook};

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

/// One side (high or low) of a channel's threshold rule.
#[derive(Debug, Clone, Copy, Default)]
struct Side {
    open: Option<Severity>,
    /// Device time of the first reading of the current unbroken run beyond the warning
    /// (critical) threshold.
    warn_since: Option<i64>,
    crit_since: Option<i64>,
}

#[derive(Debug, Clone, Default)]
struct ChannelState {
    /// (boot, seq) of the newest reading evaluated: the watermark. A reading of the same
    /// boot at or below it is not evaluated again; one of another boot is, once the
    /// device's boot check let it through (it is the device's newest boot).
    mark: Option<(i64, i64)>,
    /// Device time of the newest reading evaluated, which durations start from.
    last_ts: Option<i64>,
    high: Side,
    low: Side,
    /// The repeated value's bits and the device time it was first seen.
    run: Option<(u32, i64)>,
    stuck_open: bool,
    dropout_open: bool,
}

/// A boot and when PostgreSQL first saw it (µs since the epoch; `None`: not before the
/// batch being evaluated, so it is the newest, `reading_coverage.first_seen` being
/// written by that batch's commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Boot {
    id: i64,
    first_seen_us: Option<i64>,
}

impl Boot {
    /// The order of a device's boots: first seen later is newer; boots first seen by the
    /// same transaction (or both by the batch at hand) by boot id as unsigned, the
    /// order the Redis writer uses.
    fn order(self) -> (i64, u64) {
        (self.first_seen_us.unwrap_or(i64::MAX), self.id as u64)
    }
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

#[derive(Debug, Clone, Default)]
struct DeviceState {
    /// The device's newest boot evaluated: readings of older boots are not evaluated.
    boot: Option<Boot>,
    channels: HashMap<i16, ChannelState>,
    /// Device time of the device's newest reading (in identity order), any channel.
    last_ts: Option<i64>,
    /// No channel's dropout can open before the device's time passes this: at most the
    /// earliest (last reading + silence window) of its channels. The sibling scan runs
    /// only past it; scanning at every reading cost O(channels) each, which a device with
    /// hundreds of channels made the ingester's bottleneck (docs/benchmarks.md). 0, the
    /// default, means "not known yet": any reading time passes it.
    dropout_check_at: i64,
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

    /// Applies one reading of `boot` to its device's state.
    fn step(
        &self,
        device: &str,
        state: &mut DeviceState,
        boot: Boot,
        row: &Row,
        out: &mut Vec<Transition>,
    ) {
        match state.boot {
            Some(current) if current.id == boot.id => {}
            // A replaced boot's late backlog: the newer boot's readings are evaluated.
            Some(current) if boot.order() < current.order() => return,
            _ => state.boot = Some(boot),
        }
        let channel = state.channels.entry(row.channel_id).or_default();
        if channel
            .mark
            .is_some_and(|(mark_boot, mark_seq)| mark_boot == row.boot_id && row.seq <= mark_seq)
        {
            return;
        }
        channel.mark = Some((row.boot_id, row.seq));
        let previous = channel.last_ts.replace(row.ts_ms);
        // The device's newest reading before this one: proof that it was sending.
        let device_last = state.last_ts.replace(row.ts_ms);
        let Some(rules) = self.rules.get(device, row.channel_id) else {
            return;
        };
        if previous.is_some_and(|last| row.ts_ms < last) {
            // The device's clock went back: no duration can span that.
            for side in [&mut channel.high, &mut channel.low] {
                side.warn_since = None;
                side.crit_since = None;
            }
            channel.run = None;
        }
        state.dropout_check_at = state
            .dropout_check_at
            .min(row.ts_ms.saturating_add(rules.silence_ms));
        let value = f64::from(row.value);
        let key = |rule| AlertKey {
            device_id: device.to_owned(),
            channel_id: Some(row.channel_id),
            rule,
        };
        if let Some(last) = previous.filter(|last| row.ts_ms - last > rules.silence_ms) {
            // Durations count uninterrupted time only: a silence ends every run.
            for side in [&mut channel.high, &mut channel.low] {
                side.warn_since = None;
                side.crit_since = None;
            }
            channel.run = None;
            // A device with other channels shows a silent one through them (below); a
            // one-channel device's gap can only be recorded now that it is over.
            let gap = row.ts_ms - last;
            if self.rules.channels_of(device) == 1 && !channel.dropout_open {
                out.push(Transition {
                    key: key(Rule::Dropout),
                    change: Change::Opened,
                    severity: Severity::Warning,
                    value: None,
                    threshold: None,
                    ts_ms: last,
                    message: format!("{}: no readings for {}", rules.name, secs(gap)),
                });
                channel.dropout_open = true;
            }
        }
        if channel.dropout_open {
            out.push(Transition {
                key: key(Rule::Dropout),
                change: Change::Resolved,
                severity: Severity::Warning,
                value: value.is_finite().then_some(value),
                threshold: None,
                ts_ms: row.ts_ms,
                message: format!("{}: readings are back", rules.name),
            });
            channel.dropout_open = false;
        }
        if value.is_finite() {
            threshold_side(rules, &mut channel.high, true, value, row.ts_ms, &key, out);
            threshold_side(rules, &mut channel.low, false, value, row.ts_ms, &key, out);
            stuck(rules, channel, row.value, row.ts_ms, &key, out);
        } else {
            // A sensor fault interrupts a breach; it neither fires nor clears. It does not
            // end a stuck run (the value it interrupts has not moved).
            for side in [&mut channel.high, &mut channel.low] {
                side.warn_since = None;
                side.crit_since = None;
            }
        }
        // Siblings silent for longer than their window while the device went on sending
        // (judged by its readings before this one, so a device that was silent
        // altogether and has just come back raises nothing).
        let Some(device_last) = device_last else {
            return;
        };
        if device_last <= state.dropout_check_at {
            return;
        }
        let mut next_check = i64::MAX;
        for (&sibling, sibling_state) in state.channels.iter_mut() {
            if sibling_state.dropout_open {
                continue;
            }
            let (Some(last), Some(sibling_rules)) =
                (sibling_state.last_ts, self.rules.get(device, sibling))
            else {
                continue;
            };
            let deadline = last.saturating_add(sibling_rules.silence_ms);
            if sibling == row.channel_id {
                next_check = next_check.min(deadline);
                continue;
            }
            let silent = device_last - last;
            if silent <= sibling_rules.silence_ms {
                next_check = next_check.min(deadline);
            } else {
                sibling_state.dropout_open = true;
                out.push(Transition {
                    key: AlertKey {
                        device_id: device.to_owned(),
                        channel_id: Some(sibling),
                        rule: Rule::Dropout,
                    },
                    change: Change::Opened,
                    severity: Severity::Warning,
                    value: None,
                    threshold: None,
                    ts_ms: last,
                    message: format!(
                        "{}: no readings for {} while the device sends",
                        sibling_rules.name,
                        secs(silent)
                    ),
                });
            }
        }
        state.dropout_check_at = next_check;
    }
}

/// The high (`high = true`) or low side of the threshold rule, for one finite value.
fn threshold_side(
    rules: &ChannelRules,
    side: &mut Side,
    high: bool,
    value: f64,
    ts_ms: i64,
    key: &impl Fn(Rule) -> AlertKey,
    out: &mut Vec<Transition>,
) {
    let (warn, crit, rule, word) = if high {
        (rules.warn_high, rules.crit_high, Rule::High, "above")
    } else {
        (rules.warn_low, rules.crit_low, Rule::Low, "below")
    };
    let beyond = |threshold: f64| {
        if high {
            value > threshold
        } else {
            value < threshold
        }
    };
    // The lowest threshold of this side, the one a warning is about.
    let Some(first) = warn.or(crit) else {
        // The thresholds were removed while an alert was open: nothing left to breach.
        if let Some(severity) = side.open.take() {
            out.push(Transition {
                key: key(rule),
                change: Change::Resolved,
                severity,
                value: Some(value),
                threshold: None,
                ts_ms,
                message: format!(
                    "{}: the {} thresholds were removed",
                    rules.name,
                    rule.code()
                ),
            });
        }
        return;
    };
    let past_first = beyond(first);
    let past_crit = crit.is_some_and(beyond);
    side.warn_since = if past_first {
        side.warn_since.or(Some(ts_ms))
    } else {
        None
    };
    side.crit_since = if past_crit {
        side.crit_since.or(Some(ts_ms))
    } else {
        None
    };
    let lasted = |since: Option<i64>| since.is_some_and(|s| ts_ms - s >= rules.min_duration_ms);
    let gross = match (crit, rules.gross_margin(high)) {
        (Some(crit), Some(margin)) => {
            if high {
                value >= crit + margin
            } else {
                value <= crit - margin
            }
        }
        _ => false,
    };
    let fires_critical = past_crit && (gross || lasted(side.crit_since));
    let unit = &rules.unit;
    // As the device sent it (f32), without the digits widening to f64 adds.
    let shown = value as f32;
    let fire = |severity: Severity, threshold: f64, change: Change| Transition {
        key: key(rule),
        change,
        severity,
        value: Some(value),
        threshold: Some(threshold),
        ts_ms,
        message: format!(
            "{} {shown} {unit} {word} {} threshold {threshold} {unit}",
            rules.name,
            severity.code()
        ),
    };
    match side.open {
        None => {
            if let (true, Some(crit)) = (fires_critical, crit) {
                out.push(fire(Severity::Critical, crit, Change::Opened));
                side.open = Some(Severity::Critical);
            } else if warn.is_some() && lasted(side.warn_since) {
                out.push(fire(Severity::Warning, first, Change::Opened));
                side.open = Some(Severity::Warning);
            }
        }
        Some(severity) => {
            let clear_at = if high {
                first - rules.hysteresis
            } else {
                first + rules.hysteresis
            };
            let cleared = if high {
                value <= clear_at
            } else {
                value >= clear_at
            };
            if cleared {
                out.push(Transition {
                    key: key(rule),
                    change: Change::Resolved,
                    severity,
                    value: Some(value),
                    threshold: Some(first),
                    ts_ms,
                    message: format!(
                        "{} back to {shown} {unit}, inside {clear_at} {unit}",
                        rules.name
                    ),
                });
                side.open = None;
            } else if severity == Severity::Warning && fires_critical {
                if let Some(crit) = crit {
                    out.push(fire(Severity::Critical, crit, Change::Escalated));
                    side.open = Some(Severity::Critical);
                }
            }
        }
    }
}

/// The stuck rule, for one finite value.
fn stuck(
    rules: &ChannelRules,
    channel: &mut ChannelState,
    value: f32,
    ts_ms: i64,
    key: &impl Fn(Rule) -> AlertKey,
    out: &mut Vec<Transition>,
) {
    let bits = value.to_bits();
    match channel.run {
        Some((run_bits, since)) if run_bits == bits => {
            if !channel.stuck_open && ts_ms - since >= rules.silence_ms {
                channel.stuck_open = true;
                out.push(Transition {
                    key: key(Rule::Stuck),
                    change: Change::Opened,
                    severity: Severity::Warning,
                    value: Some(f64::from(value)),
                    threshold: None,
                    ts_ms,
                    message: format!(
                        "{} stuck at {value} {} for {}",
                        rules.name,
                        rules.unit,
                        secs(ts_ms - since)
                    ),
                });
            }
        }
        previous => {
            channel.run = Some((bits, ts_ms));
            // Without a run (just restored, or after a silence) there is nothing to
            // compare with yet: the value has not been seen to move.
            if channel.stuck_open && previous.is_some() {
                channel.stuck_open = false;
                out.push(Transition {
                    key: key(Rule::Stuck),
                    change: Change::Resolved,
                    severity: Severity::Warning,
                    value: Some(f64::from(value)),
                    threshold: None,
                    ts_ms,
                    message: format!("{} moves again ({value} {})", rules.name, rules.unit),
                });
            }
        }
    }
}

fn secs(ms: i64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

#[cfg(test)]
mod tests;
