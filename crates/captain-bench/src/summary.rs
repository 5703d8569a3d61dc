//! The bench's output: one entry per scenario variant with named figures (median and spread
//! over repeats), written to `summary.json` after every scenario and printed as a table.

use crate::stats::Figure;
use anyhow::Context;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The figures of one repeat: name → (unit, value).
#[derive(Debug, Default, Clone)]
pub struct RunFigures(pub BTreeMap<String, (String, f64)>);

impl RunFigures {
    pub fn put(&mut self, name: &str, unit: &str, value: f64) {
        self.0.insert(name.to_owned(), (unit.to_owned(), value));
    }

    /// A figure already put.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.get(name).map(|(_, v)| *v)
    }
}

/// One scenario variant over all its repeats.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// Unique name, e.g. `intake/results=10/c=64/instances=1`.
    pub scenario: String,
    /// What was varied, as given.
    pub params: BTreeMap<String, Value>,
    pub repeats: usize,
    pub figures: BTreeMap<String, Figure>,
}

impl ScenarioResult {
    /// Folds the repeats: each figure's median and spread across the runs that have it.
    pub fn from_runs(scenario: &str, params: BTreeMap<String, Value>, runs: &[RunFigures]) -> Self {
        let mut values: BTreeMap<String, (String, Vec<f64>)> = BTreeMap::new();
        for run in runs {
            for (name, (unit, v)) in &run.0 {
                let entry = values
                    .entry(name.clone())
                    .or_insert_with(|| (unit.clone(), Vec::new()));
                entry.1.push(*v);
            }
        }
        let figures = values
            .into_iter()
            .map(|(name, (unit, v))| (name, Figure::of(&unit, v)))
            .collect();
        Self {
            scenario: scenario.to_owned(),
            params,
            repeats: runs.len(),
            figures,
        }
    }
}

/// Every result of this invocation (plus, with `--append`, those of earlier ones).
pub struct Summary {
    path: PathBuf,
    results: Vec<ScenarioResult>,
    carried: Vec<Value>,
}

impl Summary {
    /// A summary written to `dir/summary.json`; `append` keeps the entries already there
    /// whose scenario name this invocation does not produce again.
    pub fn open(dir: &Path, append: bool) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let path = dir.join("summary.json");
        let carried = match (append, std::fs::read(&path)) {
            (true, Ok(bytes)) => serde_json::from_slice::<Vec<Value>>(&bytes).unwrap_or_default(),
            _ => Vec::new(),
        };
        Ok(Self {
            path,
            results: Vec::new(),
            carried,
        })
    }

    /// Adds a result, prints its rows and rewrites the file (so an interrupted run keeps
    /// what it measured).
    pub fn add(&mut self, result: ScenarioResult) -> anyhow::Result<()> {
        print_rows(&result);
        self.carried
            .retain(|v| v["scenario"].as_str() != Some(result.scenario.as_str()));
        self.results.retain(|r| r.scenario != result.scenario);
        self.results.push(result);
        self.write()
    }

    pub fn results(&self) -> &[ScenarioResult] {
        &self.results
    }

    fn write(&self) -> anyhow::Result<()> {
        let mut all = self.carried.clone();
        for r in &self.results {
            all.push(serde_json::to_value(r)?);
        }
        let text = serde_json::to_string_pretty(&all)?;
        std::fs::write(&self.path, text).with_context(|| format!("write {}", self.path.display()))
    }

    /// The whole table of this invocation, for the end of the run.
    pub fn print_table(&self) {
        println!("\n{}", header());
        for r in &self.results {
            for line in rows(r) {
                println!("{line}");
            }
        }
        println!("\nsummary: {}", self.path.display());
    }
}

fn header() -> String {
    format!(
        "| {:<44} | {:<26} | {:>12} | {:>21} | {:>7} | {:<8} |\n|{}|{}|{}|{}|{}|{}|",
        "scenario",
        "figure",
        "median",
        "min – max",
        "spread",
        "unit",
        "-".repeat(46),
        "-".repeat(28),
        "-".repeat(14),
        "-".repeat(23),
        "-".repeat(9),
        "-".repeat(10)
    )
}

fn rows(r: &ScenarioResult) -> Vec<String> {
    r.figures
        .iter()
        .map(|(name, f)| {
            format!(
                "| {:<44} | {:<26} | {:>12} | {:>21} | {:>6.0}% | {:<8} |",
                r.scenario,
                name,
                fmt_num(f.median),
                format!("{} – {}", fmt_num(f.min), fmt_num(f.max)),
                f.spread_pct,
                f.unit
            )
        })
        .collect()
}

fn print_rows(r: &ScenarioResult) {
    println!("{}", header());
    for line in rows(r) {
        println!("{line}");
    }
}

/// Three significant digits or so, without scientific notation.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_folds_repeats_into_named_figures() {
        let runs: Vec<RunFigures> = [10.0, 30.0, 20.0]
            .iter()
            .map(|v| {
                let mut r = RunFigures::default();
                r.put("callbacks_per_s", "1/s", *v);
                r
            })
            .collect();
        let params = BTreeMap::from([("concurrency".to_owned(), Value::from(8))]);
        let r = ScenarioResult::from_runs("intake/c=8", params, &runs);
        let json = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(json["scenario"], "intake/c=8");
        assert_eq!(json["repeats"], 3);
        assert_eq!(json["params"]["concurrency"], 8);
        let f = &json["figures"]["callbacks_per_s"];
        assert_eq!(f["median"], 20.0);
        assert_eq!(f["min"], 10.0);
        assert_eq!(f["max"], 30.0);
        assert_eq!(f["unit"], "1/s");
        assert_eq!(f["runs"].as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn numbers_print_without_noise() {
        assert_eq!(fmt_num(12345.6), "12346");
        assert_eq!(fmt_num(123.45), "123.5");
        assert_eq!(fmt_num(1.2345), "1.23");
        assert_eq!(fmt_num(0.01234), "0.012");
    }
}
