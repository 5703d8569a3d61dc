//! Live calls: `POST /actions/{action}/run/live` answers one input at once, one page per call.
//! [`CaptainClient::run_live`] makes one call; [`LivePager`] fetches every page of one input in
//! order, following `X-Pagination-Next` (a page number, or the `token` cursor of the actions
//! that have one) until a page without a next link, an empty page (the spec's end marker), or
//! `max_results`.
//!
//! Every call goes through the client's attempt gate and retry policy in the `live` rate mode:
//! 5xx answers and timeouts are retried up to the policy's cap, a 429 waits its `Retry-After`,
//! and any other 4xx (424 "the action failed or returned nothing", 400) is permanent for that
//! input and reported for it.
//!
//! A next link is never requested as given: only its query string is kept and sent to the
//! client's own base URL, so the API key never travels to a host named in a response.

use super::client::{action_slug, json_body, Call, CaptainClient};
use super::error::SubmitError;
use super::retry::RateMode;
use super::wire::LiveRunBody;
use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;

/// Pages one input may take before its pagination is deemed broken (an API announcing a next
/// page forever must not keep a caller busy forever).
pub const MAX_LIVE_PAGES: u32 = 10_000;

/// Longest `X-Pagination-Next` value read.
const MAX_LINK_LEN: usize = 8 * 1024;

/// Where the next page of a live call starts: the query of the API's `X-Pagination-Next` link
/// (`page=2`, `token=…`, and whatever else the API put there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextPage {
    query: Vec<(String, String)>,
}

impl NextPage {
    /// Reads `X-Pagination-Next`; `None` when it names no next page (absent, empty or `null`).
    fn from_headers(http_status: u16, headers: &HeaderMap) -> Result<Option<Self>, SubmitError> {
        let Some(value) = headers.get("x-pagination-next") else {
            return Ok(None);
        };
        let invalid = |reason: String| SubmitError::InvalidResponse {
            http_status,
            reason,
            source: None,
        };
        let link = value
            .to_str()
            .map_err(|_| invalid("X-Pagination-Next is not text".into()))?
            .trim();
        if link.is_empty() || link.eq_ignore_ascii_case("null") {
            return Ok(None);
        }
        if link.len() > MAX_LINK_LEN {
            return Err(invalid(format!(
                "X-Pagination-Next is {} bytes long (at most {MAX_LINK_LEN})",
                link.len()
            )));
        }
        let url = reqwest::Url::parse(link)
            .map_err(|e| invalid(format!("X-Pagination-Next {link:?} is not a URL: {e}")))?;
        let query: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if query.is_empty() {
            return Err(invalid(format!(
                "X-Pagination-Next {link:?} names neither a page nor a token"
            )));
        }
        Ok(Some(Self { query }))
    }

    /// A next page recorded earlier (its [`NextPage::query`]), to resume a paging from.
    pub fn from_query(query: Vec<(String, String)>) -> Self {
        Self { query }
    }

    /// The page number the link names, if any.
    pub fn page(&self) -> Option<u64> {
        self.value("page").and_then(|p| p.parse().ok())
    }

    /// The `token` cursor the link carries, if any.
    pub fn token(&self) -> Option<&str> {
        self.value("token")
    }

    /// Every query pair of the link, as sent with the next call.
    pub fn query(&self) -> &[(String, String)] {
        &self.query
    }

