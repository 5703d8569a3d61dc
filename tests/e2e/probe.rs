//! What the hardening tests read back and measure: a `read_committed` ledger of statuses and
//! results (nothing lost, duplicates counted), callbacks signed and posted as the platform
//! would, and the bridge's resident memory sampled from /proc.

use crate::*;
use captain_bridge::token::{CallbackClaims, TokenKeys};
use captain_testkit::{CALLBACK_KEYS, SIGNING_KID};
use std::time::{Duration, Instant};

/// Statuses and results as a `read_committed` consumer sees them.
#[derive(Debug, Default)]
pub struct Ledger {
    /// request_id → run_uid (`-` before submission) → statuses in topic order.
    pub runs: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// result_id → copies read.
    pub results: HashMap<String, usize>,
    /// run_uid → distinct result ids.
    pub results_by_run: HashMap<String, HashSet<String>>,
}

/// The statuses no run leaves.
pub const FINAL: [&str; 7] = [
    "SUCCEEDED",
    "PARTIAL_SUCCEEDED",
    "FAILED",
    "REJECTED",
    "SUBMIT_FAILED",
    "TIMED_OUT",
    "INVALID",
];

impl Ledger {
    pub fn read(status: &[Read], results: &[Read]) -> Self {
        let mut ledger = Self::default();
        for (request_id, events) in statuses_by_request(status) {
            let runs = ledger.runs.entry(request_id).or_default();
            for e in events {
                let run = e["run_uid"].as_str().unwrap_or("-").to_owned();
                runs.entry(run)
                    .or_default()
                    .push(e["status"].as_str().unwrap().to_owned());
            }
        }
        for r in results {
            let v = r.json();
            let id = v["result_id"].as_str().unwrap().to_owned();
            *ledger.results.entry(id.clone()).or_default() += 1;
            ledger
                .results_by_run
                .entry(v["run_uid"].as_str().unwrap().to_owned())
                .or_default()
                .insert(id);
        }
        ledger
    }

    /// Result records beyond the first copy of each result_id.
    pub fn duplicate_results(&self) -> usize {
        self.results.values().map(|n| n - 1).sum()
    }

    /// Status events repeating, for the same run, a status it already had.
    pub fn repeated_statuses(&self) -> usize {
        self.runs
            .values()
            .flat_map(BTreeMap::values)
            .map(|s| s.len() - s.iter().collect::<HashSet<_>>().len())
            .sum()
    }

    /// Final statuses beyond the first, per run.
    pub fn repeated_finals(&self) -> usize {
        self.runs
            .values()
            .flat_map(BTreeMap::values)
            .map(|s| {
                s.iter()
                    .filter(|s| FINAL.contains(&s.as_str()))
                    .count()
                    .saturating_sub(1)
            })
            .sum()
    }

    /// Requests with more than one run for what was one submission (the API-side window).
    pub fn resubmitted(&self, chunks_per_request: usize) -> usize {
        self.runs
            .values()
            .filter(|runs| runs.keys().filter(|r| *r != "-").count() > chunks_per_request)
            .count()
    }

    /// Every request in `ids` has a run, and all its runs ended with `status` and hold
    /// `results_per_run` distinct results.
    pub fn complete(&self, ids: &[String], status: &str, results_per_run: usize) -> bool {
        ids.iter().all(|id| {
            self.runs.get(id).is_some_and(|runs| {
                let runs: Vec<(&String, &Vec<String>)> =
                    runs.iter().filter(|(r, _)| *r != "-").collect();
                !runs.is_empty()
                    && runs.iter().all(|(run, statuses)| {
                        statuses.iter().any(|s| s == status)
                            && self.results_by_run.get(*run).map_or(0, HashSet::len)
                                >= results_per_run
                    })
            })
        })
    }

    /// Requests of `ids` not complete yet (for a failure message).
    pub fn incomplete<'a>(
        &self,
        ids: &'a [String],
        status: &str,
        results_per_run: usize,
    ) -> Vec<&'a String> {
        ids.iter()
            .filter(|id| !self.complete(std::slice::from_ref(id), status, results_per_run))
            .take(10)
            .collect()
    }

    /// One line of figures for the test's output.
    pub fn summary(&self) -> String {
        let records: usize = self.results.values().sum();
        format!(
            "{} requests, {} runs, {records} result records ({} distinct, {} duplicates), {} \
             repeated statuses, {} repeated final statuses",
            self.runs.len(),
            self.runs
                .values()
                .map(|r| r.keys().filter(|k| *k != "-").count())
                .sum::<usize>(),
            self.results.len(),
            self.duplicate_results(),
            self.repeated_statuses(),
            self.repeated_finals()
        )
    }
}

