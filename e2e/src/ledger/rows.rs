//! The identities PostgreSQL stored, compactly: per (device, boot), the sorted distinct
//! seqs. At the benchmark's rate a long scenario stores tens of millions of rows, too
//! many for a set of (device, boot, seq) tuples with a string in each.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use sqlx::PgPool;

/// Per (device, boot id as PostgreSQL stores it): the distinct seqs stored, ascending.
#[derive(Debug, Default)]
pub struct Stored {
    boots: BTreeMap<(String, i64), Vec<u64>>,
}

impl Stored {
    /// Reads every stored identity; returns them and the rows beyond the first for the
    /// same (device, boot, seq).
    pub async fn read(db: &PgPool) -> Result<(Self, u64)> {
        // One row per boot: PostgreSQL sorts, the ledger only walks the arrays.
        let rows: Vec<(String, i64, Vec<i64>)> = sqlx::query_as(
            "SELECT device_id, boot_id, array_agg(seq ORDER BY seq)
               FROM sensor_readings GROUP BY 1, 2",
        )
        .fetch_all(db)
        .await
        .context("reading the stored identities")?;
        let mut duplicates = 0;
        let mut boots = BTreeMap::new();
        for (device, boot, mut seqs) in rows {
            let all = seqs.len();
            seqs.dedup();
            duplicates += (all - seqs.len()) as u64;
            boots.insert((device, boot), seqs.into_iter().map(|s| s as u64).collect());
        }
        Ok((Self { boots }, duplicates))
    }

    /// From (device, boot, seq) identities, in any order, repeats ignored.
    pub fn from_identities(identities: impl IntoIterator<Item = (String, i64, u64)>) -> Self {
        let mut boots: BTreeMap<(String, i64), Vec<u64>> = BTreeMap::new();
        for (device, boot, seq) in identities {
            boots.entry((device, boot)).or_default().push(seq);
        }
        for seqs in boots.values_mut() {
            seqs.sort_unstable();
            seqs.dedup();
        }
        Self { boots }
    }

    /// Distinct identities stored.
    pub fn len(&self) -> u64 {
        self.boots.values().map(|s| s.len() as u64).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.boots.is_empty()
    }

    /// The seqs stored of one boot, ascending (empty if none).
    pub fn seqs(&self, device: &str, boot: i64) -> &[u64] {
        self.boots
            .get(&(device.to_owned(), boot))
            .map_or(&[], Vec::as_slice)
    }

    pub fn contains(&self, device: &str, boot: i64, seq: u64) -> bool {
        self.seqs(device, boot).binary_search(&seq).is_ok()
    }

    /// Every boot stored and its seqs.
    pub fn boots(&self) -> impl Iterator<Item = (&(String, i64), &[u64])> {
        self.boots
            .iter()
            .map(|(boot, seqs)| (boot, seqs.as_slice()))
    }
}
