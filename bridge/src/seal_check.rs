//! Whether a frame may speak for its device: with the gateway registry, a frame must be
//! sealed (`protocol::seal`) with the key of the gateway that speaks for its device, and
//! that gateway must be enabled. The embedded broker authenticates connections but
//! cannot tell the bridge who published a message, so this is how a gateway is kept to
//! its own devices: whoever publishes, only the owner's key makes a frame that passes.
//!
//! A refused frame is dead-lettered (`unauthorized`, the detail naming the device's
//! gateway) and counted by that gateway. It is never confirmed as refused: the device's
//! real frames are resent by its agent and checked again, so a forgery cannot make a
//! device drop its own readings, and a frame refused while the registry was away goes
//! through on its resend.
//!
//! Keys are cached per device like `gateway_auth`'s entries: a frame that verifies
//! under a cached key is trusted for `embedded.auth_cache`. Once an entry is half that
//! old, one query refreshes every device's keys beside the forwarding, so with the
//! registry up no entry goes stale and the forwarder does not wait for it (a lookup per
//! device in line would stall every device's frames: a thousand a second at ten
//! thousand devices). A stale entry, a device seen for the first time, and a frame that
//! does not verify (at most once a second per device, so a rotation or an assignment
//! made a moment ago is seen at once) are looked up in line.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use contracts::dead_letter::{Reason, Rejection};
use futures_util::FutureExt;
use gateways::registry::{self, DeviceKeys};
use protocol::seal;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::stats::Stats;

/// A fresh lookup after a refusal, at most this often per device.
const RECHECK_AFTER: Duration = Duration::from_secs(1);
/// Devices cached at most; beyond it the cache starts over (made-up device ids must not
/// grow the bridge's memory).
const CACHE_CAPACITY: usize = 100_000;
/// How long a lookup may hold up forwarding.
const LOOKUP_PATIENCE: Duration = Duration::from_secs(2);

pub struct SealCheck {
    registry: PgPool,
    trust_for: Duration,
    rotation_grace: Duration,
    accept_unsealed: bool,
    cache: HashMap<String, Cached>,
    /// The refresh of every device's keys under way.
    refresh: Option<JoinHandle<Refreshed>>,
    /// When the last refresh started: at most one a second, whatever the registry does.
    refresh_started: Option<Instant>,
    /// Whether the last refresh failed: its warning is logged once per outage.
    refresh_failing: bool,
    stats: Arc<Stats>,
}

/// Every assigned device's keys, or why the registry could not say.
type Refreshed = Result<Vec<(String, DeviceKeys)>, sqlx::Error>;

struct Cached {
    at: Instant,
    keys: Option<DeviceKeys>,
}

/// The settings `embedded` gives it.
pub struct SealSettings {
    pub trust_for: Duration,
    pub rotation_grace: Duration,
    pub accept_unsealed: bool,
}

impl SealCheck {
    pub fn new(registry: PgPool, settings: SealSettings, stats: Arc<Stats>) -> Self {
        Self {
            registry,
            trust_for: settings.trust_for,
            rotation_grace: settings.rotation_grace,
            accept_unsealed: settings.accept_unsealed,
            cache: HashMap::new(),
            refresh: None,
            refresh_started: None,
            refresh_failing: false,
            stats,
        }
    }

