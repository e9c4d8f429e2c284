//! The batch being assembled: records read until it is full, old enough or the leases
//! are due, each turned into rows or a dead letter (after a fresh look at the catalog for
//! devices it does not know yet).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{LoopState, Pipeline};
use crate::confirmations::{self, Routes};
use crate::dead_letters::DeadLetter;
use crate::ownership::RENEW_EVERY;
use crate::rows::{rows_from_frame, Row};
use crate::validate::Catalog;

/// A record of a device or channel the catalog does not know re-reads it first, at most
/// this often, so a device registered a moment ago is stored rather than dead-lettered.
const CATALOG_RECHECK: Duration = Duration::from_secs(5);

#[derive(Default)]
pub(super) struct Batch {
    pub(super) rows: Vec<Row>,
    pub(super) dead_letters: Vec<DeadLetter>,
    /// Highest offset per partition in the batch.
    pub(super) offsets: BTreeMap<i32, i64>,
    pub(super) records: usize,
    pub(super) opened: Option<Instant>,
    /// Where each device's confirmations go, from its records' headers.
    pub(super) routes: Routes,
}

impl Batch {
    pub(super) fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Whether the record just added was dead-lettered for a device or channel the
    /// catalog does not know (yet).
    fn last_is_unknown_to_catalog(&self) -> bool {
        self.dead_letters
            .last()
            .is_some_and(DeadLetter::unknown_to_catalog)
    }

    /// Checks the batch's dead letters of unknown devices or channels again against a
    /// newer catalog: those that pass now become rows, the others keep their new reason.
    fn recheck_unknown(&mut self, catalog: &Catalog) {
        let mut kept = Vec::with_capacity(self.dead_letters.len());
        for letter in std::mem::take(&mut self.dead_letters) {
            if !letter.unknown_to_catalog() {
                kept.push(letter);
                continue;
            }
            match catalog.check(&letter.payload) {
                Ok(frame) => {
                    self.routes.note(frame.device.as_str(), letter.mqtt_topic());
                    rows_from_frame(&frame, &mut self.rows);
                }
                Err(rejection) => kept.push(DeadLetter {
                    rejection,
                    ..letter
                }),
            }
        }
        self.dead_letters = kept;
    }
}

pub(super) enum Fill {
    Full,
    Aged,
    /// Nothing arrived before the leases were due for renewal.
    Idle,
    Stopped,
    /// The consumer lost its connection to Kafka: it is to be made again
    /// (`service::kafka_connection`).
    ConnectionLost,
}

impl Pipeline {
    pub(super) async fn fill(
        &mut self,
        batch: &mut Batch,
        stop: &CancellationToken,
        state: &mut LoopState,
    ) -> Fill {
        let renew_at = state
            .balanced
            .map_or_else(Instant::now, |at| at + RENEW_EVERY);
        loop {
            let closes_at = batch
                .opened
                .map_or(renew_at, |opened| opened + self.settings.batch_age);
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Fill::Stopped,
                _ = tokio::time::sleep_until(closes_at) => {
                    return if batch.opened.is_some() { Fill::Aged } else { Fill::Idle };
                }
                message = self.consumer.recv() => match message {
                    Ok(message) => {
                        self.consumer.context().read_a_record();
                        let stored = state.skip_below.get(&message.partition());
                        if stored.is_some_and(|&stored| message.offset() < stored) {
                            continue;
                        }
                        add(&self.catalog, batch, &message);
                        if batch.last_is_unknown_to_catalog()
                            && state.catalog_loaded.elapsed() >= CATALOG_RECHECK
                        {
                            self.refresh_catalog(state).await;
                            batch.recheck_unknown(&self.catalog);
                        }
                        // Dead letters count too, so a flood of bad records is
                        // bounded like good ones.
                        if batch.rows.len() + batch.dead_letters.len() >= self.settings.batch_rows {
                            return Fill::Full;
                        }
                    }
                    Err(e) if service::kafka_connection::lost(&e)
                        && self.consumer.context().has_connected() => return Fill::ConnectionLost,
                    Err(e) => warn!("Kafka consumer: {e}"),
                },
            }
        }
    }
}

/// Adds one record to the batch: its rows, or a dead letter.
fn add(catalog: &Catalog, batch: &mut Batch, message: &BorrowedMessage<'_>) {
    batch.opened.get_or_insert_with(Instant::now);
    batch.records += 1;
    let offset = batch.offsets.entry(message.partition()).or_insert(-1);
    *offset = (*offset).max(message.offset());
    let payload = message.payload().unwrap_or_default();
    match catalog.check(payload) {
        Ok(frame) => {
            let mqtt_topic = confirmations::mqtt_topic_of(message.headers());
            batch.routes.note(frame.device.as_str(), mqtt_topic);
            rows_from_frame(&frame, &mut batch.rows);
        }
        Err(rejection) => batch.dead_letters.push(DeadLetter {
            key: message.key().map(<[u8]>::to_vec),
            payload: payload.to_vec(),
            headers: message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
            rejection,
        }),
    }
}
