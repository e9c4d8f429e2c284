//! Who may connect to the embedded broker: rumqttd asks this module about every CONNECT
//! (its external-auth hook), and it answers from `embedded.users` and the gateway
//! registry in PostgreSQL (`gateways` crate).
//!
//! The user name is the gateway id and the password its secret. The client id must be
//! the gateway id, or start with it and `@` (a tool holding several connections):
//! rumqttd drops a connection when another arrives with the same client id, so a gateway
//! that could pick any client id could knock another off the broker.
//!
//! Registered gateways are cached so a reconnecting plant does not turn into a query per
//! gateway: a secret that matches the cached entry is trusted for `embedded.auth_cache`
//! (a disabled or rotated gateway is refused once that has passed); anything else is
//! looked up again, so a gateway added or rotated a moment ago is accepted at once. At
//! most four lookups run at a time, whatever a flood of made-up ids asks. When
//! PostgreSQL cannot answer, a gateway found before is judged on its cached entry and an
//! unknown one is refused. Refusals are logged at most once per gateway per minute.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateways::registry::{self, Credentials};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use crate::stats::{AuthRefusal as Refusal, Stats};

/// Entries kept at most; beyond it, expired ones go, then all (a flood of made-up ids
/// must not grow the bridge's memory).
const CACHE_CAPACITY: usize = 100_000;
/// PostgreSQL connections for lookups: a flood of made-up ids waits for these, and
/// never takes more from the database.
const LOOKUPS_AT_ONCE: u32 = 4;
/// How long a lookup may take: a flood waits its turn for this long at most.
const LOOKUP_PATIENCE: Duration = Duration::from_secs(5);
/// How long a gateway found before waits for the registry before its cached entry
/// decides (its MQTT client gives up on the CONNECT after a few seconds).
const CACHED_PATIENCE: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(60);

/// The registry's connections, shared by the connection checks here and the forwarder's
/// seal checks. It connects on first use, so a bridge starts, and forwards for devices
/// it knows, while PostgreSQL is away.
pub fn registry_pool(url: &str) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(LOOKUPS_AT_ONCE)
        .acquire_timeout(LOOKUP_PATIENCE)
        .connect_lazy(url)
}

pub struct Authenticator {
    users: BTreeMap<String, String>,
    registry: Option<PgPool>,
    trust_for: Duration,
    cache: Mutex<HashMap<String, Cached>>,
    logged: Mutex<HashMap<String, Instant>>,
    stats: Arc<Stats>,
}

#[derive(Clone)]
struct Cached {
    at: Instant,
    credentials: Credentials,
}

