//! Live jobs: the API calls of one live request, made off the owner's loop. A job pages
//! through the inputs it was given (each from where the request's state says it stopped),
//! `live.concurrency` inputs at a time, every call through the shared rate limiter in the
//! `live` mode and the client's retry policy, and reports each page as it comes, then each
//! input's end, then that it is done. The owner applies the reports in its transaction.
//!
//! Bounds: a job has at most `live.concurrency` pages fetched and not yet applied by the
//! owner (it takes a permit of its `acks` semaphore before each call; the owner gives it back
//! once the page is applied), and all live jobs of the instance together make at most
//! `live.max_calls_in_flight` calls at once. So memory is a few pages per running request,
//! whatever the requests' size, and a big request cannot take every call slot.

use super::jobs::{JobMessage, JobReports};
use crate::captain::{CaptainClient, LiveResume, LiveRunBody, NextPage, SubmitError};
use crate::domain::admission::live_max_results;
use crate::domain::{LaunchRequest, LivePageFacts, LiveStart, StatusError};
use crate::metrics::Metrics;
use futures::StreamExt;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tracing::Instrument;

/// Longest error message kept per failed input (it is stored in the run state).
const MAX_ERROR_MESSAGE: usize = 1024;

/// Live jobs get ids from this counter: a report of a job that is not its request's current
/// one (stopped, replaced after a restore) is recognised and dropped.
static NEXT_JOB: AtomicU64 = AtomicU64::new(1);

/// Starts live jobs.
pub struct LiveRunner {
    client: Arc<CaptainClient>,
    /// Inputs of one request paged at once (`live.concurrency`).
    concurrency: usize,
    /// Live calls in flight on this instance, every request together
    /// (`live.max_calls_in_flight`).
    calls: Arc<Semaphore>,
    metrics: Metrics,
}

/// The owner's handle on a live job: its id, and the permits it gives back per applied page.
#[derive(Debug, Clone)]
pub struct LiveHandle {
    pub id: u64,
    pub acks: Arc<Semaphore>,
}

/// A live job's report to the owner.
#[derive(Debug)]
pub struct LiveMessage {
    pub request_id: String,
    pub partition: i32,
    /// The job that sent it.
    pub job: u64,
    pub event: LiveEvent,
}

/// What a live job reports.
#[derive(Debug)]
pub enum LiveEvent {
    /// One page of one input.
    Page(LivePageReport),
    /// An input's paging ended: failed with `error`, or ran out of pages without a last page
    /// to say so. After a page marked last this changes nothing.
    InputEnded {
        input: u32,
        error: Option<StatusError>,
    },
    /// Every input the job was given ended (or the job stopped).
    Done,
}

/// One page: what the state records, and the results to publish (serialized by the job, so
/// the owner only copies them into records).
#[derive(Debug)]
pub struct LivePageReport {
    pub facts: LivePageFacts,
    /// When the page's answer arrived (the results' `received_at`).
    pub received_at: chrono::DateTime<chrono::Utc>,
    pub results: Vec<Box<RawValue>>,
    pub input: Arc<InputParts>,
}

/// An input as its results carry it: without `custom_data`, which goes beside it (as in
/// callbacks).
#[derive(Debug, Default)]
pub struct InputParts {
    pub input: Option<Box<RawValue>>,
    pub custom_data: Option<Box<RawValue>>,
}

impl InputParts {
    fn of(input: &Value) -> Self {
        let Value::Object(map) = input else {
            return Self::default();
        };
        let mut rest: Map<String, Value> = map.clone();
        let custom_data = rest.remove("custom_data").filter(|v| !v.is_null());
        Self {
            input: (!rest.is_empty())
                .then(|| serde_json::value::to_raw_value(&rest).ok())
                .flatten(),
            custom_data: custom_data.and_then(|c| serde_json::value::to_raw_value(&c).ok()),
        }
    }
}

impl LiveRunner {
    pub fn new(
        client: Arc<CaptainClient>,
        concurrency: usize,
        max_calls_in_flight: usize,
        metrics: Metrics,
    ) -> Self {
        Self {
            client,
            concurrency: concurrency.max(1),
            calls: Arc::new(Semaphore::new(max_calls_in_flight.max(1))),
            metrics,
        }
    }

    /// A handle for a new job (the owner keeps it; the job gets its `acks`).
    pub fn handle(&self) -> LiveHandle {
        LiveHandle {
            id: NEXT_JOB.fetch_add(1, Ordering::Relaxed),
            acks: Arc::new(Semaphore::new(self.concurrency)),
        }
    }

