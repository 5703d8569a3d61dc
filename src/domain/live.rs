//! Live requests as decisions: which inputs a live request still has to page through and from
//! where, what one page does to the request's state (and whether its results are published),
//! what the end of an input does, and the request's final status from its inputs' outcomes.
//! Pure functions of the state and one event, like [`super::decide`]; the partition owner
//! applies them in its transaction.
//!
//! Progress is recorded per input (pages published, the next page's cursor, the outcome) in
//! the request's run state, written in the same transaction as the page's results. A request
//! redelivered after a crash therefore resumes each input at the page after the last one
//! committed: nothing committed is fetched or published again. A page whose number is not the
//! next one expected (a stale job's, or one fetched twice) is never published.
//!
//! Live results have no run or batch from the API, so their ids are derived from what is
//! stable across redeliveries ([`LiveIds`]): the request, the input's position, the page's
//! number and the result's position in the page.

use super::decide::{open_runs_delta, Effects, RequestInfo};
use super::records::{InputError, RunState, StatusError, StatusSource};
use super::request::Mode;
use super::status::RunStatus;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A live request's progress, in its run state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveState {
    /// The request's status as last published: RUNNING, then the final one.
    pub status: Option<RunStatus>,
    /// One entry per input, in the request's order.
    pub inputs: Vec<LiveInput>,
}

/// One input of a live request: how far its paging went, and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveInput {
    /// Pages whose results are published.
    pub pages: u32,
    /// Results published.
    pub results: u64,
    /// The query of the API's `X-Pagination-Next` link after the last published page
    /// (`page=3`, `token=…`): where the paging resumes. `None` before the first page and
    /// once the input is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Vec<(String, String)>>,
    /// The input has no more pages to fetch (its last page came, or it failed).
    pub done: bool,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StatusError>,
}

impl LiveInput {
    fn failed(&self) -> bool {
        self.done && self.error.is_some()
    }
}

/// Where one input's paging starts (a new input: page 1; a resumed one: after its last
/// published page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveStart {
    pub input: u32,
    /// Pages already published.
    pub pages: u32,
    /// Results already published (they count toward `max_results`).
    pub results: u64,
    /// The cursor of the next page; `None` for the first page.
    pub next: Option<Vec<(String, String)>>,
}

/// What to do with a live request, given what is known of its request_id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LivePlan {
    /// Its final status was published: a redelivery or a producer's retry. No call is made.
    Finished,
    /// The request_id was used for a request of another mode: not run again.
    OtherMode(Mode),
    /// These inputs still have pages to fetch (every input from its first page for a new
    /// request). Empty when every input ended but the final status is not recorded yet.
    Run(Vec<LiveStart>),
}

/// Which inputs of a live request of `inputs` inputs still need calls, and from where.
pub fn plan_live(state: Option<&RunState>, inputs: usize) -> LivePlan {
    let fresh = |input: u32| LiveStart {
        input,
        pages: 0,
        results: 0,
        next: None,
    };
    let indexes = (0..inputs).map(|i| u32::try_from(i).unwrap_or(u32::MAX));
    let Some(state) = state else {
        return LivePlan::Run(indexes.map(fresh).collect());
    };
    if state.mode != Mode::Live {
        return LivePlan::OtherMode(state.mode);
    }
    let Some(live) = &state.live else {
        return LivePlan::Run(indexes.map(fresh).collect());
    };
    if live.status.is_some_and(RunStatus::is_terminal) {
        return LivePlan::Finished;
    }
    LivePlan::Run(
        indexes
            .filter_map(|i| match live.inputs.get(i as usize) {
                None => Some(fresh(i)),
                Some(input) if input.done => None,
                Some(input) => Some(LiveStart {
                    input: i,
                    pages: input.pages,
                    results: input.results,
                    next: input.next.clone(),
                }),
            })
            .collect(),
    )
}

/// Records that a live request of `inputs` inputs runs, and publishes `RUNNING` the first
/// time (a resumed request already said it).
pub fn begin_live(
    state: &mut RunState,
    info: &RequestInfo,
    inputs: usize,
    now: DateTime<Utc>,
) -> Effects {
    state.updated_at = now;
    let live = state.live.get_or_insert_with(LiveState::default);
    if live.inputs.len() < inputs {
        live.inputs.resize_with(inputs, LiveInput::default);
    }
    if live.status.is_some() {
        return Effects::default();
    }
    live.status = Some(RunStatus::Running);
    Effects {
        status: Some(info.event(0, RunStatus::Running, StatusSource::Live, now)),
        open_runs: open_runs_delta(None, RunStatus::Running),
    }
}

