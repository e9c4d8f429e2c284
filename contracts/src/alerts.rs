//! The alert records: what the ingester (on a rule's verdict) and an operator (through
//! `iotctl alerts ack|resolve`) publish when an alert changes, as the body of a Kafka
//! `alerts` record ([`AlertEvent`], keyed by device, for notifiers) and as a value of the
//! Redis open-alerts hash ([`AlertView`], for dashboards).

use serde::{Deserialize, Serialize};

/// Which rule an alert is about (`alerts.rule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    High,
    Low,
    Stuck,
    Dropout,
    /// Per device: readings missing from PostgreSQL for too long (no channel).
    DataLoss,
}

impl Rule {
    pub const ALL: [Rule; 5] = [
        Rule::High,
        Rule::Low,
        Rule::Stuck,
        Rule::Dropout,
        Rule::DataLoss,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Rule::High => "high",
            Rule::Low => "low",
            Rule::Stuck => "stuck",
            Rule::Dropout => "dropout",
            Rule::DataLoss => "data_loss",
        }
    }

    /// The unit of a device-level rule's value (its alerts have no channel to take one
    /// from); `None` for the channel rules, whose values are in their channel's unit.
    pub fn unit(self) -> Option<&'static str> {
        match self {
            Rule::DataLoss => Some("readings"),
            Rule::High | Rule::Low | Rule::Stuck | Rule::Dropout => None,
        }
    }

    pub fn from_code(code: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|rule| rule.code() == code)
    }
}

/// An alert as readers see it: the value of its Redis hash field, and the body of its
/// Kafka records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertView {
    pub alert_id: i64,
    pub device_id: String,
    /// `null` for a device-level alert (`data_loss`).
    pub channel_id: Option<i16>,
    /// The channel's name (empty if the channel is no longer known, or for a
    /// device-level alert) and the unit of `value` and `threshold` (for `data_loss`,
    /// `readings`: how many are missing, and how many open it).
    pub channel: String,
    pub unit: String,
    pub rule: String,
    pub severity: String,
    pub state: String,
    /// The reading concerned (the one that fired it; in a `resolved` record, the one that
    /// cleared it).
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    /// Device time of that reading (of the last reading before the silence, for a
    /// dropout; the ingester's time when the readings went missing, for a data_loss).
    pub value_ts_ms: Option<i64>,
    pub message: String,
}

/// One record of the Kafka `alerts` topic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertEvent {
    /// opened, escalated or resolved by the ingester; acknowledged or resolved by an
    /// operator.
    pub transition: &'static str,
    /// When the change was committed (ms since the epoch).
    pub at_ms: i64,
    #[serde(flatten)]
    pub alert: AlertView,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_codes_round_trip() {
        for rule in Rule::ALL {
            assert_eq!(Rule::from_code(rule.code()), Some(rule));
        }
        assert_eq!(Rule::from_code("hot"), None);
    }

    #[test]
    fn an_event_is_the_view_with_its_transition() -> Result<(), serde_json::Error> {
        let event = AlertEvent {
            transition: "opened",
            at_ms: 5,
            alert: AlertView {
                alert_id: 1,
                device_id: "furnace-01".into(),
                channel_id: None,
                channel: String::new(),
                unit: "readings".into(),
                rule: Rule::DataLoss.code().into(),
                severity: "warning".into(),
                state: "open".into(),
                value: Some(312.0),
                threshold: Some(1.0),
                value_ts_ms: Some(4),
                message: "312 readings missing".into(),
            },
        };
        let json: serde_json::Value = serde_json::from_str(&serde_json::to_string(&event)?)?;
        assert_eq!(json["transition"], "opened");
        assert_eq!(json["alert_id"], 1);
        assert_eq!(json["channel_id"], serde_json::Value::Null);
        assert_eq!(json["rule"], "data_loss");
        Ok(())
    }
}
