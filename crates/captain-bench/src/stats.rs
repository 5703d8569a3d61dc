//! Pure arithmetic of the bench: percentiles of latency samples, and the median and spread of a
//! figure over repeats. Exact (sorted samples), so no histogram rounding to explain.

use serde::Serialize;

/// Latency samples in microseconds.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    samples: Vec<u64>,
    sorted: bool,
}

impl Latencies {
    pub fn record(&mut self, micros: u64) {
        self.samples.push(micros);
        self.sorted = false;
    }

    pub fn extend(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
        self.sorted = false;
    }

    /// The `q` quantile (0..=1) in milliseconds, nearest rank; 0 when empty.
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        if !self.sorted {
            self.samples.sort_unstable();
            self.sorted = true;
        }
        nearest_rank(&self.samples, q) as f64 / 1000.0
    }
}

/// Nearest-rank quantile of sorted values; 0 when empty.
pub fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One figure over the repeats of a scenario.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Figure {
    pub unit: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// (max − min) / median, in percent: how far the repeats disagree.
    pub spread_pct: f64,
    pub runs: Vec<f64>,
}

impl Figure {
    pub fn of(unit: &str, runs: Vec<f64>) -> Self {
        let mut sorted = runs.clone();
        sorted.sort_by(f64::total_cmp);
        let median = median_sorted(&sorted);
        let min = sorted.first().copied().unwrap_or(0.0);
        let max = sorted.last().copied().unwrap_or(0.0);
        let spread_pct = if median.abs() > f64::EPSILON {
            100.0 * (max - min) / median.abs()
        } else {
            0.0
        };
        Self {
            unit: unit.to_owned(),
            median,
            min,
            max,
            spread_pct,
            runs,
        }
    }
}

fn median_sorted(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles_of_one_to_a_thousand() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(nearest_rank(&v, 0.5), 500);
        assert_eq!(nearest_rank(&v, 0.99), 990);
        assert_eq!(nearest_rank(&v, 0.999), 999);
        assert_eq!(nearest_rank(&v, 1.0), 1000);
        assert_eq!(nearest_rank(&v, 0.0), 1);
        assert_eq!(nearest_rank(&[], 0.5), 0);
    }

    #[test]
    fn latencies_are_reported_in_milliseconds() {
        let mut l = Latencies::default();
        for us in [3000, 1000, 2000] {
            l.record(us);
        }
        assert_eq!(l.quantile_ms(0.5), 2.0);
        assert_eq!(l.quantile_ms(1.0), 3.0);
    }

    #[test]
    fn a_figure_has_the_median_and_the_spread_of_its_runs() {
        let f = Figure::of("rec/s", vec![110.0, 90.0, 100.0]);
        assert_eq!(f.median, 100.0);
        assert_eq!((f.min, f.max), (90.0, 110.0));
        assert!((f.spread_pct - 20.0).abs() < 1e-9);
        assert_eq!(f.runs, vec![110.0, 90.0, 100.0]);
        assert_eq!(Figure::of("x", vec![1.0, 3.0]).median, 2.0);
        assert_eq!(Figure::of("x", vec![]).spread_pct, 0.0);
    }
}
