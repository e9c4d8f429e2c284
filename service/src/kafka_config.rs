//! The Kafka parts of the services' configuration checks, written once: the
//! passthrough `kafka.properties` table, the properties a service must set itself, and
//! Kafka's rule for topic names.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `deserialize_with` for `kafka.properties`: librdkafka takes every value as text, so
/// numbers and booleans written bare in TOML are taken as their text; anything else is
/// refused naming the property.
pub fn properties_as_text<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let raw = BTreeMap::<String, serde_json::Value>::deserialize(deserializer)?;
    raw.into_iter()
        .map(|(key, value)| {
            let text = match value {
                serde_json::Value::String(text) => text,
                serde_json::Value::Number(number) => number.to_string(),
                serde_json::Value::Bool(flag) => flag.to_string(),
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "property {key}: {other} is not a string, number or boolean"
                    )))
                }
            };
            Ok((key, text))
        })
        .collect()
}

/// One problem per property of `managed` found in `properties`: the service sets those
/// itself, and `why` says what depends on them.
pub fn refuse_managed(
    properties: &BTreeMap<String, String>,
    managed: &[&str],
    why: &str,
    problems: &mut Vec<String>,
) {
    for key in managed {
        if properties.contains_key(*key) {
            problems.push(format!("kafka.properties.{key}: {why}"));
        }
    }
}

/// Kafka's own rule for topic names.
pub fn valid_topic(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafkas_rule() {
        assert!(valid_topic("sensors-data"));
        assert!(valid_topic(&"a".repeat(249)));
        for bad in ["", ".", "..", "a/b", "a b", &"a".repeat(250)] {
            assert!(!valid_topic(bad), "{bad:?}");
        }
    }

    #[test]
    fn managed_properties_are_named() {
        let properties = BTreeMap::from([
            ("acks".to_owned(), "1".to_owned()),
            ("linger.ms".to_owned(), "5".to_owned()),
        ]);
        let mut problems = Vec::new();
        refuse_managed(
            &properties,
            &["acks", "enable.idempotence"],
            "set by us",
            &mut problems,
        );
        assert_eq!(problems, ["kafka.properties.acks: set by us"]);
    }
}
