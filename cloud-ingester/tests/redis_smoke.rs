//! The stack's Redis is real and configured as the seed system specified: 512 MB,
//! LRU eviction, persistence on; and a pipelined round trip works under a test's own
//! key prefix.

use redis::AsyncCommands;

async fn connection() -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(testkit::redis_url())?;
    Ok(client.get_multiplexed_async_connection().await?)
}

async fn config_get(
    con: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> anyhow::Result<String> {
    let pair: (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg(key)
        .query_async(con)
        .await?;
    Ok(pair.1)
}

#[tokio::test]
async fn memory_limit_eviction_and_persistence_are_as_specified() -> anyhow::Result<()> {
    let mut con = connection().await?;
    assert_eq!(
        config_get(&mut con, "maxmemory").await?,
        (512u64 << 20).to_string()
    );
    assert_eq!(
        config_get(&mut con, "maxmemory-policy").await?,
        "allkeys-lru"
    );
    assert_eq!(config_get(&mut con, "appendonly").await?, "yes");
    assert_ne!(
        config_get(&mut con, "save").await?,
        "",
        "RDB snapshots are on too"
    );
    Ok(())
}

#[tokio::test]
async fn pipelined_round_trip_under_own_prefix() -> anyhow::Result<()> {
    let mut con = connection().await?;
    let prefix = testkit::unique_name("redis");
    let key = format!("{prefix}:latest:furnace-01");
    let stream = format!("{prefix}:recent:furnace-01");
    let _: () = redis::pipe()
        .hset(&key, "temperature", "851.25")
        .xadd_maxlen(
            &stream,
            redis::streams::StreamMaxlen::Approx(100),
            "*",
            &[("v", "851.25")],
        )
        .expire(&key, 60)
        .query_async(&mut con)
        .await?;
    let value: String = con.hget(&key, "temperature").await?;
    assert_eq!(value, "851.25");
    let length: usize = con.xlen(&stream).await?;
    assert_eq!(length, 1);
    let _: () = con.del(&[&key, &stream]).await?;
    Ok(())
}
