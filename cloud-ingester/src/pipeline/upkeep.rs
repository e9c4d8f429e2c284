//! Upkeep between batches: the device catalog and alert rules re-read, partitions for
//! the coming days made ready, and retention applied.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::{LoopState, Pipeline};
use crate::alerts::rules::RuleBook;
use crate::validate::Catalog;

/// How often the device catalog is re-read, so newly registered devices are accepted.
pub(super) const CATALOG_REFRESH: Duration = Duration::from_secs(60);
const CATALOG_LOAD_TIMEOUT: Duration = Duration::from_secs(2);
/// How often partitions for the coming days are ensured (and retention applied).
pub(super) const PARTITION_UPKEEP: Duration = Duration::from_secs(3600);
/// Days of `sensor_readings` partitions kept ready ahead of today.
const PARTITIONS_AHEAD: i32 = 8;

impl Pipeline {
    /// Partitions for the coming days, and retention.
    pub(super) async fn upkeep(&self) {
        let today = chrono::Utc::now().date_naive();
        if let Err(e) = self.store.ensure_partitions(today, PARTITIONS_AHEAD).await {
            warn!("cannot create upcoming sensor_readings partitions: {e}");
        }
        if let Some(days) = self.settings.retention_days {
            let cutoff = today - chrono::Days::new(u64::from(days));
            match self.store.drop_partitions_before(cutoff).await {
                Ok(dropped) if dropped > 0 => info!(dropped, %cutoff, "dropped old partitions"),
                Ok(_) => {}
                Err(e) => warn!("retention failed: {e}"),
            }
        }
    }

    /// Re-reads the device catalog and the alert rules.
    pub(super) async fn refresh_catalog(&mut self, state: &mut LoopState) {
        state.catalog_loaded = Instant::now();
        let pool = self.store.pool();
        // Bounded: it may run while a batch is open, and PostgreSQL may be away.
        let loaded = tokio::time::timeout(CATALOG_LOAD_TIMEOUT, async {
            (Catalog::load(pool).await, RuleBook::load(pool).await)
        })
        .await;
        match loaded {
            Ok((Ok(catalog), Ok(rules))) => {
                self.catalog = catalog;
                state.alerts.set_rules(rules);
            }
            Ok((Err(e), _) | (_, Err(e))) => warn!("cannot refresh the device catalog: {e}"),
            Err(_) => warn!("cannot refresh the device catalog: PostgreSQL did not answer"),
        }
    }
}