    /// Judges the frame `payload` of `device` (already decoded by `validate`).
    pub async fn check(&mut self, device: &str, payload: &[u8]) -> Result<(), Rejection> {
        let fresh_enough = |cached: &Cached, verdict: &Result<(), Refusal>, trust_for| {
            let limit = if verdict.is_ok() {
                trust_for
            } else {
                RECHECK_AFTER
            };
            cached.at.elapsed() < limit
        };
        self.take_refresh();
        if let Some(cached) = self.cache.get(device) {
            let verdict = self.judge(device, cached.keys.as_ref(), payload);
            if fresh_enough(cached, &verdict, self.trust_for) {
                if verdict.is_ok() && cached.at.elapsed() >= self.trust_for / 2 {
                    self.start_refresh();
                }
                return self.outcome(verdict);
            }
        }
        let lookup = tokio::time::timeout(
            LOOKUP_PATIENCE,
            registry::device_keys(&self.registry, device),
        )
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut));
        match lookup {
            Ok(keys) => {
                let verdict = self.judge(device, keys.as_ref(), payload);
                if self.cache.len() >= CACHE_CAPACITY {
                    self.cache.clear();
                }
                self.cache.insert(
                    device.to_owned(),
                    Cached {
                        at: Instant::now(),
                        keys,
                    },
                );
                self.outcome(verdict)
            }
            Err(e) => {
                let verdict = match self.cache.get(device) {
                    Some(cached) => self.judge(device, cached.keys.as_ref(), payload),
                    None => Err(Refusal {
                        gateway: "unverified".to_owned(),
                        detail: format!(
                            "the gateway registry cannot be read ({e}) and device {device} \
                             was not seen before; its agent sends the frame again"
                        ),
                    }),
                };
                self.outcome(verdict)
            }
        }
    }

    /// Starts one query for every device's keys, unless one is under way or started
    /// less than a second ago.
    fn start_refresh(&mut self) {
        let recent = self
            .refresh_started
            .is_some_and(|started| started.elapsed() < RECHECK_AFTER);
        if self.refresh.is_none() && !recent {
            let registry = self.registry.clone();
            self.refresh = Some(tokio::spawn(async move {
                tokio::time::timeout(LOOKUP_PATIENCE, registry::all_device_keys(&registry))
                    .await
                    .unwrap_or(Err(sqlx::Error::PoolTimedOut))
            }));
            self.refresh_started = Some(Instant::now());
        }
    }

    /// Takes in a finished refresh: every assigned device's keys as of its start, and
    /// none for a cached device no gateway speaks for any more (entries looked up since
    /// it started stay).
    fn take_refresh(&mut self) {
        if !self.refresh.as_ref().is_some_and(JoinHandle::is_finished) {
            return;
        }
        let (Some(query), Some(started)) = (self.refresh.take(), self.refresh_started) else {
            return;
        };
        let all = match query.now_or_never() {
            Some(Ok(Ok(all))) => all,
            Some(Ok(Err(e))) => {
                if !self.refresh_failing {
                    warn!("cannot refresh the gateway registry's keys: {e}; frames are judged on what was cached");
                }
                self.refresh_failing = true;
                return;
            }
            _ => return,
        };
        self.refresh_failing = false;
        let mut assigned: HashMap<String, DeviceKeys> = all.into_iter().collect();
        for (device, cached) in &mut self.cache {
            let keys = assigned.remove(device);
            // An entry looked up since the query started is newer than its answer.
            if cached.at < started {
                cached.keys = keys;
                cached.at = started;
            }
        }
        if self.cache.len() + assigned.len() > CACHE_CAPACITY {
            return;
        }
        for (device, keys) in assigned {
            self.cache.insert(
                device,
                Cached {
                    at: started,
                    keys: Some(keys),
                },
            );
        }
    }

    fn judge(
        &self,
        device: &str,
        keys: Option<&DeviceKeys>,
        payload: &[u8],
    ) -> Result<(), Refusal> {
        let sealed = seal::is_sealed(payload);
        let Some(keys) = keys else {
            if !sealed && self.accept_unsealed {
                return Ok(());
            }
            return Err(Refusal {
                gateway: "none".to_owned(),
                detail: format!(
                    "device {device} is not assigned to a gateway (`iotctl gateways assign`)"
                ),
            });
        };
        let refuse = |detail: String| {
            Err(Refusal {
                gateway: keys.gateway.clone(),
                detail,
            })
        };
        if !keys.enabled {
            return refuse(format!(
                "gateway {} of device {device} is disabled",
                keys.gateway
            ));
        }
        if keys.key.is_none() && (sealed || !self.accept_unsealed) {
            return refuse(format!(
                "gateway {} of device {device} has no frame key (registered before frame \
                 keys existed): `iotctl gateways rotate {}` gives it one",
                keys.gateway, keys.gateway
            ));
        }
        if !sealed {
            if self.accept_unsealed {
                return Ok(());
            }
            return refuse(format!(
                "frame for {device} is not sealed; gateway {} seals its frames with the key of its secret",
                keys.gateway
            ));
        }
        let current = keys
            .key
            .as_ref()
            .is_some_and(|key| seal::verify(payload, key).is_ok());
        let previous = keys.previous.as_ref().is_some_and(|(key, replaced_at)| {
            let age = (Utc::now() - *replaced_at).to_std().unwrap_or_default();
            age < self.rotation_grace && seal::verify(payload, key).is_ok()
        });
        if current || previous {
            Ok(())
        } else {
            refuse(format!(
                "frame for {device} is not sealed by its gateway {}",
                keys.gateway
            ))
        }
    }

    fn outcome(&self, verdict: Result<(), Refusal>) -> Result<(), Rejection> {
        verdict.map_err(|refusal| {
            self.stats.unauthorized_frame(&refusal.gateway);
            if self.stats.unauthorized_frames() % 1000 == 1 {
                warn!(
                    gateway = refusal.gateway,
                    "frame dead-lettered as unauthorized: {} (logged for the first and every 1000th)",
                    refusal.detail
                );
            }
            Rejection::new(Reason::Unauthorized, refusal.detail)
        })
    }
}

struct Refusal {
    /// Whose frame it claims to be: the device's gateway, `none` or `unverified`.
    gateway: String,
    detail: String,
}
