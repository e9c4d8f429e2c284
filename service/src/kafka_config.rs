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

/// The passthrough properties as `--check-config` shows them: passwords, secrets and
/// private keys (SASL, TLS) hidden, everything else as given.
pub fn redacted_properties(properties: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    properties
        .iter()
        .map(|(key, value)| {
            let secret = ["password", "secret", "ssl.key.pem"]
                .iter()
                .any(|word| key.contains(word));
            let shown = if secret {
                "***".to_owned()
            } else {
                value.clone()
            };
            (key.clone(), shown)
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
    fn secret_properties_are_hidden() {
        let given: BTreeMap<String, String> = [
            ("sasl.password", "hunter2"),
            ("ssl.key.password", "hunter3"),
            ("sasl.oauthbearer.client.secret", "hunter4"),
            ("ssl.key.pem", "-----BEGIN PRIVATE KEY-----"),
            ("sasl.username", "ingester"),
            ("linger.ms", "5"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let shown = redacted_properties(&given);
        let text = format!("{shown:?}");
        for hidden in ["hunter", "PRIVATE"] {
            assert!(!text.contains(hidden), "{text}");
        }
        assert_eq!(shown["sasl.username"], "ingester");
        assert_eq!(shown["linger.ms"], "5");
        assert_eq!(shown["sasl.password"], "***");
    }

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
