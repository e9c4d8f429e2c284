//! What every request handler reaches: the live snapshot, the pipeline's figures, the
//! database, the users and sessions, and where to announce a change. Its own module so
//! that the pages and the routes that serve them both depend on it, not on each other.

use std::sync::Arc;

use contracts::redis::RedisKeys;
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::auth::{Access, Session};
use crate::config::Viewing;
use crate::layout::Frame;
use crate::live::Snapshot;
use crate::pipeline::PipelineView;

/// What every request handler reaches.
pub struct AppState {
    pub live: watch::Receiver<Arc<Snapshot>>,
    /// The pipeline page's figures.
    pub pipeline: watch::Receiver<Arc<PipelineView>>,
    pub pool: PgPool,
    pub access: Access,
    pub viewing: Viewing,
    pub producer: FutureProducer,
    pub alerts_topic: String,
    pub redis: redis::Client,
    pub keys: RedisKeys,
}

pub type Shared = Arc<AppState>;

impl AppState {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.borrow().clone()
    }

    /// The page frame for `session` at this moment.
    pub fn frame<'a>(
        &self,
        snapshot: &Snapshot,
        title: &'a str,
        current: &'a str,
        session: Option<&'a Session>,
    ) -> Frame<'a> {
        Frame {
            title,
            current,
            session,
            redis_up: snapshot.redis_up || snapshot.version == 0,
            postgres_up: snapshot.postgres_up || snapshot.version == 0,
            open_alerts: snapshot.alerts.len(),
        }
    }
}
