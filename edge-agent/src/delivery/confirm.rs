//! Pipeline confirmations (`delivery.confirm = "pipeline"`): subscribing to a device's
//! confirm topic, checking each confirmation before it deletes anything, and picking the
//! frames no confirmation covered in time to send again (see [`crate::confirmations`]).

use std::time::Instant;

use rumqttc::QoS;
use tracing::{debug, warn};

use super::Delivery;
use crate::config::ConfirmMode;
use crate::confirmations::Ignored;
use crate::queue::RecordId;

impl Delivery {
    pub(super) fn confirm_mode(&self) -> ConfirmMode {
        self.config.delivery.confirm
    }

    /// QoS 0 is enough: a lost confirmation is repeated, in effect, by the next one.
    pub(super) fn subscribe_confirmations(&mut self) {
        let topics: Vec<String> = self
            .config
            .devices
            .iter()
            .map(|d| self.topics.device_confirm(&d.id))
            .collect();
        let Some(conn) = self.connection.as_mut() else {
            return;
        };
        for topic in topics {
            if let Err(e) = conn.client.try_subscribe(&topic, QoS::AtMostOnce) {
                warn!(error = %e, %topic, "could not subscribe to confirmations; frames wait on disk until the next connection");
            }
        }
    }

    /// Deletes the frames a confirmation covers. It comes off the network, so it is
    /// checked against the topic and against what this agent sent before it deletes
    /// anything.
    pub(super) fn on_confirmation(&mut self, topic: &str, payload: &[u8]) {
        let device = protocol::topic::Topic::parse(topic)
            .ok()
            .filter(|t| t.kind == protocol::topic::TopicKind::Confirm)
            .map(|t| t.device.to_owned());
        let confirmation = match protocol::Confirmation::decode(payload) {
            Ok(c) if device.as_deref() == Some(c.device.as_str()) => c,
            Ok(c) => {
                self.ignore_confirmation(topic, &format!("it is for {}", c.device.as_str()));
                return;
            }
            Err(e) => {
                self.ignore_confirmation(topic, &e.to_string());
                return;
            }
        };
        let applied = match self.awaiting.apply(&confirmation, Instant::now()) {
            Ok(applied) => applied,
            // A repeat, or an old boot's frames all confirmed already: nothing to do.
            Err(Ignored::NothingWaiting) => return,
            Err(Ignored::BeyondSent) => {
                self.ignore_confirmation(topic, "it names readings this agent never sent");
                return;
            }
        };
        for &id in &applied.committed {
            self.queue.ack(id);
        }
        for &(id, readings) in &applied.refused {
            self.queue.ack(id);
            warn!(
                id,
                readings,
                device = confirmation.device.as_str(),
                "the cloud refused a frame for good (see sensors-dlq); dropped and counted"
            );
        }
        self.counters.confirmed_frames += applied.committed.len() as u64;
        self.counters.refused_frames += applied.refused.len() as u64;
    }

    fn ignore_confirmation(&mut self, topic: &str, why: &str) {
        self.counters.ignored_confirmations += 1;
        // Counted always; logged for the first few so a flood cannot fill the journal.
        if self.counters.ignored_confirmations <= 10 {
            warn!(%topic, why, "ignored a confirmation; nothing deleted");
        }
    }

    /// Picks the waiting frames to send again (see [`crate::confirmations`]).
    pub(super) fn schedule_resends(&mut self) {
        if let Some(first) = self.queue.stats().first_unacked {
            self.awaiting.prune_below(first);
        } else {
            self.awaiting.prune_below(RecordId::MAX);
        }
        let config = &self.config.delivery;
        self.resend = self
            .awaiting
            .due(Instant::now(), config.confirm_grace, config.confirm_timeout)
            .into();
        if !self.resend.is_empty() {
            debug!(
                frames = self.resend.len(),
                "resending frames the cloud has not confirmed"
            );
            self.fill_window();
        }
    }
}