    /// Spawns the job paging `starts` of `request`.
    pub fn spawn(
        self: &Arc<Self>,
        request: LaunchRequest,
        partition: i32,
        handle: &LiveHandle,
        starts: Vec<LiveStart>,
        reports: JobReports,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let job = Job {
            request: Arc::new(request),
            partition,
            id: handle.id,
            acks: handle.acks.clone(),
            reports,
        };
        let span = tracing::info_span!("live", request_id = %job.request.request_id,
            action = %job.request.action);
        tokio::spawn(
            async move {
                futures::stream::iter(starts)
                    .for_each_concurrent(this.concurrency, |start| this.page_input(&job, start))
                    .await;
                job.send(LiveEvent::Done);
            }
            .instrument(span),
        )
    }

    /// Pages through one input, reporting each page, then its end.
    async fn page_input(&self, job: &Job, start: LiveStart) {
        let input = start.input;
        let raw = job
            .request
            .inputs
            .get(input as usize)
            .cloned()
            .unwrap_or(Value::Null);
        let parts = Arc::new(InputParts::of(&raw));
        let resume = LiveResume {
            pages: start.pages,
            results: start.results,
            next: start.next.map(NextPage::from_query),
        };
        let body = live_body(&job.request, raw);
        let max_results = live_max_results(&job.request).ok().flatten();
        let mut pager =
            match self
                .client
                .live_pager_from(&job.request.action, &body, max_results, resume)
            {
                Ok(pager) => pager,
                Err(error) => return self.end(job, input, Some(&error)),
            };
        loop {
            if pager.finished() {
                return self.end(job, input, None);
            }
            // The owner gives the permit back once the page is applied: at most
            // `concurrency` pages of this request wait for it.
            let Ok(ack) = job.acks.clone().acquire_owned().await else {
                return;
            };
            let answer = {
                let Ok(_call) = self.calls.acquire().await else {
                    return;
                };
                self.metrics.live_calls_in_flight.inc();
                let answer = pager.next_page().await;
                self.metrics.live_calls_in_flight.dec();
                answer
            };
            match answer {
                None => return self.end(job, input, None),
                Some(Err(error)) => return self.end(job, input, Some(&error)),
                Some(Ok(page)) => {
                    ack.forget();
                    let last = pager.finished();
                    let results = page
                        .results
                        .iter()
                        .filter_map(|r| serde_json::value::to_raw_value(r).ok())
                        .collect::<Vec<_>>();
                    job.send(LiveEvent::Page(LivePageReport {
                        facts: LivePageFacts {
                            input,
                            page: pager.pages_fetched(),
                            results: results.len(),
                            next: page.next.map(|n| n.query().to_vec()),
                            last,
                        },
                        received_at: chrono::Utc::now(),
                        results,
                        input: parts.clone(),
                    }));
                    if last {
                        self.metrics
                            .live_inputs
                            .with_label_values(&["succeeded"])
                            .inc();
                        return;
                    }
                }
            }
        }
    }

    fn end(&self, job: &Job, input: u32, error: Option<&SubmitError>) {
        let outcome = if error.is_some() {
            "failed"
        } else {
            "succeeded"
        };
        if let Some(error) = error {
            tracing::info!(input, error = %crate::telemetry::ErrorChain(error), "live input failed");
        }
        self.metrics.live_inputs.with_label_values(&[outcome]).inc();
        job.send(LiveEvent::InputEnded {
            input,
            error: error.map(status_error),
        });
    }
}

/// One job's request and reporting channel.
struct Job {
    request: Arc<LaunchRequest>,
    partition: i32,
    id: u64,
    acks: Arc<Semaphore>,
    reports: JobReports,
}

impl Job {
    fn send(&self, event: LiveEvent) {
        self.reports.send(JobMessage::Live(LiveMessage {
            request_id: self.request.request_id.clone(),
            partition: self.partition,
            job: self.id,
            event,
        }));
    }
}

/// The body of one input's live calls: the input as given (no `input` key at all when it
/// holds nothing but `custom_data`: the input-less actions have none), the parameters without
/// `max_results` (the bridge's own cap: the live API has no such parameter and refuses unknown
/// ones), and the identity fields.
fn live_body(request: &LaunchRequest, input: Value) -> LiveRunBody {
    let has_fields = input
        .as_object()
        .is_some_and(|m| m.keys().any(|k| k != "custom_data"));
    let parameters = request.parameters.as_ref().and_then(|p| {
        let mut p = p.as_object()?.clone();
        p.remove("max_results");
        (!p.is_empty()).then_some(Value::Object(p))
    });
    LiveRunBody {
        input: has_fields.then_some(input),
        parameters,
        identity_ids: request.identity_ids.clone(),
        identity_mode: request.identity_mode.clone(),
    }
}

