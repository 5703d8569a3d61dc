//! What the output topics say, read as a `read_committed` consumer would: per request its runs
//! and their statuses in order, per run its distinct result ids, and what was seen twice.

use crate::{statuses_by_request, Read};
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Default)]
pub struct Ledger {
    /// request_id → run_uid → statuses in topic order.
    pub runs: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// run_uid → distinct result ids.
    pub results: HashMap<String, HashSet<String>>,
    /// Result records read (duplicates included).
    pub result_records: usize,
}

impl Ledger {
    pub fn read(status: &[Read], results: &[Read]) -> Self {
        let mut ledger = Self::default();
        for (request_id, events) in statuses_by_request(status) {
            let runs = ledger.runs.entry(request_id).or_default();
            for e in events {
                if let Some(run) = e["run_uid"].as_str() {
                    runs.entry(run.to_owned())
                        .or_default()
                        .push(e["status"].as_str().unwrap().to_owned());
                }
            }
        }
        for r in results {
            let v = r.json();
            ledger
                .results
                .entry(v["run_uid"].as_str().unwrap().to_owned())
                .or_default()
                .insert(v["result_id"].as_str().unwrap().to_owned());
        }
        ledger.result_records = results.len();
        ledger
    }

    /// Every request has at least one run, and every one of its runs has SUCCEEDED.
    pub fn all_succeeded(&self, ids: &[String]) -> bool {
        ids.iter().all(|id| {
            self.runs.get(id).is_some_and(|runs| {
                !runs.is_empty() && runs.values().all(|s| s.iter().any(|s| s == "SUCCEEDED"))
            })
        })
    }

    /// Every run of every request has at least `per_run` distinct results.
    pub fn all_results(&self, ids: &[String], per_run: usize) -> bool {
        ids.iter().all(|id| {
            self.runs.get(id).is_some_and(|runs| {
                runs.keys()
                    .all(|run| self.results.get(run).is_some_and(|r| r.len() >= per_run))
            })
        })
    }

    /// Result records read more than once.
    pub fn duplicate_results(&self) -> usize {
        let distinct: usize = self.results.values().map(HashSet::len).sum();
        self.result_records - distinct
    }

    /// Status events repeated within a run.
    pub fn duplicate_statuses(&self) -> usize {
        self.runs
            .values()
            .flat_map(BTreeMap::values)
            .map(|s| s.len() - s.iter().collect::<HashSet<_>>().len())
            .sum()
    }

    /// Requests with more than one run (submitted twice).
    pub fn resubmitted(&self) -> usize {
        self.runs.values().filter(|runs| runs.len() > 1).count()
    }
}
