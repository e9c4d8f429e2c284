//! `iotctl tail`: the binary telemetry made readable, live, from MQTT (what devices
//! publish) or Kafka (what the bridge forwarded). Reading from both ends tells an
//! operator which hop a device's data stops at. It only listens: QoS 0 on MQTT, and on
//! Kafka explicit partition assignment with no group membership and no commits, so the
//! pipeline's consumers are never disturbed.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use protocol::topic::{self, Topic, TopicKind};
use protocol::Frame;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use rumqttc::{Event, Packet, QoS, SubscribeReasonCode};
use serde::Serialize;

use crate::global::{self, Global, Outcome};
use crate::output::{self, emit};
use crate::services::{self, Channels, CONNECT_TIMEOUT};

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Where to read frames: the MQTT broker (--mqtt) or Kafka's sensors-data.
    #[arg(long, value_enum, default_value_t = Source::Mqtt)]
    pub source: Source,

    /// Only this device (repeat for several).
    #[arg(long = "device", value_name = "ID", value_parser = global::device_id)]
    pub devices: Vec<String>,

    /// Stop after this many frames (default: until Ctrl-C).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Source {
    Mqtt,
    Kafka,
}

/// Largest MQTT packet taken: far above any frame, so an oversized message on a
/// telemetry topic is shown as undecodable instead of dropping the connection.
const MAX_PACKET: usize = 1024 * 1024;

pub async fn run(global: &Global, args: &TailArgs) -> Result<Outcome> {
    let channels = services::channels_if_available(global).await;
    let printer = Printer {
        json: global.json,
        channels,
        devices: args.devices.clone(),
        remaining: args.count,
    };
    if printer.remaining == Some(0) {
        return Ok(Outcome::Done);
    }
    let tail = async {
        match args.source {
            Source::Mqtt => from_mqtt(global, printer).await,
            Source::Kafka => from_kafka(global, printer).await,
        }
    };
    tokio::select! {
        result = tail => result.map(|()| Outcome::Done),
        _ = tokio::signal::ctrl_c() => Ok(Outcome::Done),
    }
}

async fn from_mqtt(global: &Global, mut printer: Printer) -> Result<()> {
    let filter = topic::filter(&global.mqtt_prefix, TopicKind::Telemetry)
        .map_err(|e| anyhow!("topic filter: {e}"))?;
    let mut options = services::mqtt_options(global, "tail")?;
    options
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET);
    let (client, mut eventloop) = services::mqtt_connect(options).await?;
    client
        .subscribe(filter.as_str(), QoS::AtMostOnce)
        .await
        .context("subscribing")?;
    loop {
        let event = eventloop.poll().await.with_context(|| {
            format!("lost the connection to the MQTT broker at {}", global.mqtt)
        })?;
        match event {
            Event::Incoming(Packet::SubAck(ack)) => {
                if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                    bail!(
                        "the MQTT broker at {} refused the subscription to {filter}",
                        global.mqtt
                    );
                }
                eprintln!(
                    "tail: listening on {filter} at {} (Ctrl-C stops)",
                    global.mqtt
                );
            }
            Event::Incoming(Packet::Publish(publish)) => {
                let origin = Origin::Mqtt {
                    topic: publish.topic.clone(),
                };
                let topic_device = Topic::parse(&publish.topic)
                    .ok()
                    .map(|t| t.device.to_owned());
                if printer.show(&origin, topic_device.as_deref(), &publish.payload) {
                    return Ok(());
                }
            }
            _ => {}
        }
    }
}

async fn from_kafka(global: &Global, mut printer: Printer) -> Result<()> {
    let topic = global.data_topic.clone();
    let consumer: StreamConsumer = services::kafka(global)
        // Required by the consumer API; nothing is committed, and assign() joins no group.
        .set(
            "group.id",
            format!("iotctl-tail-{:08x}", rand::random::<u32>()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .context("invalid Kafka settings")?;
    let brokers = global.kafka_brokers.clone();
    // Start exactly at the current end of every partition: resolving the end offsets
    // before assigning means any record produced after the "listening" line is shown.
    let (consumer, assignment) = tokio::task::spawn_blocking(move || {
        let assignment = end_offsets(&consumer, &topic);
        (consumer, assignment)
    })
    .await
    .context("the Kafka set-up did not finish")?;
    let assignment = assignment.with_context(|| format!("Kafka at {brokers}"))?;
    let partitions = assignment.count();
    consumer
        .assign(&assignment)
        .context("assigning the partitions")?;
    eprintln!(
        "tail: listening on Kafka topic {} at {brokers}, {partitions} partitions, from the end \
         (Ctrl-C stops)",
        global.data_topic
    );
    // The next offset per partition. A broker may hand a record out twice (Tansu does,
    // right after an assignment at the end of a partition); showing it twice would
    // mislead, so anything before the next offset is skipped.
    let mut next_offsets: HashMap<i32, i64> = HashMap::new();
    loop {
        let message = consumer
            .recv()
            .await
            .with_context(|| format!("reading {} from Kafka at {brokers}", global.data_topic))?;
        let next = next_offsets.entry(message.partition()).or_default();
        if message.offset() < *next {
            continue;
        }
        *next = message.offset() + 1;
        let origin = Origin::Kafka {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
        };
        let key = message
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_owned);
        if printer.show(
            &origin,
            key.as_deref(),
            message.payload().unwrap_or_default(),
        ) {
            return Ok(());
        }
    }
}

/// Every partition of `topic` at its high watermark (blocking calls).
fn end_offsets(consumer: &StreamConsumer, topic: &str) -> Result<TopicPartitionList> {
    let metadata = consumer
        .fetch_metadata(Some(topic), CONNECT_TIMEOUT)
        .context("fetching the topic's metadata")?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        bail!("topic {topic} does not exist");
    }
    let mut list = TopicPartitionList::new();
    for partition in partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, CONNECT_TIMEOUT)
            .with_context(|| format!("reading the end of {topic} partition {partition}"))?;
        list.add_partition_offset(topic, partition, Offset::Offset(high))
            .context("building the assignment")?;
    }
    Ok(list)
}