    fn value(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// One answer of a live call.
#[derive(Debug, Clone, PartialEq)]
pub struct LivePage {
    /// The items of a list action's page, or the one object of a single-object action.
    pub results: Vec<Value>,
    /// The next page, as the API announced it.
    pub next: Option<NextPage>,
    pub http_status: u16,
}

impl CaptainClient {
    /// `POST /actions/{action}/run/live` for one input: its first page, or the page `next`
    /// names. Retried per the client's policy in the `live` rate mode.
    pub async fn run_live(
        &self,
        action: &str,
        body: &LiveRunBody,
        next: Option<&NextPage>,
    ) -> Result<LivePage, SubmitError> {
        let action = action_slug(action)?;
        self.live_call(action, json_body(body)?, next).await
    }

    /// Pages through one live input: see [`LivePager`]. Fails only on an unusable action slug
    /// or body; the calls happen in [`LivePager::next_page`].
    pub fn live_pager(
        &self,
        action: &str,
        body: &LiveRunBody,
        max_results: Option<u64>,
    ) -> Result<LivePager, SubmitError> {
        self.live_pager_from(action, body, max_results, LiveResume::default())
    }

    /// A [`LivePager`] that goes on where an earlier paging of the same input stopped: after
    /// `resume.pages` pages and `resume.results` results (which count toward `max_results`),
    /// at the page `resume.next` names.
    pub fn live_pager_from(
        &self,
        action: &str,
        body: &LiveRunBody,
        max_results: Option<u64>,
        resume: LiveResume,
    ) -> Result<LivePager, SubmitError> {
        let started = resume.pages > 0;
        Ok(LivePager {
            client: self.clone(),
            action: action_slug(action)?.to_owned(),
            body: json_body(body)?,
            max_results,
            fetched: resume.results,
            pages: resume.pages,
            truncated: false,
            // A started paging without a next page has nothing left to fetch.
            done: max_results.is_some_and(|max| resume.results >= max)
                || (started && resume.next.is_none()),
            next: resume.next,
        })
    }

    async fn live_call(
        &self,
        action: &str,
        body: Bytes,
        next: Option<&NextPage>,
    ) -> Result<LivePage, SubmitError> {
        self.call_with(
            Call {
                method: Method::POST,
                path: format!("/actions/{action}/run/live"),
                query: next.map(|n| n.query.clone()).unwrap_or_default(),
                body: Some(body),
                endpoint: "run_live",
                mode: RateMode::Live,
            },
            read_live_page,
        )
        .await
    }
}

fn read_live_page(
    http_status: u16,
    headers: &HeaderMap,
    bytes: Bytes,
) -> Result<LivePage, SubmitError> {
    let invalid =
        |reason: String, source: Option<serde_json::Error>| SubmitError::InvalidResponse {
            http_status,
            reason,
            source: source.map(|e| Box::new(e) as _),
        };
    let results = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Array(items)) => items,
        Ok(object @ Value::Object(_)) => vec![object],
        Ok(other) => {
            return Err(invalid(
                format!("a live answer is an array or an object, not {other}"),
                None,
            ))
        }
        Err(e) => return Err(invalid("body is not JSON".into(), Some(e))),
    };
    Ok(LivePage {
        results,
        next: NextPage::from_headers(http_status, headers)?,
        http_status,
    })
}

/// Where a paging resumes: pages and results already handed over, and the next page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveResume {
    pub pages: u32,
    pub results: u64,
    pub next: Option<NextPage>,
}

/// Every page of one live input, in order, one call at a time: each page is handed over before
/// the next is asked for, so a caller that publishes pages as they come holds one page at most.
/// Ends after a page with no next link, an empty page, or once `max_results` results were
/// handed over (the page that reaches it is cut to fit). `max_results` of 0 makes no call.
#[derive(Debug)]
pub struct LivePager {
    client: CaptainClient,
    action: String,
    body: Bytes,
    max_results: Option<u64>,
    next: Option<NextPage>,
    fetched: u64,
    pages: u32,
    truncated: bool,
    done: bool,
}

impl LivePager {
    /// The next page, or `None` once the last page (or an error) was returned. An error ends
    /// the paging: a 4xx is this input's permanent failure, and a `GaveUp` means the retries
    /// ran out.
    pub async fn next_page(&mut self) -> Option<Result<LivePage, SubmitError>> {
        if self.done {
            return None;
        }
        if self.pages >= MAX_LIVE_PAGES {
            self.done = true;
            return Some(Err(SubmitError::InvalidResponse {
                http_status: 200,
                reason: format!("pagination did not end after {MAX_LIVE_PAGES} pages"),
                source: None,
            }));
        }
        let asked = self.next.take();
        let mut page = match self
            .client
            .live_call(&self.action, self.body.clone(), asked.as_ref())
            .await
        {
            Ok(page) => page,
            Err(error) => {
                self.done = true;
                return Some(Err(error));
            }
        };
        if !page.results.is_empty() && page.next.is_some() && page.next == asked {
            self.done = true;
            return Some(Err(SubmitError::InvalidResponse {
                http_status: page.http_status,
                reason: "X-Pagination-Next names the page just fetched".into(),
                source: None,
            }));
        }
        if let Some(max) = self.max_results {
            let room = usize::try_from(max.saturating_sub(self.fetched)).unwrap_or(usize::MAX);
            if page.results.len() >= room {
                self.truncated = page.results.len() > room || page.next.is_some();
                page.results.truncate(room);
                self.done = true;
            }
        }
        self.pages += 1;
        self.fetched += page.results.len() as u64;
        if page.results.is_empty() || page.next.is_none() {
            self.done = true;
        }
        if !self.done {
            self.next.clone_from(&page.next);
        }
        Some(Ok(page))
    }

