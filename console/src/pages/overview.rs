//! The plant overview: site, line, device, channel; each channel a tile with its value,
//! state, sparkline, age and quality flags, each device online or offline. Rendered
//! from the live snapshot alone: a viewer costs no query.
//!
//! The markup is terse on purpose: a plant of 500 devices is 1 500 tiles, and the page
//! must stay under 300 KB. Elements are found by `id` (`furnace-01` for a device,
//! `furnace-01/0` for a tile); sparklines come in one JSON request after the page
//! (`/sparks`), since 1 500 of them would double its weight.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use maud::{html, Markup};
use serde::Serialize;

use crate::layout::ago;
use crate::live::{Presence, Snapshot, Tile, SPARK_STEP_MS};
use crate::plant::{Channel, Device};
use crate::state::Shared;

/// A line of a site: its name and its devices, in order.
type Line<'a> = (&'a str, Vec<&'a Device>);

pub async fn page(State(state): State<Shared>, headers: HeaderMap) -> Markup {
    let snapshot = state.snapshot();
    let session = state.access.session(&headers);
    let frame = state.frame(&snapshot, "Overview", "/", session.as_ref());
    let mut sites: Vec<(&str, Vec<Line>)> = Vec::new();
    for device in snapshot.plant.iter().filter(|d| d.enabled) {
        if sites.last().is_none_or(|(site, _)| *site != device.site) {
            sites.push((&device.site, Vec::new()));
        }
        let Some((_, lines)) = sites.last_mut() else {
            continue;
        };
        if lines.last().is_none_or(|(line, _)| *line != device.line) {
            lines.push((&device.line, Vec::new()));
        }
        if let Some((_, devices)) = lines.last_mut() {
            devices.push(device);
        }
    }
    let now = service::clock::now_ms_i64();
    let body = html! {
        h1 { "Plant overview" }
        @if snapshot.plant.is_empty() {
            p .notice { "No devices yet: the device list comes from PostgreSQL." }
        }
        @for (site, lines) in &sites {
            @for (line, devices) in lines {
                h2 { "Site " (site) " · line " (line) }
                div .devices {
                    @for device in devices {
                        (device_card(&snapshot, device, now))
                    }
                }
            }
        }
    };
    crate::layout::page(&frame, body)
}

/// `online · last seen 3 s ago` while readings arrive; otherwise `offline`, with what
/// the agent's retained status says when it was heard (`agent: online` after a crash).
fn presence_text(presence: Option<&Presence>, now: i64) -> (bool, String) {
    let last_seen = presence.and_then(|p| p.last_seen);
    let reported = presence.and_then(|p| p.reported.as_deref());
    match (last_seen, reported) {
        (Some(ts), _) => (true, format!("online · last seen {}", ago(Some(ts), now))),
        (None, Some(reported)) => (false, format!("offline · agent: {reported}")),
        (None, None) => (false, "offline".to_owned()),
    }
}

fn device_card(snapshot: &Snapshot, device: &Device, now: i64) -> Markup {
    let (online, text) = presence_text(snapshot.presence.get(&device.device_id), now);
    html! {
        section .device id=(device.device_id) {
            h3 {
                a href={ "/devices/" (device.device_id) } { (device.name) " (" (device.device_id) ")" }
                " "
                span class=(if online { "on" } else { "off" }) { (text) }
            }
            div .tiles {
                @for channel in &device.channels {
                    @if let Some(tile) = snapshot.tile(&device.device_id, channel.channel_id) {
                        (tile_markup(channel, tile, now))
                    }
                }
            }
        }
    }
}

fn tile_markup(channel: &Channel, tile: &Tile, now: i64) -> Markup {
    html! {
        div class={ "tile " (tile.level.word()) } id=(tile.id) {
            b { (channel.name) }
            i { (tile.value.as_deref().unwrap_or("—")) } " " (channel.unit)
            em { (tile.level.word()) }
            small { (ago(tile.ts, now)) }
            @if !tile.flags.is_empty() { small .f { (tile.flags.join(", ")) } }
        }
    }
}

/// Every tile's sparkline: values per slot of `step` ms, the first at slot `from`
/// (`null` where a slot had none).
#[derive(Debug, Serialize)]
pub struct Sparks {
    step: i64,
    sparks: BTreeMap<String, (i64, Vec<Option<f32>>)>,
}

pub async fn sparks(State(state): State<Shared>) -> Json<Sparks> {
    let snapshot = state.snapshot();
    let sparks = snapshot
        .tiles
        .iter()
        .filter_map(|(id, tile)| {
            let first = tile.spark.first()?.0;
            let last = tile.spark.last()?.0;
            let mut values = vec![None; (last - first + 1) as usize];
            for (slot, value) in tile.spark.iter() {
                values[(slot - first) as usize] = Some(*value);
            }
            Some((id.clone(), (first, values)))
        })
        .collect();
    Json(Sparks {
        step: SPARK_STEP_MS,
        sparks,
    })
}
