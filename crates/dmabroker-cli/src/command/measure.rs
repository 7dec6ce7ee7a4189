//! Samples, percentiles and spreads for the benches and the demo, and the
//! JSON report every `dmabroker bench ... --json` prints (read back by
//! `dmabroker bench compare`, which `scripts/ab.sh` runs).
//!
//! The machines these run on are noisy: a bench repeats its measurement in
//! rounds, interleaving every row with its floor in each round, and reports
//! per row the median of the rounds' values and their range (the spread).

use std::time::Duration;

/// Nearest-rank quantile `q` (0..=1) of sorted samples; 0 when empty.
pub(crate) fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize]
}

/// p50 and p99 of samples (sorted in place); zeros when empty.
pub(crate) fn p50_p99(samples: &mut [u64]) -> (u64, u64) {
    samples.sort_unstable();
    (quantile(samples, 0.50), quantile(samples, 0.99))
}

/// Nanoseconds of a duration, saturating.
pub(crate) fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A latency for a table: `9.8 us`, `147 us`, `29.0 ms`.
pub(crate) fn fmt_ns(ns: u64) -> String {
    if ns < 10_000 {
        format!("{:.1} us", ns as f64 / 1e3)
    } else if ns < 10_000_000 {
        format!("{:.0} us", ns as f64 / 1e3)
    } else {
        format!("{:.1} ms", ns as f64 / 1e6)
    }
}

/// The median and range of one value measured once per round.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub rounds: usize,
}

impl Spread {
    /// Of the values (any order); zeros when empty. The median of an even
    /// count is the mean of the middle two.
    pub(crate) fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Self { median, min: v[0], max: v[n - 1], rounds: n }
    }

    /// `1.18x (1.12-1.25)`: a ratio with its range over the rounds.
    pub(crate) fn ratio(&self) -> String {
        if self.rounds == 0 {
            return "-".into();
        }
        if self.rounds == 1 {
            return format!("{:.2}x", self.median);
        }
        format!("{:.2}x ({:.2}-{:.2})", self.median, self.min, self.max)
    }

    /// A latency in nanoseconds with its range: `9.8 us (9.6-10.4)`.
    pub(crate) fn latency(&self) -> String {
        if self.rounds == 0 {
            return "-".into();
        }
        let m = fmt_ns(self.median as u64);
        if self.rounds == 1 {
            return m;
        }
        let (unit, div) = if self.median < 10_000_000.0 { ("us", 1e3) } else { ("ms", 1e6) };
        let (lo, hi) = (self.min / div, self.max / div);
        let digits = usize::from(self.median < 10_000.0 || unit == "ms");
        format!("{m} ({lo:.digits$}-{hi:.digits$})")
    }
}

/// One row of a bench's JSON report: a stable key (what `bench compare`
/// pairs across runs), the row's metrics, and what it is compared with.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct JsonRow {
    /// `bench/row/size`, e.g. `pool/blocking/4 KiB`.
    pub key: String,
    /// Median over the rounds of the row's main figure (lower is better):
    /// p50 latency in ns, or ns per MiB for `bench sync`.
    pub value: Spread,
    /// What `value` is: `p50_ns`, `ns_per_mib`, ...
    pub unit: String,
    /// The key of the row this one is compared with, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub floor: Option<String>,
    /// `value / floor's value`, paired within each round.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ratio: Option<Spread>,
    /// Anything else the table shows (p99, frames/s, ...).
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// What `--json` prints: one object, one line.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct JsonReport {
    pub bench: String,
    pub rows: Vec<JsonRow>,
}

impl JsonReport {
    pub(crate) fn new(bench: &str) -> Self {
        Self { bench: bench.into(), rows: Vec::new() }
    }

    pub(crate) fn print(&self) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string(self)?);
        Ok(())
    }
}

/// Per-round ratios `a[i] / b[i]` of two values measured in the same rounds.
pub(crate) fn paired_ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).filter(|(_, d)| **d > 0.0).map(|(n, d)| n / d).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_spreads() {
        let mut s = vec![5, 1, 4, 2, 3];
        assert_eq!(p50_p99(&mut s), (3, 5));
        assert_eq!(p50_p99(&mut []), (0, 0));
        let sp = Spread::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((sp.median, sp.min, sp.max, sp.rounds), (2.5, 1.0, 10.0, 4));
        assert_eq!(Spread::of(&[]).rounds, 0);
        assert_eq!(Spread::of(&[1.2]).ratio(), "1.20x");
        assert_eq!(Spread::of(&[1.0, 1.2, 1.1]).ratio(), "1.10x (1.00-1.20)");
        assert_eq!(Spread::of(&[9_600.0, 9_800.0, 10_400.0]).latency(), "9.8 us (9.6-10.4)");
        assert_eq!(paired_ratios(&[2.0, 3.0], &[1.0, 0.0]), vec![2.0]);
    }
}