/// Reads the status and results topics until every request of `ids` is complete, then a
/// little longer for late duplicates; panics after `timeout`.
pub fn drain(
    status: &mut Collector,
    results: &mut Collector,
    ids: &[String],
    results_per_run: usize,
    timeout: Duration,
    what: &str,
) -> Ledger {
    let deadline = Instant::now() + timeout;
    loop {
        status.poll_for(Duration::from_millis(100));
        results.poll_for(Duration::from_millis(100));
        let ledger = Ledger::read(&status.records, &results.records);
        if ledger.complete(ids, "SUCCEEDED", results_per_run) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not drained in {timeout:?}: incomplete {:?}; {}",
            ledger.incomplete(ids, "SUCCEEDED", results_per_run),
            ledger.summary()
        );
    }
    status.poll_for(Duration::from_millis(700));
    results.poll_for(Duration::from_millis(700));
    Ledger::read(&status.records, &results.records)
}

/// A token for `request_id`'s chunk 0, signed like the bridge under test signs.
pub fn token(request_id: &str) -> String {
    TokenKeys::from_config(CALLBACK_KEYS, SIGNING_KID)
        .unwrap()
        .sign(&CallbackClaims {
            request_id: request_id.to_owned(),
            chunk: 0,
            expires_at: None,
        })
}

/// A callback body of `results` result items, each about `item_bytes` long.
pub fn callback_body(
    run_uid: &str,
    batch_uid: &str,
    status: &str,
    results: usize,
    item_bytes: usize,
) -> Vec<u8> {
    let filler = "x".repeat(item_bytes.saturating_sub(30));
    let items: Vec<String> = (0..results)
        .map(|i| format!(r#"{{"n":{i},"name":"{filler}"}}"#))
        .collect();
    format!(
        r#"{{"run":{{"run_uid":"{run_uid}","batch_uid":"{batch_uid}","status":"{status}"}},"input":{{"linkedin_profile_url":"https://www.linkedin.com/in/x"}},"custom_data":{{"row":"1"}},"error":null,"results_count":{results},"results":[{}]}}"#,
        items.join(",")
    )
    .into_bytes()
}

/// A request submitted and left `CREATED` (the simulator never moves it on): its run_uid, for
/// callbacks the test posts itself.
pub async fn created_run(stack: &Stack, request_id: &str) -> String {
    stack.produce(&[search_request(request_id, 1, 1)]).await;
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(Duration::from_secs(60), "the run CREATED", |r| {
        r.iter()
            .any(|r| r.key.as_deref() == Some(request_id) && r.json()["status"] == "CREATED")
    });
    status
        .records
        .iter()
        .map(Read::json)
        .find(|v| v["request_id"] == request_id)
        .and_then(|v| v["run_uid"].as_str().map(str::to_owned))
        .expect("run_uid on CREATED")
}

/// A simulator config whose runs stay `CREATED`: only the test's own callbacks arrive.
pub fn idle_sim() -> String {
    fast_sim_config("").replace("queued_after_ms = 10", "queued_after_ms = 600000")
}

/// Resident memory of process `pid`, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Samples a process's RSS every 20 ms in the background; [`RssSampler::peak`] is the highest.
pub struct RssSampler {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
}

impl RssSampler {
    pub fn start(pid: u32) -> Self {
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = tokio_util::sync::CancellationToken::new();
        let (p, s) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.is_cancelled() {
                let kib = (rss_mib(pid) * 1024.0) as u64;
                p.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self { peak, stop }
    }

    /// The highest RSS sampled so far, in MiB.
    pub fn peak(&self) -> f64 {
        self.peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Posts `body` to `url`; the status and the body's text.
pub async fn post(http: &reqwest::Client, url: &str, body: Vec<u8>) -> (u16, String) {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("callback POST");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}
