//! The services' HTTP endpoints, read the way an operator's tools read them: Prometheus
//! text from `/metrics` and the status of `/readyz`. The fault suite and the benchmark
//! both watch the real binaries through them.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};

/// One `/metrics` scrape, each metric summed over its label sets.
#[derive(Debug, Clone, Default)]
pub struct Metrics(HashMap<String, f64>);

impl Metrics {
    /// `GET http://{address}/metrics`.
    pub fn scrape(address: &str) -> Result<Self> {
        let url = format!("http://{address}/metrics");
        let text = ureq::get(&url)
            .timeout(Duration::from_secs(10))
            .call()
            .with_context(|| format!("GET {url}"))?
            .into_string()
            .with_context(|| format!("reading {url}"))?;
        Ok(Self::parse(&text))
    }

    fn parse(text: &str) -> Self {
        let mut sums = HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = key.split('{').next().unwrap_or(key).trim();
            if let Ok(value) = value.trim().parse::<f64>() {
                *sums.entry(name.to_owned()).or_insert(0.0) += value;
            }
        }
        Self(sums)
    }

    /// The metric summed over its label sets; 0 when absent.
    pub fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0.0)
    }
}

/// Whether `http://{address}/readyz` answers 200.
/// Why the service at `address` says it is not ready (its `/readyz` body, or why it
/// did not answer); `None` when it is ready.
pub fn not_ready(address: &str) -> Option<String> {
    match ureq::get(&format!("http://{address}/readyz"))
        .timeout(Duration::from_secs(5))
        .call()
    {
        Ok(_) => None,
        Err(ureq::Error::Status(code, response)) => {
            let body = response.into_string().unwrap_or_default();
            Some(format!("{code}: {}", body.trim().replace('\n', "; ")))
        }
        Err(e) => Some(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_each_metric_over_its_label_sets_and_skips_comments() {
        let metrics = Metrics::parse(
            "# TYPE x_total counter\n\
             x_total{reason=\"decode\"} 3\n\
             x_total{reason=\"topic\"} 4\n\
             y 1.5\n\
             garbage\n",
        );
        assert_eq!(metrics.get("x_total"), 7.0);
        assert_eq!(metrics.get("y"), 1.5);
        assert_eq!(metrics.get("absent"), 0.0);
    }
}
