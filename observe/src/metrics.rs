//! Figures out of a Prometheus text exposition, and rates out of successive counters.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// The sum of every series of `name` in a Prometheus text exposition (all label sets).
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let by_label = series(text, name);
    (!by_label.is_empty()).then(|| by_label.iter().map(|(_, v)| v).sum())
}

/// Each series of `name` by the value of its label `label` (`""` for a series without
/// it), summed over the other labels.
pub fn metric_by_label(text: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut by = BTreeMap::new();
    for (labels, value) in series(text, name) {
        let key = labels
            .split(',')
            .find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k.trim() == label).then(|| v.trim().trim_matches('"').to_owned())
            })
            .unwrap_or_default();
        *by.entry(key).or_insert(0.0) += value;
    }
    by
}

/// Every series of exactly `name`: (its labels' text, value).
fn series<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    let mut found = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // `name{...} value` or `name value`, not a longer name sharing the prefix.
        let (labels, value) = match rest.chars().next() {
            Some('{') => match rest[1..].rsplit_once('}') {
                Some((labels, value)) => (labels, value),
                None => continue,
            },
            Some(' ') => ("", rest),
            _ => continue,
        };
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            found.push((labels, v));
        }
    }
    found
}

/// Per-second rates of counters read now and then, each by a key.
#[derive(Debug, Default)]
pub struct Rates(HashMap<&'static str, (Instant, f64)>);

impl Rates {
    /// The rate of `key` since its previous total; none the first time, or after the
    /// counter went back (its service restarted).
    pub fn rate(&mut self, key: &'static str, total: f64) -> Option<f64> {
        let now = Instant::now();
        let per_s = self.0.get(key).and_then(|(then, before)| {
            let seconds = now.duration_since(*then).as_secs_f64();
            (seconds > 0.0 && total >= *before).then(|| (total - before) / seconds)
        });
        self.0.insert(key, (now, total));
        per_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x\n\
                        ingester_consumer_lag{partition=\"0\"} 5\n\
                        ingester_consumer_lag{partition=\"1\"} 7\n\
                        ingester_consumer_lag_other 100\n\
                        bridge_messages_produced_total 42\n\
                        ingester_records_dead_lettered_total{reason=\"unknown_device\",topic=\"a\"} 3\n\
                        ingester_records_dead_lettered_total{topic=\"b\",reason=\"unknown_device\"} 2\n\
                        ingester_records_dead_lettered_total{reason=\"bad_frame\"} 1\n";

    #[test]
    fn metric_sums_add_every_label_set_of_exactly_that_name() {
        assert_eq!(metric_sum(TEXT, "ingester_consumer_lag"), Some(12.0));
        assert_eq!(
            metric_sum(TEXT, "bridge_messages_produced_total"),
            Some(42.0)
        );
        assert_eq!(metric_sum(TEXT, "missing"), None);
    }

    #[test]
    fn series_are_grouped_by_one_label() {
        let by = metric_by_label(TEXT, "ingester_records_dead_lettered_total", "reason");
        assert_eq!(by.get("unknown_device"), Some(&5.0));
        assert_eq!(by.get("bad_frame"), Some(&1.0));
        assert_eq!(by.len(), 2);
    }

    #[test]
    fn a_rate_needs_two_readings_of_a_growing_counter() {
        let mut rates = Rates::default();
        assert_eq!(rates.rate("x", 10.0), None);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(rates.rate("x", 20.0).is_some_and(|r| r > 0.0));
        assert_eq!(rates.rate("x", 5.0), None, "a counter that went back");
    }
}