/// One page of one input, as the live job fetched it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivePageFacts {
    pub input: u32,
    /// The page's number for this input, from 1.
    pub page: u32,
    pub results: usize,
    /// The next page's cursor, when the API announced one and the paging goes on.
    pub next: Option<Vec<(String, String)>>,
    /// The input's paging ends with this page (no next link, an empty page, or
    /// `max_results` reached).
    pub last: bool,
}

/// What a page does.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LivePageEffects {
    /// Publish the page's results (false for a page already published, or out of order).
    pub publish: bool,
    /// The request's final status, when this page ended its last input.
    pub effects: Effects,
}

/// Records one page: published only if it is the next page of an input still paging, which
/// makes every page published once and in order whatever reaches the owner.
pub fn apply_live_page(
    state: &mut RunState,
    facts: &LivePageFacts,
    now: DateTime<Utc>,
) -> LivePageEffects {
    let Some(input) = state
        .live
        .as_mut()
        .and_then(|l| l.inputs.get_mut(facts.input as usize))
    else {
        return LivePageEffects::default();
    };
    if input.done || facts.page != input.pages.saturating_add(1) {
        return LivePageEffects::default();
    }
    input.pages = facts.page;
    input.results += facts.results as u64;
    input.done = facts.last;
    input.next = if facts.last { None } else { facts.next.clone() };
    state.updated_at = now;
    LivePageEffects {
        publish: true,
        effects: if facts.last {
            finish_live(state, now)
        } else {
            Effects::default()
        },
    }
}

/// Records that an input's paging ended: with `error` when it failed (a 4xx answer, retries
/// exhausted, a broken pagination), without when it ran out of pages without a last page to
/// say so (`max_results` of 0). An input already done is left as it is.
pub fn end_live_input(
    state: &mut RunState,
    input: u32,
    error: Option<StatusError>,
    now: DateTime<Utc>,
) -> Effects {
    let Some(entry) = state
        .live
        .as_mut()
        .and_then(|l| l.inputs.get_mut(input as usize))
    else {
        return Effects::default();
    };
    if entry.done {
        return Effects::default();
    }
    entry.done = true;
    entry.next = None;
    entry.error = error;
    state.updated_at = now;
    finish_live(state, now)
}

/// The final status of a live request from its inputs' outcomes: `SUCCEEDED` when none failed,
/// `FAILED` when all did, `PARTIAL_SUCCEEDED` otherwise.
pub fn live_final_status(inputs: &[LiveInput]) -> RunStatus {
    let failed = inputs.iter().filter(|i| i.failed()).count();
    match failed {
        0 => RunStatus::Succeeded,
        n if n == inputs.len() => RunStatus::Failed,
        _ => RunStatus::PartialSucceeded,
    }
}

/// Once every input is done and no final status was published: the final status event, with
/// every failed input's error in `input_errors` and the first one as the event's `error`.
pub fn finish_live(state: &mut RunState, now: DateTime<Utc>) -> Effects {
    let info = RequestInfo::of(state);
    let Some(live) = state.live.as_mut() else {
        return Effects::default();
    };
    let previous = live.status;
    if previous.is_some_and(RunStatus::is_terminal) || !live.inputs.iter().all(|i| i.done) {
        return Effects::default();
    }
    let status = live_final_status(&live.inputs);
    let errors: Vec<InputError> = live
        .inputs
        .iter()
        .enumerate()
        .filter_map(|(i, input)| {
            input.error.clone().map(|error| InputError {
                index: u32::try_from(i).unwrap_or(u32::MAX),
                error,
            })
        })
        .collect();
    let mut event = info.event(0, status, StatusSource::Live, now);
    event.previous_status = previous;
    event.error = errors.first().map(|e| e.error.clone());
    event.input_errors = (!errors.is_empty()).then_some(errors);
    live.status = Some(status);
    state.updated_at = now;
    Effects {
        status: Some(event),
        open_runs: match previous {
            Some(p) => open_runs_delta(Some(p), status),
            None => 0,
        },
    }
}

/// The ids of live results, stable across redeliveries: `run_uid` is
/// `live:{request_id}:{input}` (the API does not tell a live call's run), `batch_uid` is
/// `page-{n}` (the input's n-th page, from 1), and `result_id` is
/// `run_uid:batch_uid:index` as for callbacks, `index` being the result's position in its page.
/// Read from the right, a result id is unambiguous even when the request_id holds `:`.
pub struct LiveIds;

impl LiveIds {
    pub fn run_uid(request_id: &str, input: u32) -> String {
        format!("live:{request_id}:{input}")
    }

