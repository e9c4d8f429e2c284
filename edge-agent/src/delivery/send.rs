//! Sending: filling the in-flight window from the queue, live frames and backlog by the
//! catch-up policy (the backlog no faster than its rate), and frames due again.

use std::time::Instant;

use rumqttc::QoS;
use tracing::{debug, error};

use super::packet_ids::Sent;
use super::{decode_record, window, Delivery};
use crate::config::{CatchUp, ConfirmMode};
use crate::confirmations::FrameSpan;
use crate::queue::RecordId;

impl Delivery {
    pub(super) fn publish_control(&mut self, topic: String, payload: Vec<u8>) {
        self.publish(topic, payload, true, Sent::Control);
    }

    /// Hands one publish to rumqttc; false if the connection cannot take it.
    fn publish(&mut self, topic: String, payload: Vec<u8>, retain: bool, sent: Sent) -> bool {
        let Some(conn) = self.connection.as_mut().filter(|c| c.up) else {
            return false;
        };
        match conn
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => {
                conn.pkids.handed(sent);
                true
            }
            Err(e) => {
                debug!(error = %e, "publish not accepted; waiting for the connection");
                false
            }
        }
    }

    /// Sends queued frames until the in-flight window is full, live frames and backlog
    /// according to the catch-up policy, the backlog no faster than its rate.
    pub(super) fn fill_window(&mut self) {
        if !self.connection.as_ref().is_some_and(|c| c.up) {
            return;
        }
        self.refill_tokens();
        while self.in_flight.len() < window(&self.config) {
            if let Some(id) = self.resend.pop_front() {
                if !self.send_again(id) {
                    break;
                }
                continue;
            }
            let Some((id, record, from_backlog)) = self.next_record() else {
                break;
            };
            let Some((topic, frame)) = decode_record(&record) else {
                error!(
                    id,
                    "queue record without a valid telemetry topic; discarding it (counted as dropped)"
                );
                self.queue.ack(id);
                self.counters.dropped_frames += 1;
                continue;
            };
            let span = self.span_to_confirm(frame);
            let (topic, frame) = (topic.to_owned(), self.sealed(frame));
            if !self.publish(topic, frame, false, Sent::Record(id)) {
                // Not sent: take the step back so the record goes out on the next try.
                if from_backlog {
                    self.backlog_cursor = id;
                    self.catch_up_tokens += 1.0;
                } else {
                    self.live_cursor = id;
                }
                break;
            }
            if let Some(span) = &span {
                self.awaiting.published(span);
            }
            self.in_flight.insert(id, span);
        }
    }

    /// The frame as it goes out: sealed with the gateway's key when it has one. Frames
    /// are stored unsealed, so a rotated secret seals the backlog too.
    fn sealed(&self, frame: &[u8]) -> Vec<u8> {
        let Some(key) = &self.frame_key else {
            return frame.to_vec();
        };
        let mut out = vec![0u8; frame.len() + protocol::seal::TAG_LEN];
        match protocol::seal::seal(frame, key, &mut out) {
            Ok(_) => out,
            // Only a frame this agent did not write (not version 1) gets here; the bridge
            // judges it as it is.
            Err(_) => frame.to_vec(),
        }
    }

    /// What a confirmation will have to cover before the frame may go; `None` when the
    /// PUBACK suffices.
    fn span_to_confirm(&self, frame: &[u8]) -> Option<FrameSpan> {
        match self.confirm_mode() {
            ConfirmMode::Pipeline => FrameSpan::of(frame),
            ConfirmMode::Broker => None,
        }
    }

    /// Sends a waiting frame again; false if the connection could not take it (it is
    /// then due again at the next check).
    fn send_again(&mut self, id: RecordId) -> bool {
        let record = match self.queue.read_unacked(id, 1) {
            Ok(mut records) => records.pop().filter(|(found, _)| *found == id),
            Err(e) => {
                error!(error = %e, "could not read the queue");
                return false;
            }
        };
        // Dropped at the cap meanwhile: nothing left to send.
        let Some((topic, frame)) = record.as_ref().and_then(|(_, r)| decode_record(r)) else {
            self.awaiting.forget(id);
            return true;
        };
        let span = self.span_to_confirm(frame);
        let (topic, frame) = (topic.to_owned(), self.sealed(frame));
        if !self.publish(topic, frame, false, Sent::Record(id)) {
            return false;
        }
        self.awaiting.resending(id);
        if let Some(span) = &span {
            self.awaiting.published(span);
        }
        self.in_flight.insert(id, span);
        self.counters.resent_frames += 1;
        true
    }

    fn refill_tokens(&mut self) {
        let rate = f64::from(self.config.delivery.catch_up_rate);
        let now = Instant::now();
        let earned = now.duration_since(self.tokens_at).as_secs_f64() * rate;
        self.catch_up_tokens = (self.catch_up_tokens + earned).min(rate);
        self.tokens_at = now;
    }

    /// The next record to send and whether it came from the backlog.
    fn next_record(&mut self) -> Option<(RecordId, Vec<u8>, bool)> {
        let backlog_allowed = self.backlog_cursor < self.backlog_end && self.catch_up_tokens >= 1.0;
        let order: [bool; 2] = match self.config.delivery.catch_up {
            CatchUp::LiveFirst => [false, true],
            CatchUp::Interleave if self.prefer_backlog => [true, false],
            CatchUp::Interleave => [false, true],
        };
        for from_backlog in order {
            if from_backlog && !backlog_allowed {
                continue;
            }
            let Some((id, record)) = self.next_unsent(from_backlog) else {
                continue;
            };
            if from_backlog {
                if id >= self.backlog_end {
                    self.backlog_cursor = self.backlog_end;
                    continue;
                }
                self.backlog_cursor = id + 1;
                self.catch_up_tokens -= 1.0;
            } else {
                self.live_cursor = id + 1;
            }
            self.prefer_backlog = !from_backlog;
            return Some((id, record, from_backlog));
        }
        None
    }

    /// The next record at the source's cursor that is not already with the broker and
    /// waiting for the cloud (those are skipped, the cursor moved past them).
    fn next_unsent(&mut self, from_backlog: bool) -> Option<(RecordId, Vec<u8>)> {
        loop {
            let cursor = if from_backlog {
                self.backlog_cursor
            } else {
                self.live_cursor
            };
            let (id, record) = match self.queue.read_unacked(cursor, 1) {
                Ok(mut records) => records.pop()?,
                Err(e) => {
                    error!(error = %e, "could not read the queue");
                    return None;
                }
            };
            if !self.awaiting.contains(id) || (from_backlog && id >= self.backlog_end) {
                return Some((id, record));
            }
            if from_backlog {
                self.backlog_cursor = id + 1;
            } else {
                self.live_cursor = id + 1;
            }
        }
    }

    pub(super) fn has_unsent(&mut self) -> bool {
        let from = self.live_cursor.min(self.backlog_cursor);
        self.queue
            .read_unacked(from, window(&self.config) + 1)
            .map(|records| {
                records
                    .iter()
                    .any(|(id, _)| !self.in_flight.contains_key(id) && !self.awaiting.contains(*id))
            })
            .unwrap_or(false)
    }
}
