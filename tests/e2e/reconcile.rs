//! Closing every run, end to end: lost and failed callbacks recovered by the reconciler and
//! counted against the simulator's own delivery records, runs that never finish timed out,
//! silent runs of a killed instance reconciled by the survivor, and control commands.

use crate::*;
use captain_bridge::config::Settings;
use captain_testkit::API_KEY;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Short reconcile timers, so a test closes its runs in seconds.
fn quick_reconcile(s: &mut Settings) {
    let r = &mut s.reconcile;
    r.enabled = true;
    r.silence_after = Duration::from_secs(3);
    r.audit_delay = Duration::from_millis(500);
    r.audit_retry = Duration::from_secs(1);
    r.audit_timeout = Duration::from_secs(60);
    r.run_deadline = Duration::from_secs(120);
    r.tick = Duration::from_millis(200);
    r.max_rate_share = 1.0;
    r.max_in_flight = 16;
}

fn sim_http() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("X-API-Key", API_KEY.parse().unwrap());
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// The simulator's record of a run's batches: `(batch_uid, results, delivered)`.
async fn sim_batches(sim: &SimProcess, run_uid: &str) -> Vec<(String, u64, bool)> {
    let truth: Value = sim_http()
        .get(format!("{}/_sim/runs/{run_uid}/deliveries", sim.base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    truth["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["batch_uid"].as_str().unwrap().to_owned(),
                b["results_count"].as_u64().unwrap(),
                b["delivered"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// The last status event of each request whose status is final.
fn final_events(records: &[Read]) -> HashMap<String, Value> {
    statuses_by_request(records)
        .into_iter()
        .filter_map(|(id, events)| {
            let last = events.into_iter().rev().find(|e| e["command"].is_null())?;
            let final_ = matches!(
                last["status"].as_str(),
                Some("SUCCEEDED" | "FAILED" | "PARTIAL_SUCCEEDED" | "TIMED_OUT")
            );
            final_.then_some((id, last))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_ends_and_only_pages_lost_for_good_are_missing_when_callbacks_are_dropped() {
    const REQUESTS: usize = 300;
    let faults = "[faults]\ncallback_drop_rate = 0.3\ncallback_failure_rate = 0.5\n";
    let stack = Stack::start("reconcile-drop", &fast_sim_config(faults), quick_reconcile).await;
    let requests: Vec<Value> = (0..REQUESTS)
        .map(|i| search_request(&format!("drop-{i:03}"), 1, 6))
        .collect();
    let started = Instant::now();
    stack.produce(&requests).await;

    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(Duration::from_secs(150), "every request final", |r| {
        final_events(r).len() >= REQUESTS
    });
    let closed_after = started.elapsed();
    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    results.poll_for(Duration::from_secs(2));
    status.poll_for(Duration::from_millis(500));

    let finals = final_events(&status.records);
    let published: BTreeSet<String> = result_id_counts(&results.records).into_keys().collect();
    let (mut expected, mut lost_batches, mut lost_results, mut with_error) = (0u64, 0, 0u64, 0);
    for (id, last) in &finals {
        assert_eq!(last["status"], "SUCCEEDED", "{id}: {last}");
        let run_uid = last["run_uid"].as_str().unwrap();
        let batches = sim_batches(&stack.sim, run_uid).await;
        let mut missing = Vec::new();
        for (batch_uid, count, delivered) in &batches {
            if *delivered {
                expected += count;
                for i in 0..*count {
                    let result_id = format!("{run_uid}:{batch_uid}:{i}");
                    assert!(
                        published.contains(&result_id),
                        "{id}: result {result_id} of a delivered batch is not published"
                    );
                }
            } else {
                // A lost batch without results is the final status callback (then the final
                // status came from a poll): the API's records cannot tell it from a page.
                missing.push(batch_uid.clone());
                lost_results += count;
            }
        }
        lost_batches += missing.len();
        match missing.is_empty() {
            true => assert!(last["error"].is_null(), "{id}: nothing was lost: {last}"),
            false => {
                with_error += 1;
                assert_eq!(last["error"]["label"], "MISSING_BATCHES", "{id}: {last}");
                let message = last["error"]["message"].as_str().unwrap();
                assert!(
                    message.starts_with(&format!("{} ", missing.len())),
                    "{id}: {message}"
                );
                for b in &missing {
                    assert!(
                        message.contains(b.as_str()),
                        "{id}: {b} not named: {message}"
                    );
                }
            }
        }
    }
    let metrics = stack.metrics().await;
    let sim = stack.sim_stats().await;
    eprintln!(
        "e2e reconcile: {REQUESTS} requests closed in {:.1} s; results expected {expected} (published \
         {}), lost for good {lost_results} in {lost_batches} batches over {with_error} requests; \
         replays requested {}, polls {}; sim callbacks {}",
        closed_after.as_secs_f64(),
        published.len(),
        metric(&metrics, "captain_bridge_reconcile_replays_requested_total").unwrap_or(0.0),
        metric(&metrics, "captain_bridge_reconcile_runs_polled_total").unwrap_or(0.0),
        sim["callbacks"]
    );
    assert_eq!(finals.len(), REQUESTS);
    assert!(
        metric(&metrics, "captain_bridge_reconcile_replays_requested_total").unwrap_or(0.0) > 0.0,
        "with 30 % of callbacks dropped, replays were needed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_never_finishes_times_out_once_and_a_late_callback_publishes_results_only() {
    let sim_toml = fast_sim_config("").replace(
        "succeeded = 1.0\n",
        "succeeded = 0.0\nstalled_running = 1.0\n",
    );
    let stack = Stack::start("reconcile-timeout", &sim_toml, |s| {
        quick_reconcile(s);
        s.reconcile.silence_after = Duration::from_secs(1);
        s.reconcile.run_deadline = Duration::from_secs(4);
    })
    .await;
    stack.produce(&[search_request("stall-1", 1, 4)]).await;
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(Duration::from_secs(60), "TIMED_OUT", |r| {
        final_status_count(r, "TIMED_OUT") >= 1
    });
    let events = &statuses_by_request(&status.records)["stall-1"];
    let timed_out = events.last().unwrap();
    assert_eq!(timed_out["source"], "bridge");
    assert_eq!(timed_out["error"]["label"], "TIMED_OUT");
    let run_uid = timed_out["run_uid"].as_str().unwrap().to_owned();

    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    results.poll_for(Duration::from_millis(500));
    let before = results.records.len();
    let finished = sim_http()
        .post(format!("{}/_sim/runs/{run_uid}/finish", stack.sim.base()))
        .json(&json!({"status": "SUCCEEDED"}))
        .send()
        .await
        .unwrap();
    assert!(
        finished.status().is_success(),
        "{:?}",
        finished.text().await
    );
    results.until(Duration::from_secs(30), "the late pages' results", |r| {
        r.len() >= 4
    });
    assert!(results.records.len() > before, "late results are published");
    // The late final callback and any audit after it must not publish a status.
    status.poll_for(Duration::from_secs(3));
    let events = &statuses_by_request(&status.records)["stall-1"];
    let timeouts = events.iter().filter(|e| e["status"] == "TIMED_OUT").count();
    assert_eq!(timeouts, 1, "{events:#?}");
    assert_eq!(events.last().unwrap()["status"], "TIMED_OUT", "{events:#?}");
    let metrics = stack.metrics().await;
    assert_eq!(
        metric(&metrics, "captain_bridge_runs_timed_out_total"),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_runs_of_an_instance_killed_with_sigkill_are_reconciled_by_the_other() {
    const REQUESTS: usize = 24;
    let sim_toml = fast_sim_config("").replace(
        "succeeded = 1.0\n",
        "succeeded = 0.0\nstalled_running = 1.0\n",
    );
    let configure = |s: &mut Settings| {
        quick_reconcile(s);
        s.reconcile.silence_after = Duration::from_secs(2);
    };
    let mut stack = Stack::start("reconcile-kill", &sim_toml, configure).await;
    let other = stack.another_bridge(configure).await;
    await_group_members(
        &stack.bootstrap,
        &format!("{}-owners", stack.topics.group),
        2,
    );
    let requests: Vec<Value> = (0..REQUESTS)
        .map(|i| search_request(&format!("silent-{i:02}"), 1, 2))
        .collect();
    stack.produce(&requests).await;
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);
    status.until(Duration::from_secs(60), "every run known", |r| {
        statuses_by_request(r)
            .values()
            .filter(|events| events.iter().any(|e| !e["run_uid"].is_null()))
            .count()
            >= REQUESTS
    });
    // From now on nothing is delivered: only polls can close the runs.
    stack
        .sim
        .patch_config(json!({"faults": {"callback_drop_rate": 1.0}}))
        .await
        .unwrap();
    stack.bridge.kill_hard();
    let killed = Instant::now();
    let run_uids: Vec<String> = statuses_by_request(&status.records)
        .values()
        .filter_map(|events| {
            events
                .iter()
                .find_map(|e| e["run_uid"].as_str().map(str::to_owned))
        })
        .collect();
    for uid in &run_uids {
        let finished = sim_http()
            .post(format!("{}/_sim/runs/{uid}/finish", stack.sim.base()))
            .json(&json!({"status": "SUCCEEDED"}))
            .send()
            .await
            .unwrap();
        assert!(finished.status().is_success());
    }
    status.until(
        Duration::from_secs(120),
        "every request SUCCEEDED by poll",
        |r| final_status_count(r, "SUCCEEDED") >= REQUESTS,
    );
    let closed = killed.elapsed();
    status.poll_for(Duration::from_secs(1));
    for (id, events) in statuses_by_request(&status.records) {
        let finals: Vec<&Value> = events
            .iter()
            .filter(|e| e["status"] == "SUCCEEDED")
            .collect();
        assert_eq!(finals.len(), 1, "{id}: one final status: {events:#?}");
        assert_eq!(finals[0]["source"], "poll", "{id}: {}", finals[0]);
    }
    let survivor = other.metrics().await.unwrap();
    eprintln!(
        "e2e reconcile: {REQUESTS} silent runs closed by the survivor {:.1} s after kill -9 ({} polls)",
        closed.as_secs_f64(),
        metric(&survivor, "captain_bridge_reconcile_runs_polled_total").unwrap_or(0.0)
    );
    assert!(metric(&survivor, "captain_bridge_reconcile_runs_polled_total").unwrap_or(0.0) > 0.0);
    drop(other);
}

/// Produces `commands` on the control topic, keyed by their request_id.
async fn command(stack: &Stack, commands: &[Value]) {
    let producer = captain_testkit::kafka::producer(&stack.bootstrap).unwrap();
    let records = commands.iter().map(|c| {
        (
            c["request_id"].as_str().unwrap_or("none").to_owned(),
            Some(serde_json::to_vec(c).unwrap()),
            None,
        )
    });
    captain_testkit::kafka::produce(&producer, &stack.topics.control, records, 100)
        .await
        .unwrap();
}

/// The outcome events of `command_id`.
fn outcomes(records: &[Read], command_id: &str) -> Vec<Value> {
    records
        .iter()
        .map(Read::json)
        .filter(|e| e["command"]["command_id"] == command_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_control_command_is_executed_once_and_answered_on_the_status_topic() {
    let stack = Stack::start("control", &fast_sim_config(""), |s| {
        quick_reconcile(s);
        // No automatic polls during the test: only commands close the silent requests.
        s.reconcile.silence_after = Duration::from_secs(3600);
        s.reconcile.run_deadline = Duration::from_secs(7200);
    })
    .await;
    let mut status = Collector::new(&stack.bootstrap, &stack.topics.run_status);

    // A run that blocks, a schedule, and two requests whose every callback is dropped.
    stack
        .sim
        .patch_config(json!({"outcomes": {"succeeded": 0.0, "blocked": 1.0}}))
        .await
        .unwrap();
    stack.produce(&[search_request("blocked-1", 1, 2)]).await;
    status.until(Duration::from_secs(30), "BLOCKED", |r| {
        r.iter().any(|e| e.json()["status"] == "BLOCKED")
    });
    stack
        .sim
        .patch_config(json!({
            "outcomes": {"succeeded": 1.0, "blocked": 0.0},
            "faults": {"callback_drop_rate": 1.0}
        }))
        .await
        .unwrap();
    let mut schedule = search_request("sched-1", 1, 2);
    schedule["mode"] = json!("schedule");
    schedule["schedule"] = json!({"cron": "0 0 1 1 *", "timezone": "UTC"});
    stack
        .produce(&[
            schedule,
            search_request("dropped-1", 1, 4),
            search_request("dropped-2", 1, 4),
        ])
        .await;
    status.until(
        Duration::from_secs(30),
        "SCHEDULED and two runs CREATED",
        |r| {
            let by = statuses_by_request(r);
            by.get("sched-1")
                .is_some_and(|e| e.iter().any(|e| e["status"] == "SCHEDULED"))
                && ["dropped-1", "dropped-2"].iter().all(|id| {
                    by.get(*id)
                        .is_some_and(|e| e.iter().any(|e| !e["run_uid"].is_null()))
                })
        },
    );
    // Let the simulator give up on the dropped requests' deliveries, then deliver again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack
        .sim
        .patch_config(json!({"faults": {"callback_drop_rate": 0.0}}))
        .await
        .unwrap();

    let pause = json!({"command_id": "c-pause", "command": "pause_schedule", "request_id": "sched-1", "reason": "quiet period"});
    command(
        &stack,
        &[
            json!({"command_id": "c-resume", "command": "resume_run", "request_id": "blocked-1"}),
            pause.clone(),
            pause,
            json!({"command_id": "c-replay", "command": "replay_callbacks", "request_id": "dropped-1"}),
            json!({"command_id": "c-now", "command": "reconcile_now", "request_id": "dropped-2"}),
            json!({"command_id": "c-ghost", "command": "reconcile_now", "request_id": "never-launched"}),
            json!({"command_id": "c-wrong", "command": "cancel_schedule", "request_id": "dropped-1"}),
        ],
    )
    .await;
    status.until(
        Duration::from_secs(60),
        "every first command answered",
        |r| {
            [
                "c-resume", "c-pause", "c-replay", "c-now", "c-ghost", "c-wrong",
            ]
            .iter()
            .all(|c| !outcomes(r, c).is_empty())
        },
    );
    command(
        &stack,
        &[
            json!({"command_id": "c-resume-sched", "command": "resume_schedule", "request_id": "sched-1"}),
            json!({"command_id": "c-cancel", "command": "cancel_schedule", "request_id": "sched-1"}),
        ],
    )
    .await;
    status.until(
        Duration::from_secs(60),
        "the dropped requests closed",
        |r| {
            let by = statuses_by_request(r);
            ["dropped-1", "dropped-2", "blocked-1"].iter().all(|id| {
                by.get(*id)
                    .is_some_and(|e| e.iter().any(|e| e["status"] == "SUCCEEDED"))
            }) && !outcomes(r, "c-cancel").is_empty()
        },
    );
    status.poll_for(Duration::from_secs(1));
    let r = &status.records;

    let resumed = outcomes(r, "c-resume");
    assert_eq!(resumed.len(), 1, "{resumed:#?}");
    assert_eq!(resumed[0]["command"]["outcome"], "accepted");
    assert_eq!(resumed[0]["previous_status"], "BLOCKED");
    assert_eq!(resumed[0]["source"], "control");

    let paused = outcomes(r, "c-pause");
    assert_eq!(
        paused.len(),
        1,
        "a duplicate command_id is executed once: {paused:#?}"
    );
    assert_eq!(paused[0]["schedule_status"], "PAUSED");
    assert_eq!(paused[0]["command"]["reason"], "quiet period");
    assert_eq!(
        outcomes(r, "c-resume-sched")[0]["schedule_status"],
        "ACTIVE"
    );
    assert_eq!(outcomes(r, "c-cancel")[0]["schedule_status"], "CANCELLED");

    let replayed = &outcomes(r, "c-replay")[0];
    assert_eq!(replayed["command"]["outcome"], "accepted", "{replayed}");
    assert!(
        replayed["command"]["detail"]
            .as_str()
            .unwrap()
            .contains("replayed"),
        "{replayed}"
    );
    let now = &outcomes(r, "c-now")[0];
    assert_eq!(now["command"]["outcome"], "accepted", "{now}");

    let ghost = &outcomes(r, "c-ghost")[0];
    assert_eq!(ghost["command"]["outcome"], "refused");
    assert_eq!(ghost["error"]["label"], "UNKNOWN_REQUEST");
    let wrong = &outcomes(r, "c-wrong")[0];
    assert_eq!(wrong["error"]["label"], "WRONG_STATE", "{wrong}");

    let mut results = Collector::new(&stack.bootstrap, &stack.topics.run_results);
    results.until(
        Duration::from_secs(30),
        "the dropped requests' results",
        |rs| {
            let ids = rs
                .iter()
                .map(|x| x.json()["request_id"].as_str().unwrap().to_owned());
            let ids: Vec<String> = ids.collect();
            ids.iter().filter(|i| *i == "dropped-1").count() >= 4
                && ids.iter().filter(|i| *i == "dropped-2").count() >= 4
        },
    );

    let sim = stack.sim_stats().await;
    let schedule_calls: u64 = sim["requests"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(path, _)| path.starts_with("POST /v4/schedules/"))
        .flat_map(|(_, codes)| codes.as_object().unwrap().values())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(schedule_calls, 3, "pause once, resume, cancel: {sim}");
    let metrics = stack.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"captain_bridge_control_commands_total{command="pause_schedule",outcome="duplicate"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_control_command_is_dead_lettered_with_its_reason() {
    let stack = Stack::start("control-bad", &fast_sim_config(""), |_| {}).await;
    let producer = captain_testkit::kafka::producer(&stack.bootstrap).unwrap();
    let bad = [
        ("k-1", b"{not json".to_vec()),
        (
            "k-2",
            br#"{"command_id":"c","command":"stop_everything","request_id":"r"}"#.to_vec(),
        ),
        (
            "k-3",
            br#"{"command_id":"c","command":"pause_schedule","request_id":"r","run_uid":"u"}"#
                .to_vec(),
        ),
    ];
    let records = bad
        .iter()
        .map(|(k, v)| (k.to_string(), Some(v.clone()), None));
    captain_testkit::kafka::produce(&producer, &stack.topics.control, records, 10)
        .await
        .unwrap();
    let mut dead = Collector::new(&stack.bootstrap, &stack.topics.dead_letter);
    dead.until(Duration::from_secs(30), "three dead letters", |r| {
        r.len() >= 3
    });
    dead.poll_for(Duration::from_millis(500));
    assert_eq!(dead.records.len(), 3, "each once");
    for (rec, (key, value)) in dead.records.iter().zip(&bad) {
        assert_eq!(rec.key.as_deref(), Some(*key));
        assert_eq!(
            rec.value.as_deref(),
            Some(value.as_slice()),
            "original bytes"
        );
        assert_eq!(rec.headers["captain.source.topic"], stack.topics.control);
        assert!(!rec.headers["captain.error.reason"].is_empty());
    }
    assert!(dead.records[1].headers["captain.error.reason"].contains("stop_everything"));
    assert!(dead.records[2].headers["captain.error.reason"].contains("run_uid"));
}
