//! The Redis writer against the stack's real Redis: latest values, last seen and the
//! recent stream, whatever the order batches come in. Every test works under its own
//! key prefix (`testkit::unique_name`) and deletes its keys at the end; nothing here
//! touches other keys, flushes, or stops the shared Redis. Round trips and outages are
//! in tests/redis_sink_outages.rs.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use cloud_ingester::redis_sink::RedisSink;
use cloud_ingester::rows::Row;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use redis::AsyncCommands;
use support::redis_sink::{
    cleanup, config, connection, expected_latest, expected_latest_seen, latest, live, live_seen,
    newest_per_channel, row, stream, Latest, SEEN_US,
};

#[tokio::test]
async fn latest_holds_the_newest_value_per_channel_within_and_across_batches() -> anyhow::Result<()>
{
    let prefix = testkit::unique_name("rsink");
    let sink = RedisSink::new(&testkit::redis_url(), &prefix)?;
    let mut con = connection().await?;
    let now = service::clock::now_ms_i64();
    let (dev, boot) = ("furnace-01", 0x0102_0304_0506_0708);

    // Batch 1: three channels, readings deliberately not in order.
    let batch1 = vec![
        row(dev, 0, now - 300, boot, 1, 10.0),
        row(dev, 0, now - 100, boot, 3, 12.5),
        row(dev, 0, now - 200, boot, 2, 11.0),
        row(dev, 1, now - 100, boot, 5, 851.25),
        row(dev, 1, now - 500, boot, 4, 849.0),
        row(dev, 2, now - 50, boot, 6, -3.5),
    ];
    let outcome = sink.write_batch(&live(&batch1), now).await?;
    assert_eq!(outcome.latest_advanced, 3, "{outcome:?}");
    assert_eq!(outcome.latest_stale, 0, "{outcome:?}");
    assert_eq!(outcome.last_seen_advanced, 1, "{outcome:?}");
    let stored = latest(&mut con, &prefix, dev).await?;
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[&0], expected_latest(&batch1[1]));
    assert_eq!(stored[&1], expected_latest(&batch1[3]));
    assert_eq!(stored[&2], expected_latest(&batch1[5]));
    // The documented, human-readable format.
    let raw: String = con.hget(format!("{prefix}:latest:{dev}"), "1").await?;
    assert_eq!(
        raw,
        format!(
            r#"{{"ts":{},"v":851.25,"q":0,"boot":"0102030405060708","seq":5,"synced":true,"boot_seen_us":{SEEN_US}}}"#,
            now - 100
        )
    );

    // Batch 2: channel 1 newer, channel 0 older than stored (a lower seq, a later time:
    // time takes no part), channel 3 new.
    let batch2 = vec![
        row(dev, 1, now - 10, boot, 7, 852.0),
        row(dev, 0, now - 50, boot, 0, 99.0),
        row(dev, 3, now - 20, boot, 9, 1.0),
    ];
    let outcome = sink.write_batch(&live(&batch2), now).await?;
    assert_eq!(
        (outcome.latest_advanced, outcome.latest_stale),
        (2, 1),
        "{outcome:?}"
    );
    let stored = latest(&mut con, &prefix, dev).await?;
    assert_eq!(
        stored[&0],
        expected_latest(&batch1[1]),
        "channel 0 must not go back"
    );
    assert_eq!(stored[&1], expected_latest(&batch2[0]));
    assert_eq!(stored[&2], expected_latest(&batch1[5]));
    assert_eq!(stored[&3], expected_latest(&batch2[2]));

    // A replay of batch 2 changes nothing.
    let outcome = sink.write_batch(&live(&batch2), now).await?;
    assert_eq!(
        (
            outcome.latest_advanced,
            outcome.latest_stale,
            outcome.stream_appended,
            outcome.last_seen_advanced
        ),
        (0, 3, 0, 0),
        "{outcome:?}"
    );
    assert_eq!(latest(&mut con, &prefix, dev).await?, stored);

    // Same timestamp: the later seq wins, in either arrival order.
    let tie_a = row(dev, 5, now, boot, 20, 1.0);
    let tie_b = row(dev, 5, now, boot, 21, 2.0);
    sink.write_batch(&live(std::slice::from_ref(&tie_b)), now)
        .await?;
    sink.write_batch(&live(std::slice::from_ref(&tie_a)), now)
        .await?;
    assert_eq!(
        latest(&mut con, &prefix, dev).await?[&5],
        expected_latest(&tie_b)
    );

    // A non-finite value is stored as null rather than breaking the JSON.
    sink.write_batch(&live(&[row(dev, 6, now, boot, 30, f32::NAN)]), now)
        .await?;
    assert_eq!(latest(&mut con, &prefix, dev).await?[&6].v, None);

    cleanup(&prefix).await
}