impl Authenticator {
    /// `registry` `None`: `users` alone.
    pub fn new(
        users: BTreeMap<String, String>,
        registry: Option<PgPool>,
        trust_for: Duration,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            users,
            registry,
            trust_for,
            cache: Mutex::new(HashMap::new()),
            logged: Mutex::new(HashMap::new()),
            stats,
        }
    }

    /// Decides about one CONNECT, counts it and logs a refusal (rate-limited).
    pub async fn admit(&self, client_id: &str, user: &str, secret: &str) -> bool {
        match self.check(client_id, user, secret).await {
            Ok(()) => {
                self.stats.auth_accepted();
                true
            }
            Err(refusal) => {
                self.stats.auth_refused(refusal);
                if self.first_in_a_while(user) {
                    warn!(
                        gateway = user,
                        client_id,
                        reason = refusal.code(),
                        "MQTT connection refused: {} (logged once a minute per gateway)",
                        explain(refusal)
                    );
                }
                false
            }
        }
    }

    async fn check(&self, client_id: &str, user: &str, secret: &str) -> Result<(), Refusal> {
        let owned_client_id = client_id == user
            || client_id
                .strip_prefix(user)
                .is_some_and(|rest| rest.starts_with('@'));
        if user.is_empty() || !owned_client_id {
            return Err(Refusal::ClientId);
        }
        if let Some(password) = self.users.get(user) {
            return if password.as_bytes().ct_eq(secret.as_bytes()).into() {
                Ok(())
            } else {
                Err(Refusal::WrongSecret)
            };
        }
        let Some(pool) = &self.registry else {
            return Err(Refusal::Unknown);
        };
        let cached = self.cached(user);
        if let Some(cached) = &cached {
            if cached.at.elapsed() < self.trust_for
                && judge(Some(&cached.credentials), secret).is_ok()
            {
                return Ok(());
            }
        }
        // A gateway found before does not wait out a registry that is away: it is
        // judged on its cached entry after a second.
        let patience = if cached.is_some() {
            CACHED_PATIENCE
        } else {
            LOOKUP_PATIENCE
        };
        let lookup = tokio::time::timeout(patience, registry::credentials(pool, user))
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut));
        match lookup {
            Ok(credentials) => {
                let verdict = judge(credentials.as_ref(), secret);
                self.remember(user, credentials);
                verdict
            }
            Err(e) => {
                if self.first_in_a_while("") {
                    warn!("cannot read the gateway registry: {e}; gateways accepted before are accepted on what was cached");
                }
                match cached {
                    Some(cached) => judge(Some(&cached.credentials), secret),
                    None => Err(Refusal::RegistryUnavailable),
                }
            }
        }
    }

    fn cached(&self, user: &str) -> Option<Cached> {
        let cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.get(user).cloned()
    }

    fn remember(&self, user: &str, credentials: Option<Credentials>) {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(credentials) = credentials else {
            cache.remove(user);
            return;
        };
        if cache.len() >= CACHE_CAPACITY {
            let trust_for = self.trust_for;
            cache.retain(|_, entry| entry.at.elapsed() < trust_for);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(
            user.to_owned(),
            Cached {
                at: Instant::now(),
                credentials,
            },
        );
    }

    /// Whether a refusal of `user` (or a registry failure, `""`) may be logged now.
    fn first_in_a_while(&self, user: &str) -> bool {
        let mut logged = self
            .logged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if logged.len() >= CACHE_CAPACITY {
            logged.retain(|_, at| now.duration_since(*at) < LOG_EVERY);
        }
        match logged.get(user) {
            Some(at) if now.duration_since(*at) < LOG_EVERY => false,
            _ => {
                logged.insert(user.to_owned(), now);
                true
            }
        }
    }
}

/// The log line's reason, with what to do about it.
fn explain(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::ClientId => "its client id must be the gateway id or start with `{id}@`",
        Refusal::Unknown => "no such gateway (`iotctl gateways add`)",
        Refusal::WrongSecret => "wrong secret",
        Refusal::Disabled => "the gateway is disabled (`iotctl gateways enable`)",
        Refusal::RegistryUnavailable => "the gateway registry in PostgreSQL cannot be read",
    }
}

fn judge(credentials: Option<&Credentials>, secret: &str) -> Result<(), Refusal> {
    match credentials {
        None => Err(Refusal::Unknown),
        Some(c) if !c.hash.matches(secret) => Err(Refusal::WrongSecret),
        Some(c) if !c.enabled => Err(Refusal::Disabled),
        Some(_) => Ok(()),
    }
}

/// rumqttd's hook, answered on the bridge's runtime (where the registry's connections
/// live), whichever of rumqttd's threads asks.
pub fn hook(authenticator: Arc<Authenticator>) -> rumqttd::AuthHandler {
    let runtime = tokio::runtime::Handle::current();
    info!("the embedded broker authenticates every connection");
    Arc::new(move |client_id, user, secret| {
        let authenticator = authenticator.clone();
        let answer =
            runtime.spawn(async move { authenticator.admit(&client_id, &user, &secret).await });
        Box::pin(async move { answer.await.unwrap_or(false) })
    })
}
