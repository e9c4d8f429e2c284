//! The metrics record: what each cloud service sends to the Kafka `metrics` topic every
//! interval (keyed by its instance), so the pipeline's own health can be followed and
//! kept with the same tools as its data. One envelope for every service; the counters
//! inside are each service's own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One metrics record. `C` is the service's counters (the bridge's or the ingester's
/// snapshot; a reader that does not know them takes a `serde_json::Value`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRecord<C> {
    /// `bridge` or `cloud-ingester`.
    pub service: String,
    pub instance: String,
    /// When it was made: milliseconds since the Unix epoch by the service's clock.
    pub at_ms: i64,
    /// What the instance is, where that varies (the bridge's `mode`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Each dependency `/readyz` checks, and whether it is usable now.
    #[serde(default)]
    pub connected: BTreeMap<String, bool>,
    /// The counters since the instance started.
    pub counters: C,
    /// Some counters' rates since the previous record, per second.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_s: BTreeMap<String, f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_takes_any_services_record_with_its_counters_as_json() {
        let text = r#"{"service":"bridge","instance":"b1","at_ms":5,"labels":{"mode":"embedded"},
            "connected":{"kafka":true,"mqtt":false},"counters":{"received":2},
            "per_s":{"received":0.5}}"#;
        let record: MetricsRecord<serde_json::Value> = serde_json::from_str(text).unwrap();
        assert_eq!(record.counters["received"], 2);
        assert!(!record.connected["mqtt"]);
        assert_eq!(record.labels["mode"], "embedded");
        let bare = r#"{"service":"cloud-ingester","instance":"i","at_ms":1,"counters":{}}"#;
        let record: MetricsRecord<serde_json::Value> = serde_json::from_str(bare).unwrap();
        assert!(record.connected.is_empty() && record.per_s.is_empty());
    }
}
