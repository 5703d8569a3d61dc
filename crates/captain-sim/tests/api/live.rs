//! Live calls: the `token` cursor of the 8 cursor actions, `results.live_total`, the 424 of
//! `faults.live_failure_rate`, and 429 on the live bucket.

use serde_json::{json, Value};

use crate::support::*;

const PLACES: &str = "/actions/googlemaps-search-places/run/live";
const PEOPLE: &str = "/actions/linkedin-search-people/run/live";

fn places(query: &str) -> Value {
    json!({"input": {"google_maps_search_url": format!("https://www.google.com/maps/search/{query}")}})
}

fn people(i: usize) -> Value {
    json!({"input": {"linkedin_people_search_url": format!("https://www.linkedin.com/search/results/people/?keywords=k{i}")}})
}

async fn with_live_total(app: &TestApp, total: u64) {
    let mut config = app.sim_config().await;
    config["results"]["live_total"] = json!(total);
    app.put_config(config).await;
}

/// The path and query of an `X-Pagination-Next` URL, checked to point at the simulator.
fn next_of(app: &TestApp, resp: &Resp) -> Option<String> {
    let next = resp.headers.get("x-pagination-next")?.to_str().unwrap();
    Some(
        next.strip_prefix(&app.base)
            .unwrap_or_else(|| panic!("{next} is not under {}", app.base))
            .to_owned(),
    )
}

#[tokio::test]
async fn a_cursor_action_puts_its_next_token_in_x_pagination_next_and_sends_no_previous_link() {
    let app = spawn_app().await;
    with_live_total(&app, 50).await;
    let body = places("pizza");
    let mut path = PLACES.to_owned();
    let mut pages = Vec::new();
    loop {
        let resp = app.post(PLACES, &path, body.clone()).await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        assert!(resp.headers.get("x-pagination-previous").is_none());
        pages.push(resp.body.as_array().unwrap().len());
        match next_of(&app, &resp) {
            Some(next) => {
                assert!(next.starts_with(&format!("{PLACES}?token=")), "{next}");
                path = next;
            }
            None => break,
        }
        assert!(pages.len() < 10, "pagination ends");
    }
    assert_eq!(pages, [20, 20, 10], "page_size 20, 50 results");
    // The cursor and the page number reach the same results.
    let second_by_page = app
        .post(PLACES, &format!("{PLACES}?page=2"), body.clone())
        .await;
    let first = app.post(PLACES, PLACES, body.clone()).await;
    let by_token = app
        .post(PLACES, &next_of(&app, &first).unwrap(), body)
        .await;
    assert_eq!(by_token.body, second_by_page.body);
}

#[tokio::test]
async fn a_token_issued_for_another_input_or_tampered_with_is_400() {
    let app = spawn_app().await;
    let first = app.post(PLACES, PLACES, places("pizza")).await;
    let next = next_of(&app, &first).unwrap();
    let other = app.post(PLACES, &next, places("sushi")).await;
    assert_eq!(other.status, 400);
    assert_eq!(other.body["params"]["field"], "token");
    let tampered = next.replace("token=", "token=f");
    assert_eq!(
        app.post(PLACES, &tampered, places("pizza")).await.status,
        400
    );
    let garbage = app
        .post(PLACES, &format!("{PLACES}?token=nope"), places("pizza"))
        .await;
    assert_eq!(garbage.status, 400);
}

#[tokio::test]
async fn live_total_sets_how_many_results_one_input_pages_through() {
    let app = spawn_app().await;
    with_live_total(&app, 35).await;
    let mut sizes = Vec::new();
    let mut path = PEOPLE.to_owned();
    loop {
        let resp = app.post(PEOPLE, &path, people(0)).await;
        sizes.push(resp.body.as_array().unwrap().len());
        match next_of(&app, &resp) {
            Some(next) => path = next,
            None => break,
        }
    }
    assert_eq!(sizes, [10, 10, 10, 5]);
    with_live_total(&app, 0).await;
    let none = app.post(PEOPLE, PEOPLE, people(0)).await;
    assert_eq!(none.body, json!([]));
    assert!(none.headers.get("x-pagination-next").is_none());
}

#[tokio::test]
async fn a_failing_live_input_answers_424_on_every_call_and_is_recorded_as_a_failed_run() {
    let app = spawn_app().await;
    let mut config = app.sim_config().await;
    config["faults"]["live_failure_rate"] = json!(0.5);
    app.put_config(config).await;
    let mut outcomes = Vec::new();
    for i in 0..12 {
        let resp = app.post(PEOPLE, PEOPLE, people(i)).await;
        outcomes.push(resp.status.as_u16());
        if resp.status == 424 {
            assert_eq!(resp.body["error_label"], "NO_RESULT");
            assert_eq!(resp.body["error_scope"], "integ");
            assert_eq!(resp.body["params"]["action"], "linkedin-search-people");
            let page_2 = app
                .post(PEOPLE, &format!("{PEOPLE}?page=2"), people(i))
                .await;
            assert_eq!(page_2.status, 424, "the input fails on every page");
        }
    }
    assert!(
        outcomes.contains(&424) && outcomes.contains(&200),
        "{outcomes:?}"
    );
    let mut again = Vec::new();
    for i in 0..12 {
        again.push(app.post(PEOPLE, PEOPLE, people(i)).await.status.as_u16());
    }
    assert_eq!(
        again, outcomes,
        "the same inputs fail, whatever the order of calls"
    );
    let failed = app
        .get("/runs", "/runs?execution_mode=LIVE&status=FAILED&limit=100")
        .await;
    let failed = failed.body.as_array().unwrap();
    let expected = outcomes.iter().filter(|s| **s == 424).count() * 3;
    assert_eq!(failed.len(), expected, "each 424 is a FAILED live run");
    assert!(failed
        .iter()
        .all(|r| r["last_error"]["label"] == "NO_RESULT"));
}

#[tokio::test]
async fn the_live_bucket_answers_429_with_retry_after_and_leaves_the_others_alone() {
    let app = spawn_app().await;
    let mut config = app.sim_config().await;
    config["rate_limits"]["live"] = json!({"rps": 0.5, "burst": 2});
    app.put_config(config).await;
    assert_eq!(app.post(PEOPLE, PEOPLE, people(0)).await.status, 200);
    assert_eq!(app.post(PEOPLE, PEOPLE, people(0)).await.status, 200);
    let limited = app.post(PEOPLE, PEOPLE, people(0)).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.body["error_label"], "RATE_LIMIT_EXCEEDED");
    assert_eq!(limited.headers["x-ratelimit-type"], "live");
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert!(limited.headers.get("x-ratelimit-reset").is_some());
    let submitted = app
        .submit("linkedin-search-people", app.search_body(1, 1))
        .await;
    assert_eq!(submitted.status, 200, "the async bucket is separate");
}
