//! The ground truth of `/_sim/runs/{uid}/deliveries`, the callback-record list a reconciler
//! reads, and replays (same URL, headers and bytes; limits; which faults apply to them).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use crate::support::*;

async fn replay(app: &TestApp, uid: &str) -> Resp {
    app.post(
        "/runs/callbacks/{callback_uid}/replay",
        &format!("/runs/callbacks/{uid}/replay"),
        json!({}),
    )
    .await
}

async fn callbacks(app: &TestApp, query: &str) -> Resp {
    app.get("/runs/callbacks", &format!("/runs/callbacks?{query}"))
        .await
}

/// Waits until the run is final and every delivery record of it is settled.
async fn settled_truth(app: &TestApp, uid: &str) -> Value {
    eventually(|| async {
        let truth = app.deliveries(uid).await;
        let settled = is_final(&truth["status"])
            && truth["batches"].as_array().unwrap().iter().all(|b| {
                b["deliveries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|d| d["status"] == "SUCCESS" || d["status"] == "FAILED")
            })
            && truth["batches"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["kind"] == "final");
        settled.then_some(truth)
    })
    .await
}

fn batches(truth: &Value) -> &Vec<Value> {
    truth["batches"].as_array().unwrap()
}

#[tokio::test]
async fn the_ground_truth_lists_every_batch_and_whether_any_delivery_reached_the_receiver() {
    let mut config = fast_config();
    config.runtime.faults.callback_drop_rate = 0.5;
    let app = spawn_app_with(config).await;
    let uid = app
        .submit_ok("linkedin-search-people", app.search_body(2, 25))
        .await;
    let truth = settled_truth(&app, &uid).await;
    assert_eq!(truth["outcome"], "succeeded");
    assert_eq!(truth["callback_url"], app.receiver.url.as_str());
    let kinds: Vec<&str> = batches(&truth)
        .iter()
        .map(|b| b["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["page", "page", "page", "page", "page", "page", "final"]
    );
    let counts: Vec<u64> = batches(&truth)
        .iter()
        .map(|b| b["results_count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [10, 10, 5, 10, 10, 5, 0]);

    let received: BTreeSet<String> = app
        .receiver
        .of_run(&uid)
        .iter()
        .map(|r| r.body["run"]["batch_uid"].as_str().unwrap().to_owned())
        .collect();
    let mut undelivered = Vec::new();
    for batch in batches(&truth) {
        let batch_uid = batch["batch_uid"].as_str().unwrap();
        assert_eq!(
            batch["delivered"].as_bool().unwrap(),
            received.contains(batch_uid),
            "{batch}"
        );
        let deliveries = batch["deliveries"].as_array().unwrap();
        assert_eq!(deliveries.len(), 1);
        assert_eq!(deliveries[0]["origin"], "original");
        if batch["delivered"] == false {
            assert_eq!(deliveries[0]["dropped"], true);
            assert_eq!(deliveries[0]["attempts"], 0);
            assert!(deliveries[0]["http_status"].is_null());
            undelivered.push(deliveries[0]["uid"].as_str().unwrap().to_owned());
        } else {
            assert_eq!(deliveries[0]["http_status"], 200);
            assert_eq!(deliveries[0]["attempts"], 1);
        }
    }
    assert!(
        !undelivered.is_empty() && undelivered.len() < 7,
        "seed 7 drops some: {truth}"
    );
    let totals = &truth["totals"];
    assert_eq!(totals["generated"], 7);
    assert_eq!(totals["undelivered"], undelivered.len());
    assert_eq!(totals["results"], 50);

    // Replays recover every dropped batch, and the truth says so.
    for original in &undelivered {
        assert_eq!(replay(&app, original).await.status, 200);
    }
    let truth = eventually(|| async {
        let truth = app.deliveries(&uid).await;
        (truth["totals"]["delivered"] == 7).then_some(truth)
    })
    .await;
    assert_eq!(truth["totals"]["results_delivered"], 50);
    for batch in batches(&truth) {
        let deliveries = batch["deliveries"].as_array().unwrap();
        if let Some(replayed) = deliveries.iter().find(|d| d["origin"] == "replay") {
            assert_eq!(replayed["parent_uid"], deliveries[0]["uid"]);
            assert_eq!(replayed["status"], "SUCCESS");
        }
    }
    let stats = app.stats().await;
    assert_eq!(
        stats["batches"],
        json!({"generated": 7, "delivered": 7, "undelivered": 0, "results": 50, "results_delivered": 50})
    );
}

#[tokio::test]
async fn receiver_failures_leave_a_batch_undelivered_until_a_replay_gets_a_2xx() {
    let app = spawn_app().await;
    app.receiver.status.store(500, Ordering::SeqCst);
    let uid = app
        .submit_ok("linkedin-search-people", app.search_body(1, 5))
        .await;
    let truth = settled_truth(&app, &uid).await;
    assert_eq!(truth["totals"]["delivered"], 0);
    let page = &batches(&truth)[0];
    let record = &page["deliveries"][0];
    assert_eq!(
        (
            &record["attempts"],
            &record["retry_count"],
            &record["http_status"]
        ),
        (&json!(3), &json!(2), &json!(500))
    );
    app.receiver.status.store(200, Ordering::SeqCst);
    assert_eq!(
        replay(&app, record["uid"].as_str().unwrap()).await.status,
        200
    );
    let truth = eventually(|| async {
        let truth = app.deliveries(&uid).await;
        (batches(&truth)[0]["delivered"] == true).then_some(truth)
    })
    .await;
    assert_eq!(
        batches(&truth)[1]["delivered"],
        false,
        "the final one was not replayed"
    );
}

#[tokio::test]
async fn a_replay_goes_to_the_same_url_with_the_same_headers_and_the_exact_stored_bytes() {
    let app = spawn_app().await;
    let mut body = app.search_body(1, 5);
    let url = format!("{}?tenant=a&k=1", app.receiver.url);
    body["callback"]["url"] = json!(url);
    let uid = app.submit_ok("linkedin-search-people", body).await;
    let received = app
        .wait_final_callback("linkedin-search-people", &uid)
        .await;
    let original = &received[0];
    assert_eq!(original.uri, "/cb?tenant=a&k=1");
    let batch_uid = original.body["run"]["batch_uid"].as_str().unwrap();
    let records = callbacks(&app, &format!("run_uid={uid}")).await;
    let record = records
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["batch_uid"] == batch_uid)
        .unwrap()
        .clone();
    assert_eq!(record["callback_url"], url.as_str());
    let replayed = replay(&app, record["uid"].as_str().unwrap()).await;
    assert_eq!(replayed.body["callback_url"], url.as_str());
    let again = eventually(|| async {
        let same: Vec<Received> = app
            .receiver
            .of_run(&uid)
            .into_iter()
            .filter(|r| r.body["run"]["batch_uid"] == batch_uid)
            .collect();
        (same.len() == 2).then(|| same[1].clone())
    })
    .await;
    assert_eq!(again.uri, original.uri);
    assert_eq!(again.raw, original.raw, "the stored bytes, byte for byte");
    assert_eq!(again.headers["authorization"], "Bearer s3cret");
    assert_eq!(again.headers["content-type"], "application/json");
}

#[tokio::test]
async fn a_replay_meets_receiver_failures_but_not_drops_and_counts_toward_the_limit() {
    let mut config = fast_config();
    config.runtime.faults.callback_drop_rate = 1.0;
    let app = spawn_app_with(config).await;
    let uid = app
        .submit_ok("linkedin-search-people", app.search_body(1, 5))
        .await;
    let truth = settled_truth(&app, &uid).await;
    let original = batches(&truth)[0]["deliveries"][0]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    // Drops model the platform's own loss: a requested replay is not dropped.
    let first = replay(&app, &original).await;
    assert_eq!(first.status, 200);
    let first_uid = first.body["uid"].as_str().unwrap().to_owned();
    // A replay is a fresh attempt at the receiver: receiver failures apply.
    let mut sim = app.sim_config().await;
    sim["faults"] = json!({"callback_failure_rate": 1.0});
    app.put_config(sim.clone()).await;
    let second = replay(&app, &original).await;
    assert_eq!(second.status, 200);
    let second_uid = second.body["uid"].as_str().unwrap().to_owned();
    let records = eventually(|| async {
        let list = callbacks(&app, &format!("run_uid={uid}&limit=20")).await;
        let find = |u: &str| {
            list.body
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["uid"] == u)
                .cloned()
        };
        let (a, b) = (find(&first_uid)?, find(&second_uid)?);
        (a["status"] == "SUCCESS" && b["status"] == "FAILED").then_some((a, b))
    })
    .await;
    assert_eq!(records.0["http_status"], 200);
    assert!(
        records.1.get("http_status").is_none(),
        "no answer: no http_status"
    );
    assert_eq!(records.1["retry_count"], 0, "a replay is one attempt");
    sim["faults"] = json!({});
    app.put_config(sim).await;
    assert_eq!(replay(&app, &original).await.status, 200);
    let fourth = replay(&app, &original).await;
    assert_eq!(
        fourth.status, 400,
        "failed replays count too: {}",
        fourth.body
    );
}

#[tokio::test]
async fn the_callback_list_filters_by_repeated_statuses_and_run_uids_sorts_and_pages_within_20() {
    let mut config = fast_config();
    config.runtime.faults.callback_drop_rate = 0.5;
    let app = spawn_app_with(config).await;
    let a = app
        .submit_ok("linkedin-search-people", app.search_body(1, 25))
        .await;
    let b = app
        .submit_ok("linkedin-search-people", app.search_body(2, 25))
        .await;
    let c = app
        .submit_ok("linkedin-search-people", app.search_body(1, 5))
        .await;
    let mut expected = BTreeSet::new();
    let mut failed = 0;
    for uid in [&a, &b] {
        for batch in batches(&settled_truth(&app, uid).await) {
            expected.insert(batch["batch_uid"].as_str().unwrap().to_owned());
            failed += usize::from(batch["delivered"] == false);
        }
    }
    settled_truth(&app, &c).await;
    assert_eq!(expected.len(), 11);
    assert!(failed > 0);

    let runs = format!("run_uid={a}&run_uid={b}");
    let all = callbacks(&app, &format!("{runs}&limit=20")).await.body;
    let all = all.as_array().unwrap();
    let listed: BTreeSet<String> = all
        .iter()
        .map(|r| r["batch_uid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        listed, expected,
        "one record per batch of the two runs only"
    );
    for record in all {
        for key in [
            "uid",
            "parent_uid",
            "retry_count",
            "created_at",
            "status",
            "callback_url",
            "batch_uid",
            "run_uid",
            "workspace_uid",
        ] {
            assert!(record.get(key).is_some(), "{key} in {record}");
        }
        assert_eq!(record["callback_url"], app.receiver.url.as_str());
        // Dropped deliveries got no answer; delivered ones carry the receiver's status.
        assert_eq!(
            record.get("http_status").is_some(),
            record["status"] == "SUCCESS"
        );
    }
    let both = callbacks(
        &app,
        &format!("{runs}&status=FAILED&status=SUCCESS&limit=20"),
    )
    .await;
    assert_eq!(both.body.as_array().unwrap().len(), 11);
    let only_failed = callbacks(&app, &format!("{runs}&status[]=FAILED&limit=20")).await;
    assert_eq!(only_failed.body.as_array().unwrap().len(), failed);

    let newest_first: Vec<Value> = {
        let mut pages = Vec::new();
        for offset in [0, 4, 8] {
            let page = callbacks(&app, &format!("{runs}&limit=4&offset={offset}")).await;
            pages.extend(page.body.as_array().unwrap().iter().cloned());
        }
        pages
    };
    assert_eq!(
        newest_first.as_slice(),
        all.as_slice(),
        "pages tile the list"
    );
    let oldest_first = callbacks(&app, &format!("{runs}&limit=20&sort=created_at")).await;
    let mut reversed = oldest_first.body.as_array().unwrap().clone();
    reversed.reverse();
    assert_eq!(reversed.as_slice(), all.as_slice());
    let by_status = callbacks(&app, &format!("{runs}&limit=20&sort=status,%20-created_at")).await;
    let order: Vec<&str> = by_status
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");

    for bad in [
        "limit=21",
        "limit=0",
        "offset=-1",
        "status=DONE",
        "run_uid=not-a-uuid",
    ] {
        let resp = callbacks(&app, bad).await;
        assert_eq!(resp.status, 400, "{bad}");
    }
}