/// An input's failure, as its request's final status event lists it.
fn status_error(error: &SubmitError) -> StatusError {
    let mut status = match error {
        SubmitError::Rejected { http_status, error } => StatusError {
            label: error.error_label.clone(),
            scope: error.error_scope.clone(),
            message: error.message.clone(),
            http_status: Some(*http_status),
        },
        SubmitError::InvalidResponse { .. } => StatusError {
            label: Some("INVALID_LIVE_RESPONSE".into()),
            scope: None,
            message: crate::telemetry::ErrorChain(error).to_string(),
            http_status: error.http_status(),
        },
        SubmitError::GaveUp { .. } => StatusError {
            label: Some("LIVE_RETRIES_EXHAUSTED".into()),
            scope: None,
            message: crate::telemetry::ErrorChain(error).to_string(),
            http_status: error.http_status(),
        },
        SubmitError::InvalidRequest { .. } => StatusError {
            label: Some("INVALID_REQUEST".into()),
            scope: Some("input".into()),
            message: error.to_string(),
            http_status: None,
        },
    };
    if status.message.len() > MAX_ERROR_MESSAGE {
        let mut end = MAX_ERROR_MESSAGE;
        while !status.message.is_char_boundary(end) {
            end -= 1;
        }
        status.message.truncate(end);
    }
    status
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::captain::ApiError;
    use serde_json::json;

    fn request(parameters: Option<Value>) -> LaunchRequest {
        LaunchRequest {
            request_id: "r".into(),
            action: "linkedin-search-people".into(),
            mode: crate::domain::Mode::Live,
            inputs: vec![],
            parameters,
            identity_ids: Some(vec!["i".into()]),
            identity_mode: Some("auto".into()),
            schedule: None,
            workflow_uid: None,
            steps: None,
            job_name: None,
            delay: None,
            metadata: Default::default(),
        }
    }

    #[test]
    fn the_live_body_drops_max_results_and_an_input_with_nothing_but_custom_data() {
        let r = request(Some(
            json!({"max_results": 5, "only_extract_unique_profile": true}),
        ));
        let body = live_body(&r, json!({"url": "u", "custom_data": {"row": 1}}));
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({"input": {"url": "u", "custom_data": {"row": 1}},
                   "parameters": {"only_extract_unique_profile": true},
                   "identity_ids": ["i"], "identity_mode": "auto"})
        );
        let bare = live_body(
            &request(Some(json!({"max_results": 5}))),
            json!({"custom_data": {"row": 1}}),
        );
        assert_eq!(
            serde_json::to_value(&bare).unwrap(),
            json!({"identity_ids": ["i"], "identity_mode": "auto"}),
            "no input key for an input-less action, no empty parameters"
        );
    }

    #[test]
    fn a_result_carries_the_input_without_custom_data_and_custom_data_beside_it() {
        let parts = InputParts::of(&json!({"url": "u", "custom_data": {"row": 1}}));
        assert_eq!(parts.input.unwrap().get(), r#"{"url":"u"}"#);
        assert_eq!(parts.custom_data.unwrap().get(), r#"{"row":1}"#);
        let bare = InputParts::of(&json!({"custom_data": null}));
        assert!(bare.input.is_none() && bare.custom_data.is_none());
    }

    #[test]
    fn an_input_failure_keeps_the_api_error_and_names_what_the_bridge_gave_up_on() {
        let rejected = SubmitError::Rejected {
            http_status: 424,
            error: Box::new(ApiError {
                error_label: Some("NO_RESULT".into()),
                error_scope: Some("integ".into()),
                error_ref: None,
                message: "x".repeat(5000),
                status_code: Some(424),
                params: None,
            }),
        };
        let e = status_error(&rejected);
        assert_eq!(
            (e.label.as_deref(), e.scope.as_deref(), e.http_status),
            (Some("NO_RESULT"), Some("integ"), Some(424))
        );
        assert_eq!(
            e.message.len(),
            MAX_ERROR_MESSAGE,
            "bounded in the run state"
        );
        let gave_up = SubmitError::GaveUp {
            attempts: 5,
            last_error: "api answered 503".into(),
            source: None,
        };
        assert_eq!(
            status_error(&gave_up).label.as_deref(),
            Some("LIVE_RETRIES_EXHAUSTED")
        );
    }
}