/// Where a message came from.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "source", rename_all = "lowercase")]
enum Origin {
    Mqtt {
        topic: String,
    },
    Kafka {
        topic: String,
        partition: i32,
        offset: i64,
    },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Mqtt { topic } => write!(f, "MQTT {topic}"),
            Origin::Kafka {
                topic,
                partition,
                offset,
            } => write!(f, "Kafka {topic}/{partition}@{offset}"),
        }
    }
}

/// Renders messages, filters by device and counts down `--count`.
struct Printer {
    json: bool,
    channels: Channels,
    devices: Vec<String>,
    remaining: Option<u64>,
}

impl Printer {
    /// The lines showing one message, or `None` when `--device` filters it out.
    /// `claimed_device` is what the transport says (topic segment or Kafka key), used
    /// for filtering when the payload does not decode.
    fn render(
        &self,
        origin: &Origin,
        claimed_device: Option<&str>,
        payload: &[u8],
    ) -> Option<Vec<String>> {
        let decoded = Frame::decode(payload);
        let device = match &decoded {
            Ok(frame) => Some(frame.device.as_str()),
            Err(_) => claimed_device,
        };
        if !self.devices.is_empty() && !device.is_some_and(|d| self.devices.iter().any(|x| x == d))
        {
            return None;
        }
        Some(match decoded {
            Ok(frame) => self.frame(origin, &frame),
            Err(e) => vec![self.undecodable(origin, claimed_device, payload.len(), &e.to_string())],
        })
    }

    /// Prints a message; true once `--count` messages have been shown.
    fn show(&mut self, origin: &Origin, claimed_device: Option<&str>, payload: &[u8]) -> bool {
        let Some(lines) = self.render(origin, claimed_device, payload) else {
            return false;
        };
        for line in lines {
            emit(&line);
        }
        match &mut self.remaining {
            Some(remaining) => {
                *remaining = remaining.saturating_sub(1);
                *remaining == 0
            }
            None => false,
        }
    }

    fn frame(&self, origin: &Origin, frame: &Frame) -> Vec<String> {
        let device = frame.device.as_str();
        let boot = frame.boot_id.to_string();
        let readings: Vec<ReadingJson<'_>> = frame
            .iter()
            .map(|(seq, ts_ms, reading)| {
                let info = self
                    .channels
                    .get(&(device.to_owned(), i16::from(reading.channel)));
                ReadingJson {
                    seq,
                    ts_ms,
                    time: output::time_ms(i64::try_from(ts_ms).unwrap_or(i64::MAX)),
                    channel_id: reading.channel,
                    channel: info.map(|i| i.name.as_str()),
                    unit: info.map(|i| i.unit.as_str()),
                    value: reading.value.is_finite().then_some(reading.value),
                    quality: output::quality_flags(reading.quality),
                }
            })
            .collect();
        if self.json {
            return vec![json_line(&FrameJson {
                origin,
                device,
                boot: &boot,
                first_seq: frame.first_seq,
                clock_synced: frame.clock_synced,
                readings,
            })];
        }
        readings
            .iter()
            .zip(&frame.readings)
            .map(|(r, reading)| {
                let channel = r
                    .channel
                    .map_or_else(|| format!("ch{}", r.channel_id), str::to_owned);
                let unit = r
                    .unit
                    .filter(|u| !u.is_empty())
                    .map(|u| format!(" {u}"))
                    .unwrap_or_default();
                format!(
                    "{} {device} {boot}/{} {channel}={}{unit} {}{}",
                    r.time,
                    r.seq,
                    output::reading(reading.value),
                    output::quality_text(reading.quality),
                    if frame.clock_synced {
                        ""
                    } else {
                        " (clock not synced)"
                    }
                )
            })
            .collect()
    }

