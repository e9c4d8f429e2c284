//! Each device's channel names and units, from the retained JSON the edge agent publishes
//! on `{prefix}/{site}/{line}/{device}/meta` ([`contracts::meta::DeviceMeta`]), so the
//! retained `latest` can say `temperature 851.2 °C` instead of `"0": 851.2`.
//!
//! Both MQTT sides feed [`Metas`]: embedded mode through the `latest` publisher's
//! in-process link, subscribed to the meta topics; client mode through its connection,
//! with a QoS 0 subscription beside the telemetry one (the broker sends the retained
//! metas on every subscribe). The `latest` publisher reads it when it renders a device's
//! JSON. Only `channels[].id`, `.name` and `.unit` are used; the rest of the meta is for
//! people, and may change freely.
//!
//! In memory, bounded: at most `latest.max_devices` devices, a name or unit cut to
//! [`MAX_LABEL_LEN`] bytes. A meta for one device more, or one that is not the JSON
//! above, is ignored and counted (`bridge_meta_ignored_total`); a device's previous
//! names then stay. An empty retained message (the meta deleted) forgets the device.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use contracts::meta::DeviceMeta;
use protocol::{Topic, TopicKind};

use crate::stats::Stats;

/// Longest channel name or unit kept, in bytes; longer ones are cut at a character
/// boundary. Bounds memory per device (at most 256 channels).
pub const MAX_LABEL_LEN: usize = 64;

/// What a person reads for one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub name: Option<String>,
    pub unit: Option<String>,
}

/// A device's channels by id.
pub type Labels = HashMap<u8, Label>;

/// The labels of a meta message's channels; `None` when it is not a meta JSON (no
/// `channels` array). A channel entry without a valid `id` (0 to 255) is skipped, one
/// without a string `name` or `unit` lacks that part ([`contracts::meta`] reads it so).
pub fn parse(payload: &[u8]) -> Option<Labels> {
    let meta: DeviceMeta = serde_json::from_slice(payload).ok()?;
    Some(
        meta.channels
            .into_iter()
            .map(|channel| {
                let label = Label {
                    name: channel.name.as_deref().map(cut),
                    unit: channel.unit.as_deref().map(cut),
                };
                (channel.id, label)
            })
            .collect(),
    )
}

fn cut(text: &str) -> String {
    let mut end = text.len().min(MAX_LABEL_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Whether a message's topic is a device's meta topic, cheaply, to set it apart from
/// telemetry (whose topics never end so); [`Metas::offer`] checks the whole topic.
pub fn is_meta_topic(topic: &[u8]) -> bool {
    topic.ends_with(b"/meta")
}

/// The labels of every device whose meta the bridge has seen, shared by the MQTT side
/// that writes them and the `latest` publisher that reads them.
pub struct Metas {
    prefix: String,
    max_devices: usize,
    devices: Mutex<HashMap<String, Arc<Labels>>>,
    stats: Arc<Stats>,
}

impl Metas {
    pub fn new(prefix: String, max_devices: usize, stats: Arc<Stats>) -> Self {
        Self {
            prefix,
            max_devices,
            devices: Mutex::new(HashMap::new()),
            stats,
        }
    }

    /// A message on a topic the meta subscription matched.
    pub fn offer(&self, topic: &[u8], payload: &[u8]) {
        let device = std::str::from_utf8(topic)
            .ok()
            .and_then(|topic| Topic::parse(topic).ok())
            .filter(|topic| topic.kind == TopicKind::Meta && topic.prefix == self.prefix)
            .map(|topic| topic.device);
        let Some(device) = device else {
            self.stats.meta_ignored();
            return;
        };
        // A panic elsewhere while holding the lock leaves the map itself consistent.
        let mut devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        if payload.is_empty() {
            devices.remove(device);
            return;
        }
        let Some(labels) = parse(payload) else {
            self.stats.meta_ignored();
            return;
        };
        if !devices.contains_key(device) && devices.len() >= self.max_devices {
            self.stats.meta_ignored();
            return;
        }
        devices.insert(device.to_owned(), Arc::new(labels));
    }

    /// The labels of `device`'s channels, if its meta has been seen.
    pub fn labels(&self, device: &str) -> Option<Arc<Labels>> {
        let devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        devices.get(device).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_meta_gives_each_channel_its_name_and_unit() {
        let meta = br#"{"device":"furnace-01","site":"plant1","line":"line-a",
            "gateway":"gw-1","encoding":"postcard frame v1 (protocol crate)",
            "channels":[
              {"id":0,"name":"temperature","unit":"\u00b0C","period_ms":1000,
               "range":[0,1200],"thresholds":null,"source":"sim"},
              {"id":3,"name":"pressure","period_ms":1000},
              {"id":256,"name":"too big"},
              {"name":"no id"}]}"#;
        let labels = parse(meta).unwrap();
        assert_eq!(labels.len(), 2);
        assert_eq!(
            labels[&0],
            Label {
                name: Some("temperature".to_owned()),
                unit: Some("°C".to_owned())
            }
        );
        assert_eq!(labels[&3].name.as_deref(), Some("pressure"));
        assert_eq!(labels[&3].unit, None);
    }

    #[test]
    fn anything_else_is_not_a_meta_and_long_labels_are_cut() {
        for bad in [
            &b"not json"[..],
            b"{}",
            b"{\"channels\":{}}",
            b"[1,2]",
            b"\xff",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        let long = format!(r#"{{"channels":[{{"id":1,"name":"{}"}}]}}"#, "é".repeat(40));
        let name = parse(long.as_bytes()).unwrap()[&1].name.clone().unwrap();
        assert_eq!(name.len(), MAX_LABEL_LEN);
        assert!(name.chars().all(|c| c == 'é'));
    }

    #[test]
    fn devices_are_kept_by_topic_capped_and_forgotten_on_an_empty_meta() {
        let stats = Arc::new(Stats::new());
        let metas = Metas::new("plant".to_owned(), 1, stats.clone());
        let meta = br#"{"channels":[{"id":0,"name":"speed","unit":"rpm"}]}"#;
        metas.offer(b"plant/s1/l1/spindle-01/meta", meta);
        assert_eq!(
            metas.labels("spindle-01").unwrap()[&0].unit.as_deref(),
            Some("rpm")
        );
        metas.offer(b"plant/s1/l1/press-01/meta", meta);
        metas.offer(b"other/s1/l1/spindle-01/meta", meta);
        metas.offer(b"plant/s1/l1/spindle-01/status", meta);
        metas.offer(b"plant/s1/l1/spindle-01/meta", b"{broken");
        assert_eq!(stats.snapshot().meta_ignored, 4);
        assert!(metas.labels("press-01").is_none(), "beyond the cap");
        assert!(
            metas.labels("spindle-01").is_some(),
            "a broken meta keeps the names"
        );
        metas.offer(b"plant/s1/l1/spindle-01/meta", b"");
        assert!(metas.labels("spindle-01").is_none());
        assert!(is_meta_topic(b"plant/s1/l1/spindle-01/meta"));
        assert!(!is_meta_topic(b"plant/s1/l1/spindle-01/telemetry"));
    }
}
