//! The callback load generator: valid signed callbacks (the bridge's own token format, the
//! platform's `onSave` body) posted closed-loop at a concurrency or open-loop at a rate, with
//! client-side ack latency. Open-loop latency counts from each callback's scheduled time, so a
//! stalled bridge shows up as latency instead of silently lowering the offered load.

use crate::stats::Latencies;
use captain_bridge::token::{callback_url, CallbackClaims, TokenKeys};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the load is offered.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// `n` workers, each posting its next callback as soon as the previous is answered.
    Concurrency(usize),
    /// `per_sec` callbacks per second whatever the answers, at most `max_outstanding` at once.
    Rate {
        per_sec: f64,
        max_outstanding: usize,
    },
}

/// What the callbacks look like and where they go.
pub struct CallbackLoad {
    /// Per pool request: its signed token and run uid.
    pool: Vec<(String, String)>,
    /// Callback endpoints (one per bridge instance), used round-robin like a load balancer.
    bases: Vec<String>,
    results_json: String,
    pub results_per_callback: usize,
    next: AtomicUsize,
}

/// What one measured window saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub ok: u64,
    pub failed: u64,
    pub latencies: Latencies,
    pub elapsed: Duration,
}

/// A result item of about `bytes` bytes of JSON, shaped like a people-search result.
pub fn result_item(i: usize, bytes: usize) -> serde_json::Value {
    let base = serde_json::json!({
        "full_name": format!("Person {i}"),
        "headline": "Head of Data at Example Corp",
        "linkedin_profile_url": format!("https://www.linkedin.com/in/person-{i}"),
        "company_name": "Example Corp",
        "location": "Paris, Île-de-France, France",
        "summary": "",
    });
    let pad = bytes.saturating_sub(base.to_string().len());
    let mut item = base;
    item["summary"] = serde_json::Value::String("lorem ipsum ".repeat(pad / 12 + 1)[..pad].into());
    item
}

impl CallbackLoad {
    /// `pool`: (request id, run uid) of requests whose run state exists.
    pub fn new(
        keys: &TokenKeys,
        pool: &[(String, String)],
        bases: Vec<String>,
        results_per_callback: usize,
        result_bytes: usize,
    ) -> Self {
        let pool = pool
            .iter()
            .map(|(request_id, run_uid)| {
                let token = keys.sign(&CallbackClaims {
                    request_id: request_id.clone(),
                    chunk: 0,
                    expires_at: None,
                });
                (token, run_uid.clone())
            })
            .collect();
        let items: Vec<serde_json::Value> = (0..results_per_callback)
            .map(|i| result_item(i, result_bytes))
            .collect();
        Self {
            pool,
            bases,
            results_json: serde_json::Value::Array(items).to_string(),
            results_per_callback,
            next: AtomicUsize::new(0),
        }
    }

    /// The next callback: URL and body (a fresh batch uid, status RUNNING, its send time in
    /// `custom_data.sent_at_us` for the end-to-end latency).
    fn next_callback(&self) -> (String, String) {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        let (token, run_uid) = &self.pool[k % self.pool.len()];
        let base = &self.bases[k % self.bases.len()];
        let body = format!(
            r#"{{"run":{{"run_uid":"{run_uid}","batch_uid":"{batch}","status":"RUNNING"}},"input":{{"linkedin_people_search_url":"https://www.linkedin.com/search/results/people/?keywords=bench"}},"custom_data":{{"row":"{k}","sent_at_us":{sent}}},"error":null,"results_count":{n},"results":{results}}}"#,
            batch = uuid::Uuid::new_v4(),
            sent = crate::visible::wall_micros(),
            n = self.results_per_callback,
            results = self.results_json,
        );
        (callback_url(base, token), body)
    }

    async fn post(&self, http: &reqwest::Client) -> bool {
        let (url, body) = self.next_callback();
        http.post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// Offers load for `warmup` (not recorded), then for `measure`; returns the measured window.
    pub async fn run(
        self: &Arc<Self>,
        http: &reqwest::Client,
        pace: Pace,
        warmup: Duration,
        measure: Duration,
    ) -> Outcome {
        let start = Instant::now() + warmup;
        let end = start + measure;
        match pace {
            Pace::Concurrency(n) => self.closed_loop(http, n, start, end).await,
            Pace::Rate {
                per_sec,
                max_outstanding,
            } => {
                self.open_loop(http, per_sec, max_outstanding, start, end)
                    .await
            }
        }
    }

    async fn closed_loop(
        self: &Arc<Self>,
        http: &reqwest::Client,
        workers: usize,
        start: Instant,
        end: Instant,
    ) -> Outcome {
        let tasks: Vec<_> = (0..workers)
            .map(|_| {
                let (load, http) = (self.clone(), http.clone());
                tokio::spawn(async move {
                    let mut out = Outcome::default();
                    loop {
                        let t0 = Instant::now();
                        if t0 >= end {
                            break;
                        }
                        let ok = load.post(&http).await;
                        if t0 >= start {
                            count(&mut out, ok, t0.elapsed());
                        }
                    }
                    out
                })
            })
            .collect();
        let mut total = Outcome::default();
        for t in tasks {
            if let Ok(o) = t.await {
                merge(&mut total, o);
            }
        }
        total.elapsed = end.saturating_duration_since(start);
        total
    }

    async fn open_loop(
        self: &Arc<Self>,
        http: &reqwest::Client,
        per_sec: f64,
        max_outstanding: usize,
        start: Instant,
        end: Instant,
    ) -> Outcome {
        let permits = Arc::new(tokio::sync::Semaphore::new(max_outstanding));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(bool, bool, Duration)>(65_536);
        let began = Instant::now();
        let sent = AtomicU64::new(0);
        let collector = tokio::spawn(async move {
            let mut out = Outcome::default();
            while let Some((measured, ok, latency)) = rx.recv().await {
                if measured {
                    count(&mut out, ok, latency);
                }
            }
            out
        });
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        while Instant::now() < end {
            tick.tick().await;
            let due = (began.elapsed().as_secs_f64() * per_sec) as u64;
            while sent.load(Ordering::Relaxed) < due {
                let i = sent.fetch_add(1, Ordering::Relaxed);
                let scheduled = began + Duration::from_secs_f64(i as f64 / per_sec);
                if scheduled >= end {
                    break;
                }
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let (load, http, tx) = (self.clone(), http.clone(), tx.clone());
                tokio::spawn(async move {
                    let ok = load.post(&http).await;
                    let _ = tx.send((scheduled >= start, ok, scheduled.elapsed())).await;
                    drop(permit);
                });
            }
        }
        drop(tx);
        let mut out = collector.await.unwrap_or_default();
        out.elapsed = end.saturating_duration_since(start);
        out
    }
}

fn count(out: &mut Outcome, ok: bool, latency: Duration) {
    if ok {
        out.ok += 1;
        out.latencies
            .record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    } else {
        out.failed += 1;
    }
}

fn merge(total: &mut Outcome, o: Outcome) {
    total.ok += o.ok;
    total.failed += o.failed;
    total.latencies.extend(o.latencies);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_item_is_about_the_requested_size() {
        let len = result_item(3, 1024).to_string().len();
        assert!((1000..=1100).contains(&len), "{len}");
    }
}
