//! A private PostgreSQL with the schema, for the benches that need one of their own (the
//! end-to-end deployment, the gateway registry of the bridge and storm benches): one way
//! to start, connect and migrate it.

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// The server (stopped when dropped), the URL of its `postgres` database and a pool of
/// `connections` on it, migrated.
pub struct PrivateDatabase {
    pub server: testkit::Postgres,
    pub url: String,
    pub pool: PgPool,
}

impl PrivateDatabase {
    pub async fn start(connections: u32) -> anyhow::Result<Self> {
        let server = testkit::Postgres::start();
        let url = server.url("postgres");
        let pool = PgPoolOptions::new()
            .max_connections(connections)
            .connect(&url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        sqlx::migrate!("../migrations")
            .run(&pool)
            .await
            .with_context(|| format!("applying the migrations to {url}"))?;
        Ok(Self { server, url, pool })
    }
}