    /// Whether the paging ended: the last page was handed over (or an error, or there was
    /// nothing to fetch). Read after a page to know whether it was the last.
    pub fn finished(&self) -> bool {
        self.done
    }

    /// Pages handed over so far.
    pub fn pages_fetched(&self) -> u32 {
        self.pages
    }

    /// Results handed over so far.
    pub fn results_fetched(&self) -> u64 {
        self.fetched
    }

    /// Whether `max_results` stopped the paging while the API had more.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Fetches every page and gathers the results (at most `max_results` of them when set;
    /// without it, as many as the API pages through: prefer [`LivePager::next_page`] then).
    pub async fn collect(mut self) -> Result<LiveResults, LiveFailure> {
        let mut results = Vec::new();
        while let Some(page) = self.next_page().await {
            match page {
                Ok(page) => results.extend(page.results),
                Err(error) => {
                    return Err(LiveFailure {
                        page: self.pages + 1,
                        results,
                        error,
                    })
                }
            }
        }
        Ok(LiveResults {
            results,
            pages: self.pages,
            truncated: self.truncated,
        })
    }
}

/// Every result of one live input.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveResults {
    pub results: Vec<Value>,
    pub pages: u32,
    /// `max_results` stopped the paging while the API had more.
    pub truncated: bool,
}

/// One live input that failed: on which page, with the results of the pages before it.
#[derive(Debug, thiserror::Error)]
#[error("live call failed on page {page}")]
pub struct LiveFailure {
    /// 1-based page whose call failed.
    pub page: u32,
    /// Results of the pages fetched before the failure.
    pub results: Vec<Value>,
    #[source]
    pub error: SubmitError,
}

impl LiveFailure {
    /// Whether the same input may succeed later (the API or the network was unhealthy; a 4xx
    /// is the input's own, permanent, failure).
    pub fn is_retriable(&self) -> bool {
        self.error.is_retriable()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::captain::client::ClientConfig;
    use crate::captain::retry::{AttemptGate, RateLimitAnswer, RetryPolicy};
    use crate::captain::scripted::{answer, answer_with, serve, Answer};
    use crate::metrics::Metrics;
    use secrecy::SecretString;
    use serde_json::json;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    const SEARCH: &str = "linkedin-search-people";

    fn client(base_url: &str) -> CaptainClient {
        let config = ClientConfig {
            base_url: base_url.into(),
            api_key: SecretString::from("live-key"),
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(5),
                max_rate_limit_wait: Duration::from_secs(10),
            },
        };
        CaptainClient::new(config, Metrics::new().unwrap()).unwrap()
    }

    fn body() -> LiveRunBody {
        LiveRunBody {
            input: Some(
                json!({"linkedin_people_search_url": "https://www.linkedin.com/search/results/people/?keywords=cto"}),
            ),
            parameters: None,
            identity_ids: None,
            identity_mode: None,
        }
    }

    /// A page of `count` items numbered from `first`, announcing `next` when given.
    fn page(first: usize, count: usize, next: Option<&str>) -> Answer {
        let items: Vec<Value> = (first..first + count).map(|n| json!({"n": n})).collect();
        let mut headers = vec![("content-type", "application/json".to_owned())];
        if let Some(next) = next {
            headers.push(("x-pagination-next", next.to_owned()));
        }
        Answer {
            status: 200,
            headers,
            body: Value::Array(items).to_string(),
        }
    }

