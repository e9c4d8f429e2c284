//! One reading at a time: the watermark and boot checks, then the dropout, threshold and
//! stuck rules applied to a device's state, each change a [`Transition`].

use super::rules::ChannelRules;
use super::state::{Boot, ChannelState, DeviceState, Side};
use super::{AlertEngine, AlertKey, Change, Rule, Severity, Transition};
use crate::rows::Row;

impl AlertEngine {
    /// Applies one reading of `boot` to its device's state.
    pub(super) fn step(
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
