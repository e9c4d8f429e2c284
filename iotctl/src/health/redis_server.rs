//! The Redis checks of `iotctl health`: the server answers, and its memory limit and
//! eviction policy are the deployment's (a full Redis without eviction stops the
//! ingester's writes).

use std::collections::HashMap;

use super::{Check, HealthArgs};
use crate::global::Global;
use crate::output;
use crate::services;

pub(super) async fn redis_checks(global: &Global, args: &HealthArgs) -> Vec<Check> {
    let mut con = match services::redis(global).await {
        Ok(con) => con,
        Err(e) => {
            let fix = if global.redis_url.is_none() {
                "pass --redis-url or set REDIS_URL"
            } else {
                "start Redis (local stack: `scripts/stack.sh up`) or correct --redis-url / \
                 REDIS_URL"
            };
            return vec![
                Check::fail("redis", output::error_text(&e), fix),
                Check::blocked("redis-memory", "redis"),
            ];
        }
    };
    let url = service::redact::url(global.redis_url.as_deref().unwrap_or_default());
    let info: Result<String, _> = redis::cmd("INFO").arg("server").query_async(&mut con).await;
    let reachable = match info {
        Ok(info) => {
            let version = info
                .lines()
                .find_map(|l| l.strip_prefix("redis_version:"))
                .unwrap_or("(version unknown)");
            Check::ok("redis", format!("Redis {} at {url}", version.trim()))
        }
        Err(e) => Check::fail(
            "redis",
            format!("connected to {url}, but INFO failed: {e}"),
            "check the Redis user's rights (iotctl needs INFO, CONFIG GET, GET, HGETALL)",
        ),
    };
    let config: Result<HashMap<String, String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory*")
        .query_async(&mut con)
        .await;
    let memory = match config {
        Ok(config) => memory_verdict(&config, args.redis_maxmemory, &args.redis_policy),
        Err(e) => Check::fail(
            "redis-memory",
            format!("CONFIG GET failed: {e}"),
            "allow CONFIG GET for this user, or check maxmemory by hand",
        ),
    };
    vec![reachable, memory]
}

fn memory_verdict(config: &HashMap<String, String>, maxmemory: u64, policy: &str) -> Check {
    let actual_memory = config.get("maxmemory").and_then(|v| v.parse::<u64>().ok());
    let actual_policy = config.get("maxmemory-policy").map(String::as_str);
    let mut problems = Vec::new();
    if actual_memory != Some(maxmemory) {
        problems.push(format!(
            "maxmemory is {}, expected {}",
            actual_memory.map_or_else(|| "unknown".to_owned(), memory_text),
            memory_text(maxmemory)
        ));
    }
    if actual_policy != Some(policy) {
        problems.push(format!(
            "maxmemory-policy is {}, expected {policy}",
            actual_policy.unwrap_or("unknown")
        ));
    }
    if problems.is_empty() {
        Check::ok(
            "redis-memory",
            format!(
                "maxmemory {}, maxmemory-policy {policy}",
                memory_text(maxmemory)
            ),
        )
    } else {
        Check::fail(
            "redis-memory",
            problems.join("; "),
            format!(
                "redis-cli -u \"$REDIS_URL\" CONFIG SET maxmemory {} and CONFIG SET \
                 maxmemory-policy {policy}, and the same in redis.conf so a restart keeps them",
                memory_text(maxmemory)
            ),
        )
    }
}

/// Parses a Redis memory size: bytes, or with a unit as redis.conf reads them (`k` =
/// 1000, `kb` = 1024, and so on for m/mb and g/gb, any case).
pub fn parse_memory(value: &str) -> Result<u64, String> {
    let lower = value.trim().to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &lower[digits.len()..];
    let factor: u64 = match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => {
            return Err(format!(
                "{value:?}: unknown unit {unit:?} (use b, kb, mb, gb)"
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("{value:?} is not a memory size such as 512mb"))
}

/// A byte count as Redis configuration writes it: `512mb`, or `0 (no limit)`.
fn memory_text(bytes: u64) -> String {
    const KB: u64 = 1024;
    match bytes {
        0 => "0 (no limit)".to_owned(),
        b if b % (KB * KB * KB) == 0 => format!("{}gb", b / (KB * KB * KB)),
        b if b % (KB * KB) == 0 => format!("{}mb", b / (KB * KB)),
        b if b % KB == 0 => format!("{}kb", b / KB),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512mb"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_memory("512MB"), Ok(536_870_912));
        assert_eq!(parse_memory("1g"), Ok(1_000_000_000));
        assert_eq!(parse_memory("100"), Ok(100));
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("5tb").is_err());
        assert!(parse_memory("99999999999999gb").is_err());
        assert_eq!(memory_text(536_870_912), "512mb");
        assert_eq!(memory_text(2 * 1024 * 1024 * 1024), "2gb");
        assert_eq!(memory_text(0), "0 (no limit)");
        assert_eq!(memory_text(1000), "1000 bytes");
    }

    #[test]
    fn redis_memory_settings() {
        let config = |memory: &str, policy: &str| {
            HashMap::from([
                ("maxmemory".to_owned(), memory.to_owned()),
                ("maxmemory-policy".to_owned(), policy.to_owned()),
            ])
        };
        let expected = 512 * 1024 * 1024;
        assert!(memory_verdict(&config("536870912", "allkeys-lru"), expected, "allkeys-lru").ok);
        let wrong = memory_verdict(&config("0", "noeviction"), expected, "allkeys-lru");
        assert!(!wrong.ok);
        assert!(wrong
            .detail
            .contains("maxmemory is 0 (no limit), expected 512mb"));
        assert!(wrong.detail.contains("maxmemory-policy is noeviction"));
        assert!(wrong.fix.unwrap().contains("CONFIG SET maxmemory 512mb"));
    }
}