    fn numbers(results: &[Value]) -> Vec<u64> {
        results.iter().map(|r| r["n"].as_u64().unwrap()).collect()
    }

    #[tokio::test]
    async fn a_live_call_posts_one_input_and_answers_its_page_and_next_link() {
        let next = "https://api.test/v4/actions/linkedin-search-people/run/live?token=abc";
        let (base, script) = serve(vec![page(0, 2, Some(next))]).await;

        let page = client(&base).run_live(SEARCH, &body(), None).await.unwrap();

        assert_eq!(numbers(&page.results), [0, 1]);
        assert_eq!(page.http_status, 200);
        let next = page.next.unwrap();
        assert_eq!(next.token(), Some("abc"));
        assert_eq!(next.page(), None);
        let seen = script.seen.lock().unwrap();
        assert_eq!(seen[0].method, "POST");
        assert_eq!(seen[0].uri, "/v4/actions/linkedin-search-people/run/live");
        assert_eq!(seen[0].headers["x-api-key"], "live-key");
        let sent: Value = serde_json::from_slice(&seen[0].body).unwrap();
        assert_eq!(sent, json!({"input": body().input.unwrap()}));
    }

    #[tokio::test]
    async fn the_pager_follows_next_links_on_its_own_base_url_until_a_page_without_one() {
        // The links name another host: only their query is used, against the client's base.
        let (base, script) = serve(vec![
            page(0, 10, Some("https://elsewhere.test/v4/x?page=2")),
            page(
                10,
                10,
                Some("https://elsewhere.test/v4/x?page=3&page_size=10"),
            ),
            page(20, 4, None),
        ])
        .await;

        let all = client(&base)
            .live_pager(SEARCH, &body(), None)
            .unwrap()
            .collect()
            .await
            .unwrap();

        assert_eq!(numbers(&all.results), (0..24).collect::<Vec<u64>>());
        assert_eq!((all.pages, all.truncated), (3, false));
        let seen = script.seen.lock().unwrap();
        let uris: Vec<&str> = seen.iter().map(|s| s.uri.as_str()).collect();
        assert_eq!(
            uris,
            [
                "/v4/actions/linkedin-search-people/run/live",
                "/v4/actions/linkedin-search-people/run/live?page=2",
                "/v4/actions/linkedin-search-people/run/live?page=3&page_size=10",
            ]
        );
        assert!(
            seen.iter().all(|s| s.body == seen[0].body),
            "same body each page"
        );
    }

    #[tokio::test]
    async fn the_pager_stops_at_max_results_and_cuts_the_last_page() {
        let (base, script) = serve(vec![
            page(0, 10, Some("http://x/v4?page=2")),
            page(10, 10, Some("http://x/v4?page=3")),
        ])
        .await;
        let mut pager = client(&base).live_pager(SEARCH, &body(), Some(15)).unwrap();

        let first = pager.next_page().await.unwrap().unwrap();
        let second = pager.next_page().await.unwrap().unwrap();

        assert_eq!(first.results.len(), 10);
        assert_eq!(numbers(&second.results), (10..15).collect::<Vec<u64>>());
        assert!(pager.next_page().await.is_none());
        assert_eq!((pager.results_fetched(), pager.truncated()), (15, true));
        assert_eq!(script.seen_count(), 2);
    }

    #[tokio::test]
    async fn a_resumed_pager_starts_at_the_recorded_next_page_and_counts_earlier_results() {
        let (base, script) = serve(vec![
            page(10, 10, Some("http://x/v4?page=3")),
            page(20, 10, Some("http://x/v4?page=4")),
        ])
        .await;
        let resume = LiveResume {
            pages: 1,
            results: 10,
            next: Some(NextPage::from_query(vec![("page".into(), "2".into())])),
        };
        let mut pager = client(&base)
            .live_pager_from(SEARCH, &body(), Some(25), resume)
            .unwrap();

        let second = pager.next_page().await.unwrap().unwrap();
        assert!(!pager.finished());
        let third = pager.next_page().await.unwrap().unwrap();

        assert_eq!(numbers(&second.results), (10..20).collect::<Vec<u64>>());
        assert_eq!(
            numbers(&third.results),
            (20..25).collect::<Vec<u64>>(),
            "cut at 25 in all"
        );
        assert!(pager.finished());
        assert_eq!((pager.pages_fetched(), pager.results_fetched()), (3, 25));
        let seen = script.seen.lock().unwrap();
        assert!(seen[0].uri.ends_with("?page=2") && seen[1].uri.ends_with("?page=3"));
    }