    pub fn batch_uid(page: u32) -> String {
        format!("page-{page}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RunResult;
    use std::collections::BTreeMap;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    fn info() -> RequestInfo {
        RequestInfo {
            request_id: "r".into(),
            action: "linkedin-search-people".into(),
            mode: Mode::Live,
            metadata: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
        }
    }

    fn state() -> RunState {
        let i = info();
        RunState::new(&i.request_id, &i.action, i.mode, i.metadata, 0)
    }

    fn running(inputs: usize) -> RunState {
        let mut s = state();
        begin_live(&mut s, &info(), inputs, now());
        s
    }

    fn cursor(page: u32) -> Option<Vec<(String, String)>> {
        Some(vec![("page".to_owned(), page.to_string())])
    }

    fn page(input: u32, page: u32, results: usize, last: bool) -> LivePageFacts {
        LivePageFacts {
            input,
            page,
            results,
            next: (!last).then(|| cursor(page + 1)).flatten(),
            last,
        }
    }

    fn error(label: &str) -> StatusError {
        StatusError {
            label: Some(label.into()),
            scope: Some("integ".into()),
            message: format!("{label} happened"),
            http_status: Some(424),
        }
    }

    fn input(done: bool, error: Option<&str>) -> LiveInput {
        LiveInput {
            done,
            error: error.map(self::error),
            ..LiveInput::default()
        }
    }

    #[test]
    fn what_a_live_request_runs_depends_on_what_its_state_recorded() {
        let mut resumed = running(3);
        apply_live_page(&mut resumed, &page(0, 1, 10, false), now());
        apply_live_page(&mut resumed, &page(1, 1, 4, true), now());
        let mut ended = running(1);
        end_live_input(&mut ended, 0, None, now());
        let mut all_done_unfinished = running(1);
        if let Some(live) = all_done_unfinished.live.as_mut() {
            live.inputs[0].done = true;
        }
        let async_state = RunState::new("r", "a", Mode::Async, BTreeMap::new(), 1);
        let start = |input, pages, results, next| LiveStart {
            input,
            pages,
            results,
            next,
        };
        let cases: [(&str, Option<&RunState>, usize, LivePlan); 6] = [
            (
                "a new request pages every input from its first page",
                None,
                2,
                LivePlan::Run(vec![start(0, 0, 0, None), start(1, 0, 0, None)]),
            ),
            (
                "a recorded request that never ran starts every input",
                Some(&state()),
                1,
                LivePlan::Run(vec![start(0, 0, 0, None)]),
            ),
            (
                "a resumed request skips done inputs and resumes the others after their last page",
                Some(&resumed),
                3,
                LivePlan::Run(vec![start(0, 1, 10, cursor(2)), start(2, 0, 0, None)]),
            ),
            (
                "a request whose final status is recorded runs nothing",
                Some(&ended),
                1,
                LivePlan::Finished,
            ),
            (
                "every input done but no final status yet: nothing to call, finish it",
                Some(&all_done_unfinished),
                1,
                LivePlan::Run(vec![]),
            ),
            (
                "a request_id used by an async request is not run live",
                Some(&async_state),
                1,
                LivePlan::OtherMode(Mode::Async),
            ),
        ];
        for (what, s, n, expected) in cases {
            assert_eq!(plan_live(s, n), expected, "{what}");
        }
    }

    #[test]
    fn running_is_published_once_and_opens_the_request() {
        let mut s = state();
        let first = begin_live(&mut s, &info(), 2, now());
        let event = first.status.unwrap();
        assert_eq!(
            (
                event.status,
                event.previous_status,
                event.source,
                event.mode
            ),
            (RunStatus::Running, None, StatusSource::Live, Mode::Live)
        );
        assert_eq!((event.run_uid, event.chunk), (None, 0));
        assert_eq!(event.metadata, info().metadata);
        assert_eq!(first.open_runs, 1);
        assert_eq!(s.live.as_ref().unwrap().inputs.len(), 2);
        assert_eq!(
            begin_live(&mut s, &info(), 2, now()),
            Effects::default(),
            "a resumed request does not say RUNNING again"
        );
        assert_eq!(crate::domain::decide::open_runs(&s), 1);
    }

    #[test]
    fn pages_are_published_once_and_in_order() {
        // (page, published?, pages recorded after, results recorded after)
        let steps: [(LivePageFacts, bool, u32, u64); 6] = [
            (page(0, 2, 10, false), false, 0, 0),
            (page(0, 1, 10, false), true, 1, 10),
            (page(0, 1, 10, false), false, 1, 10),
            (page(0, 2, 10, false), true, 2, 20),
            (page(0, 4, 10, false), false, 2, 20),
            (page(0, 3, 3, true), true, 3, 23),
        ];
        let mut s = running(2);
        for (i, (facts, published, pages, results)) in steps.iter().enumerate() {
            let out = apply_live_page(&mut s, facts, now());
            assert_eq!(out.publish, *published, "step {i}: published");
            let input = &s.live.as_ref().unwrap().inputs[0];
            assert_eq!((input.pages, input.results), (*pages, *results), "step {i}");
            assert_eq!(
                out.effects,
                Effects::default(),
                "step {i}: input 1 still runs"
            );
        }
        let input = &s.live.as_ref().unwrap().inputs[0];
        assert!(input.done && input.next.is_none() && input.error.is_none());
        assert!(
            !apply_live_page(&mut s, &page(0, 4, 1, true), now()).publish,
            "nothing after the last page"
        );
        assert!(
            !apply_live_page(&mut s, &page(5, 1, 1, true), now()).publish,
            "an input the request does not have"
        );
    }

    #[test]
    fn a_page_records_where_the_paging_resumes() {
        let mut s = running(1);
        apply_live_page(&mut s, &page(0, 1, 10, false), now());
        let input = &s.live.as_ref().unwrap().inputs[0];
        assert_eq!(input.next, cursor(2));
        assert_eq!(
            plan_live(Some(&s), 1),
            LivePlan::Run(vec![LiveStart {
                input: 0,
                pages: 1,
                results: 10,
                next: cursor(2)
            }])
        );
    }

    #[test]
    fn the_final_status_follows_from_the_inputs_outcomes() {
        use RunStatus::*;
        let cases: [(&str, Vec<LiveInput>, RunStatus); 5] = [
            ("one input succeeded", vec![input(true, None)], Succeeded),
            (
                "one input failed",
                vec![input(true, Some("NO_RESULT"))],
                Failed,
            ),
            (
                "all succeeded",
                vec![input(true, None), input(true, None)],
                Succeeded,
            ),
            (
                "some failed",
                vec![input(true, None), input(true, Some("NO_RESULT"))],
                PartialSucceeded,
            ),
            (
                "all failed",
                vec![input(true, Some("A")), input(true, Some("B"))],
                Failed,
            ),
        ];
        for (what, inputs, expected) in cases {
            assert_eq!(live_final_status(&inputs), expected, "{what}");
        }
    }

    #[test]
    fn the_last_input_to_end_publishes_the_final_status_with_every_input_error() {
        let mut s = running(3);
        let steps: [(u32, Option<StatusError>, Option<RunStatus>); 4] = [
            (1, Some(error("NO_RESULT")), None),
            (1, Some(error("LATE")), None),
            (0, None, None),
            (
                2,
                Some(error("INVALID_INPUT")),
                Some(RunStatus::PartialSucceeded),
            ),
        ];
        let mut last = Effects::default();
        for (i, (input, err, status)) in steps.into_iter().enumerate() {
            last = end_live_input(&mut s, input, err, now());
            assert_eq!(last.status.as_ref().map(|e| e.status), status, "step {i}");
        }
        let event = last.status.unwrap();
        assert_eq!(event.previous_status, Some(RunStatus::Running));
        assert_eq!(event.source, StatusSource::Live);
        assert_eq!(last.open_runs, -1);
        let errors = event.input_errors.unwrap();
        assert_eq!(
            errors
                .iter()
                .map(|e| (e.index, e.error.label.clone().unwrap()))
                .collect::<Vec<_>>(),
            [(1, "NO_RESULT".to_owned()), (2, "INVALID_INPUT".to_owned())],
            "each failed input once, with its first error, in input order"
        );
        assert_eq!(event.error, Some(error("NO_RESULT")));
        assert_eq!(plan_live(Some(&s), 3), LivePlan::Finished);
        assert_eq!(crate::domain::decide::open_runs(&s), 0);
        assert_eq!(
            finish_live(&mut s, now()),
            Effects::default(),
            "published once"
        );
    }

    #[test]
    fn a_request_that_succeeds_has_no_error_and_its_last_page_finishes_it() {
        let mut s = running(1);
        let out = apply_live_page(&mut s, &page(0, 1, 5, true), now());
        assert!(out.publish);
        let event = out.effects.status.unwrap();
        assert_eq!(event.status, RunStatus::Succeeded);
        assert_eq!((event.error, event.input_errors), (None, None));
        assert_eq!(
            end_live_input(&mut s, 0, None, now()),
            Effects::default(),
            "the job's end of an input already done changes nothing"
        );
    }

    #[test]
    fn live_result_ids_are_stable_and_unambiguous() {
        let run = LiveIds::run_uid("crm:42", 3);
        let id = RunResult::result_id(&run, &LiveIds::batch_uid(2), 7);
        assert_eq!(id, "live:crm:42:3:page-2:7");
        assert_ne!(
            id,
            RunResult::result_id(&LiveIds::run_uid("crm", 42), &LiveIds::batch_uid(2), 7)
        );
    }
}
