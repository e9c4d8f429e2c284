//! The stack's MQTT broker is real: a frame published at QoS 1 on a device topic arrives
//! at a subscriber of the telemetry filter, byte for byte, and decodes.

use std::time::Duration;

use anyhow::{bail, Context};
use protocol::topic::{filter, Topic, TopicKind};
use protocol::{BootId, DeviceId, Frame, Quality, Reading, MAX_FRAME_LEN};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::time::timeout;

fn client(id: &str) -> (AsyncClient, EventLoop) {
    let (host, port) = testkit::mqtt_host_port();
    let mut options = MqttOptions::new(id, host, port);
    options.set_keep_alive(Duration::from_secs(5));
    AsyncClient::new(options, 16)
}

/// Polls the event loop until `wanted` returns a value; fails after ten seconds so a
/// broken broker fails the test instead of hanging it.
async fn poll_until<T>(
    events: &mut EventLoop,
    mut wanted: impl FnMut(&Packet) -> Option<T>,
) -> anyhow::Result<T> {
    timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(packet) = events.poll().await.context("MQTT connection")? {
                if let Some(value) = wanted(&packet) {
                    return Ok(value);
                }
            }
        }
    })
    .await
    .context("timed out waiting for the broker")?
}

#[tokio::test]
async fn qos1_frame_round_trip_through_the_broker() -> anyhow::Result<()> {
    let prefix = testkit::unique_name("mqtt");
    let topic = Topic::new(
        &prefix,
        "plant1",
        "line-a",
        "furnace-01",
        TopicKind::Telemetry,
    )?;

    let (subscriber, mut sub_events) = client(&format!("{prefix}-sub"));
    subscriber
        .subscribe(
            filter(&prefix, TopicKind::Telemetry)?.as_str(),
            QoS::AtLeastOnce,
        )
        .await?;
    poll_until(&mut sub_events, |p| {
        matches!(p, Packet::SubAck(_)).then_some(())
    })
    .await?;

    let mut frame = Frame::new(
        DeviceId::new("furnace-01")?,
        BootId([7; 8]),
        1,
        1_796_025_600_000,
    );
    for i in 0..10u8 {
        let reading = Reading {
            channel: 0,
            offset_ms: u32::from(i) * 1000,
            value: 850.0 + f32::from(i),
            quality: Quality::empty(),
        };
        frame.readings.push(reading).ok().context("frame full")?;
    }
    let mut buf = [0u8; MAX_FRAME_LEN];
    let payload = frame.encode(&mut buf)?.to_vec();

    let (publisher, mut pub_events) = client(&format!("{prefix}-pub"));
    publisher
        .publish(topic.to_string(), QoS::AtLeastOnce, false, payload.clone())
        .await?;
    poll_until(&mut pub_events, |p| {
        matches!(p, Packet::PubAck(_)).then_some(())
    })
    .await?;

    let (received_topic, received) = poll_until(&mut sub_events, |p| match p {
        Packet::Publish(publish) => Some((publish.topic.clone(), publish.payload.to_vec())),
        _ => None,
    })
    .await?;
    assert_eq!(Topic::parse(&received_topic)?, topic);
    assert_eq!(received, payload);
    let decoded = Frame::decode(&received)?;
    if decoded.device.as_str() != topic.device {
        bail!(
            "device {} does not match topic {received_topic}",
            decoded.device
        );
    }
    assert_eq!(decoded, frame);
    Ok(())
}