    #[tokio::test]
    async fn a_resumed_pager_with_nothing_left_makes_no_call() {
        let (base, script) = serve(vec![page(0, 10, None)]).await;
        for resume in [
            LiveResume {
                pages: 2,
                results: 20,
                next: None,
            },
            LiveResume {
                pages: 1,
                results: 10,
                next: Some(NextPage::from_query(vec![("page".into(), "2".into())])),
            },
        ] {
            let max = (resume.next.is_some()).then_some(10);
            let mut pager = client(&base)
                .live_pager_from(SEARCH, &body(), max, resume)
                .unwrap();
            assert!(pager.finished());
            assert!(pager.next_page().await.is_none());
        }
        assert_eq!(script.seen_count(), 0);
    }

    #[tokio::test]
    async fn max_results_of_zero_makes_no_call() {
        let (base, script) = serve(vec![page(0, 10, None)]).await;
        let all = client(&base)
            .live_pager(SEARCH, &body(), Some(0))
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert!(all.results.is_empty());
        assert_eq!(script.seen_count(), 0);
    }

    #[tokio::test]
    async fn an_empty_page_ends_the_paging_even_with_a_next_link() {
        let (base, script) = serve(vec![
            page(0, 3, Some("http://x/v4?page=2")),
            page(0, 0, Some("http://x/v4?page=3")),
        ])
        .await;
        let all = client(&base)
            .live_pager(SEARCH, &body(), None)
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!((all.results.len(), all.pages), (3, 2));
        assert_eq!(script.seen_count(), 2);
    }

    #[tokio::test]
    async fn a_next_link_that_repeats_the_page_just_fetched_is_an_invalid_response() {
        let (base, script) = serve(vec![
            page(0, 3, Some("http://x/v4?page=2")),
            page(3, 3, Some("http://x/v4?page=2")),
        ])
        .await;
        let failure = client(&base)
            .live_pager(SEARCH, &body(), None)
            .unwrap()
            .collect()
            .await
            .unwrap_err();
        assert!(
            matches!(failure.error, SubmitError::InvalidResponse { .. }),
            "{failure:?}"
        );
        assert_eq!(failure.page, 2);
        assert!(!failure.is_retriable());
        assert_eq!(script.seen_count(), 2);
    }

    #[tokio::test]
    async fn a_next_link_that_names_no_page_or_is_not_a_url_is_an_invalid_response() {
        for link in ["http://x/v4/actions/a/run/live", "not a url"] {
            let (base, _) = serve(vec![page(0, 3, Some(link))]).await;
            let err = client(&base)
                .run_live(SEARCH, &body(), None)
                .await
                .unwrap_err();
            assert!(matches!(err, SubmitError::InvalidResponse { .. }), "{link}");
        }
        let (base, _) = serve(vec![page(0, 3, Some("null"))]).await;
        let page = client(&base).run_live(SEARCH, &body(), None).await.unwrap();
        assert_eq!(page.next, None, "a null link is the last page");
    }

    #[tokio::test]
    async fn a_424_is_the_inputs_permanent_failure_and_keeps_the_results_before_it() {
        let failed = json!({"error_label": "NO_RESULT", "error_scope": "integ", "error_ref": null,
                            "message": "the action failed or returned nothing", "status_code": 424,
                            "params": {}});
        let (base, script) = serve(vec![
            page(0, 10, Some("http://x/v4?page=2")),
            answer(424, failed),
        ])
        .await;
        let failure = client(&base)
            .live_pager(SEARCH, &body(), None)
            .unwrap()
            .collect()
            .await
            .unwrap_err();
        let SubmitError::Rejected { http_status, error } = &failure.error else {
            panic!("expected a rejection, got {failure:?}");
        };
        assert_eq!(*http_status, 424);
        assert_eq!(error.error_label.as_deref(), Some("NO_RESULT"));
        assert_eq!((failure.page, failure.results.len()), (2, 10));
        assert!(!failure.is_retriable());
        assert_eq!(script.seen_count(), 2, "a 4xx is not retried");
    }

