//! The bridge bench's workload: which device publishes which frame over which connection,
//! and the frames themselves, encoded the moment they are published so that `base_ts_ms`
//! is the publish time every latency is measured from.

use protocol::{seal, BootId, DeviceId, Frame, Quality, Reading, MAX_FRAME_LEN};

use super::registry::Gateway;
use super::tls::ClientTls;
use super::{Settings, READINGS_PER_FRAME};

/// Device id of the warm-up frames; the latency probe skips them.
pub(super) const WARM_UP_DEVICE: &str = "warm-up";

pub(super) struct Device {
    pub(super) id: DeviceId,
    pub(super) topic: String,
}

/// N frames; frame `i` comes from device `i % D`, and device `d` publishes over
/// connection `d % C`, so each device's frames stay in order on one connection.
pub(super) struct Workload {
    pub(super) prefix: String,
    devices: Vec<Device>,
    pub(super) frames: usize,
    pub(super) connections: usize,
    pub(super) warm_up: Device,
    /// One per connection when the bridge checks the registry: who connects, and the
    /// key its devices' frames are sealed with. Empty: anonymous, unsealed.
    gateways: Vec<Gateway>,
    /// How publishers reach a TLS listener; `None`: plain MQTT.
    pub(super) tls: Option<ClientTls>,
}

impl Workload {
    /// Topics under a fresh prefix, so no other subscriber of the broker sees them.
    pub(super) fn new(settings: &Settings) -> Self {
        let prefix = testkit::unique_name("bench");
        let device = |id: String, line: usize| Device {
            topic: format!("{prefix}/bench/line-{line}/{id}/telemetry"),
            id: DeviceId::new(&id).expect("bench device ids are valid"),
        };
        let devices = (0..settings.devices)
            .map(|d| device(format!("dev-{d:04}"), d % 4))
            .collect();
        let warm_up = device(WARM_UP_DEVICE.to_owned(), 0);
        Workload {
            prefix,
            devices,
            frames: settings.frames,
            connections: settings.connections,
            warm_up,
            gateways: Vec::new(),
            tls: None,
        }
    }

    /// Publishes as `gateways` (one per connection), every frame sealed.
    pub(super) fn sealed_by(mut self, gateways: Vec<Gateway>) -> Self {
        self.gateways = gateways;
        self
    }

    /// Publishes over TLS, presenting a client certificate.
    pub(super) fn over_tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    pub(super) fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// The gateway connection `connection` logs in as, if the broker authenticates.
    pub(super) fn gateway(&self, connection: usize) -> Option<&Gateway> {
        self.gateways.get(connection)
    }

    pub(super) fn device(&self, frame: usize) -> &Device {
        &self.devices[frame % self.devices.len()]
    }

    pub(super) fn frames_of_connection(&self, connection: usize) -> Vec<usize> {
        (0..self.frames)
            .filter(|i| (i % self.devices.len()) % self.connections == connection)
            .collect()
    }

    /// Frame `index`, stamped with `ts_ms` (the publish time the latency is measured
    /// from): 5 channels sampled every 100 ms, 50 readings.
    pub(super) fn payload(&self, index: usize, ts_ms: u64) -> Vec<u8> {
        let device = self.device(index);
        let first_seq = (index / self.devices.len() * READINGS_PER_FRAME) as u64;
        let connection = (index % self.devices.len()) % self.connections;
        self.sealed(
            connection,
            encode_frame(&device.id, first_seq, ts_ms, index),
        )
    }

    pub(super) fn warm_up_payload(&self, ts_ms: u64) -> Vec<u8> {
        self.sealed(0, encode_frame(&self.warm_up.id, 0, ts_ms, 0))
    }

    /// Sealed as the agent seals, when the connection's gateway has a key.
    fn sealed(&self, connection: usize, frame: Vec<u8>) -> Vec<u8> {
        let Some(gateway) = self.gateway(connection) else {
            return frame;
        };
        let mut out = [0u8; protocol::MAX_SEALED_LEN];
        seal::seal(&frame, &gateway.key, &mut out)
            .expect("bench frames are version 1 and fit")
            .to_vec()
    }

    pub(super) fn filter(&self) -> String {
        format!("{}/+/+/+/telemetry", self.prefix)
    }
}

fn encode_frame(device: &DeviceId, first_seq: u64, ts_ms: u64, salt: usize) -> Vec<u8> {
    let mut frame = Frame::new(device.clone(), BootId(*b"benchrun"), first_seq, ts_ms);
    for r in 0..READINGS_PER_FRAME {
        let reading = Reading {
            channel: (r % 5) as u8,
            offset_ms: (r / 5) as u32 * 100,
            value: 20.0 + ((salt * READINGS_PER_FRAME + r) % 1000) as f32 * 0.01,
            quality: Quality::empty(),
        };
        frame
            .readings
            .push(reading)
            .expect("50 readings fit a frame");
    }
    let mut buf = [0u8; MAX_FRAME_LEN];
    frame
        .encode(&mut buf)
        .expect("bench frames are valid")
        .to_vec()
}
