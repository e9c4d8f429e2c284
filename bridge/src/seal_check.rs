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
//! under a cached key is trusted for `embedded.auth_cache`; a frame that does not is
//! judged again on a fresh lookup, at most once a second per device, so a rotation or
//! an assignment made a moment ago is seen at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use contracts::dead_letter::{Reason, Rejection};
use gateways::registry::{self, DeviceKeys};
use protocol::seal;
use sqlx::PgPool;
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
    stats: Arc<Stats>,
}

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
        if let Some(cached) = self.cache.get(device) {
            let verdict = self.judge(device, cached.keys.as_ref(), payload);
            if fresh_enough(cached, &verdict, self.trust_for) {
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
