//! A message taken from MQTT, and how to acknowledge it once Kafka has it. Both MQTT
//! sides (the embedded broker and the client) hand these to the forwarder.

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct Inbound {
    pub topic: Bytes,
    pub payload: Bytes,
    /// When the bridge took it, in ms since the Unix epoch.
    pub received_at_ms: u64,
    pub ack: Ack,
}

/// What to do once Kafka has confirmed the message.
#[derive(Debug)]
pub enum Ack {
    /// Nothing: the embedded broker acknowledged the device's publish on receipt.
    Nothing,
    /// Send PUBACK for `pkid` on the connection the message came from. If that
    /// connection has gone, the request fails and the broker redelivers the message on
    /// the next connection, so an acknowledgement can never land on a different message
    /// that happens to reuse the packet id.
    Mqtt {
        client: AsyncClient,
        pkid: u16,
        /// True while that connection lives; the MQTT side clears it when it ends.
        connection: Arc<AtomicBool>,
    },
}

/// What became of an acknowledgement offered to the MQTT client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    Sent,
    /// The client's request queue is full; offer it again later.
    QueueFull,
    /// Its connection is gone; the broker redelivers the message (see `Ack::Mqtt`).
    ConnectionGone,
}

impl Ack {
    /// True when this message came over a connection that has since dropped.
    pub fn connection_gone(&self) -> bool {
        match self {
            Ack::Nothing => false,
            Ack::Mqtt { connection, .. } => !connection.load(Ordering::Acquire),
        }
    }

    /// Hands the acknowledgement to the MQTT client without waiting.
    pub fn try_send(&self) -> AckOutcome {
        match self {
            Ack::Nothing => AckOutcome::Sent,
            Ack::Mqtt {
                client,
                pkid,
                connection,
            } => {
                let mut publish = Publish::new("", QoS::AtLeastOnce, Bytes::new(), None);
                publish.pkid = *pkid;
                if client.try_ack(&publish).is_ok() {
                    AckOutcome::Sent
                } else if connection.load(Ordering::Acquire) {
                    AckOutcome::QueueFull
                } else {
                    AckOutcome::ConnectionGone
                }
            }
        }
    }
}