    #[tokio::test]
    async fn a_server_error_on_a_page_is_retried_and_the_paging_goes_on() {
        let (base, script) = serve(vec![
            page(0, 2, Some("http://x/v4?page=2")),
            answer(503, json!({"message": "down"})),
            page(2, 2, None),
        ])
        .await;
        let all = client(&base)
            .live_pager(SEARCH, &body(), None)
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(numbers(&all.results), [0, 1, 2, 3]);
        let seen = script.seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert!(seen[1].uri.ends_with("?page=2") && seen[2].uri.ends_with("?page=2"));
    }

    #[tokio::test]
    async fn server_errors_beyond_the_retry_cap_give_up_as_retriable() {
        let (base, script) = serve(vec![answer(500, json!({"message": "boom"}))]).await;
        let failure = client(&base)
            .live_pager(SEARCH, &body(), None)
            .unwrap()
            .collect()
            .await
            .unwrap_err();
        assert!(matches!(
            failure.error,
            SubmitError::GaveUp { attempts: 3, .. }
        ));
        assert!(failure.is_retriable());
        assert_eq!(script.seen_count(), 3);
    }

    #[derive(Default)]
    struct ModeGate {
        attempts: Mutex<Vec<RateMode>>,
        limited: Mutex<Vec<(RateMode, Option<Duration>)>>,
    }

    #[async_trait::async_trait]
    impl AttemptGate for ModeGate {
        async fn before_attempt(&self, mode: RateMode) {
            self.attempts.lock().unwrap().push(mode);
        }
        fn on_rate_limited(&self, mode: RateMode, answer: RateLimitAnswer) {
            self.limited
                .lock()
                .unwrap()
                .push((mode, answer.retry_after));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_on_a_live_page_waits_its_retry_after_through_the_gate_in_live_mode() {
        let (base, script) = serve(vec![
            page(0, 2, Some("http://x/v4?page=2")),
            answer_with(429, "retry-after", "2".into()),
            page(2, 1, None),
        ])
        .await;
        let gate = Arc::new(ModeGate::default());
        let client = client(&base).with_gate(gate.clone());

        let all = client
            .live_pager(SEARCH, &body(), None)
            .unwrap()
            .collect()
            .await
            .unwrap();

        assert_eq!(all.results.len(), 3);
        assert_eq!(*gate.attempts.lock().unwrap(), [RateMode::Live; 3]);
        assert_eq!(
            *gate.limited.lock().unwrap(),
            [(RateMode::Live, Some(Duration::from_secs(2)))]
        );
        let seen = script.seen.lock().unwrap();
        assert!(seen[2].at - seen[1].at >= Duration::from_secs(2));
        assert!(
            seen[2].uri.ends_with("?page=2"),
            "the same page is asked again"
        );
    }

    #[tokio::test]
    async fn a_single_object_answer_is_one_page_of_one_result() {
        let (base, _) = serve(vec![answer(200, json!({"full_name": "Ada Lovelace"}))]).await;
        let all = client(&base)
            .live_pager("linkedin-extract-people", &body(), None)
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(all.results, [json!({"full_name": "Ada Lovelace"})]);
        assert_eq!(all.pages, 1);
    }

    #[tokio::test]
    async fn an_answer_that_is_neither_an_array_nor_an_object_is_an_invalid_response() {
        let (base, script) = serve(vec![answer(200, json!("surprise"))]).await;
        let err = client(&base)
            .run_live(SEARCH, &body(), None)
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            SubmitError::InvalidResponse {
                http_status: 200,
                ..
            }
        ));
        assert_eq!(script.seen_count(), 1, "not retried");
        assert!(client(&base).live_pager("../runs", &body(), None).is_err());
    }

