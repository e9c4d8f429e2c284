//! The plant overview: site, line, device, channel; each channel a tile with its value,
//! state, sparkline, age and quality flags, each device online or offline. Rendered
//! from the live snapshot alone: a viewer costs no query.

use axum::extract::State;
use axum::http::HeaderMap;
use maud::{html, Markup};

use crate::app::Shared;
use crate::layout::age;
use crate::live::Tile;
use crate::plant::{Channel, Device};

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
                        (device_card(&snapshot, device))
                    }
                }
            }
        }
    };
    crate::layout::page(&frame, body)
}

fn device_card(snapshot: &crate::live::Snapshot, device: &Device) -> Markup {
    let last_seen = snapshot
        .presence
        .get(&device.device_id)
        .and_then(|p| p.last_seen);
    let online = last_seen.is_some();
    html! {
        section .device data-device=(device.device_id) {
            h3 {
                a href={ "/devices/" (device.device_id) } { (device.name) " (" (device.device_id) ")" }
                span .presence.online[online].offline[!online] data-presence=(device.device_id) {
                    span .word { @if online { "online" } @else { "offline" } }
                    " · last seen " (age(last_seen))
                }
            }
            div .tiles {
                @for channel in &device.channels {
                    @if let Some(tile) = snapshot.tile(&device.device_id, channel.channel_id) {
                        (tile_markup(channel, tile))
                    }
                }
            }
        }
    }
}

fn tile_markup(channel: &Channel, tile: &Tile) -> Markup {
    let points: Vec<[f64; 2]> = tile
        .spark
        .iter()
        .map(|(t, v)| [*t as f64, f64::from(*v)])
        .collect();
    let points = serde_json::to_string(&points).unwrap_or_else(|_| "[]".to_owned());
    html! {
        div class={ "tile level-" (tile.level.word()) } data-tile=(tile.id) {
            div .name { (channel.name) }
            div .value {
                span .value-number { (tile.value.as_deref().unwrap_or("—")) }
                " " span .unit { (channel.unit) }
            }
            div .state { (tile.level.word()) }
            svg .spark viewBox="0 0 100 28" preserveAspectRatio="none" role="img"
                aria-label={ (channel.name) ", last 10 minutes" } data-points=(points) {
                polyline points="" {}
            }
            div .meta { (age(tile.ts)) " " span .flags { (tile.flags.join(", ")) } }
        }
    }
}