/// Random readings with many ties, plus replays, split into batches in random order:
/// after every batch, latest equals the maximum (boot first seen, boot, seq) per channel
/// of all readings written so far, last_seen the time of the maximum over all channels,
/// and the stream stays in time order.
#[test]
fn out_of_order_batches_never_move_latest_or_last_seen_back() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let prefix = testkit::unique_name("rsink");
    let url = testkit::redis_url();
    let base = service::clock::now_ms_i64() - 60_000;
    let boots = [i64::MIN + 1, -5, 3, 0x7f00_0000_0000_0000];
    // When each was first seen: the last two together (ordered by boot id then), and
    // not in the boot ids' order.
    let seen = |boot: i64| match boot {
        -5 => SEEN_US,
        3 | 0x7f00_0000_0000_0000 => SEEN_US + 2,
        _ => SEEN_US + 1,
    };

    // (ts offset, boot index, channel) per reading; seq is the index; then replays and
    // a permutation; then batch boundaries.
    let strategy = prop::collection::vec((0i64..40, 0usize..boots.len(), 0i16..3), 1..60)
        .prop_flat_map(|readings| {
            let n = readings.len();
            (
                Just(readings),
                prop::collection::vec(0..n, 0..n),
                prop::collection::vec(1usize..8, 1..20),
            )
        })
        .prop_flat_map(|(readings, replays, cuts)| {
            let order: Vec<usize> = (0..readings.len()).chain(replays).collect();
            (Just(readings), Just(order).prop_shuffle(), Just(cuts))
        });

    let mut runner = TestRunner::new(ProptestConfig {
        cases: 40,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let case = AtomicU32::new(0);
    let result = runner.run(&strategy, |(readings, order, cuts)| {
        let device = format!("dev-{}", case.fetch_add(1, Ordering::Relaxed));
        let rows: Vec<Row> = readings
            .iter()
            .enumerate()
            .map(|(seq, &(off, boot, ch))| {
                row(&device, ch, base + off, boots[boot], seq as i64, seq as f32)
            })
            .collect();
        let check = runtime.block_on(async {
            let sink = RedisSink::new(&url, &prefix)?;
            let mut con = connection().await?;
            let mut written: Vec<&Row> = Vec::new();
            let mut at = 0;
            let mut cut = cuts.iter().cycle();
            while at < order.len() {
                let size = (*cut.next().context("cuts")?).min(order.len() - at);
                let batch: Vec<Row> = order[at..at + size]
                    .iter()
                    .map(|&i| rows[i].clone())
                    .collect();
                at += size;
                written.extend(order[at - size..at].iter().map(|&i| &rows[i]));
                sink.write_batch(&live_seen(&batch, seen), service::clock::now_ms_i64())
                    .await?;

                let newest = newest_per_channel(written.iter().copied(), seen);
                let want: BTreeMap<i16, Latest> = newest
                    .iter()
                    .map(|(&ch, row)| (ch, expected_latest_seen(row, seen(row.boot_id))))
                    .collect();
                let got = latest(&mut con, &prefix, &device).await?;
                if got != want {
                    bail!(
                        "after {at} of {} readings: latest {got:?}, want {want:?}",
                        order.len()
                    );
                }
                let newest_ts = written
                    .iter()
                    .max_by_key(|row| (seen(row.boot_id), row.boot_id as u64, row.seq))
                    .context("written")?
                    .ts_ms;
                let last_seen: Option<i64> =
                    con.get(format!("{prefix}:last_seen:{device}")).await?;
                if last_seen != Some(newest_ts) {
                    bail!("after {at} readings: last_seen {last_seen:?}, want {newest_ts}");
                }
            }
            let entries = stream(&mut con, &prefix, &device).await?;
            let ts: Vec<i64> = entries
                .iter()
                .map(|(_, f)| f.get("ts").and_then(|t| t.parse().ok()).unwrap_or(-1))
                .collect();
            if !ts.windows(2).all(|w| w[0] <= w[1]) || ts.contains(&-1) {
                bail!("stream out of time order: {ts:?}");
            }
            anyhow::Ok(())
        });
        check.map_err(|e| TestCaseError::fail(format!("{e:#}")))
    });
    runtime.block_on(cleanup(&prefix))?;
    result.map_err(|e| anyhow::anyhow!("{e}"))
}

/// Issue 15: an agent restarted sends its new boot's live frames first and the old
/// boot's backlog after them. Whatever that backlog's times (later, from a clock that
/// ran ahead, or earlier) and sequence numbers, `latest` and `last_seen` keep the newer
/// boot's values, the one PostgreSQL first saw later; a further reading of the new boot
/// moves them on.
#[tokio::test]
async fn an_older_boots_backlog_never_replaces_a_newer_boots_values() -> anyhow::Result<()> {
    let prefix = testkit::unique_name("rsink");
    let sink = RedisSink::new(&testkit::redis_url(), &prefix)?;
    let mut con = connection().await?;
    let now = service::clock::now_ms_i64();
    let (dev, old_boot, new_boot) = ("press-01", 0x7fff_0000_0000_0001, 0x0000_0000_0000_0002);
    // The old boot sorts after the new one by id: only its first sight may decide.
    let seen = |boot: i64| {
        if boot == new_boot {
            SEEN_US + 60_000_000
        } else {
            SEEN_US
        }
    };

    let fresh = vec![
        row(dev, 0, now - 2_000, new_boot, 0, 200.0),
        row(dev, 1, now - 2_000, new_boot, 1, 20.0),
    ];
    let outcome = sink.write_batch(&live_seen(&fresh, seen), now).await?;
    assert_eq!(outcome.latest_advanced, 2, "{outcome:?}");
    let want = latest(&mut con, &prefix, dev).await?;
    let seen_key = format!("{prefix}:last_seen:{dev}");
    assert_eq!(con.get::<_, i64>(&seen_key).await?, now - 2_000);

    // The backlog: later times and far higher seqs, then earlier ones.
    for ts in [now - 10, now - 60_000] {
        let backlog: Vec<Row> = (0..20)
            .map(|i| row(dev, (i % 2) as i16, ts + i, old_boot, 5_000 + i, 999.0))
            .collect();
        let outcome = sink.write_batch(&live_seen(&backlog, seen), now).await?;
        assert_eq!(
            (outcome.latest_advanced, outcome.last_seen_advanced),
            (0, 0),
            "{outcome:?}"
        );
        assert_eq!(latest(&mut con, &prefix, dev).await?, want);
        assert_eq!(con.get::<_, i64>(&seen_key).await?, now - 2_000);
    }

    // Both boots in one batch: the new boot's reading wins.
    let next = row(dev, 0, now - 1_500, new_boot, 2, 201.0);
    let mixed = vec![next.clone(), row(dev, 0, now, old_boot, 9_999, 999.0)];
    sink.write_batch(&live_seen(&mixed, seen), now).await?;
    assert_eq!(
        latest(&mut con, &prefix, dev).await?[&0],
        expected_latest_seen(&next, seen(new_boot))
    );
    assert_eq!(con.get::<_, i64>(&seen_key).await?, now - 1_500);

    cleanup(&prefix).await
}

#[tokio::test]
async fn stream_is_capped_per_batch_and_overall_and_its_entries_are_readable() -> anyhow::Result<()>
{
    let prefix = testkit::unique_name("rsink");
    let mut cfg = config(&testkit::redis_url(), &prefix);
    cfg.stream_maxlen = 50;
    cfg.stream_per_device_per_batch = 20;
    let sink = RedisSink::with_config(cfg)?;
    let mut con = connection().await?;
    let dev = "press-01";
    let now = service::clock::now_ms_i64();
    let start = now - 100_000;

    // One batch of 30 readings in reverse order: only the newest 20 are appended, in
    // ascending time, ids carrying the reading time.
    let batch: Vec<Row> = (0..30)
        .rev()
        .map(|i| row(dev, (i % 4) as i16, start + i, 7, i, i as f32 * 0.5))
        .collect();
    let outcome = sink.write_batch(&live(&batch), now).await?;
    assert_eq!(outcome.stream_appended, 20, "{outcome:?}");
    let entries = stream(&mut con, &prefix, dev).await?;
    assert_eq!(entries.len(), 20);
    for (k, (id, fields)) in entries.iter().enumerate() {
        let i = 10 + k as i64;
        let ts = start + i;
        assert!(id.starts_with(&format!("{ts}-")), "id {id} for ts {ts}");
        assert_eq!(fields["ts"], ts.to_string());
        assert_eq!(fields["ch"], (i % 4).to_string());
        assert_eq!(fields["v"].parse::<f32>()?, i as f32 * 0.5);
        assert_eq!(fields["q"], "0");
    }

    // A replay appends nothing.
    assert_eq!(
        sink.write_batch(&live(&batch), now).await?.stream_appended,
        0
    );

    // Many more batches: the stream stays near its cap (MAXLEN ~ trims whole nodes).
    for b in 1..30i64 {
        let batch: Vec<Row> = (0..20)
            .map(|i| row(dev, 0, start + 1000 * b + i, 7, 1000 * b + i, 1.0))
            .collect();
        sink.write_batch(&live(&batch), now).await?;
    }
    let node: (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("stream-node-max-entries")
        .query_async(&mut con)
        .await?;
    let node: usize = node.1.parse()?;
    let len: usize = con.xlen(format!("{prefix}:recent:{dev}")).await?;
    assert!(len >= 50, "trimmed below MAXLEN: {len}");
    assert!(
        len <= 50 + node,
        "not capped: {len} entries, cap 50 (~{node})"
    );
    let entries = stream(&mut con, &prefix, dev).await?;
    let last = entries.last().context("empty stream")?;
    assert_eq!(last.1["ts"], (start + 1000 * 29 + 19).to_string());

    // Many devices in one batch: the per-device share shrinks to the per-batch cap.
    let mut cfg = config(&testkit::redis_url(), &prefix);
    cfg.stream_per_device_per_batch = 100;
    cfg.stream_per_batch = 40;
    let sink = RedisSink::with_config(cfg)?;
    let batch: Vec<Row> = (0..10)
        .flat_map(|d| (0..50).map(move |i| row(&format!("many-{d}"), 0, now - 50 + i, 1, i, 0.0)))
        .collect();
    let outcome = sink.write_batch(&live(&batch), now).await?;
    assert_eq!(outcome.stream_appended, 40, "10 devices x 4: {outcome:?}");

    cleanup(&prefix).await
}

#[tokio::test]
async fn last_seen_expires_within_the_configured_ttl() -> anyhow::Result<()> {
    let prefix = testkit::unique_name("rsink");
    let mut cfg = config(&testkit::redis_url(), &prefix);
    cfg.last_seen_ttl = Duration::from_secs(30);
    let sink = RedisSink::with_config(cfg)?;
    let mut con = connection().await?;
    let now = service::clock::now_ms_i64();

    // Synchronised clock, reading 5 s old: expires 30 s after the reading.
    sink.write_batch(&live(&[row("cnc-01", 0, now - 5_000, 1, 1, 1.0)]), now)
        .await?;
    let key = format!("{prefix}:last_seen:cnc-01");
    let seen: i64 = con.get(&key).await?;
    assert_eq!(seen, now - 5_000);
    let pttl: i64 = con.pttl(&key).await?;
    assert!(pttl > 0 && pttl <= 25_000, "pttl {pttl}");

    // A newer reading moves it forward and renews the TTL; an older one (a lower seq,
    // whatever its time) does neither.
    sink.write_batch(&live(&[row("cnc-01", 0, now, 1, 2, 1.0)]), now)
        .await?;
    let pttl_new: i64 = con.pttl(&key).await?;
    assert!(pttl_new > 25_000 && pttl_new <= 30_000, "pttl {pttl_new}");
    let outcome = sink
        .write_batch(&live(&[row("cnc-01", 1, now - 1_000, 1, 0, 1.0)]), now)
        .await?;
    assert_eq!(outcome.last_seen_advanced, 0, "{outcome:?}");
    assert_eq!(con.get::<_, i64>(&key).await?, now);
    assert!(con.pttl::<_, i64>(&key).await? <= pttl_new);

    // Unsynchronised clock: its timestamp cannot date the expiry, so the full TTL.
    let mut unsynced = row("paint-01", 0, now - 20_000, 1, 1, 1.0);
    unsynced.clock_synced = false;
    sink.write_batch(&live(&[unsynced]), now).await?;
    let pttl: i64 = con.pttl(format!("{prefix}:last_seen:paint-01")).await?;
    assert!(pttl > 25_000 && pttl <= 30_000, "pttl {pttl}");

    // A reading already older than the TTL does not make a device look online.
    let outcome = sink
        .write_batch(&live(&[row("air-01", 0, now - 60_000, 1, 1, 1.0)]), now)
        .await?;
    assert_eq!(outcome.last_seen_advanced, 0);
    assert_eq!(outcome.latest_advanced, 1, "latest is still recorded");
    let exists: bool = con.exists(format!("{prefix}:last_seen:air-01")).await?;
    assert!(!exists);

    cleanup(&prefix).await
}