    /// The embedded captain-sim with `tune` applied to its runtime config, and a client of it.
    async fn sim(
        tune: impl FnOnce(&mut captain_sim::RuntimeConfig),
    ) -> (captain_sim::SimHandle, CaptainClient) {
        let mut config = captain_sim::SimConfig::default().with_api_key("live-key");
        config.seed = 7;
        tune(&mut config.runtime);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = captain_sim::Simulator::start(config, listener).unwrap();
        let client = client(&sim.base_url());
        (sim, client)
    }

    async fn sim_stats(sim: &captain_sim::SimHandle) -> Value {
        reqwest::get(format!("{}/_sim/stats", sim.root_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn against_captain_sim_every_page_of_a_list_input_is_fetched_in_order() {
        let (sim, client) = sim(|rt| rt.results.live_total = 35).await;

        let all = client
            .live_pager(SEARCH, &body(), None)
            .unwrap()
            .collect()
            .await
            .unwrap();
        let first = client.run_live(SEARCH, &body(), None).await.unwrap();
        let second = client
            .run_live(SEARCH, &body(), first.next.as_ref())
            .await
            .unwrap();

        assert_eq!(
            (all.results.len(), all.pages, all.truncated),
            (35, 4, false)
        );
        assert_eq!(all.results[..10], first.results[..]);
        assert_eq!(all.results[10..20], second.results[..]);
        assert_eq!(first.next.unwrap().page(), Some(2));
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn against_captain_sim_a_cursor_action_is_paged_by_its_token() {
        let (sim, client) = sim(|rt| rt.results.live_total = 50).await;
        let places = LiveRunBody {
            input: Some(
                json!({"google_maps_search_url": "https://www.google.com/maps/search/pizza"}),
            ),
            ..body()
        };
        let mut pager = client
            .live_pager("googlemaps-search-places", &places, None)
            .unwrap();
        let mut sizes = Vec::new();
        let mut tokens = 0;
        while let Some(page) = pager.next_page().await {
            let page = page.unwrap();
            sizes.push(page.results.len());
            tokens += usize::from(page.next.as_ref().and_then(NextPage::token).is_some());
        }
        assert_eq!(sizes, [20, 20, 10]);
        assert_eq!(tokens, 2, "each next page is a token cursor");
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn against_captain_sim_max_results_cuts_the_paging_short() {
        let (sim, client) = sim(|_| {}).await;
        let all = client
            .live_pager(SEARCH, &body(), Some(25))
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!((all.results.len(), all.pages, all.truncated), (25, 3, true));
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn against_captain_sim_failing_inputs_are_reported_per_input_and_not_retried() {
        let (sim, client) = sim(|rt| rt.faults.live_failure_rate = 0.5).await;
        let mut failed = 0;
        let mut succeeded = 0;
        for i in 0..8 {
            let input = LiveRunBody {
                input: Some(json!({"linkedin_people_search_url":
                    format!("https://www.linkedin.com/search/results/people/?keywords=k{i}")})),
                ..body()
            };
            match client
                .live_pager(SEARCH, &input, None)
                .unwrap()
                .collect()
                .await
            {
                Ok(all) => {
                    assert_eq!(all.results.len(), 30);
                    succeeded += 1;
                }
                Err(failure) => {
                    assert_eq!(failure.error.http_status(), Some(424));
                    assert!(!failure.is_retriable());
                    assert_eq!((failure.page, failure.results.len()), (1, 0));
                    failed += 1;
                }
            }
        }
        assert!(
            failed > 0 && succeeded > 0,
            "{failed} failed, {succeeded} succeeded"
        );
        let stats = sim_stats(&sim).await;
        let live = &stats["requests"]["POST /v4/actions/{action}/run/live"];
        assert_eq!(live["424"], failed, "one call per failing input");
        assert_eq!(live["200"], succeeded * 3);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn against_captain_sim_a_429_on_the_live_bucket_is_waited_out() {
        let (sim, client) =
            sim(|rt| rt.rate_limits.live = Some(captain_sim::RateLimit { rps: 2.0, burst: 1 }))
                .await;
        let all = client
            .live_pager(SEARCH, &body(), None)
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!((all.results.len(), all.pages), (30, 3));
        assert!(sim_stats(&sim).await["rate_limited"].as_u64().unwrap() >= 1);
        sim.shutdown().await;
    }
}