    fn undecodable(&self, origin: &Origin, device: Option<&str>, len: usize, why: &str) -> String {
        if self.json {
            json_line(&UndecodableJson {
                origin,
                device,
                bytes: len,
                error: why,
            })
        } else {
            format!(
                "{} {} undecodable frame ({len} bytes on {origin}): {why}",
                output::time_ms(service::clock::now_ms_i64()),
                device.unwrap_or("?")
            )
        }
    }
}

/// One JSON object as a line (these types always serialize).
fn json_line<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[derive(Serialize)]
struct FrameJson<'a> {
    #[serde(flatten)]
    origin: &'a Origin,
    device: &'a str,
    boot: &'a str,
    first_seq: u64,
    clock_synced: bool,
    readings: Vec<ReadingJson<'a>>,
}

#[derive(Serialize)]
struct ReadingJson<'a> {
    seq: u64,
    ts_ms: u64,
    time: String,
    channel_id: u8,
    /// Name and unit from `device_channels`, when the database answered.
    channel: Option<&'a str>,
    unit: Option<&'a str>,
    /// `null` when not a finite number (a sensor fault).
    value: Option<f32>,
    quality: Vec<&'static str>,
}

#[derive(Serialize)]
struct UndecodableJson<'a> {
    #[serde(flatten)]
    origin: &'a Origin,
    device: Option<&'a str>,
    bytes: usize,
    error: &'a str,
}

#[cfg(test)]
mod tests {
    use protocol::{BootId, DeviceId, Quality, Reading};

    use super::*;
    use crate::services::ChannelInfo;

    fn printer(devices: &[&str], count: Option<u64>) -> Printer {
        Printer {
            json: false,
            channels: Channels::from([(
                ("furnace-01".to_owned(), 0),
                ChannelInfo {
                    name: "temperature".into(),
                    unit: "°C".into(),
                },
            )]),
            devices: devices.iter().map(|d| d.to_string()).collect(),
            remaining: count,
        }
    }

    fn encoded(device: &str) -> Vec<u8> {
        let mut frame = Frame::new(
            DeviceId::new(device).unwrap(),
            BootId([1; 8]),
            5,
            1_764_000_000_000,
        );
        frame
            .readings
            .push(Reading {
                channel: 0,
                offset_ms: 0,
                value: 851.25,
                quality: Quality::SIMULATED_ANOMALY,
            })
            .unwrap();
        let mut buf = [0; protocol::MAX_FRAME_LEN];
        frame.encode(&mut buf).unwrap().to_vec()
    }

    #[test]
    fn frames_become_lines_and_junk_says_why() {
        let origin = Origin::Mqtt {
            topic: "plant/a/b/furnace-01/telemetry".into(),
        };
        let p = printer(&[], None);
        let lines = p
            .render(&origin, Some("furnace-01"), &encoded("furnace-01"))
            .unwrap();
        assert_eq!(
            lines,
            ["2025-11-24T16:00:00.000Z furnace-01 0101010101010101/5 temperature=851.25 °C anomaly"]
        );
        let lines = p
            .render(&origin, Some("press-01"), &encoded("press-01"))
            .unwrap();
        assert!(lines[0].ends_with(" press-01 0101010101010101/5 ch0=851.25 anomaly"));
        let junk = p.render(&origin, Some("furnace-01"), b"junk").unwrap();
        assert!(
            junk[0].contains("furnace-01 undecodable frame (4 bytes on MQTT plant/a/b/furnace-01/telemetry): wire version"),
            "{junk:?}"
        );
        let json = Printer {
            json: true,
            ..printer(&[], None)
        };
        let line = &json.render(&origin, None, &encoded("furnace-01")).unwrap()[0];
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["source"], "mqtt");
        assert_eq!(value["readings"][0]["channel"], "temperature");
        assert_eq!(value["readings"][0]["quality"][0], "anomaly");
        let line = &json.render(&origin, None, b"").unwrap()[0];
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["error"], "empty payload");
    }

    #[test]
    fn device_filter_uses_the_frame_or_the_transport() {
        let origin = Origin::Mqtt {
            topic: "plant/a/b/furnace-01/telemetry".into(),
        };
        let p = printer(&["furnace-01"], Some(2));
        assert!(p
            .render(&origin, Some("furnace-01"), &encoded("press-01"))
            .is_none());
        assert!(p
            .render(&origin, Some("press-01"), &encoded("furnace-01"))
            .is_some());
        assert!(p.render(&origin, Some("press-01"), b"junk").is_none());
        assert!(p.render(&origin, None, b"junk").is_none());
        assert!(p.render(&origin, Some("furnace-01"), b"junk").is_some());
    }

    #[test]
    fn origins_read_well() {
        let kafka = Origin::Kafka {
            topic: "sensors-data".into(),
            partition: 2,
            offset: 41,
        };
        assert_eq!(kafka.to_string(), "Kafka sensors-data/2@41");
        let json = serde_json::to_value(&kafka).unwrap();
        assert_eq!(json["source"], "kafka");
        assert_eq!(json["partition"], 2);
    }
}
